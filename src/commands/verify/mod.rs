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

mod checks;
mod plan;
mod report;
mod scratch;
mod stage;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::config::{ClusterConfig, Config, VerifyRuntime};
use crate::error::Failure;
use crate::format;
use crate::repo::manifest::{BackupId, BackupManifest};
use crate::repo::Repository;
use crate::sandbox::{self, env_error, Runtime, ScratchDirs};
use crate::timeparse::{format_utc, TargetTime};
use scratch::{Findings, Verification};

pub use plan::{plan, Mode, Plan};
use report::report_time;
pub use report::{CheckResult, Report, TargetReport, REPORT_FORMAT};

/// What `verify` was asked to do, parsed (see `crate::settings`).
#[derive(Debug, Clone)]
pub struct VerifySettings {
    pub which: Which,
    /// Recover to this time instead of the default target.
    pub to: Option<TargetTime>,
    /// Where the scratch instance runs.
    pub runtime: VerifyRuntime,
    /// Print the report as JSON on stdout.
    pub json: bool,
    /// The config file (hidden from the scratch instance).
    pub config_path: PathBuf,
}

/// Which backups to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    Backup(BackupId),
    /// The newest backup (the default).
    Newest,
    /// Every backup that has no verification report yet, oldest first.
    AllUnverified,
}

/// How one verification runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Recover to this time instead of the default target.
    pub to: Option<DateTime<Utc>>,
    pub runtime: VerifyRuntime,
    /// The config file (hidden from the scratch instance).
    pub config_path: PathBuf,
}

pub async fn run(
    config: &Config,
    cluster: &ClusterConfig,
    repo: &Repository,
    settings: &VerifySettings,
) -> anyhow::Result<()> {
    if let Some(t) = &settings.to {
        eprintln!("target: {t}");
    }
    let opts = Options {
        to: settings.to.map(|t| t.utc),
        runtime: settings.runtime,
        config_path: settings.config_path.clone(),
    };
    let all = repo.backups().await.context("list backups")?;
    for d in &all.damaged {
        eprintln!("warning: skipping damaged backup {}: {}", d.id, d.error);
    }
    let backups = all.intact;
    let Some(newest) = backups.iter().max_by_key(|b| (b.stop_lsn, b.stop_time)) else {
        return Err(Failure::NotFound(format!(
            "the repository of cluster {:?} has no backups to verify",
            repo.cluster()
        ))
        .into());
    };
    let ids: Vec<BackupId> = match &settings.which {
        Which::AllUnverified => {
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
        }
        Which::Backup(id) => vec![id.clone()],
        Which::Newest => vec![newest.id.clone()],
    };

    let mut reports = Vec::new();
    let work = async {
        for id in &ids {
            let report = verify_backup(config, cluster, repo, id, &opts).await?;
            if !settings.json {
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
    if settings.json {
        let text = if settings.which == Which::AllUnverified {
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
    let all = repo.backups().await.context("list backups")?;
    if let Some(d) = all.damaged(id) {
        return Err(Failure::VerifyFailed(d.message()).into());
    }
    let backups = all.intact;
    let backup = backups
        .iter()
        .find(|b| &b.id == id)
        .ok_or_else(|| Failure::NotFound(format!("there is no backup {id}")))?;
    let started_at = Utc::now();
    let clock = Instant::now();
    let deadline = clock + Duration::from_secs(config.verify.timeout_seconds);

    // Environment first: a runtime that cannot run this major version is not a verdict.
    let run_as = sandbox::run_as()?;
    let runtime =
        Runtime::prepare(opts.runtime, config, cluster, backup.pg_version, &run_as).await?;
    runtime.remove_stale().await;
    sandbox::remove_stale(&config.verify.scratch_dir);

    let plan = plan(repo, &backups, backup, opts.to).await?;
    let last_commit = last_archived_commit(repo, &backups).await;
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
    if std::env::var(crate::env::VERIFY_KEEP).as_deref() == Ok("1") {
        dirs.keep();
    }
    let hide = scratch::hidden_paths(config, &opts.config_path, &run_as);
    let verification = Verification {
        config,
        cluster,
        repo,
        backup,
        plan: &plan,
        runtime: &runtime,
        dirs: &dirs,
        hide: &hide,
        deadline,
    };
    let mut found = Findings::default();
    if let Err(e) = verification.in_scratch(&mut found).await {
        if sandbox::is_environment_error(&e) {
            return Err(e);
        }
        // Anything else that stopped the checks is this verification's failure.
        found.checks.record("verify", clock, Err(format!("{e:#}")));
    }
    drop(dirs);

    let finished_at = Utc::now();
    let Findings {
        checks,
        recovered_to,
    } = found;
    let ok = !checks.list.is_empty() && checks.list.iter().all(|c| c.ok);
    let measured = report::measure(&checks.list, started_at, last_commit);
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
        speeds: None,
        measured,
    };
    // What the restore downloaded, counted as restore's plan counts it.
    let chain: Vec<BackupManifest> = crate::repo::chain::chain(&backup.id, &backups).map_or_else(
        |_| vec![backup.clone()],
        |c| c.into_iter().cloned().collect(),
    );
    let stored = crate::restore::chain::download_bytes(&chain).unwrap_or(backup.stored_size());
    report.measure_speeds(stored, plan.segments.len(), seg_bytes);
    repo.put_report(&mut report).await?;
    Ok(report)
}

/// The last commit in the archive now (the window's end, as `list` shows it), for the
/// data-loss exposure the report records. Best effort: `None` with a warning.
async fn last_archived_commit(
    repo: &Repository,
    backups: &[crate::repo::manifest::BackupManifest],
) -> Option<DateTime<Utc>> {
    match super::list::latest_window(repo, backups).await {
        Ok(w) => w.last_commit,
        Err(e) => {
            eprintln!("warning: cannot read the archive's last commit (no data-loss exposure in the report): {e:#}");
            None
        }
    }
}

/// Refuse when `base` lacks `need` bytes of free space (an environment problem).
fn check_space(base: &Path, id: &BackupId, need: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(base)
        .map_err(|e| env_error(format!("create scratch directory {}: {e}", base.display())))?;
    let avail = crate::os::free_space(&[base.to_path_buf()])
        .ok()
        .and_then(|m| m.first().map(|(avail, _)| *avail));
    match avail {
        Some(avail) if avail < need => Err(env_error(format!(
            "not enough free space in {} to verify backup {id}: it needs {} (the backup's original size and the \
             WAL to stage), {} is available; free some, or set [verify] scratch_dir to a larger file system",
            base.display(),
            format::human_bytes(need),
            format::human_bytes(avail)
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
