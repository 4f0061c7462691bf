//! `backup`: an online base backup over the non-exclusive low-level API, on one session held
//! open for the whole copy. The backup exists only once its manifest is stored, and the
//! manifest is stored only after the WAL from its start to its stop is in the archive.

mod copy;
mod identity;
mod incr;
mod parent;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use chrono::Utc;

use crate::config::{BackupFrom, ClusterConfig, Config};
use crate::error::Failure;
use crate::pg::client::{ServerRole, Session};
use crate::pg::{self, Lsn, SystemId, TimelineId, WalFileName, WalSegmentName, WalSegmentSize};
use crate::repo::lock::RepoLock;
use crate::repo::manifest::{
    BackupId, BackupKind, BackupManifest, DirEntry, FileEntry, ParentRef, PartEntry, Stored,
    Tablespace, MANIFEST_FORMAT,
};
use crate::repo::{Repository, RepositoryInfo, CONTROL_PART};

pub async fn run(
    config: &Config,
    cluster: &ClusterConfig,
    repo: &Repository,
    kind: BackupKind,
) -> anyhow::Result<()> {
    let manifest = take_backup_of_kind(config, cluster, repo, kind).await?;
    println!("{}", manifest.id);
    Ok(())
}

/// Take a full backup and return its stored manifest.
pub async fn take_backup(
    config: &Config,
    cluster: &ClusterConfig,
    repo: &Repository,
) -> anyhow::Result<BackupManifest> {
    take_backup_of_kind(config, cluster, repo, BackupKind::Full).await
}

/// Take a backup of `kind` and return its stored manifest. An incremental is taken against
/// the newest backup when that can be its parent, else a full is taken (logged).
pub async fn take_backup_of_kind(
    config: &Config,
    cluster: &ClusterConfig,
    repo: &Repository,
    kind: BackupKind,
) -> anyhow::Result<BackupManifest> {
    let session = open_session(cluster).await?;
    let server = session.server_info().await?;
    if let Err(e) = check_pgdata(cluster, &session, &server) {
        session.close().await;
        return Err(e);
    }
    tracing::info!(
        cluster = %cluster.name,
        "backing up {} at {}",
        if server.in_recovery { "the standby" } else { "the primary" },
        session.endpoint()
    );
    let seg_size = WalSegmentSize::new(server.wal_segment_size)
        .context("server reports an invalid wal_segment_size")?;
    repo.ensure_identity(&RepositoryInfo::new(
        server.system_id,
        server.major(),
        server.wal_segment_size,
    ))
    .await?;
    let lock = RepoLock::acquire(
        repo,
        "backup",
        Duration::from_secs(config.backup.lock_ttl_seconds),
    )
    .await?;
    let base = parent::choose(
        repo,
        kind,
        config.backup.max_chain,
        &parent::Server {
            system_id: server.system_id,
            timeline: server.timeline,
            pg_version: server.major(),
        },
    )
    .await;
    let result = match base {
        Ok(base) => {
            let ctx = BackupCtx {
                config,
                cluster,
                repo,
                session: &session,
                server: &server,
                seg_size,
                lock: &lock,
            };
            backup_locked(&ctx, base).await
        }
        Err(e) => Err(e),
    };
    let released = lock.release().await;
    session.close().await;
    let manifest = result?;
    released?;
    Ok(manifest)
}

/// Record a catalog snapshot (relfilenode → name, for `events`) when it changed since the
/// last one, and return the name of the snapshot holding it (for the manifest). Best effort:
/// the backup is complete whatever happens here.
pub async fn record_catalog(
    repo: &Repository,
    session: &Session,
    conninfo: &str,
) -> Option<String> {
    let stored = match pg::catalog::take_snapshot(session, conninfo).await {
        Ok(snapshot) => repo.put_catalog(&snapshot).await,
        Err(e) => Err(e),
    };
    match stored {
        Ok(s) => {
            if s.stored {
                tracing::info!(catalog = %s.name, "catalog snapshot stored");
            } else {
                tracing::info!(catalog = %s.name, "catalog unchanged since the last snapshot");
            }
            Some(s.name)
        }
        Err(e) => {
            tracing::warn!("could not record a catalog snapshot: {e:#}");
            None
        }
    }
}

/// The backup session, on the server that `backup_from` asks for.
pub async fn open_session(cluster: &ClusterConfig) -> anyhow::Result<Session> {
    let conninfo = &cluster.connection;
    let from = cluster.backup_from.as_str();
    let on = |role: ServerRole| pg::client::connect_to(conninfo, role);
    match cluster.backup_from {
        BackupFrom::Primary => on(ServerRole::Primary)
            .await
            .with_context(|| format!("backup_from = \"{from}\" needs a primary (read-write)")),
        BackupFrom::Standby => on(ServerRole::Standby)
            .await
            .with_context(|| format!("backup_from = \"{from}\" needs a standby (in recovery)")),
        BackupFrom::PreferStandby => match on(ServerRole::Standby).await {
            Ok(session) => Ok(session),
            Err(no_standby) => {
                tracing::info!("no standby to back up ({no_standby:#}); backing up the primary");
                on(ServerRole::Primary).await.map_err(|no_primary| {
                    anyhow::anyhow!(
                        "backup_from = \"{from}\" found neither a standby ({no_standby:#}) nor a primary ({no_primary:#})"
                    )
                })
            }
        },
    }
}

/// Refuse (exit 4) before anything is copied unless `pgdata` is the data directory of the
/// connected server: the same database system, and the very server running there (a primary
/// and its standbys share the system identifier).
pub fn check_pgdata(
    cluster: &ClusterConfig,
    session: &Session,
    server: &pg::client::ServerInfo,
) -> anyhow::Result<()> {
    let on_disk = pg::control::read_system_id(&cluster.pgdata).map_err(|e| {
        Failure::Conflict(format!(
            "{e:#}: pgdata {} is not the data directory of the server at {}; refusing to back it up \
             (check [[cluster]] pgdata and connection)",
            cluster.pgdata.display(),
            session.endpoint()
        ))
    })?;
    if on_disk != server.system_id {
        return Err(Failure::Conflict(format!(
            "pgdata {} belongs to database system {on_disk}, but the server at {} is system {}; \
             refusing to copy a data directory that is not the connected server's (check [[cluster]] pgdata and connection)",
            cluster.pgdata.display(),
            session.endpoint(),
            server.system_id
        ))
        .into());
    }
    identity::check_runs_on(
        &cluster.pgdata,
        &identity::Connected {
            endpoint: session.endpoint(),
            server,
        },
    )
}

/// What one backup run works with.
struct BackupCtx<'a> {
    config: &'a Config,
    cluster: &'a ClusterConfig,
    repo: &'a Repository,
    session: &'a pg::client::Session,
    server: &'a pg::client::ServerInfo,
    seg_size: WalSegmentSize,
    lock: &'a RepoLock,
}

async fn backup_locked(ctx: &BackupCtx<'_>, base: parent::Base) -> anyhow::Result<BackupManifest> {
    let BackupCtx {
        config,
        cluster,
        repo,
        session,
        server,
        seg_size,
        lock,
    } = *ctx;
    let started = Instant::now();
    let start_time = Utc::now();
    let id = repo.new_backup_id(start_time).await?;
    let (kind, parent_ref, parent_map) = match base {
        parent::Base::Full => (BackupKind::Full, None, None),
        parent::Base::Incr { parent, map } => (
            BackupKind::Incr,
            Some(ParentRef {
                id: parent.id.clone(),
                manifest_sha256: parent.fingerprint(),
            }),
            Some(map),
        ),
    };
    match &parent_ref {
        Some(p) => {
            tracing::info!(backup_id = %id, cluster = %cluster.name, parent = %p.id, "starting incremental backup")
        }
        None => tracing::info!(backup_id = %id, cluster = %cluster.name, "starting full backup"),
    }
    let start_lsn = session
        .backup_start(
            &format!("synapse-backup {id}"),
            config.backup.fast_checkpoint,
        )
        .await?;
    // The timeline of the start checkpoint (a restartpoint on a standby), read after the
    // start call; the label's START TIMELINE, once there is one, has the last word.
    let start_timeline = session.server_info().await?.timeline;
    tracing::info!(backup_id = %id, start_lsn = %start_lsn, "backup started");

    let copied = copy_data(ctx, &id, start_lsn, parent_map.clone()).await;
    let (plan, copy_result, control) = match copied {
        Ok(c) => c,
        Err(e) => {
            let _ = session.backup_stop().await;
            cleanup_parts(repo, &id).await;
            return Err(e);
        }
    };
    let stop = session.backup_stop().await?;
    let stop_time = Utc::now();
    let timeline = label_start_timeline(&stop.label).unwrap_or(start_timeline);
    if server.in_recovery {
        or_clean(repo, &id, check_standby_stop(session, timeline).await).await?;
    }
    tracing::info!(backup_id = %id, stop_lsn = %stop.lsn, "backup stopped; waiting for its WAL to be archived");

    // The last part: backup_label, tablespace_map and pg_control (copied last).
    let control_part = write_control_part(repo, &id, &stop, &control, copy_result.parts.len());
    let control_part = or_clean(repo, &id, control_part.await).await?;

    // A standby cannot switch WAL: its primary is asked to, if the segment is slow to come.
    let switcher = server.in_recovery.then(|| WalSwitcher {
        conninfo: &cluster.connection,
        system_id: server.system_id,
        last: None,
    });
    let needed = NeededWal {
        timeline,
        start: start_lsn,
        stop: stop.lsn,
        size: seg_size,
    };
    let wait = config.backup.archive_wait_seconds;
    let waited = wait_for_wal(repo, session, switcher, &needed, wait, lock).await;
    or_clean(repo, &id, waited).await?;

    let block_map = repo
        .put_block_map(&id, &copy_result.block_map, parent_map.as_deref())
        .await;
    let block_map = or_clean(repo, &id, block_map).await?;
    let mut parts = copy_result.parts;
    let mut files = copy_result.files;
    files.push(control_part.1.clone());
    files.extend(control_part.2.iter().cloned());
    files.sort_by(|a, b| a.path.cmp(&b.path));
    parts.push(control_part.0);
    let catalog_snapshot = record_catalog(repo, session, &cluster.connection).await;
    let manifest = BackupManifest {
        format_version: MANIFEST_FORMAT,
        id: id.clone(),
        cluster: cluster.name.clone(),
        kind,
        parent: parent_ref,
        system_identifier: server.system_id,
        pg_version: server.major(),
        pg_version_num: server.version_num,
        wal_segment_size: server.wal_segment_size,
        timeline,
        start_lsn,
        stop_lsn: stop.lsn,
        start_time,
        stop_time,
        backup_from: if server.in_recovery {
            "standby"
        } else {
            "primary"
        }
        .into(),
        data_checksums: server.data_checksums,
        backup_label: stop.label.clone(),
        tablespace_map: stop.tablespace_map.clone(),
        tablespaces: manifest_tablespaces(&plan),
        parts,
        files,
        directories: manifest_directories(&plan),
        page_problems: copy_result.page_problems,
        catalog_snapshot,
        block_map: Some(block_map),
        stored_sha256: None,
    };
    // The backup becomes visible with its manifest: only while the lock is still ours.
    or_clean(repo, &id, lock.ensure_held().await).await?;
    repo.put_manifest(&manifest)
        .await
        .context("store the backup manifest")?;
    log_complete(&manifest, started);
    Ok(manifest)
}

/// `result`, after removing the parts stored so far when it is an error: a failed backup
/// leaves nothing behind.
async fn or_clean<T>(
    repo: &Repository,
    id: &BackupId,
    result: anyhow::Result<T>,
) -> anyhow::Result<T> {
    if result.is_err() {
        cleanup_parts(repo, id).await;
    }
    result
}

/// The tablespaces of the copy plan, as the manifest records them.
fn manifest_tablespaces(plan: &pg::exclude::Plan) -> Vec<Tablespace> {
    plan.tablespaces
        .iter()
        .map(|(oid, loc)| Tablespace {
            oid: *oid,
            location: loc.display().to_string(),
        })
        .collect()
}

/// The directories of the copy plan (with their modes), as the manifest records them.
fn manifest_directories(plan: &pg::exclude::Plan) -> Vec<DirEntry> {
    plan.dirs
        .iter()
        .map(|(p, m)| DirEntry {
            path: p.clone(),
            mode: *m,
        })
        .collect()
}

fn log_complete(manifest: &BackupManifest, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        backup_id = %manifest.id,
        kind = %manifest.kind,
        original_bytes = manifest.original_size(),
        stored_bytes = manifest.stored_size(),
        seconds = format!("{secs:.1}"),
        mb_per_s = format!("{:.1}", manifest.original_size() as f64 / 1e6 / secs.max(0.001)),
        page_problems = manifest.page_problems.len(),
        "backup complete"
    );
    if !manifest.page_problems.is_empty() {
        tracing::warn!(
            backup_id = %manifest.id,
            "{} corrupt page(s) found; they are listed in the manifest (synapse-backup list --json)",
            manifest.page_problems.len()
        );
    }
}

type Copied = (pg::exclude::Plan, copy::CopyResult, Vec<u8>);

async fn copy_data(
    ctx: &BackupCtx<'_>,
    id: &BackupId,
    start_lsn: Lsn,
    parent: Option<Arc<crate::repo::blockmap::BlockMap>>,
) -> anyhow::Result<Copied> {
    let (config, cluster, repo) = (ctx.config, ctx.cluster, ctx.repo);
    let data_checksums = ctx.server.data_checksums;
    let pgdata = cluster.pgdata.clone();
    let mut plan = tokio::task::spawn_blocking(move || pg::exclude::plan(&pgdata))
        .await
        .expect("walk does not panic")?;
    for skipped in &plan.skipped {
        tracing::warn!(file = %skipped, "skipping special file");
    }
    let control_file = plan
        .control
        .take()
        .context("pgdata has no global/pg_control")?;
    let total: u64 = plan.files.iter().map(|f| f.size).sum();
    let progress = Arc::new(AtomicU64::new(0));
    let reporter = tokio::spawn(report_progress(progress.clone(), total));
    let result = copy::copy(copy::CopyJob {
        repo: repo.clone(),
        id: id.clone(),
        files: std::mem::take(&mut plan.files),
        parallelism: config.backup.parallelism,
        level: config.backup.compress_level,
        start_lsn,
        data_checksums,
        progress,
        parent,
    })
    .await;
    reporter.abort();
    let result = result?;
    // pg_control last, after every other file.
    let control = std::fs::read(&control_file.abs)
        .with_context(|| format!("read {}", control_file.abs.display()))?;
    Ok((plan, result, control))
}

/// Store `control.tar.gz`; returns its part entry, pg_control's file entry and the label/map entries.
async fn write_control_part(
    repo: &Repository,
    id: &BackupId,
    stop: &pg::client::BackupStop,
    control: &[u8],
    part_index: usize,
) -> anyhow::Result<(PartEntry, FileEntry, Vec<FileEntry>)> {
    let now = Utc::now().timestamp();
    let mut files: Vec<(&str, &[u8])> = vec![("backup_label", stop.label.as_bytes())];
    if let Some(map) = &stop.tablespace_map {
        files.push(("tablespace_map", map.as_bytes()));
    }
    files.push(("global/pg_control", control));
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    let mut tar = tar::Builder::new(gz);
    let mut entries = Vec::new();
    for (path, data) in &files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(now as u64);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, *data)
            .context("build control part")?;
        entries.push(FileEntry {
            path: path.to_string(),
            size: data.len() as u64,
            mode: 0o600,
            mtime: now,
            sha256: crate::codec::Sha256::of(data),
            part: part_index,
            stored: Stored::Whole,
        });
    }
    let bytes = tar
        .into_inner()
        .context("build control part")?
        .finish()
        .context("build control part")?;
    let part = PartEntry {
        key: CONTROL_PART.into(),
        size: bytes.len() as u64,
        sha256: crate::codec::Sha256::of(&bytes),
        original_size: files.iter().map(|(_, d)| d.len() as u64).sum(),
    };
    repo.put_part(id, CONTROL_PART, Bytes::from(bytes)).await?;
    let control_entry = entries.pop().expect("pg_control entry");
    Ok((part, control_entry, entries))
}

/// The WAL a backup needs: every segment from its start to its stop, on one timeline.
struct NeededWal {
    timeline: TimelineId,
    start: Lsn,
    stop: Lsn,
    size: WalSegmentSize,
}

impl NeededWal {
    fn stop_segment(&self) -> WalSegmentName {
        WalSegmentName::new(self.timeline, self.stop.end_segno(self.size), self.size)
    }
}

/// Wait (bounded) until every segment from the start to the stop segment is archived.
async fn wait_for_wal(
    repo: &Repository,
    session: &Session,
    mut switcher: Option<WalSwitcher<'_>>,
    needed: &NeededWal,
    wait_seconds: u64,
    lock: &RepoLock,
) -> anyhow::Result<()> {
    let stop_name = needed.stop_segment();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(wait_seconds);
    let mut next_switch = started + SWITCH_AFTER;
    loop {
        lock.check()?;
        if repo.wal_stored(&WalFileName::Segment(stop_name)).await? {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            let why = match &switcher {
                // The standby's own archiver says nothing about the primary's archiving.
                Some(s) => format!(
                    "the backup was taken on a standby, which cannot switch WAL: {}. Check the primary's \
                     archive_command and `select * from pg_stat_archiver` there",
                    s.last.as_deref().unwrap_or("its primary was not asked to")
                ),
                None => {
                    let status = session
                        .archiver_status()
                        .await
                        .unwrap_or_else(|e| format!("unavailable: {e:#}"));
                    format!(
                        "WAL archiving looks broken. Check archive_command and `select * from pg_stat_archiver` ({status})"
                    )
                }
            };
            bail!(
                "WAL segment {stop_name}, which this backup needs, did not reach the archive within {wait_seconds} s: \
                 {why}. The backup was NOT stored."
            );
        }
        if let Some(s) = switcher.as_mut().filter(|_| now >= next_switch) {
            s.complete(&stop_name, needed.size).await;
            next_switch = Instant::now() + SWITCH_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    check_archived_range(repo, needed).await
}

/// Every segment of `needed` is in the archive (listed), else an error naming the missing.
async fn check_archived_range(repo: &Repository, needed: &NeededWal) -> anyhow::Result<()> {
    let size = needed.size;
    let archived: std::collections::HashSet<u64> = repo
        .list_wal()
        .await?
        .into_iter()
        .filter_map(|(n, _)| match n {
            WalFileName::Segment(s) if s.timeline == needed.timeline => Some(s.segno(size)),
            _ => None,
        })
        .collect();
    let missing: Vec<String> = (needed.start.segno(size)..=needed.stop.end_segno(size))
        .filter(|s| !archived.contains(s))
        .map(|s| WalSegmentName::new(needed.timeline, s, size).to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the archive lacks WAL this backup needs: {}; the backup was NOT stored",
            missing.join(", ")
        );
    }
    Ok(())
}

/// A standby's backup ends in a segment that only its primary can complete: when it is slow
/// to reach the archive, ask the primary (same connection string, read-write session) to
/// switch WAL — first after this long, then every [`SWITCH_EVERY`].
const SWITCH_AFTER: Duration = Duration::from_secs(3);
const SWITCH_EVERY: Duration = Duration::from_secs(10);

/// Asks the primary to complete a standby backup's last segment.
struct WalSwitcher<'a> {
    conninfo: &'a str,
    system_id: SystemId,
    /// What the last attempt did, for the error if the segment never comes.
    last: Option<String>,
}

impl WalSwitcher<'_> {
    /// Switch WAL on the primary if its insert position is still in `segment`.
    async fn complete(&mut self, segment: &WalSegmentName, size: WalSegmentSize) {
        let outcome = match pg::client::connect_to(self.conninfo, ServerRole::Primary).await {
            Ok(primary) => {
                let at = primary.endpoint().to_string();
                let r = self.switch_if_needed(&primary, segment, size).await;
                primary.close().await;
                r.unwrap_or_else(|e| format!("the primary at {at} could not switch WAL: {e:#}"))
            }
            Err(e) => format!("no primary was reachable to switch WAL ({e:#})"),
        };
        tracing::info!("waiting for {segment}: {outcome}");
        self.last = Some(outcome);
    }

    async fn switch_if_needed(
        &self,
        primary: &Session,
        segment: &WalSegmentName,
        size: WalSegmentSize,
    ) -> anyhow::Result<String> {
        let at = primary.endpoint();
        let info = primary.server_info().await?;
        if info.system_id != self.system_id {
            bail!(
                "it is database system {}, not {}",
                info.system_id,
                self.system_id
            );
        }
        let insert = primary.current_wal_insert_lsn().await?;
        if insert.segno(size) != segment.segno(size) {
            return Ok(format!(
                "the primary at {at} writes at {insert}, past {segment}: waiting for its archiver"
            ));
        }
        primary.switch_wal().await?;
        let archiver = primary
            .archiver_status()
            .await
            .unwrap_or_else(|e| format!("unavailable: {e:#}"));
        Ok(format!(
            "asked the primary at {at} to switch WAL (pg_switch_wal at {insert}); its pg_stat_archiver: {archiver}"
        ))
    }
}

/// After the stop call on a standby: the backup ends at `pg_control`'s minimum recovery
/// point, which must be on the backup's start timeline (a standby that followed a promotion
/// during the backup has WAL of two timelines in it).
async fn check_standby_stop(session: &Session, timeline: TimelineId) -> anyhow::Result<()> {
    let (_, stop_timeline) = session.min_recovery_point().await?;
    if stop_timeline != timeline {
        bail!(
            "the standby moved from timeline {timeline} to {stop_timeline} during the backup (its primary changed); \
             the backup was NOT stored: take it again"
        );
    }
    Ok(())
}

/// `START TIMELINE: N` of a `backup_label`.
fn label_start_timeline(label: &str) -> Option<TimelineId> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE:"))
        .and_then(|v| v.trim().parse().ok())
        .map(TimelineId)
}

/// Remove the parts of a backup that will not get a manifest (best effort; `expire` also
/// removes such leftovers later).
async fn cleanup_parts(repo: &Repository, id: &BackupId) {
    let _ = repo.delete_backup_dir(id.as_str()).await;
}

/// A progress bar on a terminal, else a log line every 10 seconds.
async fn report_progress(done: Arc<AtomicU64>, total: u64) {
    let started = Instant::now();
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        loop {
            bar.set_position(done.load(Ordering::Relaxed));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let d = done.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        let rate = d as f64 / secs.max(0.001);
        let eta = if rate > 0.0 {
            (total.saturating_sub(d)) as f64 / rate
        } else {
            0.0
        };
        tracing::info!(
            "copied {:.0} of {:.0} MB ({:.0} MB/s, ETA {:.0} s)",
            d as f64 / 1e6,
            total as f64 / 1e6,
            rate / 1e6,
            eta
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_names_the_start_timeline() {
        let label = "START WAL LOCATION: 0/9000028 (file 000000030000000000000009)\n\
                     CHECKPOINT LOCATION: 0/9000060\nBACKUP METHOD: streamed\nBACKUP FROM: standby\n\
                     START TIME: 2026-11-24 21:37:14 UTC\nLABEL: x\nSTART TIMELINE: 3\n";
        assert_eq!(label_start_timeline(label), Some(TimelineId(3)));
        assert_eq!(
            label_start_timeline("START WAL LOCATION: 0/9000028\n"),
            None
        );
    }

    #[test]
    fn the_stop_segment_holds_the_byte_before_the_stop_lsn() {
        let size = WalSegmentSize::new(16 << 20).unwrap();
        let needed = |stop: u64| NeededWal {
            timeline: TimelineId(2),
            start: Lsn(0x900_0028),
            stop: Lsn(stop),
            size,
        };
        assert_eq!(
            needed(0x900_3678).stop_segment().to_string(),
            "000000020000000000000009"
        );
        // A stop at a segment boundary ends in the segment before it.
        assert_eq!(
            needed(0xA00_0000).stop_segment().to_string(),
            "000000020000000000000009"
        );
    }
}
