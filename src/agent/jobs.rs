//! Per cluster: a queue, one worker that runs the queued jobs one at a time (so jobs of a
//! cluster never overlap), a timer per schedule (registered with the agent's job scheduler,
//! see [`super::schedule`]) that queues jobs at fire time, and a repository refresher that
//! feeds the metrics and decides about a missed run at start-up.
//!
//! A job chain (backup, then expire after a successful backup, then verify) takes a permit of
//! the shared gate first: one chain at a time across clusters, unless `parallel_clusters`.
//! A fire time that finds the same job still queued or running is skipped, with a log line:
//! runs never pile up behind a slow one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::facts::{self, RepoReader};
use super::metrics::{JobKind, NewestBackup, VerifyResult};
use super::schedule::{self, Timers};
use super::Shared;
use crate::config::{BackupFrom, ClusterConfig, Config};
use crate::repo::lock::RepoLock;
use crate::repo::manifest::{BackupId, BackupKind, BackupManifest};
use crate::repo::Repository;
use crate::settings::ExpireSettings;

/// How often the repository is read for the metrics when nothing else asks.
const REPO_REFRESH: Duration = Duration::from_secs(300);
/// Bound of one repository read (a listing, new manifests, a few WAL headers).
const REPO_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of the best-effort lock release after an aborted job.
const LOCK_RELEASE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a verification gets to stop after SIGTERM before SIGKILL.
const VERIFY_STOP_GRACE: Duration = Duration::from_secs(5);
/// `synapse-backup verify` exits with this when the backup failed verification.
const VERIFY_FAILED_EXIT: i32 = crate::error::exit::VERIFY_FAILED as i32;
/// `synapse-backup verify` exits with this for a usage or config problem.
const USAGE_EXIT: i32 = crate::error::exit::USAGE as i32;

/// What a queue entry starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Backup, expire, and verify when `verify_after_backup`.
    Backup,
    /// Verify the newest backup (`verify_schedule`).
    Verify,
}

impl Trigger {
    fn job(self) -> JobKind {
        match self {
            Trigger::Backup => JobKind::Backup,
            Trigger::Verify => JobKind::Verify,
        }
    }
}

#[derive(Debug, Default)]
struct QueueState {
    backup: Option<&'static str>,
    verify: Option<&'static str>,
    /// Taken from the queue: waiting for the gate, or running.
    active: Option<Trigger>,
}

/// One cluster's queue: at most one pending entry per trigger.
#[derive(Debug, Default)]
pub struct JobQueue {
    state: Mutex<QueueState>,
    notify: Notify,
}

impl JobQueue {
    /// Queue `trigger` (`reason` is for the log). `false` when it was already queued or active.
    pub fn push(&self, cluster: &str, trigger: Trigger, reason: &'static str) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let slot_taken = match trigger {
            Trigger::Backup => s.backup.is_some(),
            Trigger::Verify => s.verify.is_some(),
        };
        if slot_taken || s.active == Some(trigger) {
            tracing::warn!(
                cluster,
                job = trigger.job().name(),
                "{reason}: skipped, the previous {} of {cluster} is still queued or running",
                trigger.job()
            );
            return false;
        }
        match trigger {
            Trigger::Backup => s.backup = Some(reason),
            Trigger::Verify => s.verify = Some(reason),
        }
        drop(s);
        self.notify.notify_one();
        true
    }

    /// The next entry (backups first); it stays active until [`JobQueue::finish`].
    fn take(&self) -> Option<(Trigger, &'static str)> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let next = if let Some(r) = s.backup.take() {
            Some((Trigger::Backup, r))
        } else {
            s.verify.take().map(|r| (Trigger::Verify, r))
        };
        if let Some((t, _)) = next {
            s.active = Some(t);
        }
        next
    }

    fn finish(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).active = None;
    }
}

/// The running parts of one configured cluster.
struct ClusterHandle {
    queue: Arc<JobQueue>,
    /// Wakes the repository refresher.
    refresh: Arc<Notify>,
    /// Cancelled when the cluster leaves the config (its worker ends after the current job).
    retire: CancellationToken,
    /// Cancelled and replaced at each reload.
    schedules: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// All clusters' handles.
pub struct Clusters {
    timers: Timers,
    handles: BTreeMap<String, ClusterHandle>,
    retired: Vec<JoinHandle<()>>,
}

impl Clusters {
    pub fn new(timers: Timers) -> Self {
        Clusters {
            timers,
            handles: BTreeMap::new(),
            retired: Vec::new(),
        }
    }

    /// Bring the running clusters in line with `cfg` (at start-up and after each reload).
    pub async fn apply(&mut self, shared: &Arc<Shared>, cfg: &Arc<Config>) {
        shared.set_config(cfg.clone());
        let zone = cfg.timezone();
        let retention = f64::from(cfg.repository.retention_days) * 86_400.0;
        let names: Vec<&str> = cfg.clusters.iter().map(|c| c.name.as_str()).collect();
        let gone: Vec<String> = self
            .handles
            .keys()
            .filter(|n| !names.contains(&n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(h) = self.handles.remove(&name) {
                tracing::info!(cluster = %name, "no longer configured: its schedules stop");
                h.schedules.cancel();
                h.retire.cancel();
                self.retired.extend(h.tasks);
            }
            shared
                .metrics
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clusters
                .remove(&name);
        }
        for cluster in &cfg.clusters {
            let name = cluster.name.clone();
            {
                let mut m = shared.metrics.lock().unwrap_or_else(|p| p.into_inner());
                let entry = m.clusters.entry(name.clone()).or_default();
                entry.retention_seconds = retention;
                entry.rto_objective = cluster.rto_objective(&cfg.agent).map(|d| d.as_secs_f64());
                entry.rpo_objective = cluster.rpo_objective(&cfg.agent).map(|d| d.as_secs_f64());
                for kind in JobKind::ALL {
                    entry.job(kind).next_run = None;
                }
            }
            let handle = self.handles.entry(name.clone()).or_insert_with(|| {
                let queue = Arc::new(JobQueue::default());
                let refresh = Arc::new(Notify::new());
                let retire = shared.shutdown.child_token();
                let tasks = vec![
                    tokio::spawn(worker(
                        shared.clone(),
                        name.clone(),
                        queue.clone(),
                        refresh.clone(),
                        retire.clone(),
                    )),
                    tokio::spawn(refresher(
                        shared.clone(),
                        name.clone(),
                        queue.clone(),
                        refresh.clone(),
                        retire.clone(),
                    )),
                ];
                ClusterHandle {
                    queue,
                    refresh,
                    retire,
                    schedules: CancellationToken::new(),
                    tasks,
                }
            });
            handle.schedules.cancel();
            handle.schedules = handle.retire.child_token();
            handle.refresh.notify_one();
            let backup = cluster.backup_schedule(&cfg.agent);
            let verify = cluster.verify_schedule(&cfg.agent);
            for (trigger, s) in [(Trigger::Backup, Some(backup)), (Trigger::Verify, verify)] {
                let Some(s) = s else { continue };
                tracing::info!(
                    cluster = %name,
                    job = trigger.job().name(),
                    schedule = s.expr(),
                    %zone,
                    next = %s.next_after(Utc::now(), zone).map_or("never".into(), |t| t.with_timezone(&zone).to_rfc3339()),
                    "scheduled"
                );
                let on_next = {
                    let (shared, cluster, expr) =
                        (shared.clone(), name.clone(), s.expr().to_string());
                    move |next: Option<chrono::DateTime<Utc>>| match next {
                        Some(next) => {
                            shared.with_cluster(&cluster, |c| {
                                c.job(trigger.job()).next_run = Some(next.timestamp() as f64);
                            });
                        }
                        None => {
                            tracing::warn!(cluster = %cluster, schedule = %expr, "the schedule fires no more")
                        }
                    }
                };
                let on_fire = {
                    let (queue, cluster) = (handle.queue.clone(), name.clone());
                    move || {
                        queue.push(&cluster, trigger, "scheduled run");
                    }
                };
                let registered = self
                    .timers
                    .every(s.clone(), zone, handle.schedules.clone(), on_next, on_fire)
                    .await;
                if let Err(e) = registered {
                    tracing::error!(cluster = %name, "not scheduled: {e:#}");
                }
            }
            super::catalog::schedule(
                &self.timers,
                shared,
                &name,
                &cfg.agent.catalog_schedule,
                zone,
                handle.schedules.clone(),
            )
            .await;
            handle.tasks.retain(|t| !t.is_finished());
        }
    }

    /// Wait for every task (after the shutdown token was cancelled), and stop the timers.
    pub async fn join(&mut self) {
        let mut all: Vec<JoinHandle<()>> = std::mem::take(&mut self.retired);
        for (_, h) in std::mem::take(&mut self.handles) {
            all.extend(h.tasks);
        }
        futures::future::join_all(all).await;
        self.timers.shutdown().await;
    }
}

/// Read the repository for the metrics every few minutes and when poked; after the first
/// successful read, queue a backup if a scheduled one was missed.
async fn refresher(
    shared: Arc<Shared>,
    cluster: String,
    queue: Arc<JobQueue>,
    poke: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut reader = RepoReader::default();
    let mut checked_missed_run = false;
    loop {
        let cfg = shared.config();
        if let Some(c) = cfg.clusters.iter().find(|c| c.name == cluster) {
            let read = async {
                let repo = Repository::open(&cfg.repository, &c.name)?;
                reader.read(&repo).await
            };
            let read = tokio::select! {
                r = tokio::time::timeout(REPO_READ_TIMEOUT, read) => r,
                _ = stop.cancelled() => return,
            };
            let read = match read {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(anyhow::anyhow!(
                    "no answer within {} s",
                    REPO_READ_TIMEOUT.as_secs()
                )),
            };
            match read {
                Ok(r) => {
                    shared.with_cluster(&cluster, |m| {
                        m.repo = Some(r.facts.clone());
                        m.repo_up = Some(true);
                    });
                    if !checked_missed_run {
                        checked_missed_run = true;
                        check_missed_run(&cfg, c, r.newest.map(|b| b.start_time), &queue);
                    }
                }
                Err(e) => {
                    tracing::warn!(cluster = %cluster, "cannot read the repository for the metrics: {e:#}");
                    shared.with_cluster(&cluster, |m| m.repo_up = Some(false));
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REPO_REFRESH) => {}
            _ = poke.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

fn check_missed_run(
    cfg: &Config,
    cluster: &ClusterConfig,
    last_start: Option<chrono::DateTime<Utc>>,
    queue: &JobQueue,
) {
    let s = cluster.backup_schedule(&cfg.agent);
    let zone = cfg.timezone();
    let latest_fire = s.prev_at_or_before(Utc::now(), zone);
    if schedule::missed_run(last_start, latest_fire) {
        tracing::info!(
            cluster = %cluster.name,
            last_backup_start = %last_start.map_or("none".into(), |t| t.to_rfc3339()),
            missed_fire = %latest_fire.map_or("none".into(), |t| t.with_timezone(&zone).to_rfc3339()),
            "a scheduled backup was missed (no backup since the schedule's latest fire time): backing up now"
        );
        queue.push(&cluster.name, Trigger::Backup, "missed run at start-up");
    }
}

/// Run the cluster's queued jobs one at a time.
async fn worker(
    shared: Arc<Shared>,
    cluster: String,
    queue: Arc<JobQueue>,
    refresh: Arc<Notify>,
    retire: CancellationToken,
) {
    loop {
        let (trigger, reason) = loop {
            if let Some(next) = queue.take() {
                break next;
            }
            tokio::select! {
                _ = queue.notify.notified() => {}
                _ = retire.cancelled() => return,
            }
        };
        let permit = tokio::select! {
            p = shared.gate.clone().acquire_owned() => p,
            _ = shared.shutdown.cancelled() => return,
        };
        let Ok(_permit) = permit else { return };
        let cfg = shared.config();
        if let Some(c) = cfg.clusters.iter().find(|c| c.name == cluster) {
            match trigger {
                Trigger::Backup => backup_chain(&shared, &cfg, c, reason).await,
                Trigger::Verify => {
                    run_job(&shared, &cluster, JobKind::Verify, reason, async {
                        let id = tokio::select! {
                            id = newest_backup(&cfg, c) => id?,
                            _ = shared.shutdown.cancelled() => bail!("aborted: the agent is stopping"),
                        };
                        match id {
                            Some(id) => verify(&shared, &cluster, &id).await,
                            None => bail!("there is no backup to verify"),
                        }
                    })
                    .await;
                }
            }
            refresh.notify_one();
        }
        queue.finish();
        if shared.shutdown.is_cancelled() {
            return;
        }
    }
}

async fn newest_backup(cfg: &Config, cluster: &ClusterConfig) -> anyhow::Result<Option<BackupId>> {
    let repo = Repository::open(&cfg.repository, &cluster.name)?;
    tokio::time::timeout(REPO_READ_TIMEOUT, facts::newest_backup_id(&repo))
        .await
        .context("list backups: no answer in time")?
}

/// Why this host's agent leaves a scheduled backup to another node, if it does. With several
/// nodes listed in `connection`, an agent runs on every node of the pair and only the node of
/// the role `backup_from` asks for backs up (the backup reads the local data directory); the
/// others would only fail their identity check every night. A single-node connection is
/// never skipped: a wrong `backup_from` there must fail loudly.
fn not_this_host(cluster: &ClusterConfig) -> Option<String> {
    let hosts = crate::pg::conninfo::parse(&cluster.connection)
        .ok()?
        .get_hosts()
        .len();
    let local_is_standby = crate::pg::datadir::has_standby_signal(&cluster.pgdata);
    skip_decision(hosts, cluster.backup_from, local_is_standby)
}

fn skip_decision(hosts: usize, from: BackupFrom, local_is_standby: bool) -> Option<String> {
    if hosts < 2 {
        return None;
    }
    match (from, local_is_standby) {
        (BackupFrom::Primary, true) => Some(
            "the local server is a standby and backup_from = \"primary\": the primary's host takes it".into(),
        ),
        (BackupFrom::Standby, false) => Some(
            "the local server is not a standby and backup_from = \"standby\": the standby's host takes it".into(),
        ),
        _ => None,
    }
}

/// Backup; after a successful backup, expire and (if configured) verify.
async fn backup_chain(
    shared: &Arc<Shared>,
    cfg: &Arc<Config>,
    cluster: &ClusterConfig,
    reason: &str,
) {
    let name = &cluster.name;
    if let Some(why) = not_this_host(cluster) {
        tracing::info!(cluster = %name, "backup skipped on this host: {why}");
        return;
    }
    let Some(manifest) = run_job(
        shared,
        name,
        JobKind::Backup,
        reason,
        backup(shared, cfg, cluster),
    )
    .await
    else {
        return;
    };
    shared.with_cluster(name, |m| {
        let repo = m.repo.get_or_insert_with(Default::default);
        repo.newest = Some(NewestBackup {
            start: manifest.start_time.timestamp_millis() as f64 / 1000.0,
            stop: manifest.stop_time.timestamp_millis() as f64 / 1000.0,
            original_bytes: manifest.original_size(),
            stored_bytes: manifest.stored_size(),
        });
    });
    if shared.shutdown.is_cancelled() {
        return;
    }
    run_job(
        shared,
        name,
        JobKind::Expire,
        "after the backup",
        expire(shared, cfg, cluster),
    )
    .await;
    if cluster.verify_after_backup(&cfg.agent) && !shared.shutdown.is_cancelled() {
        run_job(
            shared,
            name,
            JobKind::Verify,
            "after the backup",
            verify(shared, name, &manifest.id),
        )
        .await;
    }
}

/// Run one job: count it, time it, log its end once, record its outcome.
async fn run_job<T>(
    shared: &Shared,
    cluster: &str,
    kind: JobKind,
    reason: &str,
    job: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Option<T> {
    let span = tracing::info_span!("job", cluster, job = kind.name());
    async {
        tracing::info!("starting {kind} of {cluster} ({reason})");
        shared.with_cluster(cluster, |m| {
            let j = m.job(kind);
            j.runs += 1;
            j.running = true;
        });
        let started = Instant::now();
        let result = job.await;
        let secs = started.elapsed().as_secs_f64();
        let now = Utc::now().timestamp_millis() as f64 / 1000.0;
        shared.with_cluster(cluster, |m| {
            let j = m.job(kind);
            j.running = false;
            j.last_duration_seconds = Some(secs);
            match &result {
                Ok(_) => j.last_success = Some(now),
                Err(_) => j.failures += 1,
            }
            if kind == JobKind::Verify {
                m.verify = Some(VerifyResult {
                    at: now,
                    ok: result.is_ok(),
                });
            }
        });
        match result {
            Ok(v) => {
                tracing::info!("{kind} of {cluster} done in {secs:.1} s");
                Some(v)
            }
            Err(e) => {
                tracing::error!("failed to {kind} {cluster}: {e:#}");
                None
            }
        }
    }
    .instrument(span)
    .await
}

fn repository(cfg: &Config, cluster: &ClusterConfig) -> anyhow::Result<Repository> {
    Repository::open(&cfg.repository, &cluster.name)
}

/// `backup`, aborted at shutdown.
async fn backup(
    shared: &Shared,
    cfg: &Config,
    cluster: &ClusterConfig,
) -> anyhow::Result<BackupManifest> {
    let repo = repository(cfg, cluster)?;
    let kind = tokio::select! {
        k = scheduled_kind(cfg, cluster, &repo) => k,
        _ = shared.shutdown.cancelled() => bail!("aborted: the agent is stopping"),
    };
    tokio::select! {
        m = crate::commands::backup::take_backup_of_kind(cfg, cluster, &repo, kind) => {
            let m = m?;
            tracing::info!(backup_id = %m.id, "backup {} stored", m.id);
            Ok(m)
        }
        _ = shared.shutdown.cancelled() => {
            // Dropping take_backup's future closes its database session, and PostgreSQL ends
            // a non-exclusive backup whose session ends. Parts already stored have no
            // manifest: the backup is never listed, and expire removes the parts later.
            release_own_lock(&repo).await;
            bail!("aborted: the agent is stopping; the unfinished backup has no manifest and is not listed")
        }
    }
}

/// Full or incremental, by the cluster's `full_schedule` and the newest full backup. When the
/// repository cannot be read for it, a full (which needs no parent).
async fn scheduled_kind(cfg: &Config, cluster: &ClusterConfig, repo: &Repository) -> BackupKind {
    let Some(full_schedule) = cluster.full_schedule(&cfg.agent) else {
        return BackupKind::Full;
    };
    let newest_full = tokio::time::timeout(REPO_READ_TIMEOUT, newest_full_start(repo)).await;
    let newest_full = match newest_full {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!("cannot find the newest full backup ({e:#}): taking a full");
            return BackupKind::Full;
        }
        Err(_) => {
            tracing::warn!("cannot find the newest full backup (no answer in time): taking a full");
            return BackupKind::Full;
        }
    };
    let (kind, why) =
        schedule::backup_kind_due(Some(full_schedule), newest_full, Utc::now(), cfg.timezone());
    let what = match kind {
        BackupKind::Full => "a full",
        BackupKind::Incr => "an incremental",
    };
    tracing::info!(cluster = %cluster.name, "this backup is {what}: {why}");
    kind
}

/// When the newest full backup started: manifests are read newest first until a full.
async fn newest_full_start(repo: &Repository) -> anyhow::Result<Option<chrono::DateTime<Utc>>> {
    for id in repo.backup_ids().await?.iter().rev() {
        if let Some(Ok(m)) = repo.read_manifest(id).await? {
            if m.kind == BackupKind::Full {
                return Ok(Some(m.start_time));
            }
        }
    }
    Ok(None)
}

/// `expire` after a successful backup, aborted at shutdown (its deletion order survives that).
async fn expire(shared: &Shared, cfg: &Config, cluster: &ClusterConfig) -> anyhow::Result<()> {
    let repo = repository(cfg, cluster)?;
    tokio::select! {
        r = crate::commands::expire::run(cfg, &repo, ExpireSettings::default()) => r,
        _ = shared.shutdown.cancelled() => {
            release_own_lock(&repo).await;
            bail!("aborted: the agent is stopping")
        }
    }
}

/// Release the repository lock if this process holds it (a job was dropped mid-way, so its
/// own release did not run). Best effort: a lock left behind expires after its TTL.
async fn release_own_lock(repo: &Repository) {
    let release = async {
        if let Some(info) = RepoLock::release_if_mine(repo).await? {
            tracing::info!(
                "released the repository lock of the aborted {}",
                info.purpose
            );
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(LOCK_RELEASE_TIMEOUT, release).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!("could not release the repository lock (it expires by itself): {e:#}")
        }
        Err(_) => {
            tracing::warn!("could not release the repository lock in time (it expires by itself)")
        }
    }
}

/// Verify a backup in a child process, `synapse-backup --cluster NAME verify --backup ID`:
/// the restore and recovery run isolated from the agent. Exit 0 proves the backup; 5 means
/// it failed verification; anything else means it could not be verified.
async fn verify(shared: &Shared, cluster: &str, id: &BackupId) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("find the synapse-backup executable")?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("--config")
        .arg(&shared.config_path)
        .arg("--cluster")
        .arg(cluster)
        .arg("--log-format")
        .arg(shared.options.log_format.as_arg());
    for _ in 0..shared.options.verbose {
        cmd.arg("-v");
    }
    cmd.arg("verify")
        .arg("--backup")
        .arg(id.as_str())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {} verify", exe.display()))?;
    let status = tokio::select! {
        s = child.wait() => s.context("wait for the verify process")?,
        _ = shared.shutdown.cancelled() => {
            stop_child(&mut child).await;
            bail!("aborted: the agent is stopping");
        }
    };
    match status.code() {
        Some(0) => Ok(()),
        Some(VERIFY_FAILED_EXIT) => Err(crate::error::Failure::VerifyFailed(format!(
            "backup {id} failed verification (the verify process's log lines above say why)"
        ))
        .into()),
        Some(USAGE_EXIT) => bail!(
            "`synapse-backup verify --backup {id}` exited with 2 (usage): this build may have no verify command, \
             or the config is not usable for it (see the log lines above)"
        ),
        Some(code) => bail!("`synapse-backup verify --backup {id}` exited with {code} (see the log lines above)"),
        None => bail!("`synapse-backup verify --backup {id}` was killed by a signal"),
    }
}

/// SIGTERM, then SIGKILL after a grace period.
async fn stop_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // std has no way to send SIGTERM and unsafe code is forbidden here: use kill(1).
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(VERIFY_STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_node_of_the_wanted_role_backs_up() {
        // One node: never skipped, whatever the role (a wrong setting must fail loudly).
        assert!(skip_decision(1, BackupFrom::Primary, true).is_none());
        assert!(skip_decision(1, BackupFrom::Standby, false).is_none());
        // A pair: the standby host leaves a primary backup to the primary's host, and back.
        assert!(skip_decision(2, BackupFrom::Primary, true).is_some());
        assert!(skip_decision(2, BackupFrom::Primary, false).is_none());
        assert!(skip_decision(2, BackupFrom::Standby, false).is_some());
        assert!(skip_decision(2, BackupFrom::Standby, true).is_none());
        assert!(skip_decision(2, BackupFrom::PreferStandby, true).is_none());
        assert!(skip_decision(2, BackupFrom::PreferStandby, false).is_none());
    }

    #[test]
    fn a_queued_or_running_job_is_not_queued_twice() {
        let q = JobQueue::default();
        assert!(q.push("core", Trigger::Backup, "test"));
        assert!(!q.push("core", Trigger::Backup, "test"), "already queued");
        assert!(q.push("core", Trigger::Verify, "test"));
        assert_eq!(q.take(), Some((Trigger::Backup, "test")));
        assert!(!q.push("core", Trigger::Backup, "test"), "running");
        q.finish();
        assert_eq!(q.take(), Some((Trigger::Verify, "test")));
        assert!(
            q.push("core", Trigger::Backup, "test"),
            "verify runs, a backup may queue"
        );
        q.finish();
        assert_eq!(q.take(), Some((Trigger::Backup, "test")));
        q.finish();
        assert_eq!(q.take(), None);
    }
}
