//! `agent`: the long-running service. It takes every configured cluster's base backup on its
//! schedule, expires after each successful backup, verifies each new backup, and serves
//! `/metrics` and `/healthz`. It has no backup logic of its own: jobs call the commands.
//!
//! Lifecycle:
//! - one agent per config file: the agent holds an exclusive `flock` on the config file
//!   itself (released by the kernel when the process ends, so it never goes stale);
//! - SIGHUP re-reads the config; a config that does not load is refused and the old one
//!   kept, with a log line and `synapse_backup_config_last_reload_successful 0`;
//! - SIGTERM/SIGINT stop within 10 s: a running backup is dropped, which closes its database
//!   session, and PostgreSQL ends a non-exclusive backup whose session ends; its parts have
//!   no manifest, so it is never listed (expire removes them later). A running verification
//!   gets SIGTERM, then SIGKILL after 5 s.
//!
//! Module map: [`schedule`] (the timers on `tokio-cron-scheduler`, missed runs), [`jobs`]
//! (per-cluster queue, worker, timers, repository refresher), [`metrics`] (what `/metrics` says),
//! [`facts`] (reading the repository and PostgreSQL), [`http`] (the endpoint).

mod catalog;
pub mod facts;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod schedule;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config};
use crate::logging::LogFormat;
use metrics::{AgentMetrics, ClusterMetrics};

/// How long the agent may take to stop after SIGTERM/SIGINT before it exits regardless.
const STOP_DEADLINE: Duration = Duration::from_millis(9_500);

/// How the agent was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--config`, if given.
    pub config: Option<PathBuf>,
    pub log_format: LogFormat,
    pub verbose: u8,
}

/// State shared by the agent's tasks.
pub struct Shared {
    config: RwLock<Arc<Config>>,
    pub config_path: PathBuf,
    pub options: Options,
    pub metrics: Mutex<AgentMetrics>,
    /// One permit per cluster job chain at a time (all of them with `parallel_clusters`).
    pub gate: Arc<tokio::sync::Semaphore>,
    /// Cancelled at SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
}

impl Shared {
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_config(&self, cfg: Arc<Config>) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }

    /// Change the metrics of one cluster (ignored for a cluster no longer configured).
    pub fn with_cluster<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut ClusterMetrics) -> R,
    ) -> Option<R> {
        let mut m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        m.clusters.get_mut(name).map(f)
    }

    pub fn metrics_snapshot(&self) -> AgentMetrics {
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The exclusive lock that makes an agent the only one for its config file.
struct InstanceLock {
    file: std::fs::File,
}

impl InstanceLock {
    fn acquire(path: &Path) -> anyhow::Result<InstanceLock> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("open config file {} to lock it", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(InstanceLock { file }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another synapse-backup agent is already running with config {} (it holds the lock on that file); \
                 stop it first (systemctl stop synapse-backup-agent), or give this one another config",
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("lock config file {}", path.display()))
            }
        }
    }

    /// After a reload: if the config file was replaced (an editor that writes a new file and
    /// renames it), lock the new file too, so that a second agent cannot start on it.
    fn follow(&mut self, path: &Path) -> anyhow::Result<()> {
        let held = self
            .file
            .metadata()
            .context("stat the locked config file")?;
        let now = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        if (held.dev(), held.ino()) != (now.dev(), now.ino()) {
            *self = InstanceLock::acquire(path)?;
        }
        Ok(())
    }
}

/// Run the agent until SIGTERM or SIGINT.
pub async fn run(options: Options) -> anyhow::Result<()> {
    // First of all: a SIGHUP (`systemctl reload`) right after the start must not kill us.
    let mut sigterm = signal(SignalKind::terminate()).context("handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("handle SIGHUP")?;
    // The agent needs the path to reload the config and to lock it.
    let path = config::config_path(options.config.as_deref());
    let config = Arc::new(Config::load(Some(&path))?);
    let mut instance = InstanceLock::acquire(&path)?;
    let listen: std::net::SocketAddr = config.agent.listen.parse().context("agent.listen")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listen on {listen} (agent.listen)"))?;
    let now = Utc::now().timestamp_millis() as f64 / 1000.0;
    let parallel = config.agent.parallel_clusters;
    let shared = Arc::new(Shared {
        config: RwLock::new(config.clone()),
        config_path: path.clone(),
        options,
        metrics: Mutex::new(AgentMetrics {
            now: None,
            version: env!("CARGO_PKG_VERSION").to_string(),
            start_time: now,
            reload_ok: true,
            reload_ok_time: now,
            clusters: BTreeMap::new(),
        }),
        gate: Arc::new(tokio::sync::Semaphore::new(if parallel {
            tokio::sync::Semaphore::MAX_PERMITS
        } else {
            1
        })),
        shutdown: CancellationToken::new(),
    });

    let server = tokio::spawn(http::serve(listener, shared.clone()));
    let mut clusters = jobs::Clusters::new(schedule::Timers::start().await?);
    clusters.apply(&shared, &config).await;
    tracing::info!(
        config = %path.display(),
        clusters = %config.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(","),
        timezone = %config.timezone(),
        "agent started; metrics on http://{listen}/metrics"
    );

    let stop_signal = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => reload(&shared, &mut clusters, &mut instance, &path).await,
        }
    };

    tracing::info!("{stop_signal}: stopping (running jobs are aborted)");
    // The deadline holds even if some blocking work does not stop in time.
    std::thread::spawn(|| {
        std::thread::sleep(STOP_DEADLINE);
        tracing::error!("the agent did not stop within {STOP_DEADLINE:?}; exiting anyway");
        std::process::exit(0);
    });
    shared.shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(8), clusters.join()).await;
    if stopped.is_err() {
        tracing::warn!("some jobs did not stop within 8 s");
    }
    if tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .is_err()
    {
        tracing::debug!("metrics endpoint did not close in time");
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// SIGHUP: load the config again; keep the old one when the new one does not load.
async fn reload(
    shared: &Arc<Shared>,
    clusters: &mut jobs::Clusters,
    instance: &mut InstanceLock,
    path: &Path,
) {
    let now = Utc::now().timestamp_millis() as f64 / 1000.0;
    let loaded = Config::load(Some(path)).and_then(|c| {
        instance.follow(path)?;
        Ok(c)
    });
    let new = match loaded {
        Ok(c) => Arc::new(c),
        Err(e) => {
            tracing::error!(
                config = %path.display(),
                "SIGHUP: the new config is refused, the old one stays in force: {e:#}"
            );
            shared
                .metrics
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reload_ok = false;
            return;
        }
    };
    let old = shared.config();
    if new.agent.listen != old.agent.listen {
        tracing::warn!(
            "SIGHUP: agent.listen changed to {}; it takes effect at the next start (still serving {})",
            new.agent.listen,
            old.agent.listen
        );
    }
    if new.agent.parallel_clusters != old.agent.parallel_clusters {
        tracing::warn!(
            "SIGHUP: agent.parallel_clusters changed; it takes effect at the next start"
        );
    }
    clusters.apply(shared, &new).await;
    {
        let mut m = shared.metrics.lock().unwrap_or_else(|p| p.into_inner());
        m.reload_ok = true;
        m.reload_ok_time = now;
    }
    tracing::info!(
        config = %path.display(),
        clusters = %new.clusters.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(","),
        "SIGHUP: config reloaded"
    );
}
