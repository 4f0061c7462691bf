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
use crate::pg::{Lsn, TimelineId, WalFileName, WalSegmentSize};
use crate::repo::manifest::{BackupId, BackupKind};
use crate::repo::reports::ReportRef;
use crate::repo::timelines::{split_brains, Timelines};
use crate::repo::window::{self, BackupEnd, BackupSpan, WalIndex};
use crate::repo::{ObjectInfo, Repository};

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
    pub kind: BackupKind,
    pub parent: Option<BackupId>,
}

impl BackupSummary {
    pub fn of(m: &crate::repo::manifest::BackupManifest) -> Self {
        BackupSummary {
            kind: m.kind,
            parent: m.parent.as_ref().map(|p| p.id.clone()),
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
    /// The newest verification report read: which one and what it says.
    last_report: Option<(ReportRef, VerifyResult)>,
    /// The recovery time the newest report that measured one measured.
    last_rto: Option<f64>,
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
        let inventory = repo.inventory().await.context("list the repository")?;
        let mut facts = RepoFacts {
            created: inventory.created.map(unix),
            backups_bytes: inventory.backups_bytes,
            wal_bytes: inventory.wal_bytes,
            wal_conflicts: inventory.wal_conflicts,
            encrypted: repo.encryption().await?.is_some(),
            ..RepoFacts::default()
        };
        let (ids, wal_names, wal_infos) = (
            inventory.backup_ids,
            inventory.wal_names,
            inventory.wal_infos,
        );
        if facts.encrypted && !repo.identity_configured() {
            // A writer of an encrypted repository (a database host) holds no key: what the
            // listing tells, nothing that needs reading an object.
            facts.backups = ids.len() as u64;
            return Ok(RepoRead {
                facts,
                newest: None,
            });
        }
        if let Some(newest) = inventory.newest_report {
            if self.last_report.as_ref().is_none_or(|(r, _)| *r != newest) {
                if let Some((result, rto)) = read_report(repo, &newest).await? {
                    self.last_report = Some((newest, result));
                    self.last_rto = rto.or(self.last_rto);
                }
            }
            facts.last_verify = self.last_report.as_ref().map(|(_, r)| r.clone());
        }
        facts.rto_seconds = self.last_rto;
        // Forget removed backups; read new manifests (a damaged one is counted, and read
        // again next time: it may have been repaired).
        self.manifests.retain(|id, _| ids.contains(id));
        for id in &ids {
            if !self.manifests.contains_key(id) {
                match repo.read_manifest(id).await? {
                    Some(Ok(m)) => {
                        self.manifests.insert(id.clone(), BackupSummary::of(&m));
                    }
                    Some(Err(d)) => {
                        tracing::warn!("{}", d.message());
                        facts.damaged_backups += 1;
                    }
                    None => {}
                }
            }
        }
        let mut backups: Vec<&BackupSummary> = self.manifests.values().collect();
        backups.sort_by(|a, b| a.id.cmp(&b.id));
        facts.backups = backups.len() as u64;
        for b in &backups {
            match b.kind {
                BackupKind::Full => facts.stored_bytes_full += b.stored_bytes,
                BackupKind::Incr => facts.stored_bytes_incr += b.stored_bytes,
            }
        }
        facts.newest_chain_length = backups
            .last()
            .and_then(|b| chain_length(&self.manifests, b));
        let newest = backups.last().map(|b| (*b).clone());
        facts.newest = newest.as_ref().map(|b| NewestBackup {
            start: unix(b.start_time),
            stop: unix(b.stop_time),
            original_bytes: b.original_bytes,
            stored_bytes: b.stored_bytes,
        });

        if let Some(first) = backups.first() {
            let size =
                WalSegmentSize::new(first.wal_segment_size).unwrap_or(WalSegmentSize::DEFAULT);
            let spans: Vec<BackupSpan> = backups
                .iter()
                .map(|b| BackupSpan {
                    start_lsn: b.start_lsn,
                    end: BackupEnd {
                        id: b.id.clone(),
                        time: b.stop_time,
                        lsn: b.stop_lsn,
                    },
                })
                .collect();
            self.read_window(repo, size, &spans, (&wal_names, &wal_infos), &mut facts)
                .await?;
        }
        Ok(RepoRead { facts, newest })
    }
}

impl RepoReader {
    /// The recoverable window (repo::window): from the earliest backup whose WAL is complete
    /// to the last commit archived before any gap, found by reading segment headers back
    /// from the end of that run — no further back than that backup's start.
    async fn read_window(
        &mut self,
        repo: &Repository,
        size: WalSegmentSize,
        spans: &[BackupSpan],
        (wal_names, wal_infos): (&[WalFileName], &[ObjectInfo]),
        facts: &mut RepoFacts,
    ) -> anyhow::Result<()> {
        let timelines = Timelines::reload(repo, wal_names, &self.timelines)
            .await
            .context("read the archive's timeline history files")?;
        facts.timeline = Some(timelines.latest().0);
        let listing: Vec<(WalFileName, ObjectInfo)> = wal_names
            .iter()
            .copied()
            .zip(wal_infos.iter().cloned())
            .collect();
        facts.split_brains = split_brains(&timelines, &listing, size).len() as u64;
        let path = timelines
            .path(timelines.latest())
            .unwrap_or_else(|_| TimelinePath::root(TimelineId(1)));
        self.timelines = timelines;
        let index = WalIndex::new(wal_names.iter(), size, &path);
        let reach = window::reach(&index, spans, window::pushed_but_gone(repo).await?);
        let last_commit = match reach.last_segno {
            None => None,
            Some(last) => match self.last_commit {
                Some((seg, found)) if seg == last && found.is_some() => found,
                _ => {
                    let found = window::last_commit_down(repo, &index, last, reach.down_to).await?;
                    self.last_commit = Some((last, found));
                    found
                }
            },
        };
        facts.window_start = reach.earliest.as_ref().map(|e| unix(e.time));
        facts.window_end = last_commit.map(unix);
        facts.wal_gap = reach.missing.map(|s| s.to_string());
        Ok(())
    }
}

/// Backups in `b`'s chain, itself included (1 for a full); `None` when an ancestor is not
/// among `manifests` (missing or damaged).
fn chain_length(manifests: &HashMap<BackupId, BackupSummary>, b: &BackupSummary) -> Option<u64> {
    let link = |id: &BackupId| manifests.get(id).map(|m| (m.kind, m.parent.as_ref()));
    crate::repo::chain::walk_len(&b.id, link).map(|n| n as u64)
}

/// What a verification report says: when it finished and whether the backup passed; and the
/// recovery time it measured, if it did.
async fn read_report(
    repo: &Repository,
    r: &ReportRef,
) -> anyhow::Result<Option<(VerifyResult, Option<f64>)>> {
    match repo.get_report(r).await? {
        None => Ok(None),
        Some(Ok(report)) => Ok(Some((
            VerifyResult {
                at: unix(report.finished_at),
                ok: report.ok,
            },
            report.measured.map(|m| m.rto_seconds),
        ))),
        Some(Err(e)) => {
            tracing::warn!("{e:#}");
            Ok(None)
        }
    }
}

/// The id of the newest complete backup (one listing of `backups/`).
pub async fn newest_backup_id(repo: &Repository) -> anyhow::Result<Option<BackupId>> {
    Ok(repo.backup_ids().await.context("list backups")?.pop())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str, parent: Option<&str>) -> BackupSummary {
        let t: DateTime<Utc> = "2024-01-01T02:00:00Z".parse().unwrap();
        BackupSummary {
            id: id.parse().unwrap(),
            start_time: t,
            stop_time: t,
            start_lsn: Lsn(0),
            stop_lsn: Lsn(0),
            original_bytes: 0,
            stored_bytes: 0,
            wal_segment_size: 16 << 20,
            kind: if parent.is_some() {
                BackupKind::Incr
            } else {
                BackupKind::Full
            },
            parent: parent.map(|p| p.parse().unwrap()),
        }
    }

    #[test]
    fn chain_length_walks_back_to_the_full() {
        let all: HashMap<BackupId, BackupSummary> = [
            summary("20240101T020000Z", None),
            summary("20240102T020000Z", Some("20240101T020000Z")),
            summary("20240103T020000Z", Some("20240102T020000Z")),
            summary("20240105T020000Z", Some("20240104T020000Z")),
        ]
        .into_iter()
        .map(|b| (b.id.clone(), b))
        .collect();
        let len = |id: &str| chain_length(&all, &all[&id.parse::<BackupId>().unwrap()]);
        assert_eq!(len("20240101T020000Z"), Some(1));
        assert_eq!(len("20240103T020000Z"), Some(3));
        assert_eq!(len("20240105T020000Z"), None, "its parent is missing");
    }
}
