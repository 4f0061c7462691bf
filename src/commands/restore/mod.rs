//! `restore`: point-in-time restore of a base backup into a data directory.
//!
//! The order is what makes it safe at 3 a.m.:
//!
//! 1. Resolve the target and print the UTC instant it means, before anything else.
//! 2. Refuse what must not be touched (a live server in the directory, a non-empty directory
//!    without `--force`, a tablespace the operator gave no place, a non-empty tablespace
//!    directory even with `--force`, two timelines receiving WAL without `--timeline`), choose
//!    the backup, and check the target against the recoverable window and the archived WAL,
//!    all before a byte of backup data is downloaded ([`target`], [`placement`], [`space`]).
//!    Print every directory that will be written, then the plan: the backup (and its chain),
//!    the bytes to download, the WAL to replay and the predicted duration ([`plan`]).
//!    `--dry-run` stops here.
//! 3. Mark the directory incomplete (`SYNAPSE_RESTORE_INCOMPLETE`), download the parts in
//!    parallel, check every stored byte and every file against the manifest, and extract.
//!    `global/pg_control` stays under a temporary name until the very end, so PostgreSQL
//!    refuses to start a half-restored directory ([`crate::restore`], shared with `verify`).
//! 4. Write `backup_label`, `tablespace_map`, `recovery.signal`, the recovery settings (with
//!    `archive_mode = 'off'` unless `--as-primary`) and a PostgreSQL `backup_manifest`, sync,
//!    move `pg_control` into place, drop the marker.
//! 5. With `--start`, start the server and wait until recovery has reached the target
//!    ([`start`]). One progress display covers the download and the replay, with an ETA
//!    ([`crate::progress`]).

mod event;
mod placement;
mod plan;
mod space;
mod start;
mod target;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use crate::config::{ClusterConfig, Config};
use crate::format::{human_bytes, human_duration};
use crate::pg::recovery_conf::{
    archiving_on_command, Archiving, RecoverySettings, RecoveryTarget, TargetAction,
};
use crate::pg::{Lsn, TimelineId};
use crate::repo::manifest::BackupId;
use crate::repo::Repository;
use crate::restore::{Destination, TargetDir};
use crate::timeparse::{format_utc, TargetTime};

pub use crate::restore::INCOMPLETE_MARKER;

/// What `restore` was asked to do, parsed (see `crate::settings`).
#[derive(Debug, Clone)]
pub struct RestoreSettings {
    pub target: Target,
    /// Restore this backup instead of the one chosen for the target.
    pub backup: Option<BackupId>,
    /// Follow this timeline instead of the latest.
    pub timeline: Option<TimelineId>,
    /// Data directory to restore into (default: the cluster's pgdata).
    pub pgdata: Option<PathBuf>,
    /// Replace the contents of non-empty directories.
    pub force: bool,
    pub action: TargetAction,
    /// Start the server and wait until recovery reaches the target.
    pub start: bool,
    /// Print the plan and stop before writing anything.
    pub dry_run: bool,
    /// Tablespace OID → the directory it is restored into instead of its original place.
    pub tablespace_map: BTreeMap<u32, PathBuf>,
    /// Where tablespaces without a map go.
    pub unmapped: Unmapped,
    /// The copy replaces the primary: keep its archiving (`--as-primary`).
    pub as_primary: bool,
    /// The config file given with `--config`, for the restore_command.
    pub config_path: Option<PathBuf>,
}

/// Where a tablespace without `--tablespace-map` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmapped {
    /// Nowhere: the restore is refused, naming it.
    Refuse,
    /// `<pgdata>/pg_tblspc/<oid>` (`--tablespaces-in-target`).
    InTarget,
    /// The location the backup names, when absent or empty
    /// (`--tablespaces-at-original-location`).
    Original,
}

/// The recovery target as given, with how a time was read (for the message).
#[derive(Debug, Clone)]
pub enum Target {
    Time(TargetTime),
    Lsn(Lsn),
    Latest,
    /// `--before-xid`: just before this transaction commits.
    BeforeXid(u32),
    /// `--before-event`: just before the record at this LSN (an event's commit record).
    BeforeEvent(Lsn),
    /// `--to-restore-point`.
    RestorePoint(String),
}

impl Target {
    /// The target for the window checks; `None` for the targets of the event index, whose
    /// position [`event::resolve`] looks up.
    pub fn recovery_target(&self) -> Option<RecoveryTarget> {
        match self {
            Target::Time(t) => Some(RecoveryTarget::Time(t.utc)),
            Target::Lsn(l) => Some(RecoveryTarget::Lsn(*l)),
            Target::Latest => Some(RecoveryTarget::Latest),
            Target::BeforeXid(_) | Target::BeforeEvent(_) | Target::RestorePoint(_) => None,
        }
    }
}

impl Target {
    /// How the target is printed before anything happens.
    fn describe(&self) -> String {
        match self {
            Target::Time(t) => t.to_string(),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Latest => "the end of the archived WAL (--latest)".into(),
            Target::BeforeXid(x) => format!("just before transaction {x} commits"),
            Target::BeforeEvent(l) => format!("just before the record at LSN {l}"),
            Target::RestorePoint(n) => format!("the restore point '{n}'"),
        }
    }
}

/// Whether the restored copy archives, and how to turn archiving on.
fn print_archiving(as_primary: bool, pgdata: &std::path::Path) {
    if as_primary {
        eprintln!(
            "--as-primary: archiving is kept as the backup had it: once promoted, this server archives \
             a new timeline into the repository; stop the old primary first"
        );
    } else {
        eprintln!(
            "archiving: off (archive_mode = 'off' in postgresql.auto.conf), so this copy never archives into \
             the repository; when it becomes the primary, turn it on with: {}",
            archiving_on_command(pgdata)
        );
    }
}

fn target_lsn(t: &RecoveryTarget) -> String {
    match t {
        RecoveryTarget::Lsn(l) => l.to_string(),
        other => other.to_string(),
    }
}

pub async fn run(
    config: &Config,
    cluster: &ClusterConfig,
    repo: &Repository,
    settings: &RestoreSettings,
) -> anyhow::Result<()> {
    // 1. The target, printed before anything happens.
    eprintln!("target: {}", settings.target.describe());
    let (target, stop_before) = match event::resolve(repo, &settings.target).await? {
        Some((target, stop)) => {
            eprintln!("target position: LSN {}", target_lsn(&target));
            (target, Some(stop))
        }
        None => (
            settings
                .target
                .recovery_target()
                .expect("not a target of the event index"),
            None,
        ),
    };

    // 2. Everything that can refuse, before any download or write.
    let pgdata = std::path::absolute(settings.pgdata.as_deref().unwrap_or(&cluster.pgdata))
        .context("resolve the data directory")?;
    let dir = TargetDir::inspect(&pgdata, settings.force)?;
    let chosen = target::choose(repo, cluster, config.timezone(), settings, &target).await?;
    let backup = &chosen.backup;
    event::warn_replayed_accidents(repo, backup, &target, config.timezone()).await;
    let places = placement::place_tablespaces(backup, &pgdata, settings)?;
    let mut dest = Destination::new(dir, backup, &places)?;
    space::check_disk_space(
        &dest.layout,
        backup,
        dest.replaces_contents(),
        config.archive.prefetch,
        chosen.size,
    )?;

    eprintln!(
        "backup: {} (ended {}, LSN {}, timeline {}), {} files, {} in {} parts ({} stored)",
        backup.id,
        format_utc(backup.stop_time),
        backup.stop_lsn,
        backup.timeline.0,
        backup.files.len(),
        human_bytes(backup.original_size()),
        backup.parts.len(),
        human_bytes(backup.stored_size()),
    );
    placement::print_plan(&dest.layout, settings, dest.replaces_contents());
    let plan = plan::make(repo, backup, &chosen.backups, &chosen.index, &target).await?;
    for line in plan.render() {
        eprintln!("{line}");
    }
    if settings.dry_run {
        eprintln!(
            "dry run: every check passed and nothing was written; a restore would take about {} ({:.1} seconds)",
            human_duration(plan.total_time()),
            plan.total_time().as_secs_f64()
        );
        return Ok(());
    }
    if settings.start {
        dest.followed_by(plan.replay_time());
    }
    eprintln!("restoring into {}", pgdata.display());

    // 3. and 4. Mark, clear, extract; recovery configuration, manifest, and the switch from
    // "incomplete" to "ready".
    let recovery = RecoverySettings {
        restore_command: chosen.restore_command.clone(),
        target,
        action: settings.action,
        timeline: Some(chosen.timeline),
        stop_before,
        archiving: if settings.as_primary {
            Archiving::AsConfigured
        } else {
            Archiving::Off
        },
    };
    let started = Instant::now();
    let files = dest.restore(repo, backup, &recovery, true).await?;
    let elapsed = started.elapsed();
    let bytes = backup.original_size();
    eprintln!(
        "restored backup {} into {}: {} files, {} in {:.1}s ({}/s)",
        backup.id,
        pgdata.display(),
        files,
        human_bytes(bytes),
        elapsed.as_secs_f64(),
        human_bytes((bytes as f64 / elapsed.as_secs_f64().max(0.001)) as u64),
    );

    print_archiving(settings.as_primary, &pgdata);

    // 5. Start and wait.
    if settings.start {
        start::start_and_wait(
            cluster,
            backup,
            &pgdata,
            dest.owner(),
            &target,
            settings.action,
            plan.wal,
        )
        .await
    } else {
        eprintln!(
            "ready: start the server on {} to recover to {target} (the restore_command fetches WAL from the repository)",
            pgdata.display()
        );
        Ok(())
    }
}
