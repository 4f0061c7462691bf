//! The recoverable window, the backup that serves a target, and whether the archived WAL
//! gets a restore of that backup to the target.
//!
//! Everything here is decided from the backup manifests, the archive's *listing* and its
//! timeline history files, plus the commit times that `wal-push` records in each segment's
//! gzip header (read with a 1 KiB range request), so a hopeless restore is refused before a
//! byte of backup data moves.
//!
//! Every decision is made along one timeline path (see [`TimelinePath`]): the backups on it,
//! the segments recovery reads on it, the last commit on it. Segments of other branches (an
//! old primary that kept writing after a failover) never count.
//!
//! The decisions are plain functions over lists; the async wrappers at the bottom only read
//! headers.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::manifest::{BackupId, BackupManifest};
use super::Repository;
use crate::pg::history::TimelinePath;
use crate::pg::{Lsn, WalFileName, WalSegmentName, WalSegmentSize};
use crate::timeparse::{format_in_zone, format_utc};

pub use crate::pg::recovery_conf::RecoveryTarget;

/// The end of a backup: the earliest point a restore of it can stop at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupEnd {
    pub id: BackupId,
    pub time: DateTime<Utc>,
    pub lsn: Lsn,
}

/// What the repository can restore to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The end of the earliest backup; `None` when there are no backups.
    pub earliest: Option<BackupEnd>,
    /// The last commit (or abort) time recorded in the archive.
    pub last_commit: Option<DateTime<Utc>>,
    /// The end of the archived WAL a restore can replay: the newest segment of the longest
    /// unbroken run from a backup's start (not beyond a gap).
    pub wal_end: Option<Lsn>,
    /// The first segment missing from the archive after the earliest backup's start while
    /// newer WAL is archived (or `wal-push` recorded archiving newer WAL): the window ends
    /// before it.
    pub missing: Option<WalSegmentName>,
}

impl Window {
    /// `earliest`: from the backups (the caller passes those on the path it describes).
    pub fn new<'a>(
        backups: impl IntoIterator<Item = &'a BackupManifest>,
        last_commit: Option<DateTime<Utc>>,
        wal_end: Option<Lsn>,
    ) -> Self {
        let earliest = backups
            .into_iter()
            .min_by_key(|b| (b.stop_time, b.stop_lsn))
            .map(|b| BackupEnd {
                id: b.id.clone(),
                time: b.stop_time,
                lsn: b.stop_lsn,
            });
        Window {
            earliest,
            last_commit,
            wal_end,
            missing: None,
        }
    }

    /// The note on a gap, for `describe`, `check` and errors.
    pub fn gap_note(&self) -> Option<String> {
        self.missing.map(|seg| {
            format!(
                "WAL segment {seg} is missing from the archive: nothing from it on can be recovered \
                 (newer WAL was archived); restore the segment from another copy, or take a new backup"
            )
        })
    }

    /// One line for errors and `list`: both ends, in UTC and (if different) in `zone`.
    pub fn describe(&self, zone: Tz) -> String {
        let at = |t: DateTime<Utc>| {
            if zone == chrono_tz::UTC {
                format_utc(t)
            } else {
                format!("{} ({})", format_utc(t), format_in_zone(t, zone))
            }
        };
        let Some(first) = &self.earliest else {
            return match self.gap_note() {
                Some(gap) => {
                    format!("recoverable window: empty (no backup has all the WAL it needs); {gap}")
                }
                None => "recoverable window: empty (the repository has no backups)".into(),
            };
        };
        let gap = self
            .gap_note()
            .map(|g| format!("; {g}"))
            .unwrap_or_default();
        let end = match (self.last_commit, self.wal_end) {
            (Some(c), Some(w)) => format!(
                "{} (last archived commit; WAL archived up to LSN {w})",
                at(c)
            ),
            (None, Some(w)) => format!("LSN {w} (end of archived WAL; no commit times recorded)"),
            (_, None) => "nothing (no WAL archived)".into(),
        };
        let note = match self.last_commit {
            Some(c) if c <= first.time => {
                "; no commit is archived after the earliest backup's end yet, so only --lsn and --latest can be served"
            }
            _ => "",
        };
        format!(
            "recoverable window: from {} (end of backup {}, LSN {}) to {end}{note}{gap}",
            at(first.time),
            first.id,
            first.lsn
        )
    }

    /// Refuse a target outside the window. The message says which side and what to do.
    pub fn check(&self, target: &RecoveryTarget) -> Result<(), String> {
        let Some(first) = &self.earliest else {
            return Err("the repository has no backups to restore".into());
        };
        match *target {
            RecoveryTarget::Latest => Ok(()),
            RecoveryTarget::Time(t) => {
                if t < first.time {
                    return Err(format!(
                        "the target {} is before the end of the earliest backup ({}, {}): \
                         recovery cannot stop before a backup is consistent",
                        format_utc(t),
                        first.id,
                        format_utc(first.time)
                    ));
                }
                match self.last_commit {
                    Some(last) if t < last => Ok(()),
                    Some(last) => Err(format!(
                        "the target {} is not before the last archived commit ({}): PostgreSQL stops at the first \
                         commit after the target, and there is none, so recovery would fail; use --latest to \
                         replay everything archived",
                        format_utc(t),
                        format_utc(last)
                    )),
                    None => Err(
                        "the archive records no commit times, so no time target can be reached; use --lsn or --latest"
                            .into(),
                    ),
                }
            }
            RecoveryTarget::Lsn(l) => {
                if l < first.lsn {
                    return Err(format!(
                        "the target LSN {l} is before the end of the earliest backup ({}, LSN {})",
                        first.id, first.lsn
                    ));
                }
                match self.wal_end {
                    Some(end) if l < end => Ok(()),
                    Some(end) => Err(format!(
                        "the target LSN {l} is not before the end of the archived WAL (LSN {end})"
                    )),
                    None => Err("no WAL is archived".into()),
                }
            }
        }
    }
}

/// Whether recovery along `path` can start from `backup`: the backup's WAL lies on the path
/// (a backup of an old primary taken after the failover does not). The reason when not.
pub fn on_path(backup: &BackupManifest, path: &TimelinePath) -> Result<(), String> {
    path.reaches(backup.timeline, backup.start_lsn, backup.stop_lsn)
        .map_err(|why| {
            format!(
                "backup {} cannot reach timeline {}: {why}",
                backup.id,
                path.target().0
            )
        })
}

/// The newest backup on `path` that can serve the target (pgBackRest `select.c.inc`): its end
/// is at or before the target. `backups` in any order.
pub fn select_backup<'a>(
    backups: &'a [BackupManifest],
    target: &RecoveryTarget,
    path: &TimelinePath,
) -> Option<&'a BackupManifest> {
    backups
        .iter()
        .filter(|b| on_path(b, path).is_ok())
        .filter(|b| match *target {
            RecoveryTarget::Latest => true,
            RecoveryTarget::Time(t) => b.stop_time <= t,
            RecoveryTarget::Lsn(l) => b.stop_lsn <= l,
        })
        .max_by_key(|b| (b.stop_lsn, b.stop_time))
}

/// Whether a given backup can stop at the target at all (for `--backup ID`).
pub fn backup_serves(backup: &BackupManifest, target: &RecoveryTarget) -> Result<(), String> {
    match *target {
        RecoveryTarget::Latest => Ok(()),
        RecoveryTarget::Time(t) if t < backup.stop_time => Err(format!(
            "backup {} ends at {}, after the target {}",
            backup.id,
            format_utc(backup.stop_time),
            format_utc(t)
        )),
        RecoveryTarget::Lsn(l) if l < backup.stop_lsn => Err(format!(
            "backup {} ends at LSN {}, after the target LSN {l}",
            backup.id, backup.stop_lsn
        )),
        _ => Ok(()),
    }
}

/// The archived segments a restore along one timeline path can use, by segment number.
#[derive(Debug, Clone)]
pub struct WalIndex {
    size: WalSegmentSize,
    path: TimelinePath,
    /// For each segment number, the archived segment the path reads there.
    segments: BTreeMap<u64, WalSegmentName>,
    /// Archived segments that are not on the path (other branches, an old primary that kept
    /// writing after a failover): never used, only counted for messages.
    pub off_path: usize,
}

impl WalIndex {
    /// Index the archived segments that recovery along `path` reads: for each segment number
    /// the one on the timeline that owned it (see [`TimelinePath::segment`]).
    pub fn new<'a>(
        names: impl IntoIterator<Item = &'a WalFileName>,
        size: WalSegmentSize,
        path: &TimelinePath,
    ) -> Self {
        let mut segments: BTreeMap<u64, WalSegmentName> = BTreeMap::new();
        let mut off_path = 0;
        for name in names {
            let WalFileName::Segment(seg) = name else {
                continue;
            };
            if !seg.fits(size) {
                continue;
            }
            if path.uses(seg, size) {
                segments.insert(seg.segno(size), *seg);
            } else {
                off_path += 1;
            }
        }
        WalIndex {
            size,
            path: path.clone(),
            segments,
            off_path,
        }
    }

    pub fn size(&self) -> WalSegmentSize {
        self.size
    }

    pub fn path(&self) -> &TimelinePath {
        &self.path
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn newest(&self) -> Option<u64> {
        self.segments.keys().next_back().copied()
    }

    /// The segment stored for `segno`, if any.
    pub fn get(&self, segno: u64) -> Option<WalSegmentName> {
        self.segments.get(&segno).copied()
    }

    /// The segment name the path needs for `segno` (archived or not).
    pub fn expected(&self, segno: u64) -> WalSegmentName {
        self.path.segment(segno, self.size)
    }

    /// The end of the newest archived segment.
    pub fn end_lsn(&self) -> Option<Lsn> {
        self.newest().map(|s| self.segment_end(s))
    }

    /// The LSN just after segment `segno`.
    pub fn segment_end(&self, segno: u64) -> Lsn {
        Lsn((segno + 1) * u64::from(self.size.bytes()))
    }

    /// The first segment number in `from..=through` that is not archived.
    pub fn first_missing(&self, from: u64, through: u64) -> Option<u64> {
        let mut want = from;
        for &segno in self.segments.range(from..=through).map(|(k, _)| k) {
            if segno != want {
                return Some(want);
            }
            want += 1;
        }
        (want <= through).then_some(want)
    }

    /// Segment numbers from `from` down to `down_to`, newest first, that are archived.
    pub fn present_down(&self, from: u64, down_to: u64) -> Vec<(u64, WalSegmentName)> {
        if from < down_to {
            return Vec::new();
        }
        self.segments
            .range(down_to..=from)
            .rev()
            .map(|(k, v)| (*k, *v))
            .collect()
    }
}

/// A segment a restore needs that the archive does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingWal {
    pub segment: WalSegmentName,
    pub message: String,
}

/// What is left to decide about the WAL once the listing has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalNeed {
    /// Every segment needed is archived.
    Complete,
    /// A time target with a gap at `gap` after the backup's end: the restore works only if an
    /// archived segment before the gap holds a commit after the target (recovery stops there).
    CommitBeforeGap { gap: u64 },
}

/// Check the listing for the WAL that takes `backup` to `target`: every segment from the
/// backup's start through the backup's end, then through the target (its segment for an LSN,
/// the newest archived segment for `--latest`; for a time the caller resolves
/// [`WalNeed::CommitBeforeGap`] with the commit times).
pub fn check_wal(
    index: &WalIndex,
    backup: &BackupManifest,
    target: &RecoveryTarget,
) -> Result<WalNeed, MissingWal> {
    let size = index.size;
    let start = backup.start_lsn.segno(size);
    let stop = backup.stop_lsn.end_segno(size).max(start);
    let name = |segno: u64| index.expected(segno);
    let missing = |segno: u64, why: String| {
        Err(MissingWal {
            segment: index.get(segno).unwrap_or_else(|| name(segno)),
            message: format!(
                "WAL segment {} is missing from the archive: {why}",
                name(segno)
            ),
        })
    };
    if let Some(gap) = index.first_missing(start, stop) {
        return missing(
            gap,
            format!(
                "backup {} needs every segment from {} through {} to become consistent",
                backup.id,
                name(start),
                name(stop)
            ),
        );
    }
    match *target {
        RecoveryTarget::Lsn(l) => {
            let through = l.segno(size).max(stop);
            match index.first_missing(start, through) {
                Some(gap) => missing(
                    gap,
                    format!(
                        "restoring backup {} to LSN {l} needs every segment from {} through {}",
                        backup.id,
                        name(start),
                        name(through)
                    ),
                ),
                None => Ok(WalNeed::Complete),
            }
        }
        RecoveryTarget::Latest => {
            let newest = index.newest().unwrap_or(stop).max(stop);
            match index.first_missing(start, newest) {
                Some(gap) => missing(
                    gap,
                    format!(
                        "newer WAL (up to {}) is archived, so recovery would silently stop at the gap and lose \
                         everything after it; restore to a target before the gap with --to or --lsn",
                        name(newest)
                    ),
                ),
                None => Ok(WalNeed::Complete),
            }
        }
        RecoveryTarget::Time(_) => {
            let newest = index.newest().unwrap_or(stop).max(stop);
            match index.first_missing(stop, newest) {
                Some(gap) => Ok(WalNeed::CommitBeforeGap { gap }),
                None => Ok(WalNeed::Complete),
            }
        }
    }
}

/// Decide [`WalNeed::CommitBeforeGap`]: `last_commit` is the newest commit time recorded in
/// the archived segments before the gap (from the backup's start).
pub fn judge_gap(
    index: &WalIndex,
    target: DateTime<Utc>,
    gap: u64,
    last_commit: Option<DateTime<Utc>>,
) -> Result<(), MissingWal> {
    if last_commit.is_some_and(|c| c > target) {
        return Ok(());
    }
    let name = index.expected(gap);
    let before = match last_commit {
        Some(c) => format!("the last commit archived before it is at {}", format_utc(c)),
        None => "no commit is archived before it".into(),
    };
    Err(MissingWal {
        segment: name,
        message: format!(
            "WAL segment {name} is missing from the archive: recovery to {} has to replay past it ({before}, \
             not after the target)",
            format_utc(target)
        ),
    })
}

/// The `last_commit` recorded in a WAL object's header.
pub fn header_last_commit(header: &crate::codec::ObjectHeader) -> Option<DateTime<Utc>> {
    super::WalCommits::of(header).last_commit
}

/// Walk back from segment `from` to `down_to` and return the newest recorded commit time:
/// the first archived segment (newest first) whose header has one. Headers are read a few at
/// a time, 1 KiB each.
pub async fn last_commit_down(
    repo: &Repository,
    index: &WalIndex,
    from: u64,
    down_to: u64,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    const BATCH: usize = 8;
    let names: Vec<WalFileName> = index
        .present_down(from, down_to)
        .into_iter()
        .map(|(_, seg)| WalFileName::Segment(seg))
        .collect();
    // Plain futures joined per batch (not a stream with a closure): the agent spawns this,
    // and rustc proves this shape `Send`.
    for batch in names.chunks(BATCH) {
        let reads: Vec<_> = batch.iter().map(|name| repo.wal_header(name)).collect();
        for header in futures::future::join_all(reads).await {
            if let Some(t) = header?.as_ref().and_then(header_last_commit) {
                return Ok(Some(t));
            }
        }
    }
    Ok(None)
}

/// A backup as the window sees it: where its WAL starts, and its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSpan {
    pub start_lsn: Lsn,
    pub end: BackupEnd,
}

impl BackupSpan {
    pub fn of(b: &BackupManifest) -> Self {
        BackupSpan {
            start_lsn: b.start_lsn,
            end: BackupEnd {
                id: b.id.clone(),
                time: b.stop_time,
                lsn: b.stop_lsn,
            },
        }
    }
}

/// How far the archive truly reaches along an index's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The earliest backup whose WAL from its start through its end is all archived.
    pub earliest: Option<BackupEnd>,
    /// The newest segment of the longest unbroken run from such a backup's start (with no
    /// backups: the newest archived segment).
    pub last_segno: Option<u64>,
    /// How far back commit times are searched: the earliest such backup's start segment.
    pub down_to: u64,
    /// See [`Window::missing`].
    pub missing: Option<WalSegmentName>,
}

/// The truly recoverable reach: contiguous WAL from a backup's start. `pushed`: the newest
/// segment `wal-push` recorded archiving; newer than anything archived on the path, it means
/// the newest segments were deleted after they were archived.
pub fn reach(index: &WalIndex, spans: &[BackupSpan], pushed: Option<WalSegmentName>) -> Reach {
    let size = index.size;
    let newest = index.newest();
    let bounds = |s: &BackupSpan| {
        let start = s.start_lsn.segno(size);
        (start, s.end.lsn.end_segno(size).max(start))
    };
    let mut sorted: Vec<&BackupSpan> = spans.iter().collect();
    sorted.sort_by_key(|s| (s.end.time, s.end.lsn));
    let mut out = Reach {
        earliest: None,
        last_segno: if spans.is_empty() { newest } else { None },
        down_to: 0,
        missing: None,
    };
    for span in &sorted {
        let (start, stop) = bounds(span);
        let (Some(newest), None) = (newest, index.first_missing(start, stop)) else {
            continue; // its own WAL is incomplete: it cannot be restored
        };
        let run_end = index
            .first_missing(start, newest)
            .map_or(newest, |gap| gap - 1);
        if out.earliest.is_none() {
            out.earliest = Some(span.end.clone());
            out.down_to = start;
        }
        out.last_segno = out.last_segno.max(Some(run_end));
    }
    let first_start = sorted.iter().map(|s| bounds(s).0).min();
    out.missing = match (first_start, newest) {
        (Some(start), Some(newest)) => index.first_missing(start, newest),
        _ => None,
    }
    .map(|gap| index.expected(gap))
    .or_else(|| {
        let pushed = pushed.filter(|p| p.fits(size) && index.path().uses(p, size))?;
        let after = newest.map_or(0, |n| n + 1);
        (pushed.segno(size) >= after && index.get(pushed.segno(size)).is_none())
            .then(|| index.expected(after))
    });
    out
}

/// The archiver position `wal-push` recorded, when that segment is no longer archived (it
/// is recorded only after the segment is stored, so a segment pushed after the caller's
/// listing is never taken for a deleted one).
pub async fn pushed_but_gone(repo: &Repository) -> anyhow::Result<Option<WalSegmentName>> {
    match repo.pushed_position().await? {
        Some(seg) if !repo.has_wal(&WalFileName::Segment(seg)).await? => Ok(Some(seg)),
        _ => Ok(None),
    }
}

/// The window along the index's timeline path: the backups on it whose WAL is complete, to
/// the newest commit archived before any gap.
pub async fn load_window(
    repo: &Repository,
    backups: &[BackupManifest],
    index: &WalIndex,
) -> anyhow::Result<Window> {
    let spans: Vec<BackupSpan> = backups
        .iter()
        .filter(|b| on_path(b, index.path()).is_ok())
        .map(BackupSpan::of)
        .collect();
    let reach = reach(index, &spans, pushed_but_gone(repo).await?);
    let last_commit = match reach.last_segno {
        Some(last) => last_commit_down(repo, index, last, reach.down_to).await?,
        None => None,
    };
    Ok(Window {
        earliest: reach.earliest,
        last_commit,
        wal_end: reach.last_segno.map(|s| index.segment_end(s)),
        missing: reach.missing,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pg::SystemId;
    use crate::pg::TimelineId;
    use crate::repo::manifest::{BackupKind, MANIFEST_FORMAT};

    const MB16: u64 = 16 << 20;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// A backup from segment `start_seg` to `stop_seg` (LSNs inside them), ending at `stop`.
    pub fn backup(id: &str, start_seg: u64, stop_seg: u64, stop: &str) -> BackupManifest {
        BackupManifest {
            format_version: MANIFEST_FORMAT,
            id: id.parse().unwrap(),
            cluster: "core".into(),
            kind: BackupKind::Full,
            parent: None,
            system_identifier: SystemId(7),
            pg_version: 15,
            pg_version_num: 150018,
            wal_segment_size: 16 << 20,
            timeline: TimelineId(1),
            start_lsn: Lsn(start_seg * MB16 + 0x28),
            stop_lsn: Lsn(stop_seg * MB16 + 0x100),
            start_time: t(stop) - chrono::Duration::minutes(1),
            stop_time: t(stop),
            backup_from: "primary".into(),
            data_checksums: true,
            backup_label: "START WAL LOCATION: 0/2000028\n".into(),
            tablespace_map: None,
            tablespaces: vec![],
            parts: vec![],
            files: vec![],
            directories: vec![],
            page_problems: vec![],
            catalog_snapshot: None,
            block_map: None,
            stored_sha256: None,
        }
    }

    fn names(tli: u32, segnos: &[u64]) -> Vec<WalFileName> {
        segnos
            .iter()
            .map(|&s| {
                WalFileName::Segment(WalSegmentName::new(
                    TimelineId(tli),
                    s,
                    WalSegmentSize::DEFAULT,
                ))
            })
            .collect()
    }

    fn index(list: &[WalFileName]) -> WalIndex {
        WalIndex::new(
            list,
            WalSegmentSize::DEFAULT,
            &TimelinePath::root(TimelineId(1)),
        )
    }

    /// Timeline 2 branched from timeline 1 in segment 4.
    fn path_to_2() -> TimelinePath {
        TimelinePath::from_history(
            &crate::pg::history::TimelineHistory::parse(TimelineId(2), "1\t0/4000100\tx\n")
                .unwrap(),
        )
    }

    #[test]
    fn reach_ends_at_the_first_gap_and_names_it() {
        let a = BackupSpan::of(&backup("20240101T000000Z", 2, 2, "2024-01-01T00:01:00Z"));
        let b = BackupSpan::of(&backup("20240102T000000Z", 8, 8, "2024-01-02T00:01:00Z"));
        let seg = |n: u64| WalSegmentName::new(TimelineId(1), n, WalSegmentSize::DEFAULT);
        // Unbroken: everything archived is reachable from A.
        let r = reach(
            &index(&names(1, &[2, 3, 4, 5])),
            std::slice::from_ref(&a),
            None,
        );
        assert_eq!((r.last_segno, r.missing, r.down_to), (Some(5), None, 2));
        assert_eq!(
            r.earliest.as_ref().map(|e| e.id.as_str()),
            Some("20240101T000000Z")
        );
        // Segment 4 gone with newer WAL archived: the window ends at 3 and names 4.
        let r = reach(
            &index(&names(1, &[2, 3, 5, 6])),
            std::slice::from_ref(&a),
            None,
        );
        assert_eq!((r.last_segno, r.missing), (Some(3), Some(seg(4))));
        // A later backup past the gap reaches further; the gap is still named.
        let r = reach(
            &index(&names(1, &[2, 3, 5, 6, 7, 8, 9])),
            &[a.clone(), b.clone()],
            None,
        );
        assert_eq!((r.last_segno, r.missing), (Some(9), Some(seg(4))));
        // A backup whose own WAL is incomplete does not start the window.
        let r = reach(&index(&names(1, &[3, 8, 9])), &[a.clone(), b], None);
        assert_eq!(
            r.earliest.map(|e| e.id.to_string()).as_deref(),
            Some("20240102T000000Z")
        );
        // The newest segments deleted: only the archiver position shows it.
        let r = reach(
            &index(&names(1, &[2, 3])),
            std::slice::from_ref(&a),
            Some(seg(5)),
        );
        assert_eq!((r.last_segno, r.missing), (Some(3), Some(seg(4))));
        // A position on another timeline's branch says nothing about this path.
        let other = WalSegmentName::new(TimelineId(3), 9, WalSegmentSize::DEFAULT);
        let r = reach(&index(&names(1, &[2, 3])), &[a], Some(other));
        assert_eq!(r.missing, None);
    }

    #[test]
    fn picks_the_newest_backup_ending_before_the_target() {
        let backups = vec![
            backup("20240101T020000Z", 2, 2, "2024-01-01T02:01:00Z"),
            backup("20240102T020000Z", 9, 9, "2024-01-02T02:01:00Z"),
            backup("20240103T020000Z", 20, 21, "2024-01-03T02:01:00Z"),
        ];
        let root = TimelinePath::root(TimelineId(1));
        let pick = |target| select_backup(&backups, &target, &root).map(|b| b.id.to_string());
        assert_eq!(
            pick(RecoveryTarget::Time(t("2024-01-02T12:00:00Z"))).as_deref(),
            Some("20240102T020000Z")
        );
        // Exactly at a backup's end is served by it.
        assert_eq!(
            pick(RecoveryTarget::Time(t("2024-01-02T02:01:00Z"))).as_deref(),
            Some("20240102T020000Z")
        );
        assert_eq!(
            pick(RecoveryTarget::Time(t("2024-01-02T02:00:59Z"))).as_deref(),
            Some("20240101T020000Z")
        );
        assert_eq!(pick(RecoveryTarget::Time(t("2023-12-31T00:00:00Z"))), None);
        assert_eq!(
            pick(RecoveryTarget::Lsn(Lsn(15 * MB16))).as_deref(),
            Some("20240102T020000Z")
        );
        assert_eq!(pick(RecoveryTarget::Lsn(Lsn(MB16))), None);
        assert_eq!(
            pick(RecoveryTarget::Latest).as_deref(),
            Some("20240103T020000Z")
        );
        assert_eq!(select_backup(&[], &RecoveryTarget::Latest, &root), None);

        let b = &backups[1];
        assert!(backup_serves(b, &RecoveryTarget::Time(t("2024-01-02T03:00:00Z"))).is_ok());
        let err = backup_serves(b, &RecoveryTarget::Time(t("2024-01-01T03:00:00Z"))).unwrap_err();
        assert!(
            err.contains("20240102T020000Z") && err.contains("after the target"),
            "{err}"
        );
        assert!(backup_serves(b, &RecoveryTarget::Lsn(Lsn(MB16))).is_err());
        assert!(backup_serves(b, &RecoveryTarget::Latest).is_ok());
    }

    #[test]
    fn window_refuses_targets_outside_it_and_prints_itself() {
        let backups = vec![
            backup("20240102T020000Z", 9, 9, "2024-01-02T02:01:00Z"),
            backup("20240101T020000Z", 2, 2, "2024-01-01T02:01:00Z"),
        ];
        let w = Window::new(
            &backups,
            Some(t("2024-01-03T14:03:12.5Z")),
            Some(Lsn(30 * MB16)),
        );
        assert_eq!(w.earliest.as_ref().unwrap().id.as_str(), "20240101T020000Z");
        let text = w.describe(chrono_tz::UTC);
        assert_eq!(
            text,
            "recoverable window: from 2024-01-01 02:01:00 UTC (end of backup 20240101T020000Z, LSN 0/2000100) \
             to 2024-01-03 14:03:12.500000 UTC (last archived commit; WAL archived up to LSN 0/1E000000)"
        );
        assert!(w
            .describe(chrono_tz::Europe::Berlin)
            .contains("2024-01-01 02:01:00 UTC (2024-01-01 03:01:00 CET)"));

        assert!(w
            .check(&RecoveryTarget::Time(t("2024-01-02T00:00:00Z")))
            .is_ok());
        assert!(w
            .check(&RecoveryTarget::Time(t("2024-01-01T02:01:00Z")))
            .is_ok());
        let before = w
            .check(&RecoveryTarget::Time(t("2024-01-01T02:00:00Z")))
            .unwrap_err();
        assert!(
            before.contains("before the end of the earliest backup"),
            "{before}"
        );
        let after = w
            .check(&RecoveryTarget::Time(t("2024-01-03T14:03:12.5Z")))
            .unwrap_err();
        assert!(
            after.contains("last archived commit") && after.contains("--latest"),
            "{after}"
        );
        assert!(w
            .check(&RecoveryTarget::Time(t("2025-01-01T00:00:00Z")))
            .is_err());

        assert!(w.check(&RecoveryTarget::Lsn(Lsn(2 * MB16 + 0x100))).is_ok());
        assert!(w.check(&RecoveryTarget::Lsn(Lsn(2 * MB16))).is_err());
        assert!(w.check(&RecoveryTarget::Lsn(Lsn(30 * MB16 - 1))).is_ok());
        assert!(w.check(&RecoveryTarget::Lsn(Lsn(30 * MB16))).is_err());
        assert!(w.check(&RecoveryTarget::Latest).is_ok());

        let no_commits = Window::new(&backups, None, Some(Lsn(30 * MB16)));
        assert!(no_commits
            .check(&RecoveryTarget::Time(t("2024-01-02T00:00:00Z")))
            .unwrap_err()
            .contains("no commit times"));
        let empty = Window::new(&[] as &[BackupManifest], None, None);
        assert!(empty.check(&RecoveryTarget::Latest).is_err());
        assert!(empty.describe(chrono_tz::UTC).contains("no backups"));
    }

    #[test]
    fn index_finds_gaps() {
        let mut list = names(1, &[2, 3, 4, 6, 7]);
        list.push("00000002.history".parse().unwrap());
        list.push("000000010000000000000004.00000028.backup".parse().unwrap());
        let idx = index(&list);
        assert_eq!(idx.first_missing(2, 4), None);
        assert_eq!(idx.first_missing(2, 7), Some(5));
        assert_eq!(idx.first_missing(6, 9), Some(8));
        assert_eq!(idx.first_missing(1, 3), Some(1));
        assert_eq!(idx.newest(), Some(7));
        assert_eq!(idx.end_lsn(), Some(Lsn(8 * MB16)));
        assert_eq!(idx.off_path, 0);
        assert_eq!(
            idx.present_down(7, 3)
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>(),
            vec![7, 6, 4, 3]
        );
    }

    #[test]
    fn index_follows_the_timeline_path_and_ignores_the_old_primary() {
        // Timeline 1 up to segment 4, where timeline 2 branched; the old primary kept writing
        // segments 4..=6 on timeline 1 (split brain).
        let mut list = names(1, &[2, 3, 4, 5, 6]);
        list.extend(names(2, &[4, 5]));
        let size = WalSegmentSize::DEFAULT;
        let on_2 = WalIndex::new(&list, size, &path_to_2());
        assert_eq!(on_2.get(3).unwrap().timeline, TimelineId(1));
        assert_eq!(on_2.get(4).unwrap().timeline, TimelineId(2));
        assert_eq!(on_2.get(5).unwrap().timeline, TimelineId(2));
        assert_eq!(
            on_2.newest(),
            Some(5),
            "timeline 1's segment 6 is not on the path"
        );
        assert_eq!(on_2.off_path, 3);
        assert_eq!(on_2.first_missing(2, 6), Some(6));
        assert_eq!(on_2.expected(6).to_string(), "000000020000000000000006");
        // Along timeline 1 alone, its own segments are read.
        let on_1 = index(&list);
        assert_eq!(on_1.newest(), Some(6));
        assert_eq!(on_1.get(5).unwrap().timeline, TimelineId(1));

        // A backup of the old primary after the branch cannot reach timeline 2.
        let before = backup("20240101T020000Z", 2, 3, "2024-01-01T02:01:00Z");
        let mut after = backup("20240101T030000Z", 5, 5, "2024-01-01T03:01:00Z");
        after.timeline = TimelineId(1);
        assert!(on_path(&before, &path_to_2()).is_ok());
        let why = on_path(&after, &path_to_2()).unwrap_err();
        assert!(
            why.contains("20240101T030000Z") && why.contains("0/4000100"),
            "{why}"
        );
        let backups = vec![before, after];
        let picked = select_backup(&backups, &RecoveryTarget::Latest, &path_to_2()).unwrap();
        assert_eq!(picked.id.as_str(), "20240101T020000Z");
        let w = Window::new(
            backups.iter().filter(|b| on_path(b, &path_to_2()).is_ok()),
            None,
            on_2.end_lsn(),
        );
        assert_eq!(w.earliest.unwrap().id.as_str(), "20240101T020000Z");
    }

    #[test]
    fn wal_check_names_the_missing_segment() {
        let b = backup("20240101T020000Z", 2, 3, "2024-01-01T02:01:00Z");
        let full = index(&names(1, &[2, 3, 4, 5, 6, 7]));
        let gap5 = index(&names(1, &[2, 3, 4, 6, 7]));
        let gap3 = index(&names(1, &[2, 4, 5]));

        assert_eq!(
            check_wal(&full, &b, &RecoveryTarget::Latest),
            Ok(WalNeed::Complete)
        );
        let err = check_wal(&gap5, &b, &RecoveryTarget::Latest).unwrap_err();
        assert_eq!(err.segment.to_string(), "000000010000000000000005");
        assert!(
            err.message.contains("000000010000000000000005")
                && err.message.contains("000000010000000000000007"),
            "{}",
            err.message
        );

        // The backup's own WAL, whatever the target.
        for target in [
            RecoveryTarget::Latest,
            RecoveryTarget::Lsn(Lsn(4 * MB16)),
            RecoveryTarget::Time(t("2024-01-01T03:00:00Z")),
        ] {
            let err = check_wal(&gap3, &b, &target).unwrap_err();
            assert_eq!(
                err.segment.to_string(),
                "000000010000000000000003",
                "{target}"
            );
            assert!(err.message.contains("consistent"), "{}", err.message);
        }

        // LSN targets need the segments through the target's.
        assert_eq!(
            check_wal(&gap5, &b, &RecoveryTarget::Lsn(Lsn(4 * MB16 + 10))),
            Ok(WalNeed::Complete)
        );
        let err = check_wal(&gap5, &b, &RecoveryTarget::Lsn(Lsn(6 * MB16 + 10))).unwrap_err();
        assert_eq!(err.segment.to_string(), "000000010000000000000005");

        // Time targets: a gap after the backup's end is decided by the commit times before it.
        let target = t("2024-01-01T03:00:00Z");
        assert_eq!(
            check_wal(&full, &b, &RecoveryTarget::Time(target)),
            Ok(WalNeed::Complete)
        );
        let need = check_wal(&gap5, &b, &RecoveryTarget::Time(target)).unwrap();
        assert_eq!(need, WalNeed::CommitBeforeGap { gap: 5 });
        assert_eq!(
            judge_gap(&gap5, target, 5, Some(t("2024-01-01T03:00:01Z"))),
            Ok(())
        );
        let err = judge_gap(&gap5, target, 5, Some(target)).unwrap_err();
        assert_eq!(err.segment.to_string(), "000000010000000000000005");
        assert!(
            err.message.contains("not after the target"),
            "{}",
            err.message
        );
        assert!(judge_gap(&gap5, target, 5, None).is_err());
    }

    #[test]
    fn commit_times_come_from_the_header() {
        let mut extra = serde_json::Map::new();
        extra.insert("first_commit".into(), "2024-01-01T10:00:00+00:00".into());
        extra.insert(
            "last_commit".into(),
            "2024-01-01T12:00:00.123456+02:00".into(),
        );
        let (gz, header) = crate::codec::compress(b"x", 1, extra);
        assert_eq!(crate::codec::read_header(&gz, "x").unwrap(), header);
        assert_eq!(
            header_last_commit(&header),
            Some(t("2024-01-01T10:00:00.123456Z"))
        );
        let (_, none) = crate::codec::compress(b"x", 1, Default::default());
        assert_eq!(header_last_commit(&none), None);
    }

    #[tokio::test]
    async fn window_reads_the_newest_commit_from_headers() {
        let repo = Repository::in_memory("core");
        let size = WalSegmentSize::DEFAULT;
        let mut listed = Vec::new();
        for (segno, commit) in [
            (2u64, Some("2024-01-01T02:00:30Z")),
            (3, Some("2024-01-01T05:00:00Z")),
            (4, None),
            (5, None),
        ] {
            let name = WalFileName::Segment(WalSegmentName::new(TimelineId(1), segno, size));
            let mut extra = serde_json::Map::new();
            if let Some(c) = commit {
                extra.insert("last_commit".into(), c.into());
            }
            let (gz, header) = crate::codec::compress(&vec![0u8; 4096], 1, extra);
            repo.put_wal(&name, gz.into(), &header).await.unwrap();
            listed.push(name);
        }
        let idx = index(&listed);
        let backups = vec![backup("20240101T020000Z", 2, 2, "2024-01-01T02:01:00Z")];
        let w = load_window(&repo, &backups, &idx).await.unwrap();
        assert_eq!(w.last_commit, Some(t("2024-01-01T05:00:00Z")));
        assert_eq!(w.wal_end, Some(Lsn(6 * MB16)));
        assert_eq!(
            last_commit_down(&repo, &idx, 2, 0).await.unwrap(),
            Some(t("2024-01-01T02:00:30Z"))
        );
        assert_eq!(last_commit_down(&repo, &idx, 5, 4).await.unwrap(), None);
    }
}
