//! The catalog refresh (issue 16): on `[agent] catalog_schedule` (default hourly), take a
//! catalog snapshot of each cluster (relfilenode → schema.table, for `events`) and store it
//! when it changed since the last one (the content hash dedups). Outside the job queue: it is
//! one cheap query per database, takes no repository lock, and never delays a backup.

use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use tokio_util::sync::CancellationToken;

use super::schedule::Timers;
use super::Shared;
use crate::commands::backup::{open_session, record_catalog};
use crate::repo::Repository;
use crate::schedule::Schedule;

/// Bound of one refresh (connect, query every database, store).
const REFRESH_TIMEOUT: Duration = Duration::from_secs(120);

/// Refresh `cluster`'s catalog snapshot at every fire time of `schedule` until `stop`.
pub(super) async fn schedule(
    timers: &Timers,
    shared: &Arc<Shared>,
    cluster: &str,
    schedule: &Schedule,
    zone: Tz,
    stop: CancellationToken,
) {
    let on_fire = {
        let (shared, cluster) = (shared.clone(), cluster.to_string());
        move || {
            let (shared, cluster) = (shared.clone(), cluster.clone());
            tokio::spawn(async move {
                if tokio::time::timeout(REFRESH_TIMEOUT, refresh(&shared, &cluster))
                    .await
                    .is_err()
                {
                    tracing::warn!(cluster = %cluster, "catalog refresh: no answer in time");
                }
            });
        }
    };
    if let Err(e) = timers
        .every(schedule.clone(), zone, stop, |_| {}, on_fire)
        .await
    {
        tracing::error!(cluster = %cluster, "catalog refresh not scheduled: {e:#}");
    }
}

/// One refresh; failures are logged (the next fire time tries again).
async fn refresh(shared: &Shared, name: &str) {
    let cfg = shared.config();
    let Some(cluster) = cfg.clusters.iter().find(|c| c.name == name) else {
        return;
    };
    let repo = match Repository::open(&cfg.repository, name) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(cluster = %name, "catalog refresh: {e:#}");
            return;
        }
    };
    let session = match open_session(cluster).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(cluster = %name, "catalog refresh: {e:#}");
            return;
        }
    };
    record_catalog(&repo, &session, &cluster.connection).await;
    session.close().await;
}
