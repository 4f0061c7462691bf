//! `check`: an end-to-end self-test an operator runs after setting up (or when in doubt).
//! Each check prints one line; the command fails if any check fails.

use std::time::{Duration, Instant};

use crate::config::{ClusterConfig, Config};
use crate::pg::{self, WalFileName};
use crate::repo::Repository;
use crate::settings::CheckSettings;

struct Outcome {
    failed: Vec<String>,
}

impl Outcome {
    fn report(&mut self, name: &str, result: anyhow::Result<String>) {
        match result {
            Ok(detail) => println!("ok    {name}: {detail}"),
            Err(e) => {
                println!("FAIL  {name}: {e:#}");
                self.failed.push(name.to_string());
            }
        }
    }
}

pub async fn run(
    _config: &Config,
    cluster: &ClusterConfig,
    repo: &Repository,
    settings: CheckSettings,
) -> anyhow::Result<()> {
    let mut out = Outcome { failed: Vec::new() };
    out.report("store", check_store(repo).await);
    out.report("archive conflicts", check_conflicts(repo).await);
    let readable = match check_encryption(repo).await {
        Ok((line, readable)) => {
            out.report("encryption", Ok(line));
            readable
        }
        Err(e) => {
            out.report("encryption", Err(e));
            false
        }
    };
    if readable {
        out.report("backups and WAL continuity", check_backups(repo).await);
        out.report("timelines", check_split_brain(repo).await);
    } else {
        println!("skip  backups and WAL continuity, timelines: the encrypted repository is not readable here");
    }
    // The server a backup would read (per backup_from), and the primary that archives: the
    // same session unless backups come from a standby.
    let from_primary = cluster.backup_from == crate::config::BackupFrom::Primary;
    let mut primary = None;
    match crate::commands::backup::open_session(cluster).await {
        Err(e) => out.report("database connection", Err(e)),
        Ok(session) => {
            out.report(
                "database connection",
                Ok(format!(
                    "{} (backup_from = \"{}\": {})",
                    cluster.connection_description(),
                    cluster.backup_from.as_str(),
                    session.endpoint()
                )),
            );
            out.report("identity", check_identity(cluster, repo, &session).await);
            if from_primary {
                primary = Some(Ok(session));
            } else {
                session.close().await;
            }
        }
    }
    if !from_primary {
        primary = Some(
            pg::client::connect_to(&cluster.connection, pg::client::ServerRole::Primary).await,
        );
    }
    match primary {
        // backup_from = "primary" and no connection: already reported above.
        None => {}
        Some(Err(e)) => out.report("archiving", Err(e.context("connect to the primary"))),
        Some(Ok(primary)) => {
            out.report(
                "archiving",
                check_archiving(repo, &primary, settings.archive_timeout).await,
            );
            primary.close().await;
        }
    }
    if out.failed.is_empty() {
        println!("all checks passed");
        Ok(())
    } else {
        anyhow::bail!("check failed: {}", out.failed.join(", "))
    }
}

/// `encryption: on, N recipients, key generation G` (or `off`), and whether this host can
/// read the repository. Fails when the configured identity cannot open the keyring; a host
/// without `identity_file` (a database host: writers need public keys only) passes.
async fn check_encryption(repo: &Repository) -> anyhow::Result<(String, bool)> {
    let Some(public) = repo.encryption().await? else {
        return Ok(("encryption: off".into(), true));
    };
    let line = crate::commands::key::summary(&public);
    if !repo.identity_configured() {
        return Ok((
            format!("{line}; no identity_file here: this host can write, not read"),
            false,
        ));
    }
    repo.check_identity().await?;
    Ok((format!("{line}; the identity opens the keyring"), true))
}

/// Write, read back, refuse an overwrite, delete: the store semantics WAL archiving relies on.
async fn check_store(repo: &Repository) -> anyhow::Result<String> {
    let started = Instant::now();
    repo.probe_store().await?;
    Ok(format!(
        "write, conditional write, read and delete work ({} ms)",
        started.elapsed().as_millis()
    ))
}

async fn check_identity(
    cluster: &ClusterConfig,
    repo: &Repository,
    session: &pg::client::Session,
) -> anyhow::Result<String> {
    let server = session.server_info().await?;
    crate::commands::backup::check_pgdata(cluster, session, &server)?;
    match repo.info().await? {
        Some(info) if info.system_identifier != server.system_id => anyhow::bail!(
            "the repository belongs to database system {}, the server is {}",
            info.system_identifier,
            server.system_id
        ),
        Some(_) => Ok(format!(
            "server, pgdata and repository agree: system {}",
            server.system_id
        )),
        None => Ok(format!(
            "server and pgdata agree: system {}; the repository is still empty",
            server.system_id
        )),
    }
}

/// Every manifest reads, and the archive has no gap inside the recoverable window.
async fn check_backups(repo: &Repository) -> anyhow::Result<String> {
    let backups = repo.backups().await?;
    let mut problems: Vec<String> = backups.damaged.iter().map(|d| d.message()).collect();
    let win = crate::commands::list::latest_window(repo, &backups.intact).await?;
    problems.extend(win.gap_note());
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    Ok(format!(
        "{} backup(s) readable; no WAL segment missing inside the window",
        backups.intact.len()
    ))
}

/// WAL files another server tried to archive under names that hold different content.
async fn check_conflicts(repo: &Repository) -> anyhow::Result<String> {
    let conflicts = repo.list_conflicts().await?;
    if conflicts.is_empty() {
        return Ok("no WAL file was ever refused for conflicting content".into());
    }
    let shown: Vec<&str> = conflicts.iter().take(5).map(String::as_str).collect();
    anyhow::bail!(
        "{} WAL file(s) were refused because different content is archived under the same name \
         ({}{}): two servers archive into this repository as one cluster (split brain after a failover?). \
         Stop archiving on the server that is no longer the primary; the refused copies are kept under \
         {}/ — delete them once the incident is understood",
        conflicts.len(),
        shown.join(", "),
        if conflicts.len() > shown.len() { ", ..." } else { "" },
        repo.conflicts_location()
    )
}

/// Two timelines that both keep receiving WAL after their branch point.
async fn check_split_brain(repo: &Repository) -> anyhow::Result<String> {
    let found = repo.split_brains().await?;
    if found.is_empty() {
        return Ok("no two timelines receive WAL after their branch point".into());
    }
    let lines: Vec<String> = found.iter().map(|s| s.describe()).collect();
    anyhow::bail!("{}", lines.join("; "))
}

/// Ask for a WAL switch and wait until that segment is in the repository.
async fn check_archiving(
    repo: &Repository,
    session: &pg::client::Session,
    timeout: Duration,
) -> anyhow::Result<String> {
    let status = session.archiver_status().await?;
    let segment = session.switch_wal().await?;
    let Some(segment) = segment else {
        return Ok(format!("nothing to archive; {status}"));
    };
    let name = WalFileName::Segment(segment);
    let wait = timeout.as_secs();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if repo.wal_header(&name).await?.is_some() {
            return Ok(format!("{name} reached the repository"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!(
        "{name} did not reach the repository within {wait} s: check archive_mode and archive_command \
         (`{} --cluster NAME wal-push %p`) and the server log; pg_stat_archiver: {}",
        std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "synapse-backup".into()),
        session.archiver_status().await.unwrap_or(status)
    )
}
