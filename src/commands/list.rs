//! `list` (alias `info`): backups and the recoverable window. `--json` is stable (README).

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::Config;
use crate::format::human_bytes;
use crate::pg::history::HistoryEntry;
use crate::pg::{TimelineId, WalFileName, WalSegmentSize};
use crate::repo::chain;
use crate::repo::manifest::BackupManifest;
use crate::repo::reports::{LastVerification, RecoveryMeasured, VerifyReport};
use crate::repo::timelines::{split_brains, SplitBrain, Timelines};
use crate::repo::window;
use crate::repo::{Backups, DamagedBackup, Repository};
use crate::settings::ListSettings;

/// One backup in `list --json` (format documented in the README).
#[derive(Debug, Serialize)]
pub struct BackupSummary {
    pub id: String,
    /// `full` or `incr`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The backup an incremental was taken against (`null` for a full).
    pub parent: Option<String>,
    /// Backups needed to restore it, itself included: 1 for a full (`null` when an ancestor
    /// is missing or damaged: it cannot be restored).
    pub chain_length: Option<usize>,
    pub start_time: String,
    pub stop_time: String,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub original_bytes: u64,
    pub stored_bytes: u64,
    pub duration_seconds: f64,
    pub page_problems: usize,
    pub pg_version: u32,
    /// The newest `verify` report of this backup (`null`: never verified).
    pub last_verification: Option<LastVerification>,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub cluster: String,
    pub backups: Vec<BackupSummary>,
    /// Backups whose manifest cannot be read (id and why): left out of `backups` and of
    /// the window.
    pub damaged_backups: Vec<DamagedBackup>,
    /// The window along the newest timeline (what `restore` uses by default).
    pub window: WindowSummary,
    /// Every timeline in the archive, oldest first, with where it branched off and its own
    /// window.
    pub timelines: Vec<TimelineSummary>,
    /// Timelines that both received WAL after their branch point (empty when none): restore
    /// then needs `--timeline N`.
    pub split_brains: Vec<SplitBrainSummary>,
    /// The recovery time the newest verification that measured one took (`null`: none has).
    pub last_measured_rto: Option<MeasuredRto>,
}

/// The last measured RTO: a verification's restore plus replay time (see `verify`), and the
/// data-loss exposure when it ran.
#[derive(Debug, Serialize)]
pub struct MeasuredRto {
    pub backup_id: String,
    pub verified_at: String,
    #[serde(flatten)]
    pub measured: RecoveryMeasured,
}

impl MeasuredRto {
    /// The newest of `reports` (by finish time) that measured a recovery.
    fn newest(reports: &[VerifyReport]) -> Option<MeasuredRto> {
        let r = reports
            .iter()
            .filter(|r| r.measured.is_some())
            .max_by_key(|r| r.finished_at)?;
        Some(MeasuredRto {
            backup_id: r.backup_id.clone(),
            verified_at: r
                .finished_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            measured: r.measured.clone()?,
        })
    }

    fn describe(&self, objective: Option<std::time::Duration>) -> String {
        let m = &self.measured;
        let objective = match objective {
            Some(o) if m.rto_seconds > o.as_secs_f64() => {
                format!(
                    ", ABOVE the objective of {}",
                    human_seconds(o.as_secs_f64())
                )
            }
            Some(o) => format!(
                ", within the objective of {}",
                human_seconds(o.as_secs_f64())
            ),
            None => String::new(),
        };
        format!(
            "last measured RTO: {} (restore {} + replay {}) by the verification of backup {} at {}{objective}; \
             data-loss exposure then: {}",
            human_seconds(m.rto_seconds),
            human_seconds(m.restore_seconds),
            human_seconds(m.replay_seconds),
            self.backup_id,
            self.verified_at,
            m.rpo_seconds.map_or("unknown".into(), human_seconds)
        )
    }
}

/// `75.5` → `1m 15.5s`.
fn human_seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m {:.0}s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{}h {:.0}m", (s / 3600.0).floor(), (s % 3600.0) / 60.0)
    }
}

#[derive(Debug, Serialize)]
pub struct SplitBrainSummary {
    pub parent: u32,
    pub child: u32,
    pub switch_lsn: String,
    pub parent_newest_segment: String,
    pub child_newest_segment: String,
    pub message: String,
}

impl From<&SplitBrain> for SplitBrainSummary {
    fn from(s: &SplitBrain) -> Self {
        SplitBrainSummary {
            parent: s.parent.0,
            child: s.child.0,
            switch_lsn: s.switchpoint.to_string(),
            parent_newest_segment: s.parent_newest.to_string(),
            child_newest_segment: s.child_newest.to_string(),
            message: s.describe(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TimelineSummary {
    pub timeline: u32,
    /// The timeline it branched from (`null` for the first one).
    pub parent: Option<u32>,
    pub switch_lsn: Option<String>,
    pub reason: Option<String>,
    /// `null` when the timeline's history file is missing from the archive.
    pub window: Option<WindowSummary>,
}

/// The recoverable window: from the earliest backup's end to the last archived commit.
#[derive(Debug, Serialize)]
pub struct WindowSummary {
    pub start_time: Option<String>,
    pub start_lsn: Option<String>,
    pub end_time: Option<String>,
    pub wal_end_lsn: Option<String>,
    /// The first WAL segment missing inside the window (`null`: none): the window ends
    /// before it.
    pub missing_wal: Option<String>,
}

pub fn summarize(m: &BackupManifest) -> BackupSummary {
    BackupSummary {
        id: m.id.to_string(),
        kind: m.kind.as_str().to_string(),
        parent: m.parent.as_ref().map(|p| p.id.to_string()),
        chain_length: None,
        start_time: m
            .start_time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        stop_time: m
            .stop_time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        start_lsn: m.start_lsn.to_string(),
        stop_lsn: m.stop_lsn.to_string(),
        timeline: m.timeline.0,
        original_bytes: m.original_size(),
        stored_bytes: m.stored_size(),
        duration_seconds: m.duration_seconds(),
        page_problems: m.page_problems.len(),
        pg_version: m.pg_version,
        last_verification: None,
    }
}

fn window_summary(win: &window::Window) -> WindowSummary {
    let rfc =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    WindowSummary {
        start_time: win.earliest.as_ref().map(|e| rfc(e.time)),
        start_lsn: win.earliest.as_ref().map(|e| e.lsn.to_string()),
        end_time: win.last_commit.map(rfc),
        wal_end_lsn: win.wal_end.map(|l| l.to_string()),
        missing_wal: win.missing.map(|s| s.to_string()),
    }
}

pub async fn run(config: &Config, repo: &Repository, settings: ListSettings) -> anyhow::Result<()> {
    let json = settings.json;
    let Backups {
        intact: backups,
        damaged,
    } = repo.backups().await?;
    let (latest, timelines, split) = load_windows(repo, &backups).await?;
    let win = latest_of(latest, &timelines, &backups);
    let mut summaries: Vec<BackupSummary> = backups.iter().map(summarize).collect();
    let mut reports = Vec::new();
    for (s, b) in summaries.iter_mut().zip(&backups) {
        s.chain_length = chain::chain_len(&b.id, &backups);
        let report = repo.latest_report(&b.id).await?;
        s.last_verification = report.as_ref().map(Into::into);
        reports.extend(report);
    }
    let listing = Listing {
        cluster: repo.cluster().to_string(),
        backups: summaries,
        damaged_backups: damaged,
        window: window_summary(&win),
        timelines: timelines
            .iter()
            .map(|(tli, branch, w)| TimelineSummary {
                timeline: tli.0,
                parent: branch.as_ref().map(|b| b.parent.0),
                switch_lsn: branch.as_ref().map(|b| b.switchpoint.to_string()),
                reason: branch.as_ref().map(|b| b.reason.clone()),
                window: w.as_ref().map(window_summary),
            })
            .collect(),
        split_brains: split.iter().map(SplitBrainSummary::from).collect(),
        last_measured_rto: MeasuredRto::newest(&reports),
    };
    let mut out = String::new();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&listing).expect("listing serializes")
        )?;
        return super::print_stdout(&out);
    }
    writeln!(
        out,
        "cluster {}: {} backup(s)",
        listing.cluster,
        listing.backups.len()
    )?;
    let zone = config.timezone();
    if timelines.len() > 1 {
        writeln!(
            out,
            "timelines (restore follows timeline {} unless told --timeline N):",
            latest.0
        )?;
        for (tli, branch, w) in &timelines {
            let from = match branch {
                Some(b) => format!(
                    "branched from {} at LSN {} ({})",
                    b.parent.0, b.switchpoint, b.reason
                ),
                None => "the first timeline".into(),
            };
            let w = match w {
                Some(w) => w.describe(zone),
                None => format!("its history file {tli}.history is missing from the archive"),
            };
            writeln!(out, "  {:>3}  {from}\n       {w}", tli.0)?;
        }
    } else {
        writeln!(out, "{}", win.describe(zone))?;
    }
    for d in &listing.damaged_backups {
        println!("{:<17} DAMAGED (skipped): {}", d.id.as_str(), d.error);
    }
    for s in &split {
        println!("WARNING {}", s.describe());
    }
    if let Some(rto) = &listing.last_measured_rto {
        let objective = config
            .cluster(Some(&listing.cluster))
            .ok()
            .and_then(|c| c.rto_objective(&config.agent));
        writeln!(out, "{}", rto.describe(objective))?;
    }
    if listing.backups.is_empty() {
        return super::print_stdout(&out);
    }
    writeln!(
        out,
        "{:<17} {:<4} {:>5} {:<17} {:<20} {:<20} {:>12} {:>12} {:>3} {:>10} {:>10} {:>7} {:>6}  VERIFIED",
        "ID",
        "TYPE",
        "CHAIN",
        "PARENT",
        "START (UTC)",
        "STOP (UTC)",
        "START LSN",
        "STOP LSN",
        "TL",
        "SIZE",
        "STORED",
        "SECS",
        "BADPG",
    )?;
    for (b, s) in backups.iter().zip(&listing.backups) {
        let verified = match &s.last_verification {
            Some(v) => format!("{} {}", if v.ok { "ok" } else { "FAILED" }, v.time),
            None => "never".into(),
        };
        writeln!(
            out,
            "{:<17} {:<4} {:>5} {:<17} {:<20} {:<20} {:>12} {:>12} {:>3} {:>10} {:>10} {:>7.1} {:>6}  {}",
            b.id.as_str(),
            s.kind,
            s.chain_length.map_or("BROKEN".into(), |n| n.to_string()),
            s.parent.as_deref().unwrap_or("-"),
            b.start_time.format("%Y-%m-%d %H:%M:%S"),
            b.stop_time.format("%Y-%m-%d %H:%M:%S"),
            b.start_lsn.to_string(),
            b.stop_lsn.to_string(),
            b.timeline.0,
            human_bytes(b.original_size()),
            human_bytes(b.stored_size()),
            b.duration_seconds(),
            b.page_problems.len(),
            verified
        )?;
    }
    super::print_stdout(&out)
}

/// The window along the newest timeline (what `restore` uses by default), as `list` shows
/// it; `check` judges it.
pub async fn latest_window(
    repo: &Repository,
    backups: &[BackupManifest],
) -> anyhow::Result<window::Window> {
    let (latest, timelines, _) = load_windows(repo, backups).await?;
    Ok(latest_of(latest, &timelines, backups))
}

fn latest_of(
    latest: TimelineId,
    timelines: &[TimelineWindow],
    backups: &[BackupManifest],
) -> window::Window {
    timelines
        .iter()
        .find(|(t, _, _)| *t == latest)
        .and_then(|(_, _, w)| w.clone())
        .unwrap_or_else(|| window::Window::new(backups, None, None))
}

/// One timeline: where it branched off (none for the first), and its window (none when its
/// history file is missing).
type TimelineWindow = (TimelineId, Option<HistoryEntry>, Option<window::Window>);

/// The window along every timeline's path, the newest timeline (restore's default), and the
/// split brains.
async fn load_windows(
    repo: &Repository,
    backups: &[BackupManifest],
) -> anyhow::Result<(TimelineId, Vec<TimelineWindow>, Vec<SplitBrain>)> {
    let listing = repo.list_wal().await?;
    let wal: Vec<WalFileName> = listing.iter().map(|(n, _)| *n).collect();
    let size = match (backups.first(), repo.info().await?) {
        (Some(b), _) => WalSegmentSize::new(b.wal_segment_size),
        (None, Some(info)) => WalSegmentSize::new(info.wal_segment_size),
        (None, None) => None,
    }
    .unwrap_or(WalSegmentSize::DEFAULT);
    let timelines = Timelines::load(repo, &wal).await?;
    let mut out = Vec::new();
    for tli in timelines.all() {
        let branch = timelines.history(tli).map(|h| h.branch_point().clone());
        let win = match timelines.path(tli) {
            Ok(path) => {
                let index = window::WalIndex::new(&wal, size, &path);
                Some(window::load_window(repo, backups, &index).await?)
            }
            Err(_) => None,
        };
        out.push((tli, branch, win));
    }
    if out.is_empty() {
        out.push((
            TimelineId(1),
            None,
            Some(window::Window::new(backups, None, None)),
        ));
    }
    let split = split_brains(&timelines, &listing, size);
    Ok((timelines.latest(), out, split))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Sha256;
    use crate::repo::manifest::tests::sample;
    use crate::repo::manifest::{BackupKind, ParentRef};

    #[tokio::test]
    async fn list_json_has_type_parent_chain_length_and_the_last_measured_rto() {
        let full = sample();
        let mut incr = sample();
        incr.id = "20240102T020000Z".parse().unwrap();
        incr.kind = BackupKind::Incr;
        incr.parent = Some(ParentRef {
            id: full.id.clone(),
            manifest_sha256: Sha256::of(b"parent"),
        });
        let mut orphan = incr.clone();
        orphan.id = "20240103T020000Z".parse().unwrap();
        orphan.parent = Some(ParentRef {
            id: "20231231T020000Z".parse().unwrap(),
            manifest_sha256: Sha256::of(b"gone"),
        });
        let all = [full, incr, orphan];
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|m| {
                let mut s = summarize(m);
                s.chain_length = chain::chain_len(&m.id, &all);
                serde_json::to_value(s).unwrap()
            })
            .collect();
        assert_eq!(rows[0]["type"], "full");
        assert_eq!(rows[0]["parent"], serde_json::Value::Null);
        assert_eq!(rows[0]["chain_length"], 1);
        assert_eq!(rows[1]["type"], "incr");
        assert_eq!(rows[1]["parent"], "20240101T020000Z");
        assert_eq!(rows[1]["chain_length"], 2);
        assert_eq!(
            rows[2]["chain_length"],
            serde_json::Value::Null,
            "broken chain"
        );

        let measured = |rto: f64| RecoveryMeasured {
            restore_seconds: rto - 10.0,
            replay_seconds: 10.0,
            rto_seconds: rto,
            last_archived_commit: None,
            rpo_seconds: Some(42.0),
        };
        let report = |backup: &str, finished: &str, m: Option<RecoveryMeasured>| {
            let mut r: VerifyReport = serde_json::from_value(serde_json::json!({
                "format_version": 1, "cluster": "core", "backup_id": backup, "time": "",
                "started_at": finished, "finished_at": finished, "duration_seconds": 1.0,
                "ok": true, "error": null, "runtime": "namespace",
                "target": { "kind": "end", "time": null, "description": "", "wal_from": "",
                            "wal_through": "", "segments_staged": 0, "missing": [] },
                "recovered_to": null, "checks": []
            }))
            .unwrap();
            r.measured = m;
            r
        };
        let reports = [
            report(
                "20240101T020000Z",
                "2024-01-05T00:00:00Z",
                Some(measured(100.0)),
            ),
            report(
                "20240102T020000Z",
                "2024-01-06T00:00:00Z",
                Some(measured(75.5)),
            ),
            report("20240103T020000Z", "2024-01-07T00:00:00Z", None),
        ];
        let rto = MeasuredRto::newest(&reports).unwrap();
        let json = serde_json::to_value(&rto).unwrap();
        assert_eq!(json["backup_id"], "20240102T020000Z");
        assert_eq!(json["rto_seconds"], 75.5);
        assert_eq!(json["rpo_seconds"], 42.0);
        assert_eq!(json["verified_at"], "2024-01-06T00:00:00Z");
        let line = rto.describe(Some(std::time::Duration::from_secs(60)));
        assert!(line.contains("last measured RTO: 1m 16s"), "{line}");
        assert!(line.contains("ABOVE the objective of 1m 0s"), "{line}");
        assert!(MeasuredRto::newest(&reports[2..]).is_none());
    }
}
