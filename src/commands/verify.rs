//! `verify`: prove that a backup restores and recovers.
//!
//! 1. Pick the target: by default the last archived commit the backup is responsible for
//!    (up to the next backup's end; for the newest backup, the newest commit in the archive),
//!    from the commit times `wal-push` records in each segment's header.
//! 2. Check free space for the backup's original size plus the WAL to stage.
//! 3. Restore the backup into a scratch directory (`restore::restore_into`, every part and file
//!    checked against the manifest). Then stage the WAL from the backup's start to the target
//!    from the repository (each file checked against its SHA-256), in WAL order, while steps 4
//!    and 5 run: the instance's restore_command waits for a planned file until it is staged.
//! 4. `pg_verifybackup` on the restored directory, before it is started: exactly the backup's
//!    files with their sizes, and its WAL parses. (`--skip-checksums`: step 3 checked every
//!    file's SHA-256 as it wrote it; hashing the same bytes again from the page cache would
//!    double the cost and prove nothing more.)
//! 5. Start an isolated instance on it ([`crate::sandbox`]: no network, no store credentials,
//!    `archive_mode = off`, WAL only from the read-only staging directory) and wait until
//!    recovery has ended; check it reached the target and promoted.
//! 6. `pg_amcheck --all` (heap and btree), then the cluster's `verify_probe`s.
//! 7. Stop the instance, remove the scratch directory (also on failure), and store the report
//!    at `backups/<id>/verify/<time>.json`.
//!
//! How the target is reached (pg-reference §0 item 5, §4.2): `recovery_target_time` is only
//! "reached" by a commit with a *later* time, and with none PostgreSQL ends recovery with a
//! FATAL error. So when a later commit is archived (soon after the target), recovery runs to
//! the time and stops before that commit ("recovery stopping before commit …"). When the
//! target is the newest commit in the archive, there is no later one: then recovery replays
//! the staged WAL, which ends with the segment holding the target, to its end and promotes,
//! and the check is that the last replayed commit (`pg_last_xact_replay_timestamp()`) is the
//! target. A gap in the WAL makes recovery end early, before the target: both ways, that is a
//! failed verification ("recovery could not reach the target").
//!
//! Exit codes: 5 when the backup fails a check (the first failing check is in the message);
//! 1 for an environment problem (no Docker, no binaries of the backup's major version, no
//! space), with no report stored.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::time::Instant;

use crate::cli::{TargetAction, VerifyArgs};
use crate::config::{ClusterConfig, Config, VerifyRuntime};
use crate::error::{usage, Failure};
use crate::pg::history::TimelinePath;
use crate::pg::{WalFileName, WalSegmentName, WalSegmentSize};
use crate::repo::manifest::{BackupId, BackupManifest};
use crate::repo::timelines::Timelines;
use crate::repo::window::{self, RecoveryTarget, WalIndex};
use crate::repo::Repository;
use crate::sandbox::{self, env_error, Instance, RunAs, Runtime, ScratchDirs, Sql};
use crate::timeparse::{self, format_utc};

pub const REPORT_FORMAT: u32 = 1;

/// How one verification runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Recover to this time instead of the default target.
    pub to: Option<DateTime<Utc>>,
    pub runtime: VerifyRuntime,
}

impl Options {
    /// The default target with the configured runtime (what the agent uses).
    pub fn from_config(config: &Config) -> Self {
        Options {
            to: None,
            runtime: config.verify.runtime,
        }
    }
}

pub async fn run(
    config: &Config,
    cluster: &ClusterConfig,
    repo: &Repository,
    args: &VerifyArgs,
) -> anyhow::Result<()> {
    let to = match &args.to {
        Some(s) => {
            if args.all_unverified {
                return Err(usage(
                    "--to names one moment, so it goes with one backup (--backup or --latest), not --all-unverified",
                ));
            }
            let t = timeparse::parse_target_time(s, config.timezone())
                .map_err(|e| usage(e.to_string()))?;
            eprintln!("target: {t}");
            Some(t.utc)
        }
        None => None,
    };
    let opts = Options {
        to,
        runtime: args.runtime.map_or(config.verify.runtime, Into::into),
    };
    let backups = repo.list_backups().await.context("list backups")?;
    let Some(newest) = backups.iter().max_by_key(|b| (b.stop_lsn, b.stop_time)) else {
        return Err(Failure::NotFound(format!(
            "the repository of cluster {:?} has no backups to verify",
            repo.cluster()
        ))
        .into());
    };
    let ids: Vec<BackupId> = if args.all_unverified {
        let mut ids = Vec::new();
        for b in &backups {
            if repo.latest_report(&b.id).await?.is_none() {
                ids.push(b.id.clone());
            }
        }
        if ids.is_empty() {
            eprintln!(
                "every backup of cluster {:?} has a verification report",
                repo.cluster()
            );
        }
        ids
    } else if let Some(id) = &args.backup {
        vec![id
            .parse()
            .map_err(|e: anyhow::Error| usage(e.to_string()))?]
    } else {
        vec![newest.id.clone()]
    };

    let mut reports = Vec::new();
    let work = async {
        for id in &ids {
            let report = verify_backup(config, cluster, repo, id, &opts).await?;
            if !args.json {
                print!("{}", report.render());
            }
            reports.push(report);
        }
        Ok::<_, anyhow::Error>(())
    };
    // On SIGTERM or SIGINT (the agent stops a verify child with SIGTERM) the verification is
    // dropped, and with it the scratch instance (killed) and directory (removed).
    tokio::select! {
        r = work => r?,
        sig = interrupted() => {
            return Err(anyhow!(
                "interrupted by {sig}: the scratch instance was stopped and its directory removed; no report stored"
            ))
        }
    }
    if args.json {
        let text = if args.all_unverified {
            serde_json::to_string_pretty(&reports)
        } else {
            serde_json::to_string_pretty(&reports[0])
        };
        println!("{}", text.expect("report serializes"));
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.ok)
        .map(Report::failure_message)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::VerifyFailed(failed.join("; ")).into())
    }
}

/// Resolves on SIGTERM or SIGINT, with the signal's name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Verify one backup and store its report. `Ok` with a failed report when the backup failed a
/// check; `Err` for environment problems (no report stored) and refused targets.
pub async fn verify_backup(
    config: &Config,
    cluster: &ClusterConfig,
    repo: &Repository,
    id: &BackupId,
    opts: &Options,
) -> anyhow::Result<Report> {
    let backups = repo.list_backups().await.context("list backups")?;
    let backup = backups
        .iter()
        .find(|b| &b.id == id)
        .ok_or_else(|| Failure::NotFound(format!("there is no backup {id}")))?;
    let started_at = Utc::now();
    let clock = Instant::now();
    let deadline = clock + Duration::from_secs(config.verify.timeout_seconds);

    // Environment first: a runtime that cannot run this major version is not a verdict.
    let run_as = RunAs::decide()?;
    let runtime =
        Runtime::prepare(opts.runtime, config, cluster, backup.pg_version, &run_as).await?;
    runtime.remove_stale().await;
    sandbox::remove_stale(&config.verify.scratch_dir);

    let plan = plan(repo, &backups, backup, opts.to).await?;
    eprintln!(
        "verify: backup {} (ended {}) with the {} runtime; target {}; WAL {} through {} ({} segments)",
        backup.id,
        format_utc(backup.stop_time),
        runtime.name(),
        plan.describe(),
        plan.first_segment(),
        plan.last_segment(),
        plan.segments.len()
    );
    let seg_bytes = u64::from(plan.size.bytes());
    check_space(
        &config.verify.scratch_dir,
        &backup.id,
        backup.original_size() + 2 * plan.segments.len() as u64 * seg_bytes + (256 << 20),
    )?;

    let mut dirs = ScratchDirs::create(&config.verify.scratch_dir, &run_as)?;
    if std::env::var("SYNAPSE_VERIFY_KEEP").as_deref() == Ok("1") {
        dirs.keep();
    }
    let mut checks = Checks::default();
    let mut recovered_to = None;
    let outcome = checks_in_scratch(
        config,
        cluster,
        repo,
        backup,
        &plan,
        &runtime,
        &dirs,
        deadline,
        &mut checks,
        &mut recovered_to,
    )
    .await;
    if let Err(e) = outcome {
        if sandbox::is_environment_error(&e) {
            return Err(e);
        }
        // Anything else that stopped the checks is this verification's failure.
        checks.record("verify", clock, Err(format!("{e:#}")));
    }
    drop(dirs);

    let finished_at = Utc::now();
    let ok = !checks.list.is_empty() && checks.list.iter().all(|c| c.ok);
    let mut report = Report {
        format_version: REPORT_FORMAT,
        cluster: repo.cluster().to_string(),
        backup_id: backup.id.to_string(),
        time: report_time(started_at),
        started_at,
        finished_at,
        duration_seconds: clock.elapsed().as_secs_f64(),
        ok,
        error: checks
            .list
            .iter()
            .find(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail)),
        runtime: runtime.describe(),
        target: plan.report(),
        recovered_to,
        checks: checks.list,
    };
    repo.put_report(&mut report).await?;
    Ok(report)
}

/// Everything that happens in the scratch directory. Check results go into `checks`; an
/// `Err` is an environment problem or an unexpected failure of the verifier itself.
#[allow(clippy::too_many_arguments)]
async fn checks_in_scratch(
    config: &Config,
    cluster: &ClusterConfig,
    repo: &Repository,
    backup: &BackupManifest,
    plan: &Plan,
    runtime: &Runtime,
    dirs: &ScratchDirs,
    deadline: Instant,
    checks: &mut Checks,
    recovered_to: &mut Option<DateTime<Utc>>,
) -> anyhow::Result<()> {
    // 3. Restore; then stage the WAL while the instance starts and recovers, as wal-fetch's
    // prefetch does: restore_command waits for a file of the plan until it is staged. (Staging
    // beside the restore would only compete with it for the CPU: both decompress and hash.)
    let restore_command = staged_restore_command(&dirs.wal);
    prepare_staging(plan, &dirs.wal)?;
    let (progress, progress_rx) = tokio::sync::watch::channel(StageProgress::default());
    let (restored_tx, restored_rx) = tokio::sync::oneshot::channel::<bool>();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let stage = async {
        if restored_rx.await != Ok(true) {
            return None; // nothing to recover
        }
        let t0 = Instant::now();
        let r =
            tokio::time::timeout_at(deadline, stage_wal(repo, plan, &dirs.wal, &progress, &stop))
                .await;
        // Whatever happened, waiting restore_commands give up now.
        let marked = std::fs::write(dirs.wal.join(STAGED_MARKER), b"");
        progress.send_modify(|p| p.done = true);
        let r = flatten_timeout(r, "stage WAL");
        let r = match marked {
            Ok(()) => r,
            Err(e) => Err(format!("write {STAGED_MARKER}: {e}")),
        };
        Some((r, t0.elapsed()))
    };
    let rest = async {
        let r = after_restore_starts(
            config,
            cluster,
            repo,
            backup,
            plan,
            runtime,
            dirs,
            deadline,
            checks,
            recovered_to,
            &restore_command,
            progress_rx,
            restored_tx,
        )
        .await;
        // Recovery is over (or never started): the rest of the WAL is not needed.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    };
    let (staged, rest) = tokio::join!(stage, rest);
    if let Some((staged, took)) = staged {
        // In the report, staging comes right after the restore.
        checks.insert_after("restore", "stage_wal", took, staged);
    }
    rest
}

/// Everything after the restore has started: the restore, pg_verifybackup, the instance.
#[allow(clippy::too_many_arguments)]
async fn after_restore_starts(
    config: &Config,
    cluster: &ClusterConfig,
    repo: &Repository,
    backup: &BackupManifest,
    plan: &Plan,
    runtime: &Runtime,
    dirs: &ScratchDirs,
    deadline: Instant,
    checks: &mut Checks,
    recovered_to: &mut Option<DateTime<Utc>>,
    restore_command: &str,
    mut progress: tokio::sync::watch::Receiver<StageProgress>,
    restore_done: tokio::sync::oneshot::Sender<bool>,
) -> anyhow::Result<()> {
    let settings = crate::commands::restore::RecoverySettings {
        restore_command: restore_command.to_string(),
        target: plan.recovery_target(),
        action: TargetAction::Promote,
        timeline: Some(plan.path.target().0),
        durable: false,
    };
    let relocations: BTreeMap<u32, PathBuf> = backup
        .tablespaces
        .iter()
        .map(|t| (t.oid, dirs.tablespaces.join(t.oid.to_string())))
        .collect();
    let t0 = Instant::now();
    let restored = tokio::time::timeout_at(
        deadline,
        crate::commands::restore::restore_into(repo, backup, &dirs.data, &relocations, &settings),
    )
    .await;
    let restored = flatten_timeout(restored, "restore");
    let restore_ok = checks.record_took(
        "restore",
        t0.elapsed(),
        restored.map(|files| {
            format!(
                "{files} files, {} restored and checked against the manifest ({} parts)",
                crate::commands::list::human_bytes(backup.original_size()),
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
        tokio::time::timeout_at(deadline, progress.wait_for(|p| p.done || p.staged >= need)).await;

    // 4. pg_verifybackup before the start, with the staged WAL for the backup's own range.
    // Every file's SHA-256 was checked against the manifest as it was written, so it does not
    // hash them again; it checks that exactly the backup's files are there with their sizes,
    // and that the backup's WAL parses (pg_waldump).
    let t = Instant::now();
    let args: Vec<OsString> = vec![
        "--skip-checksums".into(),
        "--wal-directory".into(),
        dirs.wal.clone().into(),
        dirs.data.clone().into(),
    ];
    let out = tokio::time::timeout_at(
        deadline,
        runtime.tool(dirs, None, "pg_verifybackup", &args, &[]),
    )
    .await
    .map_err(|_| anyhow!("pg_verifybackup did not finish before the verification timeout"))??;
    checks.record(
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
    prepare_config(runtime, dirs).await?;

    // 5. Start and wait for the end of recovery.
    let settings = sandbox::server_settings(
        dirs,
        backup.pg_version,
        restore_command,
        &config.verify.shared_buffers,
    );
    let t = Instant::now();
    let mut instance = runtime
        .start(dirs, &settings, &hidden_paths(config))
        .await?;
    let result = after_start(
        cluster,
        plan,
        runtime,
        dirs,
        &mut instance,
        deadline,
        checks,
        t,
        recovered_to,
    )
    .await;
    instance.stop().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn after_start(
    cluster: &ClusterConfig,
    plan: &Plan,
    runtime: &Runtime,
    dirs: &ScratchDirs,
    instance: &mut Instance,
    deadline: Instant,
    checks: &mut Checks,
    started: Instant,
    recovered_to: &mut Option<DateTime<Utc>>,
) -> anyhow::Result<()> {
    let ended = wait_for_recovery(instance, dirs, deadline).await;
    let log = scan_log(&dirs.log_text());
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
        checks.record(name, started, Err(detail));
        return Ok(());
    }

    // Promoted: connect, and ask where replay ended.
    let (user, dbname) = connection_identity(&cluster.connection);
    let sql = match connect_retrying(dirs, &user, &dbname, Duration::from_secs(60)).await {
        Ok(s) => s,
        Err(e) => {
            checks.record(
                "recovery",
                started,
                Err(format!(
                    "the server promoted but does not accept connections: {e:#}"
                )),
            );
            return Ok(());
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
            checks.record(
                "recovery",
                started,
                Err(format!("cannot read the recovery state: {e:#}")),
            );
            sql.close().await;
            return Ok(());
        }
    };
    *recovered_to = replayed;
    checks.record("recovery", started, judge_recovery(plan, &log, replayed));
    checks.record(
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

    // 6. pg_amcheck over every database, then the probes.
    let t = Instant::now();
    let databases = sql
        .query_column("select datname from pg_database where datallowconn order by 1")
        .await
        .map(|rows| rows.into_iter().flatten().collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    sql.close().await;
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
        &user,
        "--maintenance-db",
        &dbname,
        "--no-password",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let amcheck = tokio::time::timeout_at(
        deadline,
        runtime.tool(
            dirs,
            Some(instance),
            "pg_amcheck",
            &args,
            &[("PGOPTIONS", SESSION_OPTIONS)],
        ),
    )
    .await
    .map_err(|_| anyhow!("pg_amcheck did not finish before the verification timeout"))??;
    let (progress, messages) = amcheck_output(&amcheck.stdout, &amcheck.stderr);
    checks.record(
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
                truncate(&messages, 4000)
            ))
        },
    );

    for probe in &cluster.verify_probe {
        let t = Instant::now();
        let db = probe.database.as_deref().unwrap_or(&dbname);
        let name = format!("probe {:?}", probe.display_name());
        let result = run_probe(dirs, &user, db, &probe.sql, &probe.expect)
            .await
            .map_err(|e| format!("probe {:?}: {e}", probe.display_name()));
        checks.record(&name, t, result);
    }
    Ok(())
}

/// Split `pg_amcheck --progress` output into its final progress line ("547/547 relations
/// (100%), 11199/11199 pages (100%)") and everything else it said.
fn amcheck_output(stdout: &str, stderr: &str) -> (Option<String>, String) {
    let mut progress = None;
    let mut messages = Vec::new();
    for line in stdout.lines().chain(stderr.split(['\r', '\n'])) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.contains(" relations (") && line.contains(" pages (") {
            progress = Some(line.to_string());
        } else {
            messages.push(line.to_string());
        }
    }
    (progress, messages.join("\n"))
}

/// Options for every session with the scratch instance: role or database settings of the
/// original (timeouts, read-only defaults) must not fail the checks.
const SESSION_OPTIONS: &str = "-c statement_timeout=0 -c lock_timeout=0 \
     -c idle_in_transaction_session_timeout=0 -c default_transaction_read_only=off";

/// Run one probe; `Ok(result)` when it returned what it should.
async fn run_probe(
    dirs: &ScratchDirs,
    user: &str,
    db: &str,
    sql_text: &str,
    expect: &str,
) -> Result<String, String> {
    let sql = Sql::connect(dirs, user, db)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let rows = sql.query_column(sql_text).await;
    sql.close().await;
    let rows = rows.map_err(|e| format!("failed: {e:#}"))?;
    let got = probe_text(&rows);
    if got.trim() == expect.trim() {
        Ok(format!("returned {:?}", truncate(got.trim(), 200)))
    } else {
        Err(format!(
            "returned {:?}, expected {:?}",
            truncate(got.trim(), 1000),
            expect.trim()
        ))
    }
}

/// A probe's rows as one text: one line per row, NULL as an empty line.
fn probe_text(rows: &[Option<String>]) -> String {
    rows.iter()
        .map(|r| r.as_deref().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
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

/// The user and database of the cluster's connection string (defaults: postgres/postgres).
fn connection_identity(conninfo: &str) -> (String, String) {
    let parsed = crate::pg::tls::split_conninfo(conninfo)
        .ok()
        .and_then(|s| s.rest.parse::<tokio_postgres::Config>().ok());
    let user = parsed
        .as_ref()
        .and_then(|c| c.get_user().map(str::to_string))
        .unwrap_or_else(|| "postgres".into());
    let db = parsed
        .as_ref()
        .and_then(|c| c.get_dbname().map(str::to_string))
        .unwrap_or_else(|| user.clone());
    (user, db)
}

/// Files the instance must not read: the store credentials file, and the instance user's
/// password file and AWS configuration (the namespace runtime shares the file system).
fn hidden_paths(config: &Config) -> Vec<PathBuf> {
    let mut hide: Vec<PathBuf> = config.repository.credentials_file.iter().cloned().collect();
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        hide.push(home.join(".pgpass"));
        hide.push(home.join(".aws"));
    }
    hide.retain(|p| p.is_absolute() && p.exists());
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
    let text = generated_conf(&out.stdout);
    std::fs::write(&conf, text).context("write postgresql.conf")?;
    let owner = std::fs::metadata(&dirs.data).context("inspect the data directory")?;
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(&conf, Some(owner.uid()), Some(owner.gid()))
        .context("chown postgresql.conf")?;
    Ok(())
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
        let value = controldata.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == field).then(|| v.trim().to_string())
        });
        if let Some(v) = value.filter(|v| v.chars().all(|c| c.is_ascii_digit()) && !v.is_empty()) {
            out.push_str(&format!("{setting} = {v}\n"));
        }
    }
    out
}

fn flatten_timeout<T>(
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

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

// ---------------------------------------------------------------------------------------------
// The target and the WAL to stage

/// How recovery is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `recovery_target_time`: a commit after the target is in the staged WAL.
    Time(DateTime<Utc>),
    /// No target: replay the staged WAL, which ends with the segment of the target commit
    /// (`None`: no commit is archived since the backup; recovery to its end).
    End(Option<DateTime<Utc>>),
}

/// What one verification recovers to, and the WAL it needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    pub size: WalSegmentSize,
    /// The timelines recovery follows (the newest timeline whose history holds the backup).
    pub path: TimelinePath,
    pub start_segno: u64,
    pub through_segno: u64,
    /// Archived segments (and history files) to stage, in the order PostgreSQL asks for
    /// them: history files, then by segment number.
    pub segments: Vec<WalFileName>,
    /// Segment numbers in the range the archive does not have.
    pub missing: Vec<u64>,
    /// How many of `segments` (from the front) cover the backup's own WAL, start to stop.
    pub backup_files: usize,
}

impl Plan {
    fn recovery_target(&self) -> RecoveryTarget {
        match self.mode {
            Mode::Time(t) => RecoveryTarget::Time(t),
            Mode::End(_) => RecoveryTarget::Latest,
        }
    }

    fn describe(&self) -> String {
        match self.mode {
            Mode::Time(t) => format_utc(t),
            Mode::End(Some(t)) => format!("{} (the last archived commit)", format_utc(t)),
            Mode::End(None) => "the end of the backup (no commit is archived after it)".into(),
        }
    }

    fn name(&self, segno: u64) -> WalSegmentName {
        self.path.segment(segno, self.size)
    }

    fn first_segment(&self) -> WalSegmentName {
        self.name(self.start_segno)
    }

    fn last_segment(&self) -> WalSegmentName {
        self.name(self.through_segno)
    }

    fn missing_note(&self) -> String {
        match self.missing.as_slice() {
            [] => String::new(),
            [one] => format!(
                " (WAL segment {} is missing from the archive)",
                self.name(*one)
            ),
            many => format!(
                " (WAL segments {} are missing from the archive)",
                many.iter()
                    .map(|s| self.name(*s).to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn report(&self) -> TargetReport {
        let (kind, time) = match self.mode {
            Mode::Time(t) => ("time", Some(t)),
            Mode::End(t) => ("end", t),
        };
        TargetReport {
            kind: kind.into(),
            time,
            description: self.describe(),
            wal_from: self.first_segment().to_string(),
            wal_through: self.last_segment().to_string(),
            segments_staged: self.segments.len(),
            missing: self
                .missing
                .iter()
                .map(|s| self.name(*s).to_string())
                .collect(),
        }
    }
}

/// How far ahead of the default target to look for a later commit (which lets recovery stop
/// at the target time rather than at the end of the staged WAL).
const LOOKAHEAD_SEGMENTS: u64 = 16;

/// Pick the target and the WAL for verifying `backup`.
pub async fn plan(
    repo: &Repository,
    backups: &[BackupManifest],
    backup: &BackupManifest,
    to: Option<DateTime<Utc>>,
) -> anyhow::Result<Plan> {
    let size = WalSegmentSize::new(backup.wal_segment_size)
        .with_context(|| format!("backup {}: invalid wal_segment_size", backup.id))?;
    let listing: Vec<WalFileName> = repo
        .list_wal()
        .await
        .context("list archived WAL")?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    // Recover along the newest timeline that holds the backup, as a restore would.
    let timelines = Timelines::load(repo, &listing)
        .await
        .context("read the archive's timeline history files")?;
    let path = match timelines.path(timelines.latest()) {
        Ok(p) if window::on_path(backup, &p).is_ok() => p,
        _ => timelines
            .path(backup.timeline)
            .unwrap_or_else(|_| TimelinePath::root(backup.timeline)),
    };
    let index = WalIndex::new(&listing, size, &path);
    let start = backup.start_lsn.segno(size);
    let stop = backup.stop_lsn.end_segno(size).max(start);
    let newest = index.newest().unwrap_or(stop).max(stop);

    let (mode, through) = match to {
        Some(t) => {
            window::backup_serves(backup, &RecoveryTarget::Time(t)).map_err(usage)?;
            match first_commit_after(repo, &index, stop, newest, t).await? {
                Some(seg) => (Mode::Time(t), seg.max(stop)),
                None => {
                    return Err(usage(format!(
                        "no commit after {} is archived, so recovery cannot stop at that time \
                         (PostgreSQL stops at the first commit after the target); give an earlier --to, \
                         or leave --to out to verify up to the last archived commit",
                        format_utc(t)
                    )))
                }
            }
        }
        None => {
            // Up to the next backup's end, or everything archived for the newest backup.
            let horizon = backups
                .iter()
                .filter(|b| b.stop_lsn > backup.stop_lsn)
                .map(|b| b.stop_lsn.end_segno(size))
                .min()
                .unwrap_or(newest)
                .clamp(stop, newest);
            match newest_commit_down(repo, &index, horizon, start).await? {
                Some((seg, t)) if t >= backup.stop_time && seg >= stop => {
                    let ahead = (seg + LOOKAHEAD_SEGMENTS).min(newest);
                    match first_commit_after(repo, &index, seg, ahead, t).await? {
                        Some(after) => (Mode::Time(t), after),
                        None => (Mode::End(Some(t)), seg),
                    }
                }
                Some((_, t)) => (Mode::End(Some(t)), stop),
                None => (Mode::End(None), stop),
            }
        }
    };

    let mut segments: Vec<WalFileName> = listing
        .iter()
        .filter(|n| match n {
            WalFileName::Segment(s) => {
                s.fits(size) && path.uses(s, size) && (start..=through).contains(&s.segno(size))
            }
            WalFileName::History(tli) => *tli > backup.timeline && path.span_of(*tli).is_some(),
            _ => false,
        })
        .copied()
        .collect();
    segments.sort_by_key(|n| match n {
        WalFileName::History(tli) => (0, 0, tli.0),
        WalFileName::Segment(s) => (1, s.segno(size), s.timeline.0),
        _ => (2, 0, 0),
    });
    let backup_files = segments
        .iter()
        .position(|n| matches!(n, WalFileName::Segment(s) if s.segno(size) > stop))
        .unwrap_or(segments.len());
    let missing = (start..=through)
        .filter(|s| index.get(*s).is_none())
        .collect();
    Ok(Plan {
        mode,
        size,
        path,
        start_segno: start,
        through_segno: through,
        segments,
        missing,
        backup_files,
    })
}

/// The newest segment from `from` down to `down_to` with a recorded commit, and that commit.
async fn newest_commit_down(
    repo: &Repository,
    index: &WalIndex,
    from: u64,
    down_to: u64,
) -> anyhow::Result<Option<(u64, DateTime<Utc>)>> {
    let candidates = index.present_down(from, down_to);
    for batch in candidates.chunks(8) {
        for (segno, header) in headers(repo, batch).await? {
            if let Some(t) = header.as_ref().and_then(window::header_last_commit) {
                return Ok(Some((segno, t)));
            }
        }
    }
    Ok(None)
}

/// The first archived segment in `from..=to` holding a commit after `t`.
async fn first_commit_after(
    repo: &Repository,
    index: &WalIndex,
    from: u64,
    to: u64,
    t: DateTime<Utc>,
) -> anyhow::Result<Option<u64>> {
    let mut candidates = index.present_down(to, from);
    candidates.reverse();
    for batch in candidates.chunks(8) {
        for (segno, header) in headers(repo, batch).await? {
            if header
                .as_ref()
                .and_then(window::header_last_commit)
                .is_some_and(|c| c > t)
            {
                return Ok(Some(segno));
            }
        }
    }
    Ok(None)
}

async fn headers(
    repo: &Repository,
    batch: &[(u64, WalSegmentName)],
) -> anyhow::Result<Vec<(u64, Option<crate::codec::ObjectHeader>)>> {
    let results: Vec<anyhow::Result<(u64, Option<crate::codec::ObjectHeader>)>> =
        futures::stream::iter(batch.iter().map(|(segno, seg)| async move {
            Ok((*segno, repo.wal_header(&WalFileName::Segment(*seg)).await?))
        }))
        .buffered(8)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Created in the staging directory when staging has ended (done or failed).
const STAGED_MARKER: &str = ".staged";
/// `.expected/<name>` for every file of the plan: restore_command waits only for those.
const EXPECTED_DIR: &str = ".expected";

/// How far staging is: files staged in plan order, and whether it has ended.
#[derive(Debug, Clone, Copy, Default)]
struct StageProgress {
    staged: usize,
    done: bool,
}

/// The instance's restore_command: copy the file from the staging directory; for a file of
/// the plan that is not staged yet, wait until it is (or staging has ended). Anything else,
/// or a file staging could not get, exits 1 ("not in the archive") at once.
fn staged_restore_command(wal: &Path) -> String {
    let w = wal.display();
    format!(
        "while [ ! -f {w}/%f ] && [ -f {w}/{EXPECTED_DIR}/%f ] && [ ! -f {w}/{STAGED_MARKER} ]; do sleep 0.1; done; \
         [ -f {w}/%f ] && cp {w}/%f %p"
    )
}

fn prepare_staging(plan: &Plan, wal: &Path) -> anyhow::Result<()> {
    let expected = wal.join(EXPECTED_DIR);
    std::fs::create_dir(&expected).with_context(|| format!("create {}", expected.display()))?;
    for name in &plan.segments {
        let p = expected.join(name.to_string());
        std::fs::write(&p, b"").with_context(|| format!("create {}", p.display()))?;
    }
    Ok(())
}

/// Fetch every file of the plan from the repository (each checked against its SHA-256) into
/// the staging directory, in plan order, each under a temporary name first so that
/// restore_command never sees a partial file. Stops early when `stop` is set.
async fn stage_wal(
    repo: &Repository,
    plan: &Plan,
    dir: &Path,
    progress: &tokio::sync::watch::Sender<StageProgress>,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<String> {
    let mut fetches = futures::stream::iter(plan.segments.iter().map(|name| async move {
        let Some((content, _)) = repo.get_wal(name).await? else {
            return Ok(None); // removed since the listing (expire): recovery will say so
        };
        let path = dir.join(name.to_string());
        let tmp = dir.join(format!(".tmp-{name}"));
        let len = content.len() as u64;
        tokio::fs::write(&tmp, content)
            .await
            .with_context(|| format!("write {}", tmp.display()))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .with_context(|| format!("rename {}", tmp.display()))?;
        Ok::<_, anyhow::Error>(Some(len))
    }))
    // Two at a time: replay uses one core, staging must keep ahead of it, not crowd it.
    .buffered(2);
    let mut files = 0;
    let mut bytes = 0;
    let mut seen = 0;
    while let Some(fetched) = fetches.next().await {
        if let Some(len) = fetched? {
            files += 1;
            bytes += len;
        }
        seen += 1;
        progress.send_modify(|p| p.staged = seen);
        if stop.load(std::sync::atomic::Ordering::Relaxed) && seen < plan.segments.len() {
            return Ok(format!(
                "{files} of {} WAL files ({}) staged, SHA-256 checked, when recovery ended",
                plan.segments.len(),
                crate::commands::list::human_bytes(bytes)
            ));
        }
    }
    Ok(format!(
        "{files} WAL files ({}) from {} through {}, SHA-256 checked{}",
        crate::commands::list::human_bytes(bytes),
        plan.first_segment(),
        plan.last_segment(),
        if plan.missing.is_empty() {
            String::new()
        } else {
            format!(";{}", plan.missing_note())
        }
    ))
}

/// Refuse when `base` lacks `need` bytes of free space (an environment problem).
fn check_space(base: &Path, id: &BackupId, need: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(base)
        .map_err(|e| env_error(format!("create scratch directory {}: {e}", base.display())))?;
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(base)
        .output();
    let avail = out.ok().filter(|o| o.status.success()).and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
    });
    match avail {
        Some(avail) if avail < need => Err(env_error(format!(
            "not enough free space in {} to verify backup {id}: it needs {} (the backup's original size and the \
             WAL to stage), {} is available; free some, or set [verify] scratch_dir to a larger file system",
            base.display(),
            crate::commands::list::human_bytes(need),
            crate::commands::list::human_bytes(avail)
        ))),
        Some(_) => Ok(()),
        None => {
            eprintln!(
                "warning: could not check the free space in {}",
                base.display()
            );
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recovery

/// What the server log says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct RecoveryLog {
    recovery_started: bool,
    consistent: Option<String>,
    /// "recovery stopping before commit of transaction 781, time …"
    stopping: Option<String>,
    /// "last completed transaction was at log time …"
    last_completed: Option<String>,
    promoted: bool,
    new_timeline: Option<String>,
    fatal: Vec<String>,
    last_restored: Option<String>,
}

fn scan_log(text: &str) -> RecoveryLog {
    let mut st = RecoveryLog::default();
    for line in text.lines() {
        let message = |tag: &str| {
            line.find(tag)
                .map(|i| line[i + tag.len()..].trim().to_string())
        };
        if let Some(m) = message("LOG:  ") {
            if m.starts_with("starting point-in-time recovery")
                || m.starts_with("starting archive recovery")
                || m.starts_with("starting backup recovery")
            {
                st.recovery_started = true;
            } else if m.starts_with("consistent recovery state reached") {
                st.consistent = Some(m);
            } else if m.starts_with("recovery stopping") {
                st.stopping = Some(m);
            } else if m.starts_with("last completed transaction was at log time") {
                st.last_completed = Some(m);
            } else if m.starts_with("database system is ready to accept connections") {
                st.promoted = true;
            } else if m.starts_with("selected new timeline ID") {
                st.new_timeline = Some(m);
            } else if let Some(rest) = m.strip_prefix("restored log file \"") {
                st.last_restored = rest.split('"').next().map(str::to_string);
            }
        } else if let Some(m) = message("FATAL:  ").or_else(|| message("PANIC:  ")) {
            st.fatal.push(m);
        }
    }
    st
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
        let st = scan_log(&text);
        if st.promoted {
            return Ok(());
        }
        if !instance.running() {
            let status = instance
                .exit_status()
                .map_or("unknown".to_string(), |s| s.to_string());
            let why = if st.fatal.is_empty() {
                format!("log: … {}", tail(&text, 5))
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
                tail(&text, 3)
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

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// Did a promoted server reach the plan's target?
fn judge_recovery(
    plan: &Plan,
    log: &RecoveryLog,
    replayed: Option<DateTime<Utc>>,
) -> Result<String, String> {
    let replayed_text = replayed.map_or("no commit".to_string(), format_utc);
    let not_reached = |why: String| {
        Err(format!(
            "recovery could not reach the target {}: {why}{}",
            plan.describe(),
            plan.missing_note()
        ))
    };
    if log.consistent.is_none() {
        return not_reached("the log has no \"consistent recovery state reached\"".into());
    }
    match plan.mode {
        Mode::Time(t) => {
            let Some(stop) = &log.stopping else {
                return not_reached(format!(
                    "recovery ended without stopping at the target time (the last replayed commit is at {replayed_text})"
                ));
            };
            if replayed.is_some_and(|r| r > t) {
                return not_reached(format!(
                    "it replayed a commit at {replayed_text}, after the target"
                ));
            }
            Ok(format!(
                "{stop}; last replayed commit at {replayed_text} (target {})",
                format_utc(t)
            ))
        }
        Mode::End(Some(t)) => {
            if replayed.is_none_or(|r| r < t) {
                return not_reached(format!(
                    "replay ended with the last commit at {replayed_text}, before the target{}",
                    log.last_restored
                        .as_ref()
                        .map(|s| format!(" (the last WAL file restored was {s})"))
                        .unwrap_or_default()
                ));
            }
            Ok(format!(
                "replayed the staged WAL to its end; last replayed commit at {replayed_text} = the target; {}",
                log.consistent.as_deref().unwrap_or_default()
            ))
        }
        Mode::End(None) => Ok(format!(
            "replayed the backup's WAL; {}",
            log.consistent.as_deref().unwrap_or_default()
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The report

use crate::repo::reports::report_time;
pub use crate::repo::reports::{CheckResult, TargetReport, VerifyReport as Report};

#[derive(Debug, Default)]
struct Checks {
    list: Vec<CheckResult>,
}

impl Checks {
    fn record(&mut self, name: &str, started: Instant, result: Result<String, String>) -> bool {
        self.record_took(name, started.elapsed(), result)
    }

    /// Record a check and put it right after the check `after` (or first).
    fn insert_after(
        &mut self,
        after: &str,
        name: &str,
        took: Duration,
        result: Result<String, String>,
    ) -> bool {
        let ok = self.record_took(name, took, result);
        let check = self.list.pop().expect("just recorded");
        let at = self
            .list
            .iter()
            .position(|c| c.name == after)
            .map_or(0, |i| i + 1);
        self.list.insert(at, check);
        ok
    }

    fn record_took(&mut self, name: &str, took: Duration, result: Result<String, String>) -> bool {
        let ok = result.is_ok();
        let detail = match result {
            Ok(d) | Err(d) => d,
        };
        eprintln!(
            "verify: {name}: {} in {:.1}s: {}",
            if ok { "ok" } else { "FAILED" },
            took.as_secs_f64(),
            truncate(&detail, 300)
        );
        self.list.push(CheckResult {
            name: name.to_string(),
            ok,
            duration_seconds: (took.as_secs_f64() * 1000.0).round() / 1000.0,
            detail,
        });
        ok
    }
}

impl Report {
    pub fn failure_message(&self) -> String {
        format!(
            "backup {} failed verification: {}",
            self.backup_id,
            self.error.as_deref().unwrap_or("no checks ran")
        )
    }

    /// The human-readable summary `verify` prints on stdout.
    pub fn render(&self) -> String {
        let mut out = format!(
            "backup {}: {} ({}, target {}, {:.1}s)\n",
            self.backup_id,
            if self.ok { "verified" } else { "FAILED" },
            self.runtime,
            self.target.description,
            self.duration_seconds
        );
        for c in &self.checks {
            out.push_str(&format!(
                "  {:<4} {:<28} {:>7.1}s  {}\n",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.duration_seconds,
                truncate(&c.detail.replace('\n', " / "), 160)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::TimelineId;
    use crate::repo::reports::LastVerification;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    use crate::repo::window::tests::backup;

    /// A repository with segments `segnos` on timeline 1, each with the given last commit.
    async fn repo_with(segments: &[(u64, Option<&str>)]) -> Repository {
        let repo = Repository::in_memory("core");
        for (segno, commit) in segments {
            let name = WalFileName::Segment(WalSegmentName::new(
                TimelineId(1),
                *segno,
                WalSegmentSize::DEFAULT,
            ));
            let mut extra = serde_json::Map::new();
            if let Some(c) = commit {
                extra.insert("last_commit".into(), (*c).into());
            }
            let (gz, header) = crate::codec::compress(&[0u8; 64], 1, extra);
            repo.put_wal(&name, gz.into(), &header).await.unwrap();
        }
        repo
    }

    #[tokio::test]
    async fn the_default_target_is_the_last_commit_of_the_backups_window() {
        let repo = repo_with(&[
            (2, Some("2024-01-01T02:00:30Z")),
            (3, Some("2024-01-01T03:00:00Z")),
            (4, None),
            (5, Some("2024-01-01T05:00:00Z")),
            (6, Some("2024-01-01T06:00:00Z")),
            (7, Some("2024-01-01T07:00:00Z")),
            (8, None),
        ])
        .await;
        let first = backup("20240101T020000Z", 2, 2, "2024-01-01T02:01:00Z");
        let second = backup("20240101T050000Z", 5, 5, "2024-01-01T05:01:00Z");
        let backups = vec![first.clone(), second.clone()];

        // The first backup is responsible up to the second's end (segment 5): the last commit
        // there is in segment 5, and segment 6 has a later one, so recovery stops at the time.
        let p = plan(&repo, &backups, &first, None).await.unwrap();
        assert_eq!(p.mode, Mode::Time(t("2024-01-01T05:00:00Z")));
        assert_eq!((p.start_segno, p.through_segno), (2, 6));
        assert_eq!(p.segments.len(), 5);
        assert!(p.missing.is_empty());
        // Staged in WAL order; the backup's own WAL (segment 2) first.
        assert_eq!(p.segments[0].to_string(), "000000010000000000000002");
        assert_eq!(p.backup_files, 1);
        let cmd = staged_restore_command(Path::new("/s/wal"));
        assert!(
            cmd.contains("[ -f /s/wal/.expected/%f ]") && cmd.ends_with("cp /s/wal/%f %p"),
            "{cmd}"
        );

        // The newest backup: the newest commit in the archive, nothing after it: replay to the
        // end of the segment that holds it.
        let p = plan(&repo, &backups, &second, None).await.unwrap();
        assert_eq!(p.mode, Mode::End(Some(t("2024-01-01T07:00:00Z"))));
        assert_eq!((p.start_segno, p.through_segno), (5, 7));
        assert_eq!(p.recovery_target(), RecoveryTarget::Latest);
        assert!(p.describe().contains("last archived commit"));

        // --to: stage through the first segment with a commit after it.
        let p = plan(&repo, &backups, &first, Some(t("2024-01-01T05:30:00Z")))
            .await
            .unwrap();
        assert_eq!(p.mode, Mode::Time(t("2024-01-01T05:30:00Z")));
        assert_eq!(p.through_segno, 6);
        // … and refused when nothing later is archived, or before the backup's end.
        let err = plan(&repo, &backups, &second, Some(t("2024-01-01T07:00:00Z")))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no commit after"), "{err}");
        let err = plan(&repo, &backups, &second, Some(t("2024-01-01T04:00:00Z")))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("after the target"), "{err}");
    }

    #[tokio::test]
    async fn a_gap_is_planned_around_and_named() {
        let repo = repo_with(&[
            (2, Some("2024-01-01T02:00:30Z")),
            (3, Some("2024-01-01T03:00:00Z")),
            (5, Some("2024-01-01T05:00:00Z")),
        ])
        .await;
        let b = backup("20240101T020000Z", 2, 2, "2024-01-01T02:01:00Z");
        let p = plan(&repo, std::slice::from_ref(&b), &b, None)
            .await
            .unwrap();
        assert_eq!(p.mode, Mode::End(Some(t("2024-01-01T05:00:00Z"))));
        assert_eq!(p.missing, vec![4]);
        assert!(p
            .missing_note()
            .contains("000000010000000000000004 is missing"));

        // No commit since the backup: recovery to its end.
        let idle = repo_with(&[(2, None), (3, None)]).await;
        let p = plan(&idle, std::slice::from_ref(&b), &b, None)
            .await
            .unwrap();
        assert_eq!(p.mode, Mode::End(None));
        assert_eq!(p.through_segno, 2);
    }

    #[test]
    fn recovery_is_judged_from_the_log_and_the_replayed_commit() {
        let log = "2026-11-25 00:49:58.478 UTC [9] LOG:  starting point-in-time recovery to 2024-01-01 05:00:00+00\n\
                   2026-11-25 00:49:58.600 UTC [9] LOG:  restored log file \"000000010000000000000005\" from archive\n\
                   2026-11-25 00:49:58.700 UTC [9] LOG:  consistent recovery state reached at 0/5000100\n\
                   2026-11-25 00:49:58.800 UTC [9] LOG:  recovery stopping before commit of transaction 781, time 2024-01-01 05:00:01+00\n\
                   2026-11-25 00:49:58.900 UTC [1] LOG:  database system is ready to accept connections\n";
        let st = scan_log(log);
        assert!(st.recovery_started && st.promoted);
        assert_eq!(
            st.last_restored.as_deref(),
            Some("000000010000000000000005")
        );
        let plan = Plan {
            mode: Mode::Time(t("2024-01-01T05:00:00Z")),
            size: WalSegmentSize::DEFAULT,
            path: TimelinePath::root(TimelineId(1)),
            start_segno: 2,
            through_segno: 6,
            segments: vec![],
            missing: vec![],
            backup_files: 0,
        };
        let ok = judge_recovery(&plan, &st, Some(t("2024-01-01T04:59:59Z"))).unwrap();
        assert!(ok.contains("recovery stopping before commit"), "{ok}");
        assert!(judge_recovery(&plan, &st, Some(t("2024-01-01T05:00:02Z"))).is_err());

        let end = Plan {
            mode: Mode::End(Some(t("2024-01-01T07:00:00Z"))),
            missing: vec![4],
            ..plan.clone()
        };
        let err = judge_recovery(&end, &st, Some(t("2024-01-01T03:00:00Z"))).unwrap_err();
        assert!(
            err.starts_with("recovery could not reach the target")
                && err.contains("000000010000000000000004 is missing"),
            "{err}"
        );
        assert!(judge_recovery(&end, &st, Some(t("2024-01-01T07:00:00Z"))).is_ok());

        let failed = scan_log(
            "x LOG:  starting archive recovery\ny FATAL:  recovery ended before configured recovery target was reached\n",
        );
        assert_eq!(
            failed.fatal,
            vec!["recovery ended before configured recovery target was reached"]
        );
        assert!(!failed.promoted);
    }

    #[test]
    fn small_helpers() {
        assert_eq!(
            report_time(t("2024-01-02T03:04:05.678Z")),
            "20240102T030405Z"
        );
        assert_eq!(
            probe_text(&[Some("a".into()), None, Some("b".into())]),
            "a\n\nb"
        );
        assert_eq!(
            connection_identity("host=/run port=5432 user=app dbname=shop sslmode=disable"),
            ("app".into(), "shop".into())
        );
        assert_eq!(
            connection_identity("host=/run"),
            ("postgres".into(), "postgres".into())
        );
        let conf = generated_conf(
            "max_connections setting:              200\nmax_wal_senders setting:              10\nwal_level setting: replica\n",
        );
        assert!(
            conf.contains("max_connections = 200\nmax_wal_senders = 10\n"),
            "{conf}"
        );
        assert!(!conf.contains("wal_level"));
        assert_eq!(truncate("ääää", 3), "ä…");
        let (progress, rest) = amcheck_output(
            "",
            "  0/547 relations (0%),     0/11199 pages (0%)\r547/547 relations (100%), 11199/11199 pages (100%)\nheap table \"x\": bad\n",
        );
        assert_eq!(
            progress.as_deref(),
            Some("547/547 relations (100%), 11199/11199 pages (100%)")
        );
        assert_eq!(rest, "heap table \"x\": bad");
    }

    #[tokio::test]
    async fn reports_are_stored_per_verification_and_listed() {
        let repo = Repository::in_memory("core");
        let id: BackupId = "20240101T020000Z".parse().unwrap();
        assert_eq!(repo.last_verification(&id).await.unwrap(), None);
        let mut report = Report {
            format_version: REPORT_FORMAT,
            cluster: "core".into(),
            backup_id: id.to_string(),
            time: String::new(),
            started_at: t("2024-01-02T00:00:00Z"),
            finished_at: t("2024-01-02T00:01:00Z"),
            duration_seconds: 60.0,
            ok: false,
            error: Some("amcheck: corrupt".into()),
            runtime: "namespace".into(),
            target: TargetReport {
                kind: "time".into(),
                time: Some(t("2024-01-01T05:00:00Z")),
                description: "2024-01-01 05:00:00 UTC".into(),
                wal_from: "a".into(),
                wal_through: "b".into(),
                segments_staged: 2,
                missing: vec![],
            },
            recovered_to: None,
            checks: vec![],
        };
        repo.put_report(&mut report).await.unwrap();
        report.ok = true;
        repo.put_report(&mut report).await.unwrap();
        assert_eq!(report.time, "20240102T000001Z");
        assert!(repo
            .report_names(&id)
            .await
            .unwrap()
            .contains(&"20240102T000000Z".to_string()));
        let last = repo.last_verification(&id).await.unwrap().unwrap();
        assert_eq!(
            last,
            LastVerification {
                time: "20240102T000001Z".into(),
                ok: true,
                target: "2024-01-01 05:00:00 UTC".into()
            }
        );
        assert!(report.render().contains("verified"));
        assert!(report.failure_message().contains("20240101T020000Z"));
    }
}
