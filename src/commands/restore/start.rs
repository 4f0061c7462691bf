//! `--start`: start the restored server (as its owner) and wait until recovery reached the
//! target. `pg_ctl -w` is not enough (pg-reference §0 item 6): we watch the postmaster, the log
//! and, when the configured connection reaches this server, `pg_is_in_recovery()`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use super::plan::WalRange;
use crate::config::ClusterConfig;
use crate::format;
use crate::os::{self, Owner};
use crate::pg::datadir;
use crate::pg::recovery_conf::{RecoveryTarget, TargetAction};
use crate::pg::server;
use crate::pg::serverlog::ServerLog;
use crate::pg::{conninfo, Lsn, WalSegmentName};
use crate::progress::{Meter, Unit};
use crate::repo::manifest::BackupManifest;

/// What SQL says about the restored server.
#[derive(Debug, Clone)]
struct Probe {
    in_recovery: bool,
    paused: bool,
    timeline: u32,
    replay: Option<Lsn>,
}

/// Ask the server behind the configured connection about recovery. `Ok(None)` while it does
/// not accept connections yet; an error when the connection cannot be used to watch this
/// restore (a bad connection string, or it reaches another server).
async fn probe(conninfo: &str, pgdata: &Path) -> anyhow::Result<Option<Probe>> {
    conninfo::parse(conninfo)?;
    let session = match tokio::time::timeout(
        Duration::from_secs(15),
        crate::pg::client::connect(conninfo),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => return Ok(None),
    };
    let state = async {
        let info = session.server_info().await?;
        let (paused, replay) = session.replay_state().await?;
        Ok::<_, anyhow::Error>((info, paused, replay))
    };
    let result = tokio::time::timeout(Duration::from_secs(15), state).await;
    session.close().await;
    let Ok(Ok((info, paused, replay))) = result else {
        return Ok(None);
    };
    let ours = fs::canonicalize(pgdata).ok();
    if fs::canonicalize(&info.data_directory).ok() != ours {
        bail!(
            "the configured connection reaches the server of {}, not the restored {}",
            info.data_directory,
            pgdata.display()
        );
    }
    Ok(Some(Probe {
        in_recovery: info.in_recovery,
        paused,
        timeline: info.timeline.0,
        replay,
    }))
}

/// Start the restored server (as its owner) and wait until recovery reached the target.
pub(super) async fn start_and_wait(
    cluster: &ClusterConfig,
    backup: &BackupManifest,
    pgdata: &Path,
    owner: Option<Owner>,
    target: &RecoveryTarget,
    action: TargetAction,
    wal: WalRange,
) -> anyhow::Result<()> {
    let log = launch(cluster, backup, pgdata, owner).await?;
    let watch = Watch {
        conninfo: &cluster.connection,
        pgdata,
        log: &log,
        target,
        action,
        wal,
    };
    watch.wait().await
}

/// `pg_ctl start` on the restored directory, as its owner; returns the server log's path.
async fn launch(
    cluster: &ClusterConfig,
    backup: &BackupManifest,
    pgdata: &Path,
    owner: Option<Owner>,
) -> anyhow::Result<PathBuf> {
    let bin = server::bin_dir(cluster.pg_bin_dir.as_deref(), backup.pg_version);
    let pg_ctl = bin.join("pg_ctl");
    if !pg_ctl.exists() {
        bail!(
            "cannot start the server: {} does not exist (set pg_bin_dir for cluster {:?})",
            pg_ctl.display(),
            cluster.name
        );
    }
    let log = pgdata
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!("restore-{}.log", backup.id));
    fs::write(&log, b"").with_context(|| format!("create the server log {}", log.display()))?;
    os::chown(&log, owner)?;

    let user = match owner {
        Some(o) => Some(os::user_name(o.uid).ok_or_else(|| {
            anyhow!(
                "cannot start the server as uid {}: it has no user name in /etc/passwd",
                o.uid
            )
        })?),
        None => None,
    };
    eprintln!(
        "starting PostgreSQL on {} (log: {})",
        pgdata.display(),
        log.display()
    );
    let out = server::pg_ctl_start(&pg_ctl, pgdata, &log, user.as_deref()).await?;
    if !out.status.success() {
        bail!(
            "pg_ctl start failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            log_tail(&log)
        );
    }
    Ok(log)
}

/// Following one started server until recovery is over.
struct Watch<'a> {
    conninfo: &'a str,
    pgdata: &'a Path,
    log: &'a Path,
    target: &'a RecoveryTarget,
    action: TargetAction,
    /// The WAL the plan expects recovery to replay (for the progress display).
    wal: WalRange,
}

impl Watch<'_> {
    async fn wait(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last_progress = (0usize, None::<Lsn>, None::<String>);
        let mut last_change = Instant::now();
        let mut meter = Meter::new("replay", Unit::Segments, self.wal.segments(), None);
        let mut sql_usable = true;
        let mut sql_probe_at = Instant::now();
        let mut ever_alive = false;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let text = fs::read_to_string(self.log).unwrap_or_default();
            let st = ServerLog::scan(&text);
            let alive = datadir::live_postmaster(self.pgdata).is_some();
            ever_alive |= alive;

            // The postmaster is gone (or never came up): the log says why.
            let gone = ever_alive
                || st.shut_down
                || !st.fatal_lines.is_empty()
                || started.elapsed() > Duration::from_secs(60);
            if !alive && gone {
                return self.stopped(&st);
            }
            if alive && !sql_usable && st.collector {
                eprintln!(
                    "started: the server on {} is running, but it logs through its logging collector and the configured \
                     connection does not reach it, so the outcome of recovery cannot be followed from here: \
                     check its log and `select pg_is_in_recovery()`",
                    self.pgdata.display()
                );
                return Ok(());
            }

            let probe = if alive && sql_usable && sql_probe_at.elapsed() >= Duration::from_secs(1) {
                sql_probe_at = Instant::now();
                match probe(self.conninfo, self.pgdata).await {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!(
                            "note: not checking with SQL: {e:#}; following the server log only"
                        );
                        sql_usable = false;
                        None
                    }
                }
            } else {
                None
            };

            if let Some(msg) = self.finished(probe.as_ref(), sql_usable, &st) {
                meter.finish();
                eprintln!("{msg}");
                return Ok(());
            }
            meter.update(self.replayed(probe.as_ref(), &st));

            // Progress, and a stall guard: recovery that shows no sign of life for long is an
            // error.
            let progress = (
                text.len(),
                probe.as_ref().and_then(|p| p.replay),
                datadir::newest_wal_segment(self.pgdata),
            );
            if progress != last_progress {
                last_progress = progress;
                last_change = Instant::now();
            } else if last_change.elapsed() > Duration::from_secs(600) {
                bail!(
                    "recovery on {} made no progress for 10 minutes; the server is still running (check its log){}",
                    self.pgdata.display(),
                    log_tail(self.log)
                );
            }
        }
    }

    /// Segments of the plan's range replayed so far: up to the newer of the segment the
    /// server last restored (its log) and the one it replays (`pg_last_wal_replay_lsn()`).
    fn replayed(&self, probe: Option<&Probe>, st: &ServerLog) -> u64 {
        let size = self.wal.size;
        let restored = st
            .last_restored
            .as_deref()
            .and_then(|s| s.parse::<WalSegmentName>().ok())
            .filter(|s| s.fits(size))
            .map(|s| s.segno(size));
        let replaying = probe.and_then(|p| p.replay).map(|l| l.segno(size));
        restored
            .max(replaying)
            .map_or(0, |seg| seg.saturating_sub(self.wal.first))
    }

    /// The postmaster is gone: fine when it shut down at the target, else an error.
    fn stopped(&self, st: &ServerLog) -> anyhow::Result<()> {
        if st.shutdown_at_target {
            let why = match self.action {
                TargetAction::Shutdown => "--target-action shutdown",
                _ => "hot_standby is off, so pause acts as shutdown",
            };
            eprintln!(
                "recovery reached the target {} and the server shut down ({why}); \
                 start it again to continue, or change the target first",
                self.target
            );
            return Ok(());
        }
        bail!(
            "the server on {} stopped during recovery{}{}",
            self.pgdata.display(),
            if st.fatal_lines.is_empty() {
                String::new()
            } else {
                format!(": {}", st.fatal_lines.join(" | "))
            },
            log_tail(self.log)
        );
    }

    /// The message when recovery is over (promoted, or paused at the target).
    fn finished(&self, probe: Option<&Probe>, sql_usable: bool, st: &ServerLog) -> Option<String> {
        let latest = matches!(self.target, RecoveryTarget::Latest);
        let pgdata = self.pgdata.display();
        match (probe, self.action) {
            (Some(p), _) if !p.in_recovery => Some(format!(
                "recovery complete: the server on {pgdata} is running and promoted (timeline {})",
                p.timeline
            )),
            (Some(p), TargetAction::Pause) if p.paused && !latest => Some(format!(
                "recovery reached the target and is paused at {} (read-only); promote with `select pg_wal_replay_resume()`",
                p.replay.map(|l| l.to_string()).unwrap_or_default()
            )),
            (None, _) if !sql_usable && st.promoted => Some(format!(
                "recovery complete: the server on {pgdata} is running and promoted"
            )),
            (None, TargetAction::Pause) if !sql_usable && st.paused => {
                Some("recovery reached the target and is paused (read-only); promote with `select pg_wal_replay_resume()`".to_string())
            }
            _ => None,
        }
    }
}

/// The last lines of the server log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let tail = format::tail(&text, 5);
    if tail.is_empty() {
        format!(" (log: {})", log.display())
    } else {
        format!(" (log {}: … {tail})", log.display())
    }
}
