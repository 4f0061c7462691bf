//! Targets taken from the WAL event index (issue 16): `--before-xid`, `--before-event`,
//! `--to-restore-point`, turned into the position the window checks use and the setting
//! PostgreSQL stops at; and the warning when `--to` lands after an indexed drop or truncate.

use chrono_tz::Tz;

use super::Target;
use crate::error::Failure;
use crate::pg::catalog::Catalogs;
use crate::pg::events::{format_event, EventKind, WalEvent};
use crate::pg::recovery_conf::{RecoveryTarget, StopBefore};
use crate::repo::manifest::BackupManifest;
use crate::repo::Repository;

/// The position to check against the window, and what recovery stops before, for a target
/// of the event index; `None` for the other targets.
pub(super) async fn resolve(
    repo: &Repository,
    target: &Target,
) -> anyhow::Result<Option<(RecoveryTarget, StopBefore)>> {
    let not_found = |m: String| -> anyhow::Error { Failure::NotFound(m).into() };
    Ok(Some(match target {
        Target::BeforeEvent(lsn) => (RecoveryTarget::Lsn(*lsn), StopBefore::Lsn(*lsn)),
        Target::BeforeXid(xid) => {
            let events = repo.all_events().await?;
            let event = events
                .iter()
                .find(|e| e.xid == *xid && e.kind != EventKind::RestorePoint)
                .ok_or_else(|| {
                    not_found(format!(
                        "transaction {xid} is not in the event index (`synapse-backup events` lists what it \
                         holds; run `synapse-backup reindex` for WAL archived before the index existed); \
                         without its commit position the target cannot be checked against the window — \
                         use --before-event LSN, --lsn or --to"
                    ))
                })?;
            eprintln!(
                "note: paused there (--target-action pause), the server still holds transaction {xid}'s locks: \
                 the relations it dropped or truncated stay unreadable until it is promoted"
            );
            (RecoveryTarget::Lsn(event.lsn), StopBefore::Xid(*xid))
        }
        Target::RestorePoint(name) => {
            let events = repo.all_events().await?;
            // PostgreSQL stops at the first restore point of that name.
            let event = events
                .iter()
                .find(|e| {
                    e.kind == EventKind::RestorePoint && e.restore_point.as_deref() == Some(name)
                })
                .ok_or_else(|| {
                    let known: Vec<String> = events
                        .iter()
                        .filter_map(|e| e.restore_point.as_ref().map(|n| format!("'{n}'")))
                        .collect();
                    not_found(format!(
                        "there is no restore point '{name}' in the event index (indexed restore points: {})",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ))
                })?;
            (
                RecoveryTarget::Lsn(event.lsn),
                StopBefore::RestorePoint(name.clone()),
            )
        }
        Target::Time(_) | Target::Lsn(_) | Target::Latest => return Ok(None),
    }))
}

/// Warn about every indexed drop or truncate that a restore of `backup` to the time `target`
/// replays: "the drop was at 14:03:07, the target is 14:05". Best effort: an unreadable
/// index only costs the warning.
pub(super) async fn warn_replayed_accidents(
    repo: &Repository,
    backup: &BackupManifest,
    target: &RecoveryTarget,
    zone: Tz,
) {
    let RecoveryTarget::Time(t) = *target else {
        return;
    };
    let events = match repo.all_events().await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("could not read the event index: {e:#}");
            return;
        }
    };
    let replayed: Vec<&WalEvent> = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Drop | EventKind::Truncate))
        .filter(|e| e.lsn >= backup.stop_lsn && e.time <= t)
        .collect();
    if replayed.is_empty() {
        return;
    }
    let names = Catalogs::new(repo.catalogs().await.unwrap_or_default());
    for e in replayed {
        eprintln!(
            "warning: the target is after this event, which recovery will replay: {}; \
             to stop just before it use --before-xid {} or --before-event {}",
            format_event(e, zone, &names),
            e.xid,
            e.lsn
        );
    }
}
