//! Choosing what to restore: the timeline recovery follows, the backup, and the checks of the
//! target against the recoverable window and the archived WAL, all before a byte of backup data
//! is downloaded.

use std::path::Path;

use anyhow::Context;
use chrono_tz::Tz;

use super::RestoreSettings;
use crate::config::ClusterConfig;
use crate::error::Failure;
use crate::pg::recovery_conf::command_word;
use crate::pg::{TimelineId, WalFileName, WalSegmentSize};
use crate::repo::manifest::BackupManifest;
use crate::repo::timelines::{split_brains, SplitBrain, Timelines};
use crate::repo::window::{self, RecoveryTarget, WalIndex, WalNeed};
use crate::repo::Repository;

/// What the checks chose.
pub(super) struct Chosen {
    pub backup: BackupManifest,
    /// The timeline recovery follows.
    pub timeline: TimelineId,
    /// The WAL segment size of the newest backup.
    pub size: WalSegmentSize,
    pub restore_command: String,
    /// Every intact backup (for the chosen one's chain).
    pub backups: Vec<BackupManifest>,
    /// The archived WAL along the timeline recovery follows.
    pub index: WalIndex,
}

/// List backups and WAL, decide the timeline, check the target against the window and choose
/// the backup (`--backup`, or the one that serves the target), and check that the archived WAL
/// takes it there. Prints the timeline (when it matters) and the window.
pub(super) async fn choose(
    repo: &Repository,
    cluster: &ClusterConfig,
    zone: Tz,
    settings: &RestoreSettings,
    target: &RecoveryTarget,
) -> anyhow::Result<Chosen> {
    let all = repo.backups().await.context("list backups")?;
    if let Some(d) = settings.backup.as_ref().and_then(|id| all.damaged(id)) {
        return Err(d.refuse());
    }
    for d in &all.damaged {
        eprintln!("warning: skipping damaged backup {}: {}", d.id, d.error);
    }
    let backups = all.intact;
    if backups.is_empty() {
        return Err(Failure::NotFound(format!(
            "the repository of cluster {:?} has no backups to restore",
            repo.cluster()
        ))
        .into());
    }
    let size = WalSegmentSize::new(backups[backups.len() - 1].wal_segment_size)
        .context("the newest backup's manifest has an invalid wal_segment_size")?;
    let listing = repo.list_wal().await.context("list archived WAL")?;
    let wal: Vec<WalFileName> = listing.iter().map(|(name, _)| *name).collect();

    // The timeline recovery follows: --timeline, else the newest one (PostgreSQL's 'latest'),
    // decided here and written explicitly, so the server follows the path checked below.
    let timelines = Timelines::load(repo, &wal)
        .await
        .context("read the archive's timeline history files")?;
    let timeline = match settings.timeline {
        Some(t) => t,
        None => {
            refuse_split_brain(&split_brains(&timelines, &listing, size))?;
            timelines.latest()
        }
    };
    let path = timelines
        .path(timeline)
        .map_err(|e| anyhow::Error::from(Failure::NotFound(format!("{e:#}"))))?;
    let index = WalIndex::new(&wal, size, &path);
    if path.spans().len() > 1 || settings.timeline.is_some() {
        eprintln!("timeline: {} (history: {path})", timeline.0);
    }
    if index.off_path > 0 {
        eprintln!(
            "note: {} archived segment(s) lie off timeline {}'s history (another branch, or an old primary \
             that kept writing after a failover); they are never used by this restore",
            index.off_path, timeline.0
        );
    }
    let restore_command = restore_command(cluster, settings.config_path.as_deref(), timeline)?;

    let win = window::load_window(repo, &backups, &index)
        .await
        .context("read the archive's commit times")?;
    let refuse = |why: String| -> anyhow::Error {
        Failure::NotFound(format!(
            "{why}; {} (timeline {})",
            win.describe(zone),
            timeline.0
        ))
        .into()
    };
    win.check(target).map_err(refuse)?;
    let backup = match &settings.backup {
        Some(id) => {
            let b = backups.iter().find(|b| &b.id == id).ok_or_else(|| {
                anyhow::Error::from(Failure::NotFound(format!("there is no backup {id}")))
            })?;
            window::on_path(b, &path).map_err(refuse)?;
            window::backup_serves(b, target).map_err(refuse)?;
            b
        }
        None => window::select_backup(&backups, target, &path).ok_or_else(|| {
            refuse(format!(
                "no backup on timeline {}'s history ends at or before {target}",
                timeline.0
            ))
        })?,
    };
    check_wal_continuity(repo, &index, backup, target).await?;
    eprintln!("{}", win.describe(zone));
    Ok(Chosen {
        backup: backup.clone(),
        timeline,
        size,
        restore_command,
        backups,
        index,
    })
}

/// Check the archive's listing (and, for a time target past a gap, commit times) for the WAL
/// that takes `backup` to `target`.
async fn check_wal_continuity(
    repo: &Repository,
    index: &WalIndex,
    backup: &BackupManifest,
    target: &RecoveryTarget,
) -> anyhow::Result<()> {
    let not_found =
        |m: window::MissingWal| -> anyhow::Error { Failure::NotFound(m.message).into() };
    match window::check_wal(index, backup, target).map_err(not_found)? {
        WalNeed::Complete => Ok(()),
        WalNeed::CommitBeforeGap { gap } => {
            let RecoveryTarget::Time(t) = *target else {
                unreachable!("only time targets leave a gap to judge")
            };
            let start = backup.start_lsn.segno(index.size());
            let last = window::last_commit_down(repo, index, gap.saturating_sub(1), start)
                .await
                .context("read commit times before the gap in the archive")?;
            window::judge_gap(index, t, gap, last).map_err(not_found)
        }
    }
}

/// `restore_command` for this binary, config file and cluster, as PostgreSQL will run it
/// (through the shell, as the server's OS user).
fn restore_command(
    cluster: &ClusterConfig,
    config_path: Option<&Path>,
    timeline: TimelineId,
) -> anyhow::Result<String> {
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("find this program's path for restore_command")?;
    let cfg = crate::config::config_path(config_path);
    let cfg = cfg.canonicalize().with_context(|| {
        format!(
            "resolve the config file {} for restore_command",
            cfg.display()
        )
    })?;
    Ok(format!(
        "{} --config {} --cluster {} wal-fetch --timeline {} %f %p",
        command_word(&exe.to_string_lossy()),
        command_word(&cfg.to_string_lossy()),
        command_word(&cluster.name),
        timeline.0
    ))
}

/// Without `--timeline`, a split brain leaves no right default: refuse, naming both timelines.
fn refuse_split_brain(found: &[SplitBrain]) -> anyhow::Result<()> {
    if found.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = found.iter().map(SplitBrain::describe).collect();
    Err(Failure::NotFound(format!(
        "refusing to guess which timeline to follow: {}",
        lines.join("; ")
    ))
    .into())
}
