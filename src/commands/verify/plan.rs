//! The target of a verification and the WAL it needs: by default the last archived commit the
//! backup is responsible for (up to the next backup's end; for the newest backup, the newest
//! commit in the archive), from the commit times `wal-push` records in each segment's header.

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::report::TargetReport;
use crate::error::usage;
use crate::pg::history::TimelinePath;
use crate::pg::{WalFileName, WalSegmentName, WalSegmentSize};
use crate::repo::manifest::BackupManifest;
use crate::repo::timelines::Timelines;
use crate::repo::window::{self, RecoveryTarget, WalIndex};
use crate::repo::Repository;
use crate::timeparse::format_utc;

/// How recovery is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `recovery_target_time`: a commit after the target is in the staged WAL.
    Time(DateTime<Utc>),
    /// No target: replay the staged WAL, which ends with the segment of the target commit
    /// (`None`: no commit is archived since the backup; recovery to its end).
    End(Option<DateTime<Utc>>),
}

/// What one verification recovers to, and the WAL it needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    pub size: WalSegmentSize,
    /// The timelines recovery follows (the newest timeline whose history holds the backup).
    pub path: TimelinePath,
    pub start_segno: u64,
    pub through_segno: u64,
    /// Archived segments (and history files) to stage, in the order PostgreSQL asks for
    /// them: history files, then by segment number.
    pub segments: Vec<WalFileName>,
    /// Segment numbers in the range the archive does not have.
    pub missing: Vec<u64>,
    /// How many of `segments` (from the front) cover the backup's own WAL, start to stop.
    pub backup_files: usize,
}

impl Plan {
    pub fn recovery_target(&self) -> RecoveryTarget {
        match self.mode {
            Mode::Time(t) => RecoveryTarget::Time(t),
            Mode::End(_) => RecoveryTarget::Latest,
        }
    }

    pub fn describe(&self) -> String {
        match self.mode {
            Mode::Time(t) => format_utc(t),
            Mode::End(Some(t)) => format!("{} (the last archived commit)", format_utc(t)),
            Mode::End(None) => "the end of the backup (no commit is archived after it)".into(),
        }
    }

    pub fn name(&self, segno: u64) -> WalSegmentName {
        self.path.segment(segno, self.size)
    }

    pub fn first_segment(&self) -> WalSegmentName {
        self.name(self.start_segno)
    }

    pub fn last_segment(&self) -> WalSegmentName {
        self.name(self.through_segno)
    }

    pub fn missing_note(&self) -> String {
        match self.missing.as_slice() {
            [] => String::new(),
            [one] => format!(
                " (WAL segment {} is missing from the archive)",
                self.name(*one)
            ),
            many => format!(
                " (WAL segments {} are missing from the archive)",
                many.iter()
                    .map(|s| self.name(*s).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    pub fn report(&self) -> TargetReport {
        let (kind, time) = match self.mode {
            Mode::Time(t) => ("time", Some(t)),
            Mode::End(t) => ("end", t),
        };
        TargetReport {
            kind: kind.into(),
            time,
            description: self.describe(),
            wal_from: self.first_segment().to_string(),
            wal_through: self.last_segment().to_string(),
            segments_staged: self.segments.len(),
            missing: self
                .missing
                .iter()
                .map(|s| self.name(*s).to_string())
                .collect(),
        }
    }
}

/// How far ahead of the default target to look for a later commit (which lets recovery stop
/// at the target time rather than at the end of the staged WAL).
const LOOKAHEAD_SEGMENTS: u64 = 16;

/// Pick the target and the WAL for verifying `backup`.
pub async fn plan(
    repo: &Repository,
    backups: &[BackupManifest],
    backup: &BackupManifest,
    to: Option<DateTime<Utc>>,
) -> anyhow::Result<Plan> {
    let size = WalSegmentSize::new(backup.wal_segment_size)
        .with_context(|| format!("backup {}: invalid wal_segment_size", backup.id))?;
    let listing: Vec<WalFileName> = repo
        .list_wal()
        .await
        .context("list archived WAL")?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    // Recover along the newest timeline that holds the backup, as a restore would.
    let timelines = Timelines::load(repo, &listing)
        .await
        .context("read the archive's timeline history files")?;
    let path = match timelines.path(timelines.latest()) {
        Ok(p) if window::on_path(backup, &p).is_ok() => p,
        _ => timelines
            .path(backup.timeline)
            .unwrap_or_else(|_| TimelinePath::root(backup.timeline)),
    };
    let index = WalIndex::new(&listing, size, &path);
    let start = backup.start_lsn.segno(size);
    let stop = backup.stop_lsn.end_segno(size).max(start);
    let newest = index.newest().unwrap_or(stop).max(stop);

    let (mode, through) = match to {
        Some(t) => {
            window::backup_serves(backup, &RecoveryTarget::Time(t)).map_err(usage)?;
            match first_commit_after(repo, &index, stop, newest, t).await? {
                Some(seg) => (Mode::Time(t), seg.max(stop)),
                None => {
                    return Err(usage(format!(
                        "no commit after {} is archived, so recovery cannot stop at that time \
                         (PostgreSQL stops at the first commit after the target); give an earlier --to, \
                         or leave --to out to verify up to the last archived commit",
                        format_utc(t)
                    )))
                }
            }
        }
        None => {
            // Up to the next backup's end, or everything archived for the newest backup.
            let horizon = backups
                .iter()
                .filter(|b| b.stop_lsn > backup.stop_lsn)
                .map(|b| b.stop_lsn.end_segno(size))
                .min()
                .unwrap_or(newest)
                .clamp(stop, newest);
            match newest_commit_down(repo, &index, horizon, start).await? {
                Some((seg, t)) if t >= backup.stop_time && seg >= stop => {
                    let ahead = (seg + LOOKAHEAD_SEGMENTS).min(newest);
                    match first_commit_after(repo, &index, seg, ahead, t).await? {
                        Some(after) => (Mode::Time(t), after),
                        None => (Mode::End(Some(t)), seg),
                    }
                }
                Some((_, t)) => (Mode::End(Some(t)), stop),
                None => (Mode::End(None), stop),
            }
        }
    };

    let mut segments: Vec<WalFileName> = listing
        .iter()
        .filter(|n| match n {
            WalFileName::Segment(s) => {
                s.fits(size) && path.uses(s, size) && (start..=through).contains(&s.segno(size))
            }
            WalFileName::History(tli) => *tli > backup.timeline && path.span_of(*tli).is_some(),
            _ => false,
        })
        .copied()
        .collect();
    segments.sort_by_key(|n| match n {
        WalFileName::History(tli) => (0, 0, tli.0),
        WalFileName::Segment(s) => (1, s.segno(size), s.timeline.0),
        _ => (2, 0, 0),
    });
    let backup_files = segments
        .iter()
        .position(|n| matches!(n, WalFileName::Segment(s) if s.segno(size) > stop))
        .unwrap_or(segments.len());
    let missing = (start..=through)
        .filter(|s| index.get(*s).is_none())
        .collect();
    Ok(Plan {
        mode,
        size,
        path,
        start_segno: start,
        through_segno: through,
        segments,
        missing,
        backup_files,
    })
}

/// The newest segment from `from` down to `down_to` with a recorded commit, and that commit.
async fn newest_commit_down(
    repo: &Repository,
    index: &WalIndex,
    from: u64,
    down_to: u64,
) -> anyhow::Result<Option<(u64, DateTime<Utc>)>> {
    let candidates = index.present_down(from, down_to);
    for batch in candidates.chunks(8) {
        for (segno, header) in headers(repo, batch).await? {
            if let Some(t) = header.as_ref().and_then(window::header_last_commit) {
                return Ok(Some((segno, t)));
            }
        }
    }
    Ok(None)
}

/// The first archived segment in `from..=to` holding a commit after `t`.
async fn first_commit_after(
    repo: &Repository,
    index: &WalIndex,
    from: u64,
    to: u64,
    t: DateTime<Utc>,
) -> anyhow::Result<Option<u64>> {
    let mut candidates = index.present_down(to, from);
    candidates.reverse();
    for batch in candidates.chunks(8) {
        for (segno, header) in headers(repo, batch).await? {
            if header
                .as_ref()
                .and_then(window::header_last_commit)
                .is_some_and(|c| c > t)
            {
                return Ok(Some(segno));
            }
        }
    }
    Ok(None)
}

async fn headers(
    repo: &Repository,
    batch: &[(u64, WalSegmentName)],
) -> anyhow::Result<Vec<(u64, Option<crate::codec::ObjectHeader>)>> {
    let results: Vec<anyhow::Result<(u64, Option<crate::codec::ObjectHeader>)>> =
        futures::stream::iter(batch.iter().map(|(segno, seg)| async move {
            Ok((*segno, repo.wal_header(&WalFileName::Segment(*seg)).await?))
        }))
        .buffered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::verify::stage::staged_restore_command;
    use crate::pg::TimelineId;
    use std::path::Path;

    pub(super) fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    use crate::repo::window::tests::backup;

    /// A repository with segments `segnos` on timeline 1, each with the given last commit.
    async fn repo_with(segments: &[(u64, Option<&str>)]) -> Repository {
        let repo = Repository::in_memory("core");
        for (segno, commit) in segments {
            let name = WalFileName::Segment(WalSegmentName::new(
                TimelineId(1),
                *segno,
                WalSegmentSize::DEFAULT,
            ));
            let mut extra = serde_json::Map::new();
            if let Some(c) = commit {
                extra.insert("last_commit".into(), (*c).into());
            }
            let (gz, header) = crate::codec::compress(&[0u8; 64], 1, extra);
            repo.put_wal(&name, gz.into(), &header).await.unwrap();
        }
        repo
    }

    #[tokio::test]
    async fn the_default_target_is_the_last_commit_of_the_backups_window() {
        let repo = repo_with(&[
            (2, Some("2024-01-01T02:00:30Z")),
            (3, Some("2024-01-01T03:00:00Z")),
            (4, None),
            (5, Some("2024-01-01T05:00:00Z")),
            (6, Some("2024-01-01T06:00:00Z")),
            (7, Some("2024-01-01T07:00:00Z")),
            (8, None),
        ])
        .await;
        let first = backup("20240101T020000Z", 2, 2, "2024-01-01T02:01:00Z");
        let second = backup("20240101T050000Z", 5, 5, "2024-01-01T05:01:00Z");
        let backups = vec![first.clone(), second.clone()];

        // The first backup is responsible up to the second's end (segment 5): the last commit
        // there is in segment 5, and segment 6 has a later one, so recovery stops at the time.
        let p = plan(&repo, &backups, &first, None).await.unwrap();
        assert_eq!(p.mode, Mode::Time(t("2024-01-01T05:00:00Z")));
        assert_eq!((p.start_segno, p.through_segno), (2, 6));
        assert_eq!(p.segments.len(), 5);
        assert!(p.missing.is_empty());
        // Staged in WAL order; the backup's own WAL (segment 2) first.
        assert_eq!(p.segments[0].to_string(), "000000010000000000000002");
        assert_eq!(p.backup_files, 1);
        let cmd = staged_restore_command(Path::new("/s/wal"));
        assert!(
            cmd.contains("[ -f /s/wal/.expected/%f ]") && cmd.ends_with("cp /s/wal/%f %p"),
            "{cmd}"
        );

        // The newest backup: the newest commit in the archive, nothing after it: replay to the
        // end of the segment that holds it.
        let p = plan(&repo, &backups, &second, None).await.unwrap();
        assert_eq!(p.mode, Mode::End(Some(t("2024-01-01T07:00:00Z"))));
        assert_eq!((p.start_segno, p.through_segno), (5, 7));
        assert_eq!(p.recovery_target(), RecoveryTarget::Latest);
        assert!(p.describe().contains("last archived commit"));

        // --to: stage through the first segment with a commit after it.
        let p = plan(&repo, &backups, &first, Some(t("2024-01-01T05:30:00Z")))
            .await
            .unwrap();
        assert_eq!(p.mode, Mode::Time(t("2024-01-01T05:30:00Z")));
        assert_eq!(p.through_segno, 6);
        // … and refused when nothing later is archived, or before the backup's end.
        let err = plan(&repo, &backups, &second, Some(t("2024-01-01T07:00:00Z")))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no commit after"), "{err}");
        let err = plan(&repo, &backups, &second, Some(t("2024-01-01T04:00:00Z")))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("after the target"), "{err}");
    }

    #[tokio::test]
    async fn a_gap_is_planned_around_and_named() {
        let repo = repo_with(&[
            (2, Some("2024-01-01T02:00:30Z")),
            (3, Some("2024-01-01T03:00:00Z")),
            (5, Some("2024-01-01T05:00:00Z")),
        ])
        .await;
        let b = backup("20240101T020000Z", 2, 2, "2024-01-01T02:01:00Z");
        let p = plan(&repo, std::slice::from_ref(&b), &b, None)
            .await
            .unwrap();
        assert_eq!(p.mode, Mode::End(Some(t("2024-01-01T05:00:00Z"))));
        assert_eq!(p.missing, vec![4]);
        assert!(p
            .missing_note()
            .contains("000000010000000000000004 is missing"));

        // No commit since the backup: recovery to its end.
        let idle = repo_with(&[(2, None), (3, None)]).await;
        let p = plan(&idle, std::slice::from_ref(&b), &b, None)
            .await
            .unwrap();
        assert_eq!(p.mode, Mode::End(None));
        assert_eq!(p.through_segno, 2);
    }
}
