//! Everything that happens in the scratch directory: restore, stage the WAL, pg_verifybackup,
//! start the isolated instance and wait for recovery, then pg_amcheck and the probes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::checks::{self, Checks};
use super::plan::Plan;
use super::stage::{self, StageProgress, STAGED_MARKER};
use crate::config::{ClusterConfig, Config};
use crate::format;
use crate::pg::conninfo;
use crate::pg::datadir;
use crate::pg::recovery_conf::{Archiving, RecoverySettings, TargetAction};
use crate::pg::serverlog::ServerLog;
use crate::repo::manifest::BackupManifest;
use crate::repo::Repository;
use crate::sandbox::{self, Instance, RunAs, Runtime, ScratchDirs, Sql};

/// One verification: what is verified, where, and until when.
pub(super) struct Verification<'a> {
    pub config: &'a Config,
    pub cluster: &'a ClusterConfig,
    pub repo: &'a Repository,
    pub backup: &'a BackupManifest,
    pub plan: &'a Plan,
    pub runtime: &'a Runtime,
    pub dirs: &'a ScratchDirs,
    /// What the instance must not see ([`hidden_paths`]).
    pub hide: &'a [PathBuf],
    pub deadline: Instant,
}

/// What the checks found.
#[derive(Debug, Default)]
pub(super) struct Findings {
    pub checks: Checks,
    /// The last commit the scratch instance replayed.
    pub recovered_to: Option<DateTime<Utc>>,
}

impl Verification<'_> {
    /// Everything that happens in the scratch directory. Check results go into `found`; an
    /// `Err` is an environment problem or an unexpected failure of the verifier itself.
    pub async fn in_scratch(&self, found: &mut Findings) -> anyhow::Result<()> {
        let (plan, dirs) = (self.plan, self.dirs);
        // 3. Restore; then stage the WAL while the instance starts and recovers, as wal-fetch's
        // prefetch does: restore_command waits for a file of the plan until it is staged.
        // (Staging beside the restore would only compete with it for the CPU: both decompress
        // and hash.)
        let restore_command = stage::staged_restore_command(&dirs.wal);
        stage::prepare_staging(plan, dirs)?;
        let (progress, progress_rx) = tokio::sync::watch::channel(StageProgress::default());
        let (restored_tx, restored_rx) = tokio::sync::oneshot::channel::<bool>();
        let stop = AtomicBool::new(false);
        let stage = async {
            if restored_rx.await != Ok(true) {
                return None; // nothing to recover
            }
            let t0 = Instant::now();
            let r = tokio::time::timeout_at(
                self.deadline,
                stage::stage_wal(self.repo, plan, dirs, &progress, &stop),
            )
            .await;
            // Whatever happened, waiting restore_commands give up now.
            let marked = dirs.write_private(&dirs.wal.join(STAGED_MARKER), b"");
            progress.send_modify(|p| p.done = true);
            let r = flatten_timeout(r, "stage WAL");
            let r = match marked {
                Ok(()) => r,
                Err(e) => Err(format!("write {STAGED_MARKER}: {e:#}")),
            };
            Some((r, t0.elapsed()))
        };
        let rest = async {
            let r = self
                .after_restore_starts(found, &restore_command, progress_rx, restored_tx)
                .await;
            // Recovery is over (or never started): the rest of the WAL is not needed.
            stop.store(true, Ordering::Relaxed);
            r
        };
        let (staged, rest) = tokio::join!(stage, rest);
        if let Some((staged, took)) = staged {
            // In the report, staging comes right after the restore.
            found
                .checks
                .insert_after("restore", "stage_wal", took, staged);
        }
        rest
    }

    /// Everything after the restore has started: the restore, pg_verifybackup, the instance.
    async fn after_restore_starts(
        &self,
        found: &mut Findings,
        restore_command: &str,
        mut progress: tokio::sync::watch::Receiver<StageProgress>,
        restore_done: tokio::sync::oneshot::Sender<bool>,
    ) -> anyhow::Result<()> {
        let (backup, plan, dirs, deadline) = (self.backup, self.plan, self.dirs, self.deadline);
        let settings = RecoverySettings {
            restore_command: restore_command.to_string(),
            target: plan.recovery_target(),
            action: TargetAction::Promote,
            timeline: Some(plan.path.target()),
            stop_before: None,
            archiving: Archiving::Off,
        };
        let relocations: BTreeMap<u32, PathBuf> = backup
            .tablespaces
            .iter()
            .map(|t| (t.oid, dirs.tablespaces.join(t.oid.to_string())))
            .collect();
        let t0 = Instant::now();
        let restored = tokio::time::timeout_at(
            deadline,
            crate::restore::restore_into(
                self.repo,
                backup,
                &dirs.data,
                &relocations,
                &settings,
                false,
            ),
        )
        .await;
        let restored = flatten_timeout(restored, "restore");
        let restore_ok = found.checks.record_took(
            "restore",
            t0.elapsed(),
            restored.map(|files| {
                format!(
                    "{files} files, {} restored and checked against the manifest ({} parts)",
                    format::human_bytes(backup.original_size()),
                    backup.parts.len()
                )
            }),
        );
        let _ = restore_done.send(restore_ok);
        if !restore_ok {
            return Ok(());
        }
        // pg_verifybackup parses the backup's own WAL (staged first): wait until it is there.
        let need = plan.backup_files;
        let _ =
            tokio::time::timeout_at(deadline, progress.wait_for(|p| p.done || p.staged >= need))
                .await;

        // 4. pg_verifybackup before the start, with the staged WAL for the backup's own range.
        // Every file's SHA-256 was checked against the manifest as it was written, so it does
        // not hash them again; it checks that exactly the backup's files are there with their
        // sizes, and that the backup's WAL parses (pg_waldump).
        let t = Instant::now();
        let args: Vec<OsString> = vec![
            "--skip-checksums".into(),
            "--wal-directory".into(),
            dirs.wal.clone().into(),
            dirs.data.clone().into(),
        ];
        let out = tokio::time::timeout_at(
            deadline,
            self.runtime.tool(dirs, None, "pg_verifybackup", &args, &[]),
        )
        .await
        .map_err(|_| anyhow!("pg_verifybackup did not finish before the verification timeout"))??;
        found.checks.record(
            "pg_verifybackup",
            t,
            if out.success {
                Ok(format!(
                    "{} (files, sizes and the backup's WAL; contents were checked against SHA-256 while restoring)",
                    out.text()
                ))
            } else {
                Err(out.text())
            },
        );
        prepare_config(self.runtime, dirs).await?;

        // 5. Start and wait for the end of recovery.
        let settings = sandbox::server_settings(
            dirs,
            backup.pg_version,
            restore_command,
            &self.config.verify.shared_buffers,
        );
        let t = Instant::now();
        let mut instance = self.runtime.start(dirs, &settings, self.hide).await?;
        let result = self.after_start(found, &mut instance, t).await;
        instance.stop().await;
        result
    }

    /// 5. and 6.: wait for the end of recovery and judge it, then pg_amcheck and the probes.
    async fn after_start(
        &self,
        found: &mut Findings,
        instance: &mut Instance,
        started: Instant,
    ) -> anyhow::Result<()> {
        let Some((user, dbname, databases)) = self.recovery(found, instance, started).await else {
            return Ok(());
        };
        self.amcheck(found, instance, &user, &dbname, &databases)
            .await?;
        for probe in &self.cluster.verify_probe {
            let t = Instant::now();
            let db = probe.database.as_deref().unwrap_or(&dbname);
            let name = format!("probe {:?}", probe.display_name());
            let result = checks::run_probe(self.dirs, &user, db, &probe.sql, &probe.expect)
                .await
                .map_err(|e| format!("probe {:?}: {e}", probe.display_name()));
            found.checks.record(&name, t, result);
        }
        Ok(())
    }

    /// Wait for the end of recovery, judge it, and connect. Returns the user, the database and
    /// the databases to check when the promoted server accepts connections.
    async fn recovery(
        &self,
        found: &mut Findings,
        instance: &mut Instance,
        started: Instant,
    ) -> Option<(String, String, String)> {
        let (plan, dirs) = (self.plan, self.dirs);
        let ended = wait_for_recovery(instance, dirs, self.deadline).await;
        let log = ServerLog::scan(&dirs.log_text());
        if let Err(why) = ended {
            let name = if log.recovery_started {
                "recovery"
            } else {
                "start"
            };
            let detail = if log.recovery_started {
                format!(
                    "recovery could not reach the target {}: {why}{}",
                    plan.describe(),
                    plan.missing_note()
                )
            } else {
                format!("the scratch instance did not start: {why}")
            };
            found.checks.record(name, started, Err(detail));
            return None;
        }

        // Promoted: connect, and ask where replay ended.
        let (user, dbname) = conninfo::user_and_dbname(&self.cluster.connection);
        let sql = match connect_retrying(dirs, &user, &dbname, Duration::from_secs(60)).await {
            Ok(s) => s,
            Err(e) => {
                found.checks.record(
                    "recovery",
                    started,
                    Err(format!(
                        "the server promoted but does not accept connections: {e:#}"
                    )),
                );
                return None;
            }
        };
        let state = sql
            .query_row(
                r#"select pg_is_in_recovery()::text,
                      to_char(pg_last_xact_replay_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                      (select timeline_id from pg_control_checkpoint())::text"#,
            )
            .await;
        let (in_recovery, replayed, timeline) = match state {
            Ok(row) => (
                row.first().cloned().flatten().unwrap_or_default(),
                row.get(1)
                    .cloned()
                    .flatten()
                    .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
                    .map(|t| t.with_timezone(&Utc)),
                row.get(2).cloned().flatten().unwrap_or_default(),
            ),
            Err(e) => {
                found.checks.record(
                    "recovery",
                    started,
                    Err(format!("cannot read the recovery state: {e:#}")),
                );
                sql.close().await;
                return None;
            }
        };
        found.recovered_to = replayed;
        found.checks.record(
            "recovery",
            started,
            checks::judge_recovery(plan, &log, replayed),
        );
        found.checks.record(
            "connect",
            Instant::now(),
            if in_recovery == "false" || in_recovery == "f" {
                Ok(format!(
                    "accepts connections as {user:?} on database {dbname:?}; promoted to timeline {timeline}"
                ))
            } else {
                Err(format!(
                    "the server is still in recovery (pg_is_in_recovery() = {in_recovery}) after the end of recovery"
                ))
            },
        );
        let databases = sql
            .query_column("select datname from pg_database where datallowconn order by 1")
            .await
            .map(|rows| rows.into_iter().flatten().collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        sql.close().await;
        Some((user, dbname, databases))
    }

    /// 6. pg_amcheck over every database.
    async fn amcheck(
        &self,
        found: &mut Findings,
        instance: &Instance,
        user: &str,
        dbname: &str,
        databases: &str,
    ) -> anyhow::Result<()> {
        let dirs = self.dirs;
        let t = Instant::now();
        let jobs = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        let args: Vec<OsString> = [
            "--all",
            "--install-missing",
            "--progress",
            "--jobs",
            &jobs.to_string(),
            "--host",
            &dirs.run.display().to_string(),
            "--port",
            &sandbox::PORT.to_string(),
            "--username",
            user,
            "--maintenance-db",
            dbname,
            "--no-password",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let amcheck = tokio::time::timeout_at(
            self.deadline,
            self.runtime.tool(
                dirs,
                Some(instance),
                "pg_amcheck",
                &args,
                &[("PGOPTIONS", sandbox::SESSION_OPTIONS)],
            ),
        )
        .await
        .map_err(|_| anyhow!("pg_amcheck did not finish before the verification timeout"))??;
        let (progress, messages) = checks::amcheck_output(&amcheck.stdout, &amcheck.stderr);
        found.checks.record(
            "amcheck",
            t,
            if amcheck.success {
                Ok(format!(
                    "pg_amcheck --all: heap and btree{} of databases {databases}: no corruption{}",
                    progress.map(|p| format!(", {p}")).unwrap_or_default(),
                    if messages.is_empty() {
                        String::new()
                    } else {
                        format!(" ({messages})")
                    }
                ))
            } else {
                Err(format!(
                    "pg_amcheck --all (exit {}): {}",
                    amcheck.code.map_or("signal".into(), |c| c.to_string()),
                    format::truncate(&messages, 4000)
                ))
            },
        );
        Ok(())
    }
}

/// Wait until the instance has promoted (`Ok`), or stopped, stalled or run out of time.
async fn wait_for_recovery(
    instance: &mut Instance,
    dirs: &ScratchDirs,
    deadline: Instant,
) -> Result<(), String> {
    let started = Instant::now();
    let mut last_len = 0;
    let mut last_change = Instant::now();
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let text = dirs.log_text();
        let st = ServerLog::scan(&text);
        if st.promoted {
            return Ok(());
        }
        if !instance.running() {
            let status = instance
                .exit_status()
                .map_or("unknown".to_string(), |s| s.to_string());
            let why = if st.fatal.is_empty() {
                format!("log: … {}", format::tail(&text, 5))
            } else {
                st.fatal.join(" | ")
            };
            let restored = st
                .last_restored
                .map(|s| format!("; the last WAL file restored was {s}"))
                .unwrap_or_default();
            return Err(format!("the server stopped ({status}): {why}{restored}"));
        }
        if text.len() != last_len {
            last_len = text.len();
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(600) {
            return Err(format!(
                "no progress for 10 minutes (log: … {})",
                format::tail(&text, 3)
            ));
        }
        if Instant::now() >= deadline {
            return Err("recovery did not finish before the verification timeout".into());
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "verify: recovering for {:.0}s{}",
                started.elapsed().as_secs_f64(),
                st.last_restored
                    .map(|s| format!(", last WAL restored {s}"))
                    .unwrap_or_default()
            );
        }
    }
}

async fn connect_retrying(
    dirs: &ScratchDirs,
    user: &str,
    db: &str,
    limit: Duration,
) -> anyhow::Result<Sql> {
    let deadline = Instant::now() + limit;
    loop {
        match Sql::connect(dirs, user, db).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// What the instance must not see. The namespace runtime's minimal root holds none of these
/// unless a bound system tree does; they are masked there too (belt and braces): the store
/// credentials file; password files (`$PGPASSFILE`, the verifier's and the instance user's
/// `~/.pgpass`) and AWS configuration; the config file and its directory; every configured
/// cluster's data directory and socket directories; the usual PostgreSQL and Docker sockets.
pub(super) fn hidden_paths(config: &Config, config_path: &Path, run_as: &RunAs) -> Vec<PathBuf> {
    let mut hide: Vec<PathBuf> = config.repository.credentials_file.iter().cloned().collect();
    hide.extend(std::env::var_os("PGPASSFILE").map(PathBuf::from));
    let homes = std::env::var_os("HOME")
        .map(PathBuf::from)
        .into_iter()
        .chain(crate::os::home_dir(run_as.uid));
    for home in homes {
        hide.push(home.join(".pgpass"));
        hide.push(home.join(".aws"));
    }
    hide.push(config_path.to_path_buf());
    hide.extend(config_path.parent().map(Path::to_path_buf));
    for cluster in &config.clusters {
        hide.push(cluster.pgdata.clone());
        if let Ok(conn) = conninfo::parse(&cluster.connection) {
            hide.extend(conn.get_hosts().iter().filter_map(|h| match h {
                tokio_postgres::config::Host::Unix(dir) => Some(dir.clone()),
                tokio_postgres::config::Host::Tcp(_) => None,
            }));
        }
    }
    hide.extend(
        [
            "/run/postgresql",
            "/var/run/postgresql",
            "/run/docker.sock",
            "/var/run/docker.sock",
        ]
        .map(PathBuf::from),
    );
    hide.retain(|p| p.is_absolute() && p.exists());
    hide.sort();
    hide.dedup();
    hide
}

/// Fill in what the restored directory needs to start outside its original host: a
/// `postgresql.conf` when the cluster kept it elsewhere (Debian keeps it in /etc), with the
/// settings recovery must not run below (pg-reference §4.4) from `pg_controldata`.
async fn prepare_config(runtime: &Runtime, dirs: &ScratchDirs) -> anyhow::Result<()> {
    let conf = dirs.data.join("postgresql.conf");
    if conf.exists() {
        return Ok(());
    }
    let out = runtime
        .tool(
            dirs,
            None,
            "pg_controldata",
            &[dirs.data.clone().into()],
            &[],
        )
        .await?;
    dirs.write_private(&conf, generated_conf(&out.stdout).as_bytes())
}

/// A minimal `postgresql.conf` with the hot-standby minimums from `pg_controldata` output.
fn generated_conf(controldata: &str) -> String {
    let mut out = String::from(
        "# Written by synapse-backup verify: the backup has no postgresql.conf (it lives outside\n\
         # the data directory on the original host). Recovery needs at least these settings.\n",
    );
    for (field, setting) in [
        ("max_connections setting", "max_connections"),
        ("max_worker_processes setting", "max_worker_processes"),
        ("max_wal_senders setting", "max_wal_senders"),
        ("max_prepared_xacts setting", "max_prepared_transactions"),
        ("max_locks_per_xact setting", "max_locks_per_transaction"),
    ] {
        let value = datadir::controldata_value(controldata, field);
        if let Some(v) = value.filter(|v| v.chars().all(|c| c.is_ascii_digit()) && !v.is_empty()) {
            out.push_str(&format!("{setting} = {v}\n"));
        }
    }
    out
}

pub(super) fn flatten_timeout<T>(
    r: Result<anyhow::Result<T>, tokio::time::error::Elapsed>,
    what: &str,
) -> Result<T, String> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!(
            "{what} did not finish before the verification timeout"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_conf_has_the_minimums() {
        let conf = generated_conf(
            "max_connections setting:              200\nmax_wal_senders setting:              10\nwal_level setting: replica\n",
        );
        assert!(
            conf.contains("max_connections = 200\nmax_wal_senders = 10\n"),
            "{conf}"
        );
        assert!(!conf.contains("wal_level"));
    }
}
