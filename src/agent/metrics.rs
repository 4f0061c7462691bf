//! What `/metrics` says, as plain data, and its rendering in the Prometheus text format
//! (0.0.4, via `prometheus-client`). Every metric is listed in the README ("Metrics").
//!
//! The agent keeps one [`AgentMetrics`] value: jobs update it as they run, the repository
//! refresher after reading the store, the scrape handler with what PostgreSQL says. Rendering
//! is a pure function of that value, in a fixed order (clusters by name, jobs by kind).

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::pg::client::{ArchiveBacklog, ArchiverStats};

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The agent's job kinds (the `job_type` label; not `job`, which Prometheus sets on every
/// scraped series to the scrape job's name and would rename ours to `exported_job`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobKind {
    Backup,
    Expire,
    Verify,
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [JobKind::Backup, JobKind::Expire, JobKind::Verify];

    pub fn name(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Expire => "expire",
            JobKind::Verify => "verify",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One job kind of one cluster, as run by this agent. Times are Unix seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobStats {
    pub runs: u64,
    pub failures: u64,
    pub running: bool,
    pub last_success: Option<f64>,
    pub last_duration_seconds: Option<f64>,
    pub next_run: Option<f64>,
}

/// The newest complete backup in the repository.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewestBackup {
    pub start: f64,
    pub stop: f64,
    pub original_bytes: u64,
    pub stored_bytes: u64,
}

/// What the repository holds, as last read from the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoFacts {
    pub backups: u64,
    pub newest: Option<NewestBackup>,
    pub backups_bytes: u64,
    pub wal_bytes: u64,
    /// When `repository.json` was written (the repository's first write).
    pub created: Option<f64>,
    /// The end of the earliest backup.
    pub window_start: Option<f64>,
    /// The last archived commit.
    pub window_end: Option<f64>,
    /// The newest verification report stored in the repository.
    pub last_verify: Option<VerifyResult>,
    /// WAL files refused because different content was already archived under their names
    /// (records under `conflicts/`): two servers archiving as one (split brain).
    pub wal_conflicts: u64,
    /// The newest timeline in the archive.
    pub timeline: Option<u32>,
    /// Backups whose manifest is stored but cannot be read (skipped by every command).
    pub damaged_backups: u64,
    /// The first WAL segment missing inside the window (see `repo::window::Window::missing`).
    pub wal_gap: Option<String>,
    /// Pairs of timelines that both received WAL after their branch point
    /// (`repo::timelines::split_brains`): `restore` without `--timeline` refuses.
    pub split_brains: u64,
    /// Whether the repository is encrypted (`repository.json` holds its public keys).
    pub encrypted: bool,
    /// Bytes stored by complete full backups, and by complete incrementals.
    pub stored_bytes_full: u64,
    pub stored_bytes_incr: u64,
    /// Backups in the newest backup's chain, itself included (`None`: an ancestor is missing).
    pub newest_chain_length: Option<u64>,
    /// The recovery time (restore + replay) the newest verification that measured one took.
    pub rto_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyResult {
    pub at: f64,
    pub ok: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterMetrics {
    pub jobs: BTreeMap<JobKind, JobStats>,
    pub retention_seconds: f64,
    /// `rto_objective` and `rpo_objective` in seconds, when configured.
    pub rto_objective: Option<f64>,
    pub rpo_objective: Option<f64>,
    /// `None` until the repository was read once.
    pub repo: Option<RepoFacts>,
    pub repo_up: Option<bool>,
    /// The last verification run by this agent (which may have stored no report: a
    /// verification that could not run stores none).
    pub verify: Option<VerifyResult>,
    /// Whether the last scrape could query PostgreSQL.
    pub postgres_up: Option<bool>,
    pub archiver: Option<ArchiverStats>,
    pub backlog: Option<ArchiveBacklog>,
}

impl ClusterMetrics {
    pub fn job(&mut self, kind: JobKind) -> &mut JobStats {
        self.jobs.entry(kind).or_default()
    }

    /// The last successful run of `kind`; for backups also the newest backup in the
    /// repository (taken by hand, or before the agent started).
    pub fn last_success(&self, kind: JobKind) -> Option<f64> {
        let ours = self.jobs.get(&kind).and_then(|j| j.last_success);
        let repo = match kind {
            JobKind::Backup => self
                .repo
                .as_ref()
                .and_then(|r| r.newest.as_ref())
                .map(|n| n.stop),
            _ => None,
        };
        match (ours, repo) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

impl ClusterMetrics {
    /// The newer of this agent's last verification and the newest report in the repository.
    pub fn last_verify(&self) -> Option<VerifyResult> {
        let repo = self.repo.as_ref().and_then(|r| r.last_verify.clone());
        match (self.verify.clone(), repo) {
            (Some(a), Some(b)) => Some(if b.at > a.at { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentMetrics {
    /// The scrape's time (Unix seconds): the data-loss exposure is measured against it.
    pub now: Option<f64>,
    pub version: String,
    pub start_time: f64,
    pub reload_ok: bool,
    pub reload_ok_time: f64,
    pub clusters: BTreeMap<String, ClusterMetrics>,
}

/// Render in the Prometheus text format (0.0.4).
pub fn render(m: &AgentMetrics) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(m.clone())));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("encoding into a String does not fail");
    out
}

#[derive(Debug)]
struct Snapshot(AgentMetrics);

type Labels = Vec<(&'static str, String)>;

fn cluster(name: &str) -> Labels {
    vec![("cluster", name.to_string())]
}

fn cluster_job(name: &str, job: JobKind) -> Labels {
    vec![
        ("cluster", name.to_string()),
        ("job_type", job.name().to_string()),
    ]
}

/// One metric family: its samples in order; nothing at all when it has none.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in &samples {
        let sample = metric.encode_family(labels)?;
        match kind {
            // Counters here are whole numbers (runs, failures, archived files, bytes).
            MetricType::Counter => ConstCounter::new(*value as u64).encode(sample)?,
            _ => ConstGauge::new(*value).encode(sample)?,
        }
    }
    Ok(())
}

/// What the agent last read of a cluster's repository.
fn repo(c: &ClusterMetrics) -> Option<RepoFacts> {
    c.repo.clone()
}

/// The newest backup of a cluster, as last read.
fn newest(c: &ClusterMetrics) -> Option<NewestBackup> {
    c.repo.as_ref().and_then(|r| r.newest.clone())
}

/// A job's figures (zero when it never ran).
fn job(c: &ClusterMetrics, k: JobKind) -> JobStats {
    c.jobs.get(&k).cloned().unwrap_or_default()
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.encode_agent(&mut enc)?;
        self.encode_repository(&mut enc)?;
        self.encode_repository_sizes(&mut enc)?;
        self.encode_chains_and_objectives(&mut enc)?;
        self.encode_verification_and_archiving(&mut enc)
    }
}

/// The metric families, by subject (one flat table each).
impl Snapshot {
    /// Per cluster, one value where `f` has one.
    fn per_cluster(&self, f: &dyn Fn(&ClusterMetrics) -> Option<f64>) -> Vec<(Labels, f64)> {
        self.0
            .clusters
            .iter()
            .filter_map(|(n, c)| f(c).map(|v| (cluster(n), v)))
            .collect()
    }

    /// Per cluster whose repository was read, one sample per value of `label`.
    fn per_repo_label(
        &self,
        label: &'static str,
        f: &dyn Fn(&RepoFacts) -> [(&'static str, u64); 2],
    ) -> Vec<(Labels, f64)> {
        (self.0.clusters.iter())
            .filter_map(|(n, c)| c.repo.as_ref().map(|r| (n, r)))
            .flat_map(|(n, r)| {
                f(r).into_iter().map(move |(value, v)| {
                    let labels = vec![("cluster", n.clone()), (label, value.to_string())];
                    (labels, v as f64)
                })
            })
            .collect()
    }

    /// Per cluster and job kind.
    fn per_job(&self, f: &dyn Fn(&ClusterMetrics, JobKind) -> Option<f64>) -> Vec<(Labels, f64)> {
        self.0
            .clusters
            .iter()
            .flat_map(|(n, c)| {
                JobKind::ALL
                    .into_iter()
                    .filter_map(move |k| f(c, k).map(|v| (cluster_job(n, k), v)))
            })
            .collect()
    }

    fn encode_agent(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let m = &self.0;
        family(
            enc,
            "synapse_backup_agent_info",
            "The running agent; its version is a label.",
            Gauge,
            vec![(vec![("version", m.version.clone())], 1.0)],
        )?;
        family(
            enc,
            "synapse_backup_agent_start_timestamp_seconds",
            "When the agent started (Unix time).",
            Gauge,
            vec![(vec![], m.start_time)],
        )?;
        family(
            enc,
            "synapse_backup_config_last_reload_successful",
            "Whether the last configuration (re)load succeeded (1) or was refused and the old one kept (0).",
            Gauge,
            vec![(vec![], flag(m.reload_ok))],
        )?;
        family(
            enc,
            "synapse_backup_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully (Unix time).",
            Gauge,
            vec![(vec![], m.reload_ok_time)],
        )?;

        // Jobs, as run by this agent.
        family(
            enc,
            "synapse_backup_job_runs",
            "Jobs run by this agent, by cluster and job type (backup, expire, verify).",
            Counter,
            self.per_job(&|c, k| Some(job(c, k).runs as f64)),
        )?;
        family(
            enc,
            "synapse_backup_job_failures",
            "Jobs that failed, by cluster and job type.",
            Counter,
            self.per_job(&|c, k| Some(job(c, k).failures as f64)),
        )?;
        family(
            enc,
            "synapse_backup_job_running",
            "Whether the job is running now.",
            Gauge,
            self.per_job(&|c, k| Some(flag(job(c, k).running))),
        )?;
        family(
            enc,
            "synapse_backup_job_last_duration_seconds",
            "How long the job's last run took, successful or not.",
            Gauge,
            self.per_job(&|c, k| job(c, k).last_duration_seconds),
        )?;
        family(
            enc,
            "synapse_backup_last_success_timestamp_seconds",
            "When the job last succeeded (Unix time). For backup: the end of the newest complete backup in the repository.",
            Gauge,
            self.per_job(&|c, k| c.last_success(k)),
        )?;
        family(
            enc,
            "synapse_backup_next_run_timestamp_seconds",
            "When the schedule next starts the job (Unix time).",
            Gauge,
            self.per_job(&|c, k| job(c, k).next_run),
        )?;
        Ok(())
    }

    fn encode_repository(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        use MetricType::Gauge;
        // The repository.
        family(
            enc,
            "synapse_backup_repository_up",
            "Whether the agent's last read of the repository succeeded.",
            Gauge,
            self.per_cluster(&|c| c.repo_up.map(flag)),
        )?;
        family(
            enc,
            "synapse_backup_repository_encrypted",
            "Whether the repository is encrypted at rest (1) or not (0).",
            Gauge,
            self.per_cluster(&|c| repo(c).map(|r| flag(r.encrypted))),
        )?;
        family(
            enc,
            "synapse_backup_backups",
            "Complete backups (with a manifest) in the repository.",
            Gauge,
            self.per_cluster(&|c| repo(c).map(|r| r.backups as f64)),
        )?;
        family(
            enc,
            "synapse_backup_last_backup_duration_seconds",
            "How long the newest backup took, from pg_backup_start to its manifest.",
            Gauge,
            self.per_cluster(&|c| newest(c).map(|n| n.stop - n.start)),
        )?;
        family(
            enc,
            "synapse_backup_last_backup_original_bytes",
            "Size of the newest backup's files in the data directory.",
            Gauge,
            self.per_cluster(&|c| newest(c).map(|n| n.original_bytes as f64)),
        )?;
        family(
            enc,
            "synapse_backup_last_backup_stored_bytes",
            "Size of the newest backup in the store (compressed).",
            Gauge,
            self.per_cluster(&|c| newest(c).map(|n| n.stored_bytes as f64)),
        )?;
        Ok(())
    }

    fn encode_repository_sizes(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        use MetricType::Gauge;
        family(
            enc,
            "synapse_backup_repository_bytes",
            "Bytes stored in the repository, by kind (backups, wal).",
            Gauge,
            self.per_repo_label("kind", &|r| {
                [("backups", r.backups_bytes), ("wal", r.wal_bytes)]
            }),
        )?;
        family(
            enc,
            "synapse_backup_repository_created_timestamp_seconds",
            "When the repository was created (its repository.json was written; Unix time).",
            Gauge,
            self.per_cluster(&|c| repo(c).and_then(|r| r.created)),
        )?;
        family(
            enc,
            "synapse_backup_recoverable_window_start_timestamp_seconds",
            "The earliest moment a restore can reach: the end of the earliest backup (Unix time).",
            Gauge,
            self.per_cluster(&|c| repo(c).and_then(|r| r.window_start)),
        )?;
        family(
            enc,
            "synapse_backup_recoverable_window_end_timestamp_seconds",
            "The latest moment a restore can reach: the last commit archived before any WAL gap (Unix time).",
            Gauge,
            self.per_cluster(&|c| repo(c).and_then(|r| r.window_end)),
        )?;
        family(
            enc,
            "synapse_backup_wal_conflicts",
            "WAL files refused because different content is archived under the same name (split brain: two servers archive as one); kept under conflicts/ in the repository.",
            Gauge,
            self.per_cluster(&|c| repo(c).map(|r| r.wal_conflicts as f64)),
        )?;
        family(
            enc,
            "synapse_backup_damaged_backups",
            "Backups whose manifest is stored but cannot be read (damaged or edited): skipped by list, restore, verify and expire; repair or remove them.",
            Gauge,
            self.per_cluster(&|c| repo(c).map(|r| r.damaged_backups as f64)),
        )?;
        family(
            enc,
            "synapse_backup_wal_gap",
            "1 when a WAL segment is missing from the archive after the earliest backup's start while newer WAL was archived: the recoverable window ends before it (list and check name it).",
            Gauge,
            self.per_cluster(&|c| repo(c).map(|r| flag(r.wal_gap.is_some()))),
        )?;
        family(
            enc,
            "synapse_backup_timeline",
            "The newest timeline in the WAL archive (rises with every promotion).",
            Gauge,
            self.per_cluster(&|c| repo(c).and_then(|r| r.timeline.map(f64::from))),
        )?;
        family(
            enc,
            "synapse_backup_split_brain_timelines",
            "Pairs of timelines that both received WAL after their branch point (a restored copy or an old primary archiving beside the primary); restore needs --timeline N until resolved.",
            Gauge,
            self.per_cluster(&|c| repo(c).map(|r| r.split_brains as f64)),
        )?;
        family(
            enc,
            "synapse_backup_retention_target_seconds",
            "The configured retention (retention_days): the window every moment of which should stay recoverable.",
            Gauge,
            self.per_cluster(&|c| Some(c.retention_seconds)),
        )?;
        Ok(())
    }

    fn encode_chains_and_objectives(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        use MetricType::Gauge;
        family(
            enc,
            "synapse_backup_last_backup_chain_length",
            "Backups needed to restore the newest backup, itself included: 1 for a full, 1 + its incrementals' count otherwise.",
            Gauge,
            self.per_cluster(&|c| repo(c).and_then(|r| r.newest_chain_length.map(|n| n as f64))),
        )?;
        family(
            enc,
            "synapse_backup_stored_bytes",
            "Bytes stored by the complete backups of each type (full, incr), compressed.",
            Gauge,
            self.per_repo_label("type", &|r| {
                [("full", r.stored_bytes_full), ("incr", r.stored_bytes_incr)]
            }),
        )?;
        family(
            enc,
            "synapse_backup_rto_seconds",
            "The recovery time the last verification measured: restore plus WAL replay to its target.",
            Gauge,
            self.per_cluster(&|c| repo(c).and_then(|r| r.rto_seconds)),
        )?;
        let now = self.0.now;
        family(
            enc,
            "synapse_backup_rpo_seconds",
            "The data-loss exposure now: the age of the last commit archived (read with the repository, every few minutes).",
            Gauge,
            self.per_cluster(&|c| {
                let end = repo(c)?.window_end?;
                Some((now? - end).max(0.0))
            }),
        )?;
        family(
            enc,
            "synapse_backup_rto_objective_seconds",
            "The configured recovery time objective (rto_objective).",
            Gauge,
            self.per_cluster(&|c| c.rto_objective),
        )?;
        family(
            enc,
            "synapse_backup_rpo_objective_seconds",
            "The configured recovery point objective (rpo_objective).",
            Gauge,
            self.per_cluster(&|c| c.rpo_objective),
        )?;
        Ok(())
    }

    fn encode_verification_and_archiving(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        // Verification.
        family(
            enc,
            "synapse_backup_last_verify_timestamp_seconds",
            "When the last verification finished (by this agent, or the newest report in the repository; Unix time).",
            Gauge,
            self.per_cluster(&|c| c.last_verify().map(|v| v.at)),
        )?;
        family(
            enc,
            "synapse_backup_last_verify_success",
            "Whether the last verification proved the backup restorable (1) or not (0: it failed, or could not run).",
            Gauge,
            self.per_cluster(&|c| c.last_verify().map(|v| flag(v.ok))),
        )?;

        // WAL archiving, read from PostgreSQL at scrape time.
        let arch = |c: &ClusterMetrics| c.archiver.clone();
        let backlog = |c: &ClusterMetrics| c.backlog.clone();
        family(
            enc,
            "synapse_backup_postgres_up",
            "Whether this scrape could query the cluster's PostgreSQL.",
            Gauge,
            self.per_cluster(&|c| c.postgres_up.map(flag)),
        )?;
        family(
            enc,
            "synapse_backup_wal_archived",
            "WAL files archived (pg_stat_archiver.archived_count).",
            Counter,
            self.per_cluster(&|c| arch(c).map(|a| a.archived_count as f64)),
        )?;
        family(
            enc,
            "synapse_backup_wal_archive_failures",
            "Failed archive attempts (pg_stat_archiver.failed_count).",
            Counter,
            self.per_cluster(&|c| arch(c).map(|a| a.failed_count as f64)),
        )?;
        family(
            enc,
            "synapse_backup_wal_last_archived_timestamp_seconds",
            "When the last WAL file was archived (pg_stat_archiver.last_archived_time; 0: never).",
            Gauge,
            self.per_cluster(&|c| arch(c).map(|a| a.last_archived_time.unwrap_or(0.0))),
        )?;
        family(
            enc,
            "synapse_backup_wal_last_archive_failure_timestamp_seconds",
            "When archiving last failed (pg_stat_archiver.last_failed_time; 0: never).",
            Gauge,
            self.per_cluster(&|c| arch(c).map(|a| a.last_failed_time.unwrap_or(0.0))),
        )?;
        family(
            enc,
            "synapse_backup_wal_written_bytes",
            "WAL written by the cluster: pg_current_wal_lsn() in bytes (primaries only).",
            Counter,
            self.per_cluster(&|c| arch(c).and_then(|a| a.wal_position_bytes)),
        )?;
        family(
            enc,
            "synapse_backup_wal_archive_ready_files",
            "WAL files waiting to be archived (.ready files in pg_wal/archive_status).",
            Gauge,
            self.per_cluster(&|c| backlog(c).map(|b| b.ready_files as f64)),
        )?;
        family(
            enc,
            "synapse_backup_wal_archive_ready_bytes",
            "Bytes of WAL waiting to be archived.",
            Gauge,
            self.per_cluster(&|c| backlog(c).map(|b| b.ready_bytes as f64)),
        )?;
        family(
            enc,
            "synapse_backup_wal_archive_oldest_ready_age_seconds",
            "How long the oldest WAL file waiting to be archived has waited (0: none waits).",
            Gauge,
            self.per_cluster(&|c| backlog(c).map(|b| b.oldest_ready_age_seconds)),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed() -> AgentMetrics {
        let mut core = ClusterMetrics {
            retention_seconds: 30.0 * 86400.0,
            repo: Some(RepoFacts {
                backups: 2,
                newest: Some(NewestBackup {
                    start: 1_700_000_000.0,
                    stop: 1_700_000_090.5,
                    original_bytes: 1_000_000,
                    stored_bytes: 250_000,
                }),
                backups_bytes: 500_000,
                wal_bytes: 64 << 20,
                created: Some(1_690_000_000.0),
                window_start: Some(1_699_000_000.0),
                window_end: Some(1_700_000_500.0),
                last_verify: Some(VerifyResult {
                    at: 1_700_000_200.0,
                    ok: true,
                }),
                wal_conflicts: 1,
                timeline: Some(2),
                damaged_backups: 1,
                wal_gap: Some("000000020000000000000007".into()),
                split_brains: 1,
                encrypted: true,
                stored_bytes_full: 400_000,
                stored_bytes_incr: 100_000,
                newest_chain_length: Some(3),
                rto_seconds: Some(95.5),
            }),
            rto_objective: Some(14_400.0),
            rpo_objective: Some(900.0),
            repo_up: Some(true),
            verify: Some(VerifyResult {
                at: 1_700_000_300.0,
                ok: false,
            }),
            postgres_up: Some(true),
            archiver: Some(ArchiverStats {
                archived_count: 12,
                last_archived_time: Some(1_700_000_400.25),
                failed_count: 1,
                last_failed_time: None,
                wal_position_bytes: Some(234_881_024.0),
            }),
            backlog: Some(ArchiveBacklog {
                ready_files: 2,
                ready_bytes: 32 << 20,
                oldest_ready_age_seconds: 42.5,
            }),
            ..Default::default()
        };
        *core.job(JobKind::Backup) = JobStats {
            runs: 3,
            failures: 1,
            running: false,
            last_success: Some(1_700_000_091.0),
            last_duration_seconds: Some(91.0),
            next_run: Some(1_700_086_400.0),
        };
        *core.job(JobKind::Verify) = JobStats {
            runs: 1,
            failures: 1,
            running: true,
            ..Default::default()
        };
        AgentMetrics {
            now: Some(1_700_000_560.0),
            version: "0.1.0".into(),
            start_time: 1_699_999_000.0,
            reload_ok: true,
            reload_ok_time: 1_699_999_000.0,
            clusters: BTreeMap::from([("core".to_string(), core)]),
        }
    }

    #[test]
    fn renders_every_metric_in_prometheus_text_format() {
        let text = render(&fixed());
        let expected = r#"# HELP synapse_backup_agent_info The running agent; its version is a label.
# TYPE synapse_backup_agent_info gauge
synapse_backup_agent_info{version="0.1.0"} 1.0
# HELP synapse_backup_agent_start_timestamp_seconds When the agent started (Unix time).
# TYPE synapse_backup_agent_start_timestamp_seconds gauge
synapse_backup_agent_start_timestamp_seconds 1699999000.0
# HELP synapse_backup_config_last_reload_successful Whether the last configuration (re)load succeeded (1) or was refused and the old one kept (0).
# TYPE synapse_backup_config_last_reload_successful gauge
synapse_backup_config_last_reload_successful 1.0
# HELP synapse_backup_config_last_reload_success_timestamp_seconds When the configuration was last loaded successfully (Unix time).
# TYPE synapse_backup_config_last_reload_success_timestamp_seconds gauge
synapse_backup_config_last_reload_success_timestamp_seconds 1699999000.0
# HELP synapse_backup_job_runs_total Jobs run by this agent, by cluster and job type (backup, expire, verify).
# TYPE synapse_backup_job_runs_total counter
synapse_backup_job_runs_total{cluster="core",job_type="backup"} 3
synapse_backup_job_runs_total{cluster="core",job_type="expire"} 0
synapse_backup_job_runs_total{cluster="core",job_type="verify"} 1
# HELP synapse_backup_job_failures_total Jobs that failed, by cluster and job type.
# TYPE synapse_backup_job_failures_total counter
synapse_backup_job_failures_total{cluster="core",job_type="backup"} 1
synapse_backup_job_failures_total{cluster="core",job_type="expire"} 0
synapse_backup_job_failures_total{cluster="core",job_type="verify"} 1
# HELP synapse_backup_job_running Whether the job is running now.
# TYPE synapse_backup_job_running gauge
synapse_backup_job_running{cluster="core",job_type="backup"} 0.0
synapse_backup_job_running{cluster="core",job_type="expire"} 0.0
synapse_backup_job_running{cluster="core",job_type="verify"} 1.0
# HELP synapse_backup_job_last_duration_seconds How long the job's last run took, successful or not.
# TYPE synapse_backup_job_last_duration_seconds gauge
synapse_backup_job_last_duration_seconds{cluster="core",job_type="backup"} 91.0
# HELP synapse_backup_last_success_timestamp_seconds When the job last succeeded (Unix time). For backup: the end of the newest complete backup in the repository.
# TYPE synapse_backup_last_success_timestamp_seconds gauge
synapse_backup_last_success_timestamp_seconds{cluster="core",job_type="backup"} 1700000091.0
# HELP synapse_backup_next_run_timestamp_seconds When the schedule next starts the job (Unix time).
# TYPE synapse_backup_next_run_timestamp_seconds gauge
synapse_backup_next_run_timestamp_seconds{cluster="core",job_type="backup"} 1700086400.0
# HELP synapse_backup_repository_up Whether the agent's last read of the repository succeeded.
# TYPE synapse_backup_repository_up gauge
synapse_backup_repository_up{cluster="core"} 1.0
# HELP synapse_backup_repository_encrypted Whether the repository is encrypted at rest (1) or not (0).
# TYPE synapse_backup_repository_encrypted gauge
synapse_backup_repository_encrypted{cluster="core"} 1.0
# HELP synapse_backup_backups Complete backups (with a manifest) in the repository.
# TYPE synapse_backup_backups gauge
synapse_backup_backups{cluster="core"} 2.0
# HELP synapse_backup_last_backup_duration_seconds How long the newest backup took, from pg_backup_start to its manifest.
# TYPE synapse_backup_last_backup_duration_seconds gauge
synapse_backup_last_backup_duration_seconds{cluster="core"} 90.5
# HELP synapse_backup_last_backup_original_bytes Size of the newest backup's files in the data directory.
# TYPE synapse_backup_last_backup_original_bytes gauge
synapse_backup_last_backup_original_bytes{cluster="core"} 1000000.0
# HELP synapse_backup_last_backup_stored_bytes Size of the newest backup in the store (compressed).
# TYPE synapse_backup_last_backup_stored_bytes gauge
synapse_backup_last_backup_stored_bytes{cluster="core"} 250000.0
# HELP synapse_backup_repository_bytes Bytes stored in the repository, by kind (backups, wal).
# TYPE synapse_backup_repository_bytes gauge
synapse_backup_repository_bytes{cluster="core",kind="backups"} 500000.0
synapse_backup_repository_bytes{cluster="core",kind="wal"} 67108864.0
# HELP synapse_backup_repository_created_timestamp_seconds When the repository was created (its repository.json was written; Unix time).
# TYPE synapse_backup_repository_created_timestamp_seconds gauge
synapse_backup_repository_created_timestamp_seconds{cluster="core"} 1690000000.0
# HELP synapse_backup_recoverable_window_start_timestamp_seconds The earliest moment a restore can reach: the end of the earliest backup (Unix time).
# TYPE synapse_backup_recoverable_window_start_timestamp_seconds gauge
synapse_backup_recoverable_window_start_timestamp_seconds{cluster="core"} 1699000000.0
# HELP synapse_backup_recoverable_window_end_timestamp_seconds The latest moment a restore can reach: the last commit archived before any WAL gap (Unix time).
# TYPE synapse_backup_recoverable_window_end_timestamp_seconds gauge
synapse_backup_recoverable_window_end_timestamp_seconds{cluster="core"} 1700000500.0
# HELP synapse_backup_wal_conflicts WAL files refused because different content is archived under the same name (split brain: two servers archive as one); kept under conflicts/ in the repository.
# TYPE synapse_backup_wal_conflicts gauge
synapse_backup_wal_conflicts{cluster="core"} 1.0
# HELP synapse_backup_damaged_backups Backups whose manifest is stored but cannot be read (damaged or edited): skipped by list, restore, verify and expire; repair or remove them.
# TYPE synapse_backup_damaged_backups gauge
synapse_backup_damaged_backups{cluster="core"} 1.0
# HELP synapse_backup_wal_gap 1 when a WAL segment is missing from the archive after the earliest backup's start while newer WAL was archived: the recoverable window ends before it (list and check name it).
# TYPE synapse_backup_wal_gap gauge
synapse_backup_wal_gap{cluster="core"} 1.0
# HELP synapse_backup_timeline The newest timeline in the WAL archive (rises with every promotion).
# TYPE synapse_backup_timeline gauge
synapse_backup_timeline{cluster="core"} 2.0
# HELP synapse_backup_split_brain_timelines Pairs of timelines that both received WAL after their branch point (a restored copy or an old primary archiving beside the primary); restore needs --timeline N until resolved.
# TYPE synapse_backup_split_brain_timelines gauge
synapse_backup_split_brain_timelines{cluster="core"} 1.0
# HELP synapse_backup_retention_target_seconds The configured retention (retention_days): the window every moment of which should stay recoverable.
# TYPE synapse_backup_retention_target_seconds gauge
synapse_backup_retention_target_seconds{cluster="core"} 2592000.0
# HELP synapse_backup_last_backup_chain_length Backups needed to restore the newest backup, itself included: 1 for a full, 1 + its incrementals' count otherwise.
# TYPE synapse_backup_last_backup_chain_length gauge
synapse_backup_last_backup_chain_length{cluster="core"} 3.0
# HELP synapse_backup_stored_bytes Bytes stored by the complete backups of each type (full, incr), compressed.
# TYPE synapse_backup_stored_bytes gauge
synapse_backup_stored_bytes{cluster="core",type="full"} 400000.0
synapse_backup_stored_bytes{cluster="core",type="incr"} 100000.0
# HELP synapse_backup_rto_seconds The recovery time the last verification measured: restore plus WAL replay to its target.
# TYPE synapse_backup_rto_seconds gauge
synapse_backup_rto_seconds{cluster="core"} 95.5
# HELP synapse_backup_rpo_seconds The data-loss exposure now: the age of the last commit archived (read with the repository, every few minutes).
# TYPE synapse_backup_rpo_seconds gauge
synapse_backup_rpo_seconds{cluster="core"} 60.0
# HELP synapse_backup_rto_objective_seconds The configured recovery time objective (rto_objective).
# TYPE synapse_backup_rto_objective_seconds gauge
synapse_backup_rto_objective_seconds{cluster="core"} 14400.0
# HELP synapse_backup_rpo_objective_seconds The configured recovery point objective (rpo_objective).
# TYPE synapse_backup_rpo_objective_seconds gauge
synapse_backup_rpo_objective_seconds{cluster="core"} 900.0
# HELP synapse_backup_last_verify_timestamp_seconds When the last verification finished (by this agent, or the newest report in the repository; Unix time).
# TYPE synapse_backup_last_verify_timestamp_seconds gauge
synapse_backup_last_verify_timestamp_seconds{cluster="core"} 1700000300.0
# HELP synapse_backup_last_verify_success Whether the last verification proved the backup restorable (1) or not (0: it failed, or could not run).
# TYPE synapse_backup_last_verify_success gauge
synapse_backup_last_verify_success{cluster="core"} 0.0
# HELP synapse_backup_postgres_up Whether this scrape could query the cluster's PostgreSQL.
# TYPE synapse_backup_postgres_up gauge
synapse_backup_postgres_up{cluster="core"} 1.0
# HELP synapse_backup_wal_archived_total WAL files archived (pg_stat_archiver.archived_count).
# TYPE synapse_backup_wal_archived_total counter
synapse_backup_wal_archived_total{cluster="core"} 12
# HELP synapse_backup_wal_archive_failures_total Failed archive attempts (pg_stat_archiver.failed_count).
# TYPE synapse_backup_wal_archive_failures_total counter
synapse_backup_wal_archive_failures_total{cluster="core"} 1
# HELP synapse_backup_wal_last_archived_timestamp_seconds When the last WAL file was archived (pg_stat_archiver.last_archived_time; 0: never).
# TYPE synapse_backup_wal_last_archived_timestamp_seconds gauge
synapse_backup_wal_last_archived_timestamp_seconds{cluster="core"} 1700000400.25
# HELP synapse_backup_wal_last_archive_failure_timestamp_seconds When archiving last failed (pg_stat_archiver.last_failed_time; 0: never).
# TYPE synapse_backup_wal_last_archive_failure_timestamp_seconds gauge
synapse_backup_wal_last_archive_failure_timestamp_seconds{cluster="core"} 0.0
# HELP synapse_backup_wal_written_bytes_total WAL written by the cluster: pg_current_wal_lsn() in bytes (primaries only).
# TYPE synapse_backup_wal_written_bytes_total counter
synapse_backup_wal_written_bytes_total{cluster="core"} 234881024
# HELP synapse_backup_wal_archive_ready_files WAL files waiting to be archived (.ready files in pg_wal/archive_status).
# TYPE synapse_backup_wal_archive_ready_files gauge
synapse_backup_wal_archive_ready_files{cluster="core"} 2.0
# HELP synapse_backup_wal_archive_ready_bytes Bytes of WAL waiting to be archived.
# TYPE synapse_backup_wal_archive_ready_bytes gauge
synapse_backup_wal_archive_ready_bytes{cluster="core"} 33554432.0
# HELP synapse_backup_wal_archive_oldest_ready_age_seconds How long the oldest WAL file waiting to be archived has waited (0: none waits).
# TYPE synapse_backup_wal_archive_oldest_ready_age_seconds gauge
synapse_backup_wal_archive_oldest_ready_age_seconds{cluster="core"} 42.5
"#;
        if text != expected {
            for (i, (got, want)) in text.lines().zip(expected.lines()).enumerate() {
                assert_eq!(got, want, "line {}", i + 1);
            }
            assert_eq!(text, expected);
        }
    }

    #[test]
    fn clusters_render_in_name_order_and_unknowns_are_left_out() {
        let mut m = fixed();
        m.clusters.insert(
            "analytics".into(),
            ClusterMetrics {
                retention_seconds: 86400.0,
                postgres_up: Some(false),
                ..Default::default()
            },
        );
        let text = render(&m);
        let up: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("synapse_backup_postgres_up{"))
            .collect();
        assert_eq!(
            up,
            [
                "synapse_backup_postgres_up{cluster=\"analytics\"} 0.0",
                "synapse_backup_postgres_up{cluster=\"core\"} 1.0"
            ]
        );
        // Nothing known about analytics' archiver or repository: no sample, no made-up zero.
        assert!(!text.contains("synapse_backup_wal_archived_total{cluster=\"analytics\"}"));
        assert!(!text.contains("synapse_backup_backups{cluster=\"analytics\"}"));
        // But its job counters start at zero, so rate() and increase() work from the start.
        assert!(text.contains(
            "synapse_backup_job_failures_total{cluster=\"analytics\",job_type=\"backup\"} 0"
        ));
    }

    #[test]
    fn last_verification_is_the_newer_of_agent_and_repository() {
        let mut c = fixed().clusters.remove("core").unwrap();
        // The agent's failed run (no report: it could not run) is newer than the report.
        assert_eq!(
            c.last_verify().map(|v| (v.at, v.ok)),
            Some((1_700_000_300.0, false))
        );
        // A newer report (e.g. `verify` run by hand) wins.
        c.repo.as_mut().unwrap().last_verify = Some(VerifyResult {
            at: 1_700_000_400.0,
            ok: true,
        });
        assert_eq!(
            c.last_verify().map(|v| (v.at, v.ok)),
            Some((1_700_000_400.0, true))
        );
        c.verify = None;
        c.repo = None;
        assert_eq!(c.last_verify(), None);
    }

    #[test]
    fn last_backup_success_takes_the_newer_of_agent_and_repository() {
        let mut c = fixed().clusters.remove("core").unwrap();
        assert_eq!(c.last_success(JobKind::Backup), Some(1_700_000_091.0));
        c.job(JobKind::Backup).last_success = None;
        assert_eq!(c.last_success(JobKind::Backup), Some(1_700_000_090.5));
        c.repo = None;
        assert_eq!(c.last_success(JobKind::Backup), None);
        assert_eq!(c.last_success(JobKind::Expire), None);
    }
}
