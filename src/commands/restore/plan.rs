//! The plan `restore` prints before it writes anything (issue 16), and all that `--dry-run`
//! prints: the backup and its chain, the bytes to download, the WAL to replay (from the
//! backup's start to the target's segment), and a predicted duration from the speeds the
//! newest verification of this repository measured (`VerifyReport::speeds`), or from
//! documented defaults when no report has them.

use std::time::Duration;

use crate::format::{human_bytes, human_duration};
use crate::pg::{WalSegmentName, WalSegmentSize};
use crate::repo::manifest::{BackupKind, BackupManifest};
use crate::repo::reports::MeasuredSpeeds;
use crate::repo::window::{self, RecoveryTarget, WalIndex};
use crate::repo::Repository;

/// Without a measured speed: download and extract of the stored bytes (MiB/s) …
pub const DEFAULT_DOWNLOAD_MIB_PER_SECOND: f64 = 50.0;
/// … and WAL replay, segments per second (each fetched by the restore_command).
pub const DEFAULT_REPLAY_SEGMENTS_PER_SECOND: f64 = 2.0;

/// How many of the newest backups are searched for a report with speeds.
const REPORTS_LOOK_BACK: usize = 10;

/// What a restore will do and how long it should take.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// The chosen backup and, for an incremental, its parents: newest first.
    pub chain: Vec<Link>,
    /// Stored bytes of the whole chain.
    pub download_bytes: u64,
    /// Bytes the chosen backup restores.
    pub restored_bytes: u64,
    pub wal: WalRange,
    pub speeds: Speeds,
}

/// One backup of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Link {
    pub id: String,
    pub kind: BackupKind,
    pub stored: u64,
}

/// The WAL recovery replays: segment numbers `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WalRange {
    pub first: u64,
    pub last: u64,
    pub first_name: WalSegmentName,
    pub last_name: WalSegmentName,
    pub size: WalSegmentSize,
    /// How `last` was found.
    pub end: RangeEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RangeEnd {
    /// The segment of the target LSN (or the backup's end, if later).
    Lsn,
    /// The newest archived segment (`--latest`, or a time after every archived commit).
    Archive,
    /// The first segment holding a commit after the target time (recovery stops there).
    CommitAfter,
}

impl WalRange {
    pub fn segments(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn bytes(&self) -> u64 {
        self.segments() * u64::from(self.size.bytes())
    }
}

/// The speeds a prediction uses, and where they come from.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Speeds {
    pub download_bytes_per_second: f64,
    pub replay_segments_per_second: f64,
    /// `verification of backup … at …`, or `None` for the defaults.
    pub measured_by: Option<String>,
}

impl Speeds {
    pub fn defaults() -> Speeds {
        Speeds {
            download_bytes_per_second: DEFAULT_DOWNLOAD_MIB_PER_SECOND * 1048576.0,
            replay_segments_per_second: DEFAULT_REPLAY_SEGMENTS_PER_SECOND,
            measured_by: None,
        }
    }

    fn measured(s: &MeasuredSpeeds, by: String) -> Speeds {
        let positive = |v: f64, default: f64| if v > 0.0 && v.is_finite() { v } else { default };
        let d = Speeds::defaults();
        Speeds {
            download_bytes_per_second: positive(
                s.download_bytes_per_second,
                d.download_bytes_per_second,
            ),
            replay_segments_per_second: positive(
                s.replay_segments_per_second,
                d.replay_segments_per_second,
            ),
            measured_by: Some(by),
        }
    }
}

impl Plan {
    /// Predicted download and extraction.
    pub fn download_time(&self) -> Duration {
        Duration::from_secs_f64(self.download_bytes as f64 / self.speeds.download_bytes_per_second)
    }

    /// Predicted WAL replay (with the server's start and promotion).
    pub fn replay_time(&self) -> Duration {
        Duration::from_secs_f64(self.wal.segments() as f64 / self.speeds.replay_segments_per_second)
    }

    pub fn total_time(&self) -> Duration {
        self.download_time() + self.replay_time()
    }

    /// The plan as `restore` prints it, one line per item.
    pub fn render(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let link = |l: &Link| {
            format!(
                "{} ({}, {} stored)",
                l.id,
                kind(l.kind),
                human_bytes(l.stored)
            )
        };
        if self.chain.len() > 1 {
            let links: Vec<String> = self.chain.iter().map(link).collect();
            lines.push(format!(
                "plan: chain of {} backups, newest first: {}",
                self.chain.len(),
                links.join(" <- ")
            ));
        } else if let Some(l) = self.chain.first() {
            lines.push(format!("plan: backup {}", link(l)));
        }
        lines.push(format!(
            "plan: download {} (stored), restoring {}",
            human_bytes(self.download_bytes),
            human_bytes(self.restored_bytes)
        ));
        let w = &self.wal;
        let through = match w.end {
            RangeEnd::Lsn => "the target's segment",
            RangeEnd::Archive => "the newest archived segment",
            RangeEnd::CommitAfter => "the first archived commit after the target",
        };
        lines.push(format!(
            "plan: replay {} WAL segments ({}), {} through {} ({through})",
            w.segments(),
            human_bytes(w.bytes()),
            w.first_name,
            w.last_name
        ));
        let s = &self.speeds;
        let source = match &s.measured_by {
            Some(by) => format!("speeds measured by the {by}"),
            None => format!(
                "default speeds ({DEFAULT_DOWNLOAD_MIB_PER_SECOND} MiB/s, {DEFAULT_REPLAY_SEGMENTS_PER_SECOND} \
                 segments/s): no verification report of this repository has measured speeds; run \
                 `synapse-backup verify` to measure them"
            ),
        };
        lines.push(format!(
            "plan: predicted duration {}: download and extract {} at {}/s, replay {} at {:.1} segments/s ({source})",
            human_duration(self.total_time()),
            human_duration(self.download_time()),
            human_bytes(s.download_bytes_per_second as u64),
            human_duration(self.replay_time()),
            s.replay_segments_per_second
        ));
        lines
    }
}

fn kind(k: BackupKind) -> &'static str {
    match k {
        BackupKind::Full => "full",
        BackupKind::Incr => "incremental",
    }
}

/// The plan for restoring `backup` (one of `backups`) to `target` along `index`.
pub(super) async fn make(
    repo: &Repository,
    backup: &BackupManifest,
    backups: &[BackupManifest],
    index: &WalIndex,
    target: &RecoveryTarget,
) -> anyhow::Result<Plan> {
    // The chain as the restore will read it: a broken one is refused here, so by --dry-run too.
    let levels = crate::restore::chain::resolve(repo, backup).await?;
    let download_bytes = crate::restore::chain::download_bytes(&levels)?;
    let chain: Vec<Link> = levels
        .iter()
        .map(|b| Link {
            id: b.id.to_string(),
            kind: b.kind,
            stored: b.stored_size(),
        })
        .collect();
    Ok(Plan {
        download_bytes,
        chain,
        restored_bytes: backup.original_size(),
        wal: wal_range(repo, index, backup, target).await?,
        speeds: latest_speeds(repo, backups).await,
    })
}

/// The segments recovery replays: from the backup's start through the target's segment.
async fn wal_range(
    repo: &Repository,
    index: &WalIndex,
    backup: &BackupManifest,
    target: &RecoveryTarget,
) -> anyhow::Result<WalRange> {
    let size = index.size();
    let first = backup.start_lsn.segno(size);
    let stop = backup.stop_lsn.end_segno(size).max(first);
    let newest = index.newest().unwrap_or(stop).max(stop);
    let (last, end) = match *target {
        RecoveryTarget::Lsn(l) => (l.segno(size).max(stop), RangeEnd::Lsn),
        RecoveryTarget::Time(t) => match first_commit_after(repo, index, stop, newest, t).await? {
            Some(seg) => (seg, RangeEnd::CommitAfter),
            None => (newest, RangeEnd::Archive),
        },
        RecoveryTarget::Latest => (newest, RangeEnd::Archive),
    };
    let name = |segno| index.get(segno).unwrap_or_else(|| index.expected(segno));
    Ok(WalRange {
        first,
        last,
        first_name: name(first),
        last_name: name(last),
        size,
        end,
    })
}

/// The first segment in `from..=newest` by which a commit after `t` is archived (recovery
/// to `t` stops at that commit), by bisection over the commit times in the segments' headers.
async fn first_commit_after(
    repo: &Repository,
    index: &WalIndex,
    from: u64,
    newest: u64,
    t: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Option<u64>> {
    let after = |seg: u64| async move {
        let last = window::last_commit_down(repo, index, seg, from).await?;
        Ok::<_, anyhow::Error>(last.is_some_and(|c| c > t))
    };
    if !after(newest).await? {
        return Ok(None);
    }
    let (mut lo, mut hi) = (from, newest);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if after(mid).await? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Some(lo))
}

/// The speeds of the newest verification report that measured them, among the newest
/// backups' reports; the defaults without one. Best effort: an unreadable report is skipped.
async fn latest_speeds(repo: &Repository, backups: &[BackupManifest]) -> Speeds {
    let mut ids: Vec<_> = backups.iter().map(|b| &b.id).collect();
    ids.sort();
    let mut newest: Option<(String, String, MeasuredSpeeds)> = None;
    for id in ids.into_iter().rev().take(REPORTS_LOOK_BACK) {
        let Ok(Some(report)) = repo.latest_report(id).await else {
            continue;
        };
        if let Some(s) = report.speeds {
            if newest
                .as_ref()
                .is_none_or(|(time, _, _)| report.time > *time)
            {
                newest = Some((report.time, id.to_string(), s));
            }
        }
    }
    match newest {
        Some((time, id, s)) => {
            Speeds::measured(&s, format!("verification of backup {id} at {time}"))
        }
        None => Speeds::defaults(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(segments: u64, speeds: Speeds) -> Plan {
        let size = WalSegmentSize::new(16 << 20).unwrap();
        let name = |s: &str| s.parse::<WalSegmentName>().unwrap();
        Plan {
            chain: vec![
                Link {
                    id: "20240102T000000Z".into(),
                    kind: BackupKind::Incr,
                    stored: 10 << 20,
                },
                Link {
                    id: "20240101T000000Z".into(),
                    kind: BackupKind::Full,
                    stored: 90 << 20,
                },
            ],
            download_bytes: 100 << 20,
            restored_bytes: 300 << 20,
            wal: WalRange {
                first: 2,
                last: 1 + segments,
                first_name: name("000000010000000000000002"),
                last_name: name("000000010000000000000033"),
                size,
                end: RangeEnd::CommitAfter,
            },
            speeds,
        }
    }

    #[test]
    fn prediction_adds_download_and_replay() {
        let p = plan(
            50,
            Speeds {
                download_bytes_per_second: 10.0 * 1048576.0,
                replay_segments_per_second: 5.0,
                measured_by: Some(
                    "verification of backup 20240102T000000Z at 20240102T010000Z".into(),
                ),
            },
        );
        assert_eq!(p.wal.segments(), 50);
        assert_eq!(p.wal.bytes(), 50 * (16 << 20));
        assert_eq!(p.download_time(), Duration::from_secs(10));
        assert_eq!(p.replay_time(), Duration::from_secs(10));
        let text = p.render().join("\n");
        assert!(text.contains("chain of 2 backups, newest first: 20240102T000000Z (incremental, 10.0 MiB stored) <- 20240101T000000Z (full, 90.0 MiB stored)"), "{text}");
        assert!(text.contains("replay 50 WAL segments (800.0 MiB), 000000010000000000000002 through 000000010000000000000033 (the first archived commit after the target)"), "{text}");
        assert!(text.contains("predicted duration 20s: download and extract 10s at 10.0 MiB/s, replay 10s at 5.0 segments/s (speeds measured by the verification of backup 20240102T000000Z"), "{text}");
    }

    #[test]
    fn without_measured_speeds_the_defaults_say_so() {
        let p = plan(10, Speeds::defaults());
        assert_eq!(p.replay_time(), Duration::from_secs(5));
        assert_eq!(p.download_time(), Duration::from_secs(2));
        let text = p.render().join("\n");
        assert!(
            text.contains("default speeds (50 MiB/s, 2 segments/s): no verification report"),
            "{text}"
        );
        // A zero or absurd measurement falls back to the default for that speed.
        let s = Speeds::measured(
            &MeasuredSpeeds {
                download_bytes_per_second: 0.0,
                replay_segments_per_second: f64::INFINITY,
                replay_bytes_per_second: 0.0,
            },
            "x".into(),
        );
        assert_eq!(
            s.replay_segments_per_second,
            DEFAULT_REPLAY_SEGMENTS_PER_SECOND
        );
        assert_eq!(s.download_bytes_per_second, 50.0 * 1048576.0);
    }

    #[tokio::test]
    async fn speeds_come_from_the_newest_report_that_has_them() {
        use crate::repo::reports::{TargetReport, VerifyReport};
        use crate::repo::window::tests::backup;
        let repo = Repository::in_memory("core");
        let backups = vec![
            backup("20240101T000000Z", 1, 2, "2024-01-01T00:10:00Z"),
            backup("20240102T000000Z", 5, 6, "2024-01-02T00:10:00Z"),
        ];
        assert_eq!(latest_speeds(&repo, &backups).await, Speeds::defaults());
        let report = |id: &str, at: &str, speeds| VerifyReport {
            format_version: 1,
            cluster: "core".into(),
            backup_id: id.into(),
            time: String::new(),
            started_at: at.parse().unwrap(),
            finished_at: at.parse().unwrap(),
            duration_seconds: 1.0,
            ok: true,
            error: None,
            runtime: "namespace".into(),
            target: TargetReport {
                kind: "end".into(),
                time: None,
                description: String::new(),
                wal_from: String::new(),
                wal_through: String::new(),
                segments_staged: 0,
                missing: vec![],
            },
            recovered_to: None,
            checks: vec![],
            measured: None,
            speeds,
        };
        let measured = |sps| MeasuredSpeeds {
            download_bytes_per_second: 1e6,
            replay_segments_per_second: sps,
            replay_bytes_per_second: 1e6,
        };
        for mut r in [
            report(
                "20240101T000000Z",
                "2024-01-03T00:00:00Z",
                Some(measured(3.0)),
            ),
            // Newer, but written before speeds were measured: skipped.
            report("20240102T000000Z", "2024-01-04T00:00:00Z", None),
        ] {
            repo.put_report(&mut r).await.unwrap();
        }
        let s = latest_speeds(&repo, &backups).await;
        assert_eq!(s.replay_segments_per_second, 3.0);
        assert_eq!(
            s.measured_by.as_deref(),
            Some("verification of backup 20240101T000000Z at 20240103T000000Z")
        );
    }
}
