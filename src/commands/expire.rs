//! `expire`: apply retention. Deletion order survives a crash at any point: a backup's
//! manifest goes first (it stops existing at once), then its parts; WAL below the horizon
//! afterwards. A re-run finishes whatever an interrupted run left.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::pg::{WalFileName, WalSegmentSize};
use crate::policy::{self, BackupFacts, RetentionPlan};
use crate::repo::lock::RepoLock;
use crate::repo::manifest::BackupManifest;
use crate::repo::{BackupDir, DamagedBackup, Repository};
use crate::settings::ExpireSettings;

/// Parts of a backup without a manifest are an interrupted backup's leftovers once the
/// backup started this long ago (a running backup also holds the lock).
const LEFTOVER_GRACE_HOURS: i64 = 24;

#[derive(Debug, Serialize)]
struct Report {
    cluster: String,
    now: DateTime<Utc>,
    retention_days: u32,
    dry_run: bool,
    backups: Vec<BackupReport>,
    leftovers_removed: Vec<String>,
    /// Backups whose manifest cannot be read: never removed by expire, never counted.
    damaged_backups: Vec<DamagedBackup>,
    /// The damaged backup that kept this run from removing WAL, if one did.
    wal_kept_for_damaged: Option<String>,
    wal_horizon: Option<String>,
    wal_objects_removed: usize,
    bytes_freed: u64,
    window_start: Option<DateTime<Utc>>,
    /// Key generations of an encrypted repository that no kept object uses any more, dropped
    /// from its keyring (none in a dry run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    key_generations_dropped: Vec<u32>,
}

#[derive(Debug, Serialize)]
struct BackupReport {
    id: String,
    /// `full` or `incr`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The backup an incremental depends on (`null` for a full).
    parent: Option<String>,
    keep: bool,
    reason: &'static str,
}

pub async fn run(
    config: &Config,
    repo: &Repository,
    settings: ExpireSettings,
) -> anyhow::Result<()> {
    let ExpireSettings { dry_run, now, json } = settings;
    let now = now.unwrap_or_else(Utc::now);
    let lock = if dry_run {
        None
    } else {
        Some(
            RepoLock::acquire(
                repo,
                "expire",
                Duration::from_secs(config.backup.lock_ttl_seconds),
            )
            .await?,
        )
    };
    let result = expire(config, repo, lock.as_ref(), now).await;
    if let Some(lock) = lock {
        lock.release().await?;
    }
    let report = result?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        for b in &report.backups {
            println!(
                "{} {} ({}) — {}",
                if b.keep {
                    "keep  "
                } else if dry_run {
                    "WOULD REMOVE"
                } else {
                    "remove"
                },
                b.id,
                match &b.parent {
                    Some(p) => format!("{} on {p}", b.kind),
                    None => b.kind.to_string(),
                },
                b.reason
            );
        }
        for d in &report.damaged_backups {
            println!("keep   {} — DAMAGED, not read: {}", d.id, d.error);
        }
        for g in &report.key_generations_dropped {
            println!("remove key generation {g}: no kept object uses it");
        }
        for l in &report.leftovers_removed {
            println!(
                "{} leftover of an interrupted backup: {l}",
                if dry_run { "WOULD REMOVE" } else { "remove" }
            );
        }
    }
    let kept = report.backups.iter().filter(|b| b.keep).count();
    tracing::info!(
        cluster = %report.cluster,
        dry_run,
        "expire: {kept} backup(s) kept, {} removed, {} leftover(s), {} WAL object(s) removed below {}, {} freed; recoverable from {}",
        report.backups.len() - kept,
        report.leftovers_removed.len(),
        report.wal_objects_removed,
        report.wal_horizon.as_deref().unwrap_or("-"),
        crate::format::human_bytes(report.bytes_freed),
        report.window_start.map_or("-".to_string(), crate::timeparse::format_utc)
    );
    Ok(())
}

async fn expire(
    config: &Config,
    repo: &Repository,
    lock: Option<&RepoLock>,
    now: DateTime<Utc>,
) -> anyhow::Result<Report> {
    // Without the lock (a dry run) nothing is deleted; with it, each deletion first makes
    // sure the lock is still ours (a run stalled past the TTL stops there).
    let dry_run = lock.is_none();
    let all = repo.backups().await?;
    let (manifests, damaged) = (all.intact, all.damaged);
    let facts: Vec<BackupFacts> = manifests.iter().map(BackupFacts::of).collect();
    let retention = chrono::Duration::days(i64::from(config.repository.retention_days));
    let plan = policy::plan_retention(&facts, now, retention);
    let dirs = repo.backup_dirs().await?;
    let mut bytes_freed = 0;

    // Backups the policy removes, newest first (an incremental before its parent, so an
    // interrupted run never leaves a listed backup whose parent is gone): manifest first,
    // then everything else under the backup.
    let removed: Vec<&crate::repo::manifest::BackupId> = plan.removed().collect();
    for id in removed.into_iter().rev() {
        bytes_freed += dirs
            .iter()
            .filter(|d| d.name == id.as_str())
            .map(|d| d.bytes)
            .sum::<u64>();
        if let Some(lock) = lock {
            lock.ensure_held().await?;
            repo.delete_backup(id).await?;
        }
    }

    let leftovers = leftovers(&dirs, &manifests, &damaged, &plan, now);
    for (name, bytes) in &leftovers {
        bytes_freed += bytes;
        if let Some(lock) = lock {
            lock.ensure_held().await?;
            repo.delete_backup_dir(name).await?;
        }
    }

    // WAL below the horizon; history files are kept forever. Not while a damaged backup
    // older than the horizon's backup exists: its start is unknown, and its WAL is what
    // makes it usable again once its manifest is repaired.
    let held = wal_held_by_damaged(&damaged, &plan, &manifests);
    if let Some(d) = held {
        tracing::warn!(
            "expire: no WAL removed: backup {} is damaged and older than the oldest kept backup;              repair or remove it by hand ({})",
            d.id,
            d.error
        );
    }
    let mut wal_removed = 0;
    if let (Some(horizon), Some(first), None) = (plan.wal_horizon, manifests.first(), held) {
        let size = WalSegmentSize::new(first.wal_segment_size)
            .context("manifest has an invalid wal_segment_size")?;
        let horizon_segno = horizon.segno(size);
        let mut doomed = Vec::new();
        for (name, entry) in repo.list_wal().await? {
            let below = match name {
                WalFileName::History(_) => false,
                other => other
                    .segment()
                    .is_some_and(|s| s.segno(size) < horizon_segno),
            };
            if below {
                bytes_freed += entry.size;
                doomed.push(name);
            }
        }
        wal_removed = doomed.len();
        if let Some(lock) = lock {
            lock.ensure_held().await?;
            repo.delete_wal(&doomed).await?;
        }
    }

    // An encrypted repository's key generations that nothing kept can use any more.
    let mut key_generations_dropped = Vec::new();
    if let Some(lock) = lock {
        lock.ensure_held().await?;
        key_generations_dropped = repo
            .drop_unused_generations()
            .await
            .context("drop unused key generations")?
            .into_iter()
            .map(|g| g.0)
            .collect();
    }

    Ok(Report {
        key_generations_dropped,
        cluster: repo.cluster().to_string(),
        now,
        retention_days: config.repository.retention_days,
        dry_run,
        backups: plan
            .decisions
            .iter()
            .map(|d| {
                let f = facts.iter().find(|f| f.id == d.id);
                BackupReport {
                    id: d.id.to_string(),
                    kind: f.map_or("full", |f| f.kind.as_str()),
                    parent: f.and_then(|f| f.parent.as_ref()).map(|p| p.to_string()),
                    keep: d.keep,
                    reason: d.reason,
                }
            })
            .collect(),
        leftovers_removed: leftovers.keys().cloned().collect(),
        wal_kept_for_damaged: held.map(|d| d.id.to_string()),
        damaged_backups: damaged,
        wal_horizon: plan.wal_horizon.map(|l| l.to_string()),
        wal_objects_removed: wal_removed,
        bytes_freed,
        window_start: plan.window_start,
    })
}

/// Leftovers: backup directories without a manifest, started long enough ago (name →
/// bytes). A damaged manifest is not "without": the operator decides about it.
fn leftovers(
    dirs: &[BackupDir],
    manifests: &[BackupManifest],
    damaged: &[DamagedBackup],
    plan: &RetentionPlan,
    now: DateTime<Utc>,
) -> std::collections::BTreeMap<String, u64> {
    let with_manifest: std::collections::HashSet<&str> = (manifests.iter().map(|m| m.id.as_str()))
        .chain(damaged.iter().map(|d| d.id.as_str()))
        .collect();
    let mut leftovers = std::collections::BTreeMap::new();
    for d in dirs {
        let id = d.name.as_str();
        if with_manifest.contains(id) || plan.removed().any(|r| r.as_str() == id) {
            continue;
        }
        let started = d.id().map(|i| i.time());
        let old_enough =
            started.is_none_or(|t| now - t > chrono::Duration::hours(LEFTOVER_GRACE_HOURS));
        if old_enough {
            leftovers.insert(id.to_string(), d.bytes);
        }
    }
    leftovers
}

/// The damaged backup, if any, that started before the oldest backup retention keeps: the
/// WAL below the horizon may be its WAL.
fn wal_held_by_damaged<'a>(
    damaged: &'a [DamagedBackup],
    plan: &policy::RetentionPlan,
    manifests: &[crate::repo::manifest::BackupManifest],
) -> Option<&'a DamagedBackup> {
    let oldest_kept = plan
        .kept()
        .filter_map(|id| manifests.iter().find(|m| &m.id == id))
        .map(|m| m.start_time)
        .min();
    damaged
        .iter()
        .find(|d| oldest_kept.is_none_or(|t| d.id.time() <= t))
}
