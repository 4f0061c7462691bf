//! What the agent reads from outside for its metrics: the repository (backups, sizes, the
//! recoverable window; in the background, every few minutes and after each job) and
//! PostgreSQL's archiver (at scrape time). Every call here runs under a timeout set by the
//! caller; none of them writes anything.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::metrics::{NewestBackup, RepoFacts, VerifyResult};
use crate::pg::client::{ArchiveBacklog, ArchiverStats};
use crate::pg::history::TimelinePath;
use crate::pg::{Lsn, TimelineId, WalSegmentSize};
use crate::repo::manifest::BackupId;
use crate::repo::timelines::Timelines;
use crate::repo::window::{self, BackupEnd, WalIndex, Window};
use crate::repo::{layout, Repository};

/// What the agent keeps of a manifest (a manifest lists every file; it is not kept whole).
#[derive(Debug, Clone, PartialEq)]
pub struct BackupSummary {
    pub id: BackupId,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub original_bytes: u64,
    pub stored_bytes: u64,
    pub wal_segment_size: u32,
}

impl BackupSummary {
    pub fn of(m: &crate::repo::manifest::BackupManifest) -> Self {
        BackupSummary {
            id: m.id.clone(),
            start_time: m.start_time,
            stop_time: m.stop_time,
            start_lsn: m.start_lsn,
            stop_lsn: m.stop_lsn,
            original_bytes: m.original_size(),
            stored_bytes: m.stored_size(),
            wal_segment_size: m.wal_segment_size,
        }
    }
}

/// The repository reader of one cluster: remembers manifests already read, and the last
/// commit time found for the newest archived segment, so a refresh costs one listing plus
/// whatever is new.
#[derive(Debug, Default)]
pub struct RepoReader {
    manifests: HashMap<BackupId, BackupSummary>,
    last_commit: Option<(u64, Option<DateTime<Utc>>)>,
    /// The newest verification report read: its key and what it says.
    last_report: Option<(String, VerifyResult)>,
    /// The archive's timeline histories read so far (they never change).
    timelines: Timelines,
}

/// A repository read: the facts for the metrics and the newest backup.
#[derive(Debug, Clone)]
pub struct RepoRead {
    pub facts: RepoFacts,
    pub newest: Option<BackupSummary>,
}

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

impl RepoReader {
    pub async fn read(&mut self, repo: &Repository) -> anyhow::Result<RepoRead> {
        let entries = repo
            .storage()
            .list("")
            .await
            .context("list the repository")?;
        let mut facts = RepoFacts::default();
        let mut wal_names = Vec::new();
        let mut ids = Vec::new();
        let mut newest_report: Option<(&str, &str)> = None;
        let backups_prefix = format!("{}/", layout::BACKUPS_DIR);
        let wal_prefix = format!("{}/", layout::WAL_DIR);
        let conflicts_prefix = format!("{}/", layout::CONFLICTS_DIR);
        for e in &entries {
            if e.key == layout::REPOSITORY_INFO {
                facts.created = Some(unix(e.last_modified));
            } else if let Some(rest) = e.key.strip_prefix(&backups_prefix) {
                facts.backups_bytes += e.size;
                match rest.split('/').collect::<Vec<_>>()[..] {
                    [id, "manifest.json"] => {
                        if let Ok(id) = id.parse::<BackupId>() {
                            ids.push(id);
                        }
                    }
                    // `<id>/verify/<time>.json`: the newest by time is the last verification.
                    [_, "verify", name]
                        if name.ends_with(".json")
                            && newest_report.is_none_or(|(n, _): (&str, &str)| name > n) =>
                    {
                        newest_report = Some((name, e.key.as_str()));
                    }
                    _ => {}
                }
            } else if e.key.starts_with(&conflicts_prefix) {
                facts.wal_conflicts += 1;
            } else if e.key.starts_with(&wal_prefix) {
                facts.wal_bytes += e.size;
                if let Some(name) = layout::wal_name_from_key(&e.key) {
                    wal_names.push(name);
                }
            }
        }
        if let Some((_, key)) = newest_report {
            if self.last_report.as_ref().is_none_or(|(k, _)| k != key) {
                if let Some(result) = read_report(repo, key).await? {
                    self.last_report = Some((key.to_string(), result));
                }
            }
            facts.last_verify = self.last_report.as_ref().map(|(_, r)| r.clone());
        }
        // Forget removed backups; read new manifests.
        self.manifests.retain(|id, _| ids.contains(id));
        for id in &ids {
            if !self.manifests.contains_key(id) {
                if let Some(m) = repo.get_manifest(id).await? {
                    self.manifests.insert(id.clone(), BackupSummary::of(&m));
                }
            }
        }
        let mut backups: Vec<&BackupSummary> = self.manifests.values().collect();
        backups.sort_by(|a, b| a.id.cmp(&b.id));
        facts.backups = backups.len() as u64;
        let newest = backups.last().map(|b| (*b).clone());
        facts.newest = newest.as_ref().map(|b| NewestBackup {
            start: unix(b.start_time),
            stop: unix(b.stop_time),
            original_bytes: b.original_bytes,
            stored_bytes: b.stored_bytes,
        });

        // The recoverable window (repo::window): the earliest backup's end to the last
        // archived commit, found by reading segment headers back from the newest segment —
        // no further back than the earliest backup's start.
        let earliest = backups
            .iter()
            .min_by_key(|b| (b.stop_time, b.stop_lsn))
            .map(|b| (*b).clone());
        if let Some(first) = earliest {
            let size =
                WalSegmentSize::new(first.wal_segment_size).unwrap_or(WalSegmentSize::DEFAULT);
            let timelines = Timelines::reload(repo, &wal_names, &self.timelines)
                .await
                .context("read the archive's timeline history files")?;
            facts.timeline = Some(timelines.latest().0);
            let path = timelines
                .path(timelines.latest())
                .unwrap_or_else(|_| TimelinePath::root(TimelineId(1)));
            self.timelines = timelines;
            let index = WalIndex::new(wal_names.iter(), size, &path);
            let last_commit = match index.newest() {
                None => None,
                Some(newest_seg) => match self.last_commit {
                    Some((seg, found)) if seg == newest_seg && found.is_some() => found,
                    _ => {
                        let down_to = first.start_lsn.segno(size);
                        let found =
                            window::last_commit_down(repo, &index, newest_seg, down_to).await?;
                        self.last_commit = Some((newest_seg, found));
                        found
                    }
                },
            };
            let w = Window {
                earliest: Some(BackupEnd {
                    id: first.id.clone(),
                    time: first.stop_time,
                    lsn: first.stop_lsn,
                }),
                last_commit,
                wal_end: index.end_lsn(),
            };
            facts.window_start = w.earliest.as_ref().map(|e| unix(e.time));
            facts.window_end = w.last_commit.map(unix);
        }
        Ok(RepoRead { facts, newest })
    }
}

/// What a verification report says: when it finished and whether the backup passed.
async fn read_report(repo: &Repository, key: &str) -> anyhow::Result<Option<VerifyResult>> {
    #[derive(serde::Deserialize)]
    struct Report {
        finished_at: DateTime<Utc>,
        ok: bool,
    }
    let Some(bytes) = repo.storage().get(key).await? else {
        return Ok(None);
    };
    match serde_json::from_slice::<Report>(&bytes) {
        Ok(r) => Ok(Some(VerifyResult {
            at: unix(r.finished_at),
            ok: r.ok,
        })),
        Err(e) => {
            tracing::warn!(
                "{}/{key}: unreadable verification report: {e}",
                repo.cluster()
            );
            Ok(None)
        }
    }
}

/// The id of the newest complete backup (one listing of `backups/`).
pub async fn newest_backup_id(repo: &Repository) -> anyhow::Result<Option<BackupId>> {
    let entries = repo
        .storage()
        .list(layout::BACKUPS_DIR)
        .await
        .context("list backups")?;
    Ok(entries
        .iter()
        .filter_map(|e| {
            let rest = e.key.strip_prefix(layout::BACKUPS_DIR)?.strip_prefix('/')?;
            match rest.split_once('/') {
                Some((id, "manifest.json")) => id.parse::<BackupId>().ok(),
                _ => None,
            }
        })
        .max())
}

/// The archiver's state, and the backlog when the role may list `pg_wal/archive_status`.
pub async fn read_postgres(
    connection: &str,
) -> anyhow::Result<(ArchiverStats, Option<ArchiveBacklog>)> {
    let session = crate::pg::client::connect(connection).await?;
    let stats = session.archiver_stats().await;
    let backlog = session.archive_backlog().await;
    session.close().await;
    let backlog = match backlog {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::debug!("no archive backlog: {e:#} (the role needs pg_monitor)");
            None
        }
    };
    Ok((stats?, backlog))
}
