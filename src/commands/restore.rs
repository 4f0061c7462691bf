//! `restore`: point-in-time restore of a base backup into a data directory.
//!
//! The order is what makes it safe at 3 a.m.:
//!
//! 1. Resolve the target and print the UTC instant it means, before anything else.
//! 2. Refuse what must not be touched (a live server in the directory, a non-empty directory
//!    without `--force`), choose the backup, and check the target against the recoverable
//!    window and the archived WAL, all before a byte of backup data is downloaded.
//! 3. Mark the directory incomplete (`SYNAPSE_RESTORE_INCOMPLETE`), download the parts in
//!    parallel, check every stored byte and every file against the manifest, and extract.
//!    `global/pg_control` stays under a temporary name until the very end, so PostgreSQL
//!    refuses to start a half-restored directory.
//! 4. Write `backup_label`, `tablespace_map`, `recovery.signal`, the recovery settings and a
//!    PostgreSQL `backup_manifest`, sync, move `pg_control` into place, drop the marker.
//! 5. With `--start`, start the server and wait until recovery has reached the target.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use sha2::Digest;

use crate::chunk_pipe;
use crate::cli::{RestoreArgs, TargetAction};
use crate::codec::{HashingWriter, Sha256};
use crate::config::{ClusterConfig, Config};
use crate::error::{usage, Failure};
use crate::pg::backup_manifest::{self, ManifestFile, WalRange};
use crate::pg::{Lsn, TimelineId, WalFileName, WalSegmentSize};
use crate::repo::manifest::{check_relative_path, BackupId, BackupManifest, FileEntry};
use crate::repo::timelines::Timelines;
use crate::repo::window::{self, RecoveryTarget, WalIndex, WalNeed};
use crate::repo::{PartReader, PartSource, Repository};
use crate::timeparse::{self, format_utc};
use crate::writeback;

/// Left in the data directory while a restore runs, and after one fails.
pub const INCOMPLETE_MARKER: &str = "SYNAPSE_RESTORE_INCOMPLETE";
/// Where `global/pg_control` waits until everything else is in place.
const PG_CONTROL: &str = "global/pg_control";
const PG_CONTROL_PENDING: &str = "global/pg_control.synapse-restore";

pub async fn run(
    config: &Config,
    cluster: &ClusterConfig,
    repo: &Repository,
    args: &RestoreArgs,
    config_path: Option<&Path>,
) -> anyhow::Result<()> {
    let zone = config.timezone();

    // 1. The target, printed before anything happens.
    let target = resolve_target(args, zone)?;
    match &target {
        Resolved::Time(t) => eprintln!("target: {t}"),
        Resolved::Lsn(l) => eprintln!("target: LSN {l}"),
        Resolved::Latest => eprintln!("target: the end of the archived WAL (--latest)"),
    }
    let target = target.recovery_target();

    // 2. Everything that can refuse, before any download or write.
    let pgdata = std::path::absolute(args.pgdata.as_deref().unwrap_or(&cluster.pgdata))
        .context("resolve the data directory")?;
    let relocations = parse_tablespace_map(&args.tablespace_map)?;
    let state = inspect_dir(&pgdata)?;
    refuse_non_empty(&pgdata, &state, args.force)?;
    let backups = repo.list_backups().await.context("list backups")?;
    if backups.is_empty() {
        return Err(Failure::NotFound(format!(
            "the repository of cluster {:?} has no backups to restore",
            repo.cluster()
        ))
        .into());
    }
    let size = WalSegmentSize::new(backups[backups.len() - 1].wal_segment_size)
        .context("the newest backup's manifest has an invalid wal_segment_size")?;
    let wal: Vec<WalFileName> = repo
        .list_wal()
        .await
        .context("list archived WAL")?
        .into_iter()
        .map(|(name, _)| name)
        .collect();

    // The timeline recovery follows: --timeline, else the newest one (PostgreSQL's 'latest'),
    // decided here and written explicitly, so the server follows the path checked below.
    let timelines = Timelines::load(repo, &wal)
        .await
        .context("read the archive's timeline history files")?;
    let timeline = args.timeline.map_or_else(|| timelines.latest(), TimelineId);
    let path = timelines
        .path(timeline)
        .map_err(|e| anyhow::Error::from(Failure::NotFound(format!("{e:#}"))))?;
    let index = WalIndex::new(&wal, size, &path);
    if path.spans().len() > 1 || args.timeline.is_some() {
        eprintln!("timeline: {} (history: {path})", timeline.0);
    }
    if index.off_path > 0 {
        eprintln!(
            "note: {} archived segment(s) lie off timeline {}'s history (another branch, or an old primary \
             that kept writing after a failover); they are never used by this restore",
            index.off_path, timeline.0
        );
    }
    let restore_command = restore_command(cluster, config_path, timeline)?;

    let win = window::load_window(repo, &backups, &index)
        .await
        .context("read the archive's commit times")?;
    let refuse = |why: String| -> anyhow::Error {
        Failure::NotFound(format!(
            "{why}; {} (timeline {})",
            win.describe(zone),
            timeline.0
        ))
        .into()
    };
    win.check(&target).map_err(refuse)?;
    let backup = match &args.backup {
        Some(id) => {
            let id: BackupId = id
                .parse()
                .map_err(|e: anyhow::Error| usage(e.to_string()))?;
            let b = backups.iter().find(|b| b.id == id).ok_or_else(|| {
                anyhow::Error::from(Failure::NotFound(format!("there is no backup {id}")))
            })?;
            window::on_path(b, &path).map_err(refuse)?;
            window::backup_serves(b, &target).map_err(refuse)?;
            b
        }
        None => window::select_backup(&backups, &target, &path).ok_or_else(|| {
            refuse(format!(
                "no backup on timeline {}'s history ends at or before {target}",
                timeline.0
            ))
        })?,
    };
    check_wal_continuity(repo, &index, backup, &target).await?;
    eprintln!("{}", win.describe(zone));
    let layout = Layout::new(&pgdata, backup, &relocations)?;
    layout.check_manifest(backup)?;
    for (oid, dir) in &layout.tablespaces {
        let st = inspect_dir(dir)?;
        if st.non_empty && !args.force {
            return Err(usage(format!(
                "tablespace {oid} would be restored into {}, which is not empty (is it in use by another cluster?); \
                 move it with --tablespace-map {oid}=DIR, or use --force to replace its contents",
                dir.display()
            )));
        }
    }
    let owner = decide_owner(&pgdata)?;
    check_disk_space(&layout, backup, args.force, config.archive.prefetch, size)?;

    eprintln!(
        "backup: {} (ended {}, LSN {}, timeline {}), {} files, {} in {} parts ({} stored)",
        backup.id,
        format_utc(backup.stop_time),
        backup.stop_lsn,
        backup.timeline.0,
        backup.files.len(),
        human_bytes(backup.original_size()),
        backup.parts.len(),
        human_bytes(backup.stored_size()),
    );
    eprintln!("restoring into {}", pgdata.display());

    // 3. and 4. Mark, clear, extract; recovery configuration, manifest, and the switch from
    // "incomplete" to "ready".
    let settings = RecoverySettings {
        restore_command,
        target,
        action: args.target_action,
        timeline: Some(timeline.0),
        durable: true,
    };
    let started = Instant::now();
    let files = extract(repo, backup, &layout, &state, args.force, owner, &settings).await?;
    let elapsed = started.elapsed();
    let bytes = backup.original_size();
    eprintln!(
        "restored backup {} into {}: {} files, {} in {:.1}s ({}/s)",
        backup.id,
        pgdata.display(),
        files,
        human_bytes(bytes),
        elapsed.as_secs_f64(),
        human_bytes((bytes as f64 / elapsed.as_secs_f64().max(0.001)) as u64),
    );

    // 5. Start and wait.
    if args.start {
        start_and_wait(cluster, backup, &pgdata, owner, &target, args.target_action).await
    } else {
        eprintln!(
            "ready: start the server on {} to recover to {target} (the restore_command fetches WAL from the repository)",
            pgdata.display()
        );
        Ok(())
    }
}

/// Restore `backup` into `pgdata`, which must be absent or empty, with its tablespaces moved
/// to `relocations` (OID → directory), and write `settings` as its recovery configuration.
/// Every part and file is checked against the manifest, as for `restore`. The caller has made
/// its own target and WAL checks, and starts the server itself (`verify` does both). Returns
/// the number of files restored.
pub async fn restore_into(
    repo: &Repository,
    backup: &BackupManifest,
    pgdata: &Path,
    relocations: &BTreeMap<u32, PathBuf>,
    settings: &RecoverySettings,
) -> anyhow::Result<usize> {
    let state = inspect_dir(pgdata)?;
    refuse_non_empty(pgdata, &state, false)?;
    let layout = Layout::new(pgdata, backup, relocations)?;
    layout.check_manifest(backup)?;
    let owner = decide_owner(pgdata)?;
    extract(repo, backup, &layout, &state, false, owner, settings).await
}

/// Steps 3 and 4: mark and prepare the directories, download and extract every part, then
/// write the recovery files and move `pg_control` into place. Returns the number of files.
async fn extract(
    repo: &Repository,
    backup: &BackupManifest,
    layout: &Layout,
    state: &DirState,
    force: bool,
    owner: Option<Owner>,
    settings: &RecoverySettings,
) -> anyhow::Result<usize> {
    prepare_dir(&layout.pgdata, state, force, owner)?;
    for (oid, dir) in &layout.tablespaces {
        prepare_tablespace(&layout.pgdata, *oid, dir, force, owner)?;
    }
    let extracted = restore_parts(repo, backup, layout, owner, settings.durable).await?;
    finish(layout, backup, &extracted, settings, owner)?;
    Ok(extracted.len())
}

/// The parsed target, with how a time was read (for the message).
enum Resolved {
    Time(timeparse::TargetTime),
    Lsn(Lsn),
    Latest,
}

impl Resolved {
    fn recovery_target(&self) -> RecoveryTarget {
        match self {
            Resolved::Time(t) => RecoveryTarget::Time(t.utc),
            Resolved::Lsn(l) => RecoveryTarget::Lsn(*l),
            Resolved::Latest => RecoveryTarget::Latest,
        }
    }
}

fn resolve_target(args: &RestoreArgs, zone: chrono_tz::Tz) -> anyhow::Result<Resolved> {
    match (&args.to, &args.lsn, args.latest) {
        (Some(to), None, false) => timeparse::parse_target_time(to, zone)
            .map(Resolved::Time)
            .map_err(|e| usage(e.to_string())),
        (None, Some(lsn), false) => lsn
            .parse::<Lsn>()
            .map(Resolved::Lsn)
            .map_err(|e| usage(e.to_string())),
        (None, None, true) => Ok(Resolved::Latest),
        _ => Err(usage("give exactly one of --to, --lsn and --latest")),
    }
}

/// Check the archive's listing (and, for a time target past a gap, commit times) for the WAL
/// that takes `backup` to `target`.
async fn check_wal_continuity(
    repo: &Repository,
    index: &WalIndex,
    backup: &BackupManifest,
    target: &RecoveryTarget,
) -> anyhow::Result<()> {
    let not_found =
        |m: window::MissingWal| -> anyhow::Error { Failure::NotFound(m.message).into() };
    match window::check_wal(index, backup, target).map_err(not_found)? {
        WalNeed::Complete => Ok(()),
        WalNeed::CommitBeforeGap { gap } => {
            let RecoveryTarget::Time(t) = *target else {
                unreachable!("only time targets leave a gap to judge")
            };
            let start = backup.start_lsn.segno(index.size());
            let last = window::last_commit_down(repo, index, gap.saturating_sub(1), start)
                .await
                .context("read commit times before the gap in the archive")?;
            window::judge_gap(index, t, gap, last).map_err(not_found)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The target directory

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirState {
    exists: bool,
    non_empty: bool,
    incomplete: bool,
}

/// Look at a target directory; refuse one that a running server uses.
fn inspect_dir(dir: &Path) -> anyhow::Result<DirState> {
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(DirState {
                exists: false,
                non_empty: false,
                incomplete: false,
            })
        }
        Err(e) => return Err(e).with_context(|| format!("inspect {}", dir.display())),
    };
    if !meta.is_dir() {
        return Err(usage(format!(
            "{} exists and is not a directory",
            dir.display()
        )));
    }
    if let Some(pid) = live_postmaster(dir) {
        return Err(Failure::Conflict(format!(
            "a PostgreSQL server (pid {pid}) is running on {}; stop it first \
             (if process {pid} is not PostgreSQL, the postmaster.pid file is stale: remove it)",
            dir.display()
        ))
        .into());
    }
    let mut entries = fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?;
    Ok(DirState {
        exists: true,
        non_empty: entries.next().is_some(),
        incomplete: dir.join(INCOMPLETE_MARKER).exists(),
    })
}

fn refuse_non_empty(pgdata: &Path, state: &DirState, force: bool) -> anyhow::Result<()> {
    if state.non_empty && !force {
        let hint = if state.incomplete {
            " It holds an earlier restore that did not finish (SYNAPSE_RESTORE_INCOMPLETE)."
        } else {
            ""
        };
        return Err(usage(format!(
            "{} is not empty.{hint} Use --force to replace its contents, or restore into an empty directory with --pgdata",
            pgdata.display()
        )));
    }
    Ok(())
}

/// The PID in `postmaster.pid` if that process is alive.
fn live_postmaster(dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(dir.join("postmaster.pid")).ok()?;
    let pid = parse_pid_file(&text)?;
    process_alive(pid).then_some(pid)
}

fn parse_pid_file(text: &str) -> Option<u32> {
    // PostgreSQL writes the pid on the first line; a standalone backend writes it negated.
    let first = text.lines().next()?.trim();
    let pid: i64 = first.parse().ok()?;
    u32::try_from(pid.unsigned_abs()).ok().filter(|p| *p > 0)
}

/// Alive and not a zombie.
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Create (or, with `--force`, empty) the data directory, restrict it, and mark it incomplete.
fn prepare_dir(
    pgdata: &Path,
    state: &DirState,
    force: bool,
    owner: Option<Owner>,
) -> anyhow::Result<()> {
    if !state.exists {
        fs::create_dir_all(pgdata).with_context(|| format!("create {}", pgdata.display()))?;
    }
    // The marker goes in before anything is removed or written, and stays if we fail.
    write_marker(pgdata, owner)?;
    if state.non_empty && force {
        eprintln!("--force: removing the contents of {}", pgdata.display());
        clear_dir(pgdata, &[INCOMPLETE_MARKER])?;
    }
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", pgdata.display()))?;
    chown(pgdata, owner)?;
    Ok(())
}

fn write_marker(pgdata: &Path, owner: Option<Owner>) -> anyhow::Result<()> {
    let path = pgdata.join(INCOMPLETE_MARKER);
    let text = format!(
        "This data directory is being restored by synapse-backup (started {}, pid {}), or a restore into it failed.\n\
         It is INCOMPLETE: do not start PostgreSQL on it. Run the restore again (with --force) to finish it.\n\
         synapse-backup removes this file only after everything was restored and checked.\n",
        format_utc(Utc::now()),
        std::process::id()
    );
    fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    chown(&path, owner)?;
    sync_path(&path)?;
    sync_path(pgdata)
}

/// Remove everything in `dir` except the names in `keep`, without following symlinks.
fn clear_dir(dir: &Path, keep: &[&str]) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("read {}", dir.display()))?;
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        let path = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("inspect {}", path.display()))?;
        if kind.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .with_context(|| format!("remove {}", path.display()))?;
    }
    Ok(())
}

/// Create a tablespace's directory and the `pg_tblspc/<oid>` link to it.
fn prepare_tablespace(
    pgdata: &Path,
    oid: u32,
    dir: &Path,
    force: bool,
    owner: Option<Owner>,
) -> anyhow::Result<()> {
    if dir.exists() {
        if force {
            clear_dir(dir, &[])?;
        }
    } else {
        fs::create_dir_all(dir)
            .with_context(|| format!("create tablespace directory {}", dir.display()))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.display()))?;
    chown(dir, owner)?;
    let links = pgdata.join("pg_tblspc");
    ensure_dir(pgdata, "pg_tblspc", 0o700, owner)?;
    let link = links.join(oid.to_string());
    std::os::unix::fs::symlink(dir, &link)
        .with_context(|| format!("link {} to {}", link.display(), dir.display()))?;
    chown(&link, owner)
}

// ---------------------------------------------------------------------------------------------
// Where files go

/// Maps backup paths (relative to the data directory, as in the manifest and the parts) to
/// places on disk. Tablespace files (`pg_tblspc/<oid>/…`) go into the tablespace's directory
/// by rewriting the prefix, never by following the link.
#[derive(Debug, Clone)]
struct Layout {
    pgdata: PathBuf,
    tablespaces: BTreeMap<u32, PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Dest {
    /// A place on disk.
    Path(PathBuf),
    /// `pg_tblspc/<oid>` itself: the link we create.
    TablespaceLink(u32),
}

impl Layout {
    fn new(
        pgdata: &Path,
        backup: &BackupManifest,
        relocations: &BTreeMap<u32, PathBuf>,
    ) -> anyhow::Result<Self> {
        let mut tablespaces = BTreeMap::new();
        for ts in &backup.tablespaces {
            let dir = match relocations.get(&ts.oid) {
                Some(d) => d.clone(),
                None => PathBuf::from(&ts.location),
            };
            if !dir.is_absolute() {
                bail!(
                    "tablespace {} has a relative location {:?} in the manifest",
                    ts.oid,
                    ts.location
                );
            }
            tablespaces.insert(ts.oid, dir);
        }
        if let Some(oid) = relocations.keys().find(|o| !tablespaces.contains_key(o)) {
            let known: Vec<String> = tablespaces.keys().map(u32::to_string).collect();
            return Err(usage(format!(
                "--tablespace-map {oid}=…: backup {} has no tablespace {oid} (it has: {})",
                backup.id,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        let dirs: Vec<&PathBuf> = tablespaces.values().collect();
        for (i, a) in dirs.iter().enumerate() {
            if a.starts_with(pgdata) || pgdata.starts_with(a) {
                return Err(usage(format!(
                    "tablespace directory {} overlaps the data directory {}; relocate it with --tablespace-map OID=DIR",
                    a.display(),
                    pgdata.display()
                )));
            }
            if dirs[..i]
                .iter()
                .any(|b| a.starts_with(b) || b.starts_with(a))
            {
                return Err(usage(format!(
                    "two tablespaces would share the directory {}; relocate one with --tablespace-map OID=DIR",
                    a.display()
                )));
            }
        }
        Ok(Layout {
            pgdata: pgdata.to_path_buf(),
            tablespaces,
        })
    }

    /// Where a backup path goes. Rejects unsafe paths and unknown tablespaces.
    fn dest(&self, rel: &str) -> anyhow::Result<Dest> {
        check_relative_path(rel)?;
        let mut parts = rel.splitn(3, '/');
        if parts.next() == Some("pg_tblspc") {
            if let Some(oid_text) = parts.next() {
                let oid: u32 = oid_text.parse().map_err(|_| {
                    anyhow!("unexpected path {rel:?}: pg_tblspc/{oid_text} is not a tablespace OID")
                })?;
                let dir = self.tablespaces.get(&oid).ok_or_else(|| {
                    anyhow!("path {rel:?} belongs to tablespace {oid}, which the manifest does not list")
                })?;
                return Ok(match parts.next() {
                    Some(rest) => Dest::Path(dir.join(rest)),
                    None => Dest::TablespaceLink(oid),
                });
            }
        }
        Ok(Dest::Path(self.pgdata.join(rel)))
    }

    /// The directory a backup path is created under (the data directory or a tablespace's).
    fn root_of(&self, rel: &str) -> &Path {
        self.split_root(rel).0
    }

    /// (root directory, the backup-path prefix it stands for, the rest of the path).
    fn split_root<'a>(&self, rel: &'a str) -> (&Path, String, &'a str) {
        let mut parts = rel.splitn(3, '/');
        if parts.next() == Some("pg_tblspc") {
            if let Some((oid, dir)) = parts
                .next()
                .and_then(|o| o.parse::<u32>().ok())
                .and_then(|o| self.tablespaces.get_key_value(&o))
            {
                return (dir, format!("pg_tblspc/{oid}/"), parts.next().unwrap_or(""));
            }
        }
        (&self.pgdata, String::new(), rel)
    }

    /// Check every manifest path before anything is downloaded.
    fn check_manifest(&self, backup: &BackupManifest) -> anyhow::Result<()> {
        for f in &backup.files {
            self.dest(&f.path)
                .with_context(|| format!("backup {}: file {:?}", backup.id, f.path))?;
            if f.part >= backup.parts.len() {
                bail!(
                    "backup {}: file {:?} is in part {}, but the manifest lists only {} parts",
                    backup.id,
                    f.path,
                    f.part,
                    backup.parts.len()
                );
            }
        }
        for d in &backup.directories {
            self.dest(&d.path)
                .with_context(|| format!("backup {}: directory {:?}", backup.id, d.path))?;
        }
        for p in &backup.parts {
            check_relative_path(&p.key)
                .with_context(|| format!("backup {}: part {:?}", backup.id, p.key))?;
        }
        Ok(())
    }
}

fn parse_tablespace_map(args: &[String]) -> anyhow::Result<BTreeMap<u32, PathBuf>> {
    let mut out = BTreeMap::new();
    for arg in args {
        let bad = || {
            usage(format!(
                "--tablespace-map {arg:?}: expected OID=DIR with an absolute DIR"
            ))
        };
        let (oid, dir) = arg.split_once('=').ok_or_else(bad)?;
        let oid: u32 = oid.trim().parse().map_err(|_| bad())?;
        let dir = PathBuf::from(dir);
        if !dir.is_absolute() {
            return Err(bad());
        }
        if out.insert(oid, dir).is_some() {
            return Err(usage(format!(
                "--tablespace-map: tablespace {oid} is given twice"
            )));
        }
    }
    Ok(out)
}

/// `tablespace_map`: `<oid> <path>` lines; backslash and line breaks escaped as PostgreSQL reads them.
fn render_tablespace_map(tablespaces: &BTreeMap<u32, PathBuf>) -> String {
    let mut out = String::new();
    for (oid, dir) in tablespaces {
        let mut path = String::new();
        for c in dir.to_string_lossy().chars() {
            if matches!(c, '\\' | '\n' | '\r') {
                path.push('\\');
            }
            path.push(c);
        }
        out.push_str(&format!("{oid} {path}\n"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Ownership and space

/// Who the restored files belong to (when we run as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    uid: u32,
    gid: u32,
}

fn current_uid() -> Option<u32> {
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// As root: the owner of an existing, non-root target directory, else the `postgres` user
/// (PostgreSQL refuses to run as root). Otherwise files are simply ours.
fn decide_owner(pgdata: &Path) -> anyhow::Result<Option<Owner>> {
    if current_uid() != Some(0) {
        return Ok(None);
    }
    if let Ok(meta) = fs::metadata(pgdata) {
        if meta.uid() != 0 {
            return Ok(Some(Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            }));
        }
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    match passwd_entry(&passwd, |name, _| name == "postgres") {
        Some((_, uid, gid)) => Ok(Some(Owner { uid, gid })),
        None => {
            eprintln!(
                "warning: running as root and there is no `postgres` user: the restored files stay owned by root, \
                 and PostgreSQL will not start on them until they belong to the user that runs it"
            );
            Ok(None)
        }
    }
}

/// The first `/etc/passwd` entry matching `pred(name, uid)`: (name, uid, gid).
fn passwd_entry(text: &str, pred: impl Fn(&str, u32) -> bool) -> Option<(String, u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let uid: u32 = f.next()?.parse().ok()?;
        let gid: u32 = f.next()?.parse().ok()?;
        pred(name, uid).then(|| (name.to_string(), uid, gid))
    })
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd_entry(&passwd, |_, u| u == uid).map(|(n, _, _)| n)
}

fn chown(path: &Path, owner: Option<Owner>) -> anyhow::Result<()> {
    if let Some(o) = owner {
        std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// Refuse when a file system lacks room for what goes on it (the backup's files, plus a
/// little WAL for recovery in the data directory). With `--force`, what will be removed counts
/// as free.
fn check_disk_space(
    layout: &Layout,
    backup: &BackupManifest,
    force: bool,
    prefetch: usize,
    size: WalSegmentSize,
) -> anyhow::Result<()> {
    let wal = (prefetch as u64 + 4) * u64::from(size.bytes());
    let need = space_needed(layout, backup, wal);
    let roots: Vec<PathBuf> = need.keys().cloned().collect();
    let probes: Vec<PathBuf> = roots.iter().map(|r| nearest_existing(r)).collect();
    let out = match std::process::Command::new("df")
        .args(["--output=avail,target", "-B1"])
        .args(&probes)
        .output()
    {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            eprintln!(
                "warning: could not check free space (df: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Ok(());
        }
        Err(e) => {
            eprintln!("warning: could not check free space (df: {e})");
            return Ok(());
        }
    };
    let mounts = parse_df(&String::from_utf8_lossy(&out.stdout));
    if mounts.len() != roots.len() {
        eprintln!("warning: could not check free space (unexpected df output)");
        return Ok(());
    }
    let per_root: Vec<RootSpace> = roots
        .iter()
        .zip(mounts)
        .map(|(root, (avail, mount))| RootSpace {
            mount,
            avail,
            freed: if force { dir_usage(root) } else { 0 },
            need: need[root],
        })
        .collect();
    space_shortfall(&per_root).map_or(Ok(()), |(mount, needed, avail)| {
        Err(anyhow!(
            "not enough free space on {mount}: backup {} needs {} there, {} is available",
            backup.id,
            human_bytes(needed),
            human_bytes(avail)
        ))
    })
}

/// Bytes each destination root (data directory, tablespace directories) receives.
fn space_needed(layout: &Layout, backup: &BackupManifest, wal: u64) -> BTreeMap<PathBuf, u64> {
    let mut need: BTreeMap<PathBuf, u64> = BTreeMap::new();
    need.insert(layout.pgdata.clone(), wal);
    for dir in layout.tablespaces.values() {
        need.entry(dir.clone()).or_default();
    }
    for f in &backup.files {
        *need
            .entry(layout.root_of(&f.path).to_path_buf())
            .or_default() += f.size;
    }
    need
}

/// One destination root and its file system.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RootSpace {
    mount: String,
    avail: u64,
    /// What `--force` will remove from it first.
    freed: u64,
    need: u64,
}

/// The first file system (mount, bytes needed, bytes available) without room for its roots.
fn space_shortfall(roots: &[RootSpace]) -> Option<(String, u64, u64)> {
    let mut per_mount: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in roots {
        let slot = per_mount.entry(&r.mount).or_insert((r.avail, 0));
        slot.0 += r.freed;
        slot.1 += r.need;
    }
    per_mount
        .into_iter()
        .find(|(_, (avail, need))| need > avail)
        .map(|(m, (avail, need))| (m.to_string(), need, avail))
}

fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path;
    loop {
        if p.exists() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return PathBuf::from("/"),
        }
    }
}

/// `df --output=avail,target -B1` lines after the header: (available bytes, mount point).
fn parse_df(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let line = line.trim_start();
            let (avail, mount) = line.split_once(char::is_whitespace)?;
            Some((avail.parse().ok()?, mount.trim().to_string()))
        })
        .collect()
}

/// Bytes of regular files under `dir`, not following symlinks.
fn dir_usage(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_usage(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Download and extract

/// What the extraction shares across parts.
struct Extraction {
    layout: Layout,
    owner: Option<Owner>,
    /// Manifest files by path.
    files: HashMap<String, FileEntry>,
    /// Manifest directory modes by path.
    dir_modes: HashMap<String, u32>,
    backup_label: String,
    tablespace_map: Option<String>,
    written: AtomicU64,
    /// Set when a part failed: the others stop at their next entry.
    cancelled: std::sync::atomic::AtomicBool,
    /// Writes large files back to disk during the extraction (durable restores only), so the
    /// final sync has little left to do.
    flusher: Option<writeback::Flusher>,
}

/// A file restored from a part (or deliberately not written, like WAL left in `pg_wal`).
#[derive(Debug, Clone)]
struct Extracted {
    path: String,
    /// False for files we skip (WAL, pid files) or write ourselves at the end.
    kept: bool,
}

/// Download and extract every part (data parts in parallel, the control part last) and check
/// that every file of the manifest arrived exactly once. Returns the manifest paths restored.
/// `durable`: the restore ends with a sync, so start writing large files back early.
async fn restore_parts(
    repo: &Repository,
    backup: &BackupManifest,
    layout: &Layout,
    owner: Option<Owner>,
    durable: bool,
) -> anyhow::Result<Vec<Extracted>> {
    let flusher = if durable {
        Some(writeback::Flusher::start().context("start the write-back thread")?)
    } else {
        None
    };
    let shared = Arc::new(Extraction {
        layout: layout.clone(),
        owner,
        files: backup
            .files
            .iter()
            .map(|f| (f.path.clone(), f.clone()))
            .collect(),
        dir_modes: backup
            .directories
            .iter()
            .map(|d| (d.path.clone(), d.mode))
            .collect(),
        backup_label: backup.backup_label.clone(),
        tablespace_map: backup.tablespace_map.clone(),
        written: AtomicU64::new(0),
        cancelled: std::sync::atomic::AtomicBool::new(false),
        flusher,
    });

    // Directories first (parents before children), including empty ones such as pg_wal.
    let mut dirs: Vec<&str> = backup.directories.iter().map(|d| d.path.as_str()).collect();
    dirs.sort();
    for d in dirs {
        if let Dest::Path(_) = layout.dest(d)? {
            shared.make_dir(d)?;
        }
    }

    let (control, data): (Vec<usize>, Vec<usize>) =
        (0..backup.parts.len()).partition(|&i| backup.parts[i].key == crate::repo::CONTROL_PART);
    let parallel = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    eprintln!(
        "downloading {} parts ({}), {} at a time",
        backup.parts.len(),
        human_bytes(backup.stored_size()),
        parallel
    );

    let total = backup.original_size();
    let reporter = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = shared.written.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                eprintln!(
                    "restore: {} of {} ({:.0}%), {:.0}s, {}/s",
                    human_bytes(done),
                    human_bytes(total),
                    100.0 * done as f64 / total.max(1) as f64,
                    secs,
                    human_bytes((done as f64 / secs) as u64)
                );
            }
        })
    };
    let result = async {
        let mut extracted: Vec<Extracted> = futures::stream::iter(data)
            .map(|i| {
                let shared = shared.clone();
                async move {
                    let result = restore_part(repo, backup, i, shared.clone()).await;
                    if result.is_err() {
                        shared.cancelled.store(true, Ordering::Relaxed);
                    }
                    result
                }
            })
            .buffer_unordered(parallel)
            .try_concat()
            .await?;
        for i in control {
            extracted.extend(restore_part(repo, backup, i, shared.clone()).await?);
        }
        Ok::<_, anyhow::Error>(extracted)
    }
    .await;
    reporter.abort();
    let flushed = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || shared.flusher.as_ref().map_or(Ok(()), |f| f.finish()))
            .await
            .context("write-back task")?
    };
    let extracted = result?;
    flushed.context("write the restored files back to disk")?;

    // Every manifest file exactly once.
    let mut seen = HashSet::new();
    for e in &extracted {
        if !seen.insert(e.path.as_str()) {
            bail!(
                "backup {}: {} is stored twice in the parts",
                backup.id,
                e.path
            );
        }
    }
    if let Some(missing) = backup
        .files
        .iter()
        .find(|f| !seen.contains(f.path.as_str()))
    {
        bail!(
            "{}: the manifest lists {} in this part, but the part does not contain it",
            repo.part_location(&backup.id, &backup.parts[missing.part].key),
            missing.path
        );
    }
    Ok(extracted)
}

/// Read one part from the store into a blocking extractor: a local file directly, a remote
/// object as a stream handed over through a bounded channel.
async fn restore_part(
    repo: &Repository,
    backup: &BackupManifest,
    index: usize,
    shared: Arc<Extraction>,
) -> anyhow::Result<Vec<Extracted>> {
    let part = backup.parts[index].clone();
    let PartReader { key, source } = repo.open_part(&backup.id, &part.key).await?;
    let mut stream = match source {
        PartSource::File(file) => {
            return tokio::task::spawn_blocking(move || {
                let reader = io::BufReader::with_capacity(1 << 20, file);
                shared.extract_part(index, &part, &key, reader)
            })
            .await
            .context("extraction task")?;
        }
        PartSource::Stream(stream) => stream,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<anyhow::Result<Bytes>>(16);
    let task = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || {
            shared.extract_part(index, &part, &key, ChannelReader::new(rx))
        })
    };
    while let Some(chunk) = stream.next().await {
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    task.await.context("extraction task")?
}

/// The blocking side of a remote part: a `Read` over the chunks the async side receives.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<anyhow::Result<Bytes>>,
    buf: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<anyhow::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            buf: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.buf = chunk,
                Some(Err(e)) => return Err(io::Error::other(format!("{e:#}"))),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

/// Hashes and counts the stored bytes of a part as they are read.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: sha2::Sha256::new(),
            len: 0,
        }
    }

    /// Read to the end, so that the digest covers the whole object.
    fn drain(&mut self) -> io::Result<()> {
        let mut scratch = vec![0u8; 256 * 1024];
        while self.read(&mut scratch)? > 0 {}
        Ok(())
    }

    fn digest(&self) -> (Sha256, u64) {
        (Sha256(self.hasher.clone().finalize().into()), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.hasher.update(&out[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Decompressed bytes handed from a part's inflating thread to its extracting thread at a time.
const INFLATED_CHUNK: usize = 1 << 20;
/// Chunks queued between the two: bounds the memory of a part.
const INFLATED_QUEUE: usize = 8;

/// What the inflating thread saw of a part's stored bytes.
struct StoredBytes {
    sha256: Sha256,
    size: u64,
    /// Reading the store failed before the end (a gzip error is the extractor's to report).
    read: io::Result<()>,
}

impl Extraction {
    /// Extract one part on two threads, so that one large part uses two cores: a helper
    /// thread hashes the stored bytes and inflates them; this thread parses the tar stream,
    /// hashes each file and writes it.
    fn extract_part(
        &self,
        index: usize,
        part: &crate::repo::manifest::PartEntry,
        key: &str,
        stored: impl Read + Send,
    ) -> anyhow::Result<Vec<Extracted>> {
        let (tx, mut rx) = chunk_pipe::pipe(INFLATED_CHUNK, INFLATED_QUEUE);
        let (result, stored) = std::thread::scope(|scope| {
            let inflater = std::thread::Builder::new()
                .name(format!("inflate-{index}"))
                .spawn_scoped(scope, || self.inflate(key, stored, tx))
                .with_context(|| format!("{key}: start a thread to decompress the part"))?;
            let result = self.extract_entries(index, key, &mut rx);
            // Dropping the reader as soon as the entries are done or failed tells the inflater
            // to stop decompressing and only hash the rest.
            drop(rx);
            let stored = inflater
                .join()
                .map_err(|_| anyhow!("{key}: the decompressing thread panicked"))?;
            Ok::<_, anyhow::Error>((result, stored))
        })?;
        if self.cancelled.load(Ordering::Relaxed) {
            return result;
        }
        // If the stored bytes are not what the manifest says, that is the error to report (it
        // explains any decoding failure).
        if stored.read.is_ok() && (stored.sha256 != part.sha256 || stored.size != part.size) {
            bail!(
                "{key}: corrupt part: SHA-256 {} ({} bytes) does not match the manifest ({}, {} bytes)",
                stored.sha256,
                stored.size,
                part.sha256,
                part.size
            );
        }
        stored.read.with_context(|| format!("download {key}"))?;
        result
    }

    /// The inflating thread: decompress `stored` into chunks for the extractor, then read the
    /// rest of the stored bytes (whatever happened), so that the digest covers the whole object.
    /// Stops early only when another part failed.
    fn inflate(
        &self,
        key: &str,
        stored: impl Read,
        mut tx: chunk_pipe::ChunkSender,
    ) -> StoredBytes {
        let mut reader = HashingReader::new(stored);
        let mut gz = flate2::read::MultiGzDecoder::new(&mut reader);
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                tx.send_error(io::Error::other(format!(
                    "{key}: stopped because another part failed"
                )));
                drop(gz);
                let (sha256, size) = reader.digest();
                return StoredBytes {
                    sha256,
                    size,
                    read: Ok(()),
                };
            }
            match tx.pump(&mut gz) {
                Ok(chunk_pipe::Pumped::Sent) => {}
                // The end, or the extractor is done or failed: only the digest is left to do.
                Ok(chunk_pipe::Pumped::End | chunk_pipe::Pumped::ReaderGone) => break,
                Err(e) => {
                    tx.send_error(io::Error::new(
                        e.kind(),
                        format!("{key}: corrupt part: gzip data: {e}"),
                    ));
                    break;
                }
            }
        }
        drop(gz);
        drop(tx);
        let read = reader.drain();
        let (sha256, size) = reader.digest();
        StoredBytes { sha256, size, read }
    }

    /// Parse the decompressed tar stream of a part and restore its entries.
    fn extract_entries(
        &self,
        index: usize,
        key: &str,
        tar_stream: &mut impl Read,
    ) -> anyhow::Result<Vec<Extracted>> {
        let mut archive = tar::Archive::new(tar_stream);
        let mut done = Vec::new();
        let entries = archive
            .entries()
            .with_context(|| format!("{key}: corrupt part: not a tar stream"))?;
        for entry in entries {
            if self.cancelled.load(Ordering::Relaxed) {
                bail!("{key}: stopped because another part failed");
            }
            let mut entry =
                entry.with_context(|| format!("{key}: corrupt part: unreadable tar entry"))?;
            let raw = entry.path_bytes().into_owned();
            let path = std::str::from_utf8(&raw)
                .map_err(|_| {
                    anyhow!(
                        "{key}: entry {:?} is not UTF-8",
                        String::from_utf8_lossy(&raw)
                    )
                })?
                .trim_end_matches('/')
                .to_string();
            let kind = entry.header().entry_type();
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    done.push(
                        self.extract_file(index, &path, &mut entry)
                            .with_context(|| format!("{key}: restore {path}"))?,
                    );
                }
                tar::EntryType::Directory => {
                    match self.layout.dest(&path).with_context(|| format!("{key}: entry {path:?}"))? {
                        Dest::Path(_) => self.make_dir(&path)?,
                        Dest::TablespaceLink(_) => {} // made by prepare_tablespace
                    }
                }
                tar::EntryType::XGlobalHeader => {}
                other => bail!(
                    "{key}: entry {path:?} is a {other:?}; backup parts hold only regular files and directories, refusing it"
                ),
            }
        }
        // Read the rest of the decompressed stream: the gzip trailer's CRC is checked at its end.
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink())
            .with_context(|| format!("{key}: corrupt part: gzip stream"))?;
        Ok(done)
    }

    fn extract_file(
        &self,
        index: usize,
        path: &str,
        content: &mut impl Read,
    ) -> anyhow::Result<Extracted> {
        let Some(entry) = self.files.get(path) else {
            // Our own files from the control part, if the manifest does not list them.
            let expected = match path {
                "backup_label" => Some(self.backup_label.as_bytes()),
                "tablespace_map" => self.tablespace_map.as_deref().map(str::as_bytes),
                _ => None,
            };
            let Some(expected) = expected else {
                bail!("the part holds {path:?}, which the manifest does not list");
            };
            let mut got = Vec::new();
            content.read_to_end(&mut got)?;
            if got != expected {
                bail!("{path} in the part differs from the manifest's copy");
            }
            return Ok(Extracted {
                path: path.to_string(),
                kept: false,
            });
        };
        if entry.part != index {
            bail!(
                "the manifest puts {path} in part {}, not in this one",
                entry.part
            );
        }
        // WAL in the backup is stale for a restore (pg-reference §11 step 4); pid files belong to
        // the original server; backup_label and tablespace_map are written at the end; a
        // standby.signal would keep the restored server a standby forever (it takes precedence
        // over recovery.signal, §3.4).
        let skip = matches!(
            path,
            "postmaster.pid"
                | "postmaster.opts"
                | "backup_label"
                | "tablespace_map"
                | "standby.signal"
        ) || path.starts_with("pg_wal/");
        let dest = match self.layout.dest(path)? {
            Dest::Path(p) => p,
            Dest::TablespaceLink(_) => bail!("{path} is a tablespace link, not a file"),
        };
        let dest = if path == PG_CONTROL {
            self.layout.pgdata.join(PG_CONTROL_PENDING)
        } else {
            dest
        };

        let (sha, len) = if skip {
            let mut sink = HashingWriter::new(io::sink());
            io::copy(content, &mut sink)?;
            let (_, sha, len) = sink.finish();
            (sha, len)
        } else {
            if let Some(parent) = Path::new(path).parent().and_then(Path::to_str) {
                if !parent.is_empty() {
                    self.make_dir(parent)?;
                }
            }
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)
                .with_context(|| format!("create {}", dest.display()))?;
            let mut out = HashingWriter::new(writeback::FileWriter::new(
                file,
                dest.clone(),
                self.flusher.as_ref(),
            ));
            io::copy(content, &mut out).with_context(|| format!("write {}", dest.display()))?;
            let (writer, sha, len) = out.finish();
            let file = writer
                .into_file()
                .with_context(|| format!("write {}", dest.display()))?;
            file.set_permissions(fs::Permissions::from_mode(entry.mode & 0o7777))
                .with_context(|| format!("chmod {}", dest.display()))?;
            let mtime = UNIX_EPOCH + Duration::from_secs(u64::try_from(entry.mtime).unwrap_or(0));
            let _ = file.set_modified(mtime);
            chown(&dest, self.owner)?;
            (sha, len)
        };
        if len != entry.size || sha != entry.sha256 {
            bail!(
                "content does not match the manifest: SHA-256 {sha} ({len} bytes), the manifest says {} ({} bytes)",
                entry.sha256,
                entry.size
            );
        }
        self.written.fetch_add(len, Ordering::Relaxed);
        Ok(Extracted {
            path: path.to_string(),
            kept: !skip,
        })
    }

    /// Create a backup directory (and missing parents) with the manifest's modes and owner.
    fn make_dir(&self, rel: &str) -> anyhow::Result<()> {
        let Dest::Path(_) = self.layout.dest(rel)? else {
            return Ok(());
        };
        let (root, base, inside) = self.layout.split_root(rel);
        // Walk down from the root so every directory we create gets its mode and owner.
        let mut path = root.to_path_buf();
        let mut manifest_path = base.trim_end_matches('/').to_string();
        for name in inside.split('/').filter(|c| !c.is_empty()) {
            path.push(name);
            if !manifest_path.is_empty() {
                manifest_path.push('/');
            }
            manifest_path.push_str(name);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => bail!("{} exists and is not a directory", path.display()),
                Err(_) => {}
            }
            match fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("create {}", path.display())),
            }
            // The owner must be able to write into it while we restore; PostgreSQL wants 0700/0750.
            let mode =
                self.dir_modes.get(&manifest_path).copied().unwrap_or(0o700) & 0o7777 | 0o700;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))?;
            chown(&path, self.owner)?;
        }
        Ok(())
    }
}

/// Create `rel` under `root` (one level) if missing.
fn ensure_dir(root: &Path, rel: &str, mode: u32, owner: Option<Owner>) -> anyhow::Result<()> {
    let path = root.join(rel);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("{} exists and is not a directory", path.display()),
        Err(_) => {
            fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))?;
            chown(&path, owner)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recovery configuration and the final switch

/// What goes into the restored directory's recovery configuration.
pub struct RecoverySettings {
    /// As PostgreSQL runs it (`%f`, `%p` placeholders).
    pub restore_command: String,
    pub target: RecoveryTarget,
    pub action: TargetAction,
    /// `recovery_target_timeline`; `None` is `latest`.
    pub timeline: Option<u32>,
    /// Sync the restored files before `pg_control` goes into place. `verify` turns this off:
    /// its copy is thrown away, and a crash only means verifying again.
    pub durable: bool,
}

/// `restore_command` for this binary, config file and cluster, as PostgreSQL will run it
/// (through the shell, as the server's OS user).
fn restore_command(
    cluster: &ClusterConfig,
    config_path: Option<&Path>,
    timeline: TimelineId,
) -> anyhow::Result<String> {
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("find this program's path for restore_command")?;
    let cfg = match config_path {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os(crate::config::ENV_PATH)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH)),
    };
    let cfg = cfg.canonicalize().with_context(|| {
        format!(
            "resolve the config file {} for restore_command",
            cfg.display()
        )
    })?;
    Ok(format!(
        "{} --config {} --cluster {} wal-fetch --timeline {} %f %p",
        command_word(&exe.to_string_lossy()),
        command_word(&cfg.to_string_lossy()),
        command_word(&cluster.name),
        timeline.0
    ))
}

/// One word of a `restore_command`: shell-quoted when needed, and `%` doubled because
/// PostgreSQL replaces `%f`, `%p`, `%r` in the command.
fn command_word(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    let quoted = if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    };
    quoted.replace('%', "%%")
}

/// A string value for postgresql.conf.
fn conf_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The block appended to `postgresql.auto.conf`. Every recovery target setting is written,
/// the unused ones empty, so that settings left in the restored configuration by an earlier
/// restore cannot combine with ours ("multiple recovery targets specified"): the last
/// occurrence of a setting wins, and the empty ones come first.
fn recovery_conf(settings: &RecoverySettings, backup: &BackupId, now: DateTime<Utc>) -> String {
    let mut lines = vec![
        String::new(),
        format!(
            "# Added by synapse-backup restore of backup {backup} at {}",
            format_utc(now)
        ),
        format!(
            "restore_command = {}",
            conf_value(&settings.restore_command)
        ),
    ];
    let (name, value) = match settings.target {
        RecoveryTarget::Time(t) => ("recovery_target_time", timeparse::recovery_target_time(t)),
        RecoveryTarget::Lsn(l) => ("recovery_target_lsn", l.to_string()),
        RecoveryTarget::Latest => ("", String::new()),
    };
    for unset in [
        "recovery_target",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_xid",
    ] {
        if unset != name {
            lines.push(format!("{unset} = ''"));
        }
    }
    if !name.is_empty() {
        lines.push(format!("{name} = {}", conf_value(&value)));
    }
    let action = match settings.action {
        TargetAction::Promote => "promote",
        TargetAction::Pause => "pause",
        TargetAction::Shutdown => "shutdown",
    };
    lines.push(format!("recovery_target_action = '{action}'"));
    let timeline = settings
        .timeline
        .map_or_else(|| "latest".to_string(), |t| t.to_string());
    lines.push(format!("recovery_target_timeline = '{timeline}'"));
    lines.join("\n") + "\n"
}

/// Write the files PostgreSQL needs to recover, the `backup_manifest`, sync, then move
/// `pg_control` into place and drop the marker.
fn finish(
    layout: &Layout,
    backup: &BackupManifest,
    extracted: &[Extracted],
    settings: &RecoverySettings,
    owner: Option<Owner>,
) -> anyhow::Result<()> {
    let pgdata = &layout.pgdata;
    let now = Utc::now();
    ensure_dir(pgdata, "pg_wal", 0o700, owner)?;
    ensure_dir(pgdata, "pg_wal/archive_status", 0o700, owner)?;
    if extracted.iter().any(|e| e.path == "standby.signal") {
        eprintln!(
            "note: the backup's standby.signal was not restored (a restore recovers with recovery.signal and promotes)"
        );
    }

    let mut ours: Vec<(&str, Vec<u8>)> =
        vec![("backup_label", backup.backup_label.clone().into_bytes())];
    if !layout.tablespaces.is_empty() {
        ours.push((
            "tablespace_map",
            render_tablespace_map(&layout.tablespaces).into_bytes(),
        ));
    }
    let auto_conf = pgdata.join("postgresql.auto.conf");
    let mut conf = match fs::read(&auto_conf) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).context("read postgresql.auto.conf"),
    };
    if !conf.is_empty() && !conf.ends_with(b"\n") {
        conf.push(b'\n');
    }
    conf.extend_from_slice(recovery_conf(settings, &backup.id, now).as_bytes());
    ours.push(("postgresql.auto.conf", conf));
    ours.push(("recovery.signal", Vec::new()));
    for (name, content) in &ours {
        write_file(&pgdata.join(name), content, owner)?;
    }

    // PostgreSQL's backup_manifest, so pg_verifybackup can check the directory before start.
    let by_path: HashMap<&str, &FileEntry> =
        backup.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut entries: Vec<ManifestFile> = extracted
        .iter()
        .filter(|e| e.kept && !ours.iter().any(|(n, _)| *n == e.path))
        .filter_map(|e| by_path.get(e.path.as_str()))
        .map(|f| ManifestFile {
            path: f.path.clone(),
            size: f.size,
            modified: DateTime::from_timestamp(f.mtime, 0).unwrap_or(now),
            sha256: f.sha256,
        })
        .collect();
    for (name, content) in &ours {
        if *name != "recovery.signal" {
            entries.push(ManifestFile {
                path: name.to_string(),
                size: content.len() as u64,
                modified: now,
                sha256: Sha256::of(content),
            });
        }
    }
    let manifest = backup_manifest::render(
        &entries,
        &[WalRange {
            timeline: backup.timeline,
            start: backup.start_lsn,
            end: backup.stop_lsn,
        }],
    );
    write_file(&pgdata.join("backup_manifest"), &manifest, owner)?;

    // Durable before it may be started: one syncfs per file system.
    let mut roots: Vec<&Path> = vec![pgdata];
    roots.extend(layout.tablespaces.values().map(PathBuf::as_path));
    for root in roots.into_iter().filter(|_| settings.durable) {
        let st = std::process::Command::new("sync")
            .arg("-f")
            .arg(root)
            .status()
            .context("run sync -f")?;
        if !st.success() {
            bail!("sync -f {} failed ({st})", root.display());
        }
    }
    let pending = pgdata.join(PG_CONTROL_PENDING);
    if pending.exists() {
        fs::rename(&pending, pgdata.join(PG_CONTROL))
            .context("move global/pg_control into place")?;
        sync_path(&pgdata.join("global"))?;
    } else if !pgdata.join(PG_CONTROL).exists() {
        bail!(
            "backup {} has no global/pg_control; the backup is damaged",
            backup.id
        );
    }
    fs::remove_file(pgdata.join(INCOMPLETE_MARKER)).context("remove the incomplete marker")?;
    sync_path(pgdata)
}

/// Replace a file with `content` (temporary name, then rename), mode 0600.
fn write_file(path: &Path, content: &[u8], owner: Option<Owner>) -> anyhow::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.synapse-tmp"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(content)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    drop(f);
    chown(&tmp, owner)?;
    fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

fn sync_path(path: &Path) -> anyhow::Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// --start

/// What the log says so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct LogState {
    promoted: bool,
    /// The server sends its log to the logging collector: this file sees nothing more.
    collector: bool,
    paused: bool,
    shutdown_at_target: bool,
    shut_down: bool,
    errors: Vec<String>,
    last_restored: Option<String>,
}

fn scan_log(text: &str) -> LogState {
    let mut st = LogState::default();
    for line in text.lines() {
        if line.contains("database system is ready to accept connections") {
            st.promoted = true;
        } else if line.contains("redirecting log output to logging collector process") {
            st.collector = true;
        } else if line.contains("pausing at the end of recovery") {
            st.paused = true;
        } else if line.contains("shutdown at recovery target") {
            st.shutdown_at_target = true;
        } else if line.contains("database system is shut down") {
            st.shut_down = true;
        } else if line.contains("FATAL:") || line.contains("PANIC:") {
            st.errors.push(line.trim().to_string());
        } else if let Some(i) = line.find("restored log file \"") {
            let rest = &line[i + 19..];
            st.last_restored = rest.split('"').next().map(str::to_string);
        }
    }
    st
}

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
    conninfo
        .parse::<tokio_postgres::Config>()
        .map_err(|e| anyhow!("bad connection string: {e}"))?;
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
/// `pg_ctl -w` is not enough (pg-reference §0 item 6): we watch the postmaster, the log and,
/// when the configured connection reaches this server, `pg_is_in_recovery()`.
async fn start_and_wait(
    cluster: &ClusterConfig,
    backup: &BackupManifest,
    pgdata: &Path,
    owner: Option<Owner>,
    target: &RecoveryTarget,
    action: TargetAction,
) -> anyhow::Result<()> {
    let bin = cluster
        .pg_bin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/usr/lib/postgresql/{}/bin", backup.pg_version)));
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
    chown(&log, owner)?;

    let mut cmd = match owner {
        Some(o) => {
            let name = user_name(o.uid).ok_or_else(|| {
                anyhow!(
                    "cannot start the server as uid {}: it has no user name in /etc/passwd",
                    o.uid
                )
            })?;
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", &name, "--"]).arg(&pg_ctl);
            c
        }
        None => tokio::process::Command::new(&pg_ctl),
    };
    cmd.arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-W", "start"])
        .current_dir(pgdata)
        .stdin(std::process::Stdio::null());
    eprintln!(
        "starting PostgreSQL on {} (log: {})",
        pgdata.display(),
        log.display()
    );
    let out = cmd.output().await.context("run pg_ctl start")?;
    if !out.status.success() {
        bail!(
            "pg_ctl start failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            log_tail(&log)
        );
    }

    let latest = matches!(target, RecoveryTarget::Latest);
    let started = Instant::now();
    let mut last_progress = (0usize, None::<Lsn>, None::<String>);
    let mut last_change = Instant::now();
    let mut last_report = Instant::now();
    let mut sql_usable = true;
    let mut sql_probe_at = Instant::now();
    let mut ever_alive = false;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let text = fs::read_to_string(&log).unwrap_or_default();
        let st = scan_log(&text);
        let alive = live_postmaster(pgdata).is_some();
        ever_alive |= alive;

        // The postmaster is gone (or never came up): the log says why.
        let gone = ever_alive
            || st.shut_down
            || !st.errors.is_empty()
            || started.elapsed() > Duration::from_secs(60);
        if !alive && gone {
            if st.shutdown_at_target {
                let why = match action {
                    TargetAction::Shutdown => "--target-action shutdown",
                    _ => "hot_standby is off, so pause acts as shutdown",
                };
                eprintln!(
                    "recovery reached the target {target} and the server shut down ({why}); \
                     start it again to continue, or change the target first"
                );
                return Ok(());
            }
            bail!(
                "the server on {} stopped during recovery{}{}",
                pgdata.display(),
                if st.errors.is_empty() {
                    String::new()
                } else {
                    format!(": {}", st.errors.join(" | "))
                },
                log_tail(&log)
            );
        }
        if alive && !sql_usable && st.collector {
            eprintln!(
                "started: the server on {} is running, but it logs through its logging collector and the configured \
                 connection does not reach it, so the outcome of recovery cannot be followed from here: \
                 check its log and `select pg_is_in_recovery()`",
                pgdata.display()
            );
            return Ok(());
        }

        let probe = if alive && sql_usable && sql_probe_at.elapsed() >= Duration::from_secs(1) {
            sql_probe_at = Instant::now();
            match probe(&cluster.connection, pgdata).await {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("note: not checking with SQL: {e:#}; following the server log only");
                    sql_usable = false;
                    None
                }
            }
        } else {
            None
        };

        let done = match (&probe, action) {
            (Some(p), _) if !p.in_recovery => Some(format!(
                "recovery complete: the server on {} is running and promoted (timeline {})",
                pgdata.display(),
                p.timeline
            )),
            (Some(p), TargetAction::Pause) if p.paused && !latest => Some(format!(
                "recovery reached the target and is paused at {} (read-only); promote with `select pg_wal_replay_resume()`",
                p.replay.map(|l| l.to_string()).unwrap_or_default()
            )),
            (None, _) if !sql_usable && st.promoted => Some(format!(
                "recovery complete: the server on {} is running and promoted",
                pgdata.display()
            )),
            (None, TargetAction::Pause) if !sql_usable && st.paused => {
                Some("recovery reached the target and is paused (read-only); promote with `select pg_wal_replay_resume()`".to_string())
            }
            _ => None,
        };
        if let Some(msg) = done {
            eprintln!("{msg}");
            return Ok(());
        }

        // Progress, and a stall guard: recovery that shows no sign of life for long is an error.
        let progress = (
            text.len(),
            probe.as_ref().and_then(|p| p.replay),
            newest_wal_file(pgdata),
        );
        if progress != last_progress {
            last_progress = progress;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(600) {
            bail!(
                "recovery on {} made no progress for 10 minutes; the server is still running (check its log){}",
                pgdata.display(),
                log_tail(&log)
            );
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "recovering: {:.0}s{}",
                started.elapsed().as_secs_f64(),
                st.last_restored
                    .as_ref()
                    .map(|s| format!(", last WAL restored {s}"))
                    .unwrap_or_default()
            );
        }
    }
}

/// The newest WAL segment in `pg_wal` (restored segments land there as replay proceeds).
fn newest_wal_file(pgdata: &Path) -> Option<String> {
    fs::read_dir(pgdata.join("pg_wal"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .max()
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" / ");
    if tail.is_empty() {
        format!(" (log: {})", log.display())
    } else {
        format!(" (log {}: … {tail})", log.display())
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pg::WalSegmentName;
    use crate::repo::manifest::{DirEntry, PartEntry, Tablespace, MANIFEST_FORMAT};

    fn manifest_with_tablespace() -> BackupManifest {
        BackupManifest {
            format_version: MANIFEST_FORMAT,
            id: "20240101T020000Z".parse().unwrap(),
            cluster: "core".into(),
            system_identifier: crate::pg::SystemId(7),
            pg_version: 15,
            pg_version_num: 150018,
            wal_segment_size: 16 << 20,
            timeline: TimelineId(1),
            start_lsn: "0/2000028".parse().unwrap(),
            stop_lsn: "0/2000100".parse().unwrap(),
            start_time: "2024-01-01T02:00:00Z".parse().unwrap(),
            stop_time: "2024-01-01T02:01:00Z".parse().unwrap(),
            backup_from: "primary".into(),
            data_checksums: true,
            backup_label: "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n".into(),
            tablespace_map: Some("16385 /srv/ts1\n".into()),
            tablespaces: vec![Tablespace {
                oid: 16385,
                location: "/srv/ts1".into(),
            }],
            parts: vec![],
            files: vec![],
            directories: vec![],
            page_problems: vec![],
        }
    }

    #[test]
    fn paths_map_into_the_data_directory_and_tablespaces() {
        let m = manifest_with_tablespace();
        let layout = Layout::new(Path::new("/restore/pgdata"), &m, &BTreeMap::new()).unwrap();
        assert_eq!(
            layout.dest("base/1/1259").unwrap(),
            Dest::Path("/restore/pgdata/base/1/1259".into())
        );
        assert_eq!(
            layout
                .dest("pg_tblspc/16385/PG_15_202209061/5/16386")
                .unwrap(),
            Dest::Path("/srv/ts1/PG_15_202209061/5/16386".into())
        );
        assert_eq!(
            layout.dest("pg_tblspc/16385").unwrap(),
            Dest::TablespaceLink(16385)
        );
        assert_eq!(
            layout.dest("pg_tblspc").unwrap(),
            Dest::Path("/restore/pgdata/pg_tblspc".into())
        );
        assert_eq!(
            layout.root_of("pg_tblspc/16385/PG_15_x"),
            Path::new("/srv/ts1")
        );
        assert_eq!(layout.root_of("base/1"), Path::new("/restore/pgdata"));
        for bad in [
            "/etc/passwd",
            "../outside",
            "base/../../x",
            "pg_tblspc/99999/PG_15_x/1/2",
            "pg_tblspc/notanoid/x",
            "",
        ] {
            assert!(layout.dest(bad).is_err(), "{bad:?} must be refused");
        }

        // Relocation, and refusals of bad relocations.
        let moved = parse_tablespace_map(&["16385=/elsewhere/ts".into()]).unwrap();
        let layout = Layout::new(Path::new("/restore/pgdata"), &m, &moved).unwrap();
        assert_eq!(
            layout.dest("pg_tblspc/16385/PG_15_x/5/1").unwrap(),
            Dest::Path("/elsewhere/ts/PG_15_x/5/1".into())
        );
        assert_eq!(
            render_tablespace_map(&layout.tablespaces),
            "16385 /elsewhere/ts\n"
        );
        let unknown = parse_tablespace_map(&["1=/x".into()]).unwrap();
        let err = Layout::new(Path::new("/p"), &m, &unknown)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no tablespace 1") && err.contains("16385"),
            "{err}"
        );
        let inside = parse_tablespace_map(&["16385=/restore/pgdata/ts".into()]).unwrap();
        assert!(Layout::new(Path::new("/restore/pgdata"), &m, &inside).is_err());
        for bad in ["16385", "x=/a", "16385=relative", "=/a"] {
            assert!(parse_tablespace_map(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse_tablespace_map(&["1=/a".into(), "1=/b".into()]).is_err());
    }

    #[test]
    fn tablespace_map_escapes_like_postgres_reads_it() {
        let mut map = BTreeMap::new();
        map.insert(16385, PathBuf::from("/a b/c\\d"));
        map.insert(16384, PathBuf::from("/x"));
        assert_eq!(render_tablespace_map(&map), "16384 /x\n16385 /a b/c\\\\d\n");
    }

    #[test]
    fn restore_command_words_survive_shell_and_postgres() {
        assert_eq!(
            command_word("/usr/bin/synapse-backup"),
            "/usr/bin/synapse-backup"
        );
        assert_eq!(command_word("/etc/my conf.toml"), "'/etc/my conf.toml'");
        assert_eq!(command_word("/a'b"), "'/a'\\''b'");
        assert_eq!(command_word("/a%p"), "/a%%p");
        assert_eq!(conf_value("it's"), "'it''s'");
        assert_eq!(conf_value("a\\b"), "'a\\\\b'");
    }

    #[test]
    fn recovery_settings_reset_every_other_target() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let id: BackupId = "20240101T020000Z".parse().unwrap();
        let mut s = RecoverySettings {
            restore_command: "/bin/sb --config /c.toml --cluster core wal-fetch %f %p".into(),
            target: RecoveryTarget::Time("2024-01-01T12:02:00Z".parse().unwrap()),
            action: TargetAction::Promote,
            timeline: None,
            durable: true,
        };
        let text = recovery_conf(&s, &id, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            &lines[2..],
            [
                "restore_command = '/bin/sb --config /c.toml --cluster core wal-fetch %f %p'",
                "recovery_target = ''",
                "recovery_target_lsn = ''",
                "recovery_target_name = ''",
                "recovery_target_xid = ''",
                "recovery_target_time = '2024-01-01 12:02:00.000000+00'",
                "recovery_target_action = 'promote'",
                "recovery_target_timeline = 'latest'",
            ]
        );
        s.target = RecoveryTarget::Lsn("0/3000060".parse().unwrap());
        s.action = TargetAction::Pause;
        s.timeline = Some(2);
        let text = recovery_conf(&s, &id, now);
        assert!(text.contains("recovery_target_time = ''\n"));
        assert!(text.contains("recovery_target_lsn = '0/3000060'\n"));
        assert!(
            text.ends_with("recovery_target_action = 'pause'\nrecovery_target_timeline = '2'\n")
        );
        s.target = RecoveryTarget::Latest;
        let text = recovery_conf(&s, &id, now);
        assert_eq!(text.matches(" = ''").count(), 5);
    }

    #[test]
    fn small_parsers() {
        assert_eq!(
            parse_pid_file("12345\n/var/lib/pg\n1700000000\n"),
            Some(12345)
        );
        assert_eq!(parse_pid_file("-77\n"), Some(77));
        assert_eq!(parse_pid_file(""), None);
        assert_eq!(parse_pid_file("garbage\n"), None);
        assert_eq!(parse_pid_file("0\n"), None);
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));

        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:104:108:PostgreSQL:/var/lib/postgresql:/bin/bash\nbroken\n";
        assert_eq!(
            passwd_entry(passwd, |n, _| n == "postgres"),
            Some(("postgres".into(), 104, 108))
        );
        assert_eq!(
            passwd_entry(passwd, |_, u| u == 0).map(|e| e.0),
            Some("root".into())
        );
        assert_eq!(passwd_entry(passwd, |n, _| n == "nobody"), None);

        let df = "      Avail Mounted on\n75000000000 /\n   1024 /mnt/my disk\n";
        assert_eq!(
            parse_df(df),
            vec![
                (75000000000, "/".to_string()),
                (1024, "/mnt/my disk".to_string())
            ]
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");

        let log = "LOG:  restored log file \"000000010000000000000003\" from archive\n\
                   FATAL:  recovery ended before configured recovery target was reached\n\
                   LOG:  database system is shut down\n";
        let st = scan_log(log);
        assert_eq!(
            st.last_restored.as_deref(),
            Some("000000010000000000000003")
        );
        assert_eq!(st.errors.len(), 1);
        assert!(st.shut_down && !st.promoted);
        let st = scan_log("LOG:  database system is ready to accept read-only connections\nLOG:  pausing at the end of recovery\n");
        assert!(st.paused && !st.promoted);
    }

    #[test]
    fn space_is_summed_per_file_system() {
        let mut m = manifest_with_tablespace();
        for (path, size) in [
            ("base/1/1", 100),
            ("base/1/2", 50),
            ("pg_tblspc/16385/PG_15_x/5/1", 70),
        ] {
            m.files.push(FileEntry {
                path: path.into(),
                size,
                mode: 0o600,
                mtime: 0,
                sha256: Sha256::of(b""),
                part: 0,
            });
        }
        let layout = Layout::new(Path::new("/data/pgdata"), &m, &BTreeMap::new()).unwrap();
        let need = space_needed(&layout, &m, 10);
        assert_eq!(need[Path::new("/data/pgdata")], 160);
        assert_eq!(need[Path::new("/srv/ts1")], 70);

        let root = |mount: &str, avail, freed, need| RootSpace {
            mount: mount.into(),
            avail,
            freed,
            need,
        };
        // Two roots on one file system: their needs add up.
        assert_eq!(
            space_shortfall(&[root("/", 200, 0, 160), root("/", 200, 0, 70)]),
            Some(("/".into(), 230, 200))
        );
        assert_eq!(
            space_shortfall(&[root("/", 200, 0, 160), root("/srv", 100, 0, 70)]),
            None
        );
        // What --force removes counts as free.
        assert_eq!(space_shortfall(&[root("/", 100, 80, 160)]), None);
        assert_eq!(
            space_shortfall(&[root("/", 100, 0, 160)]),
            Some(("/".into(), 160, 100))
        );
    }

    // ---- A whole restore against an in-memory repository --------------------------------

    const SIZE: WalSegmentSize = WalSegmentSize::DEFAULT;

    fn tar_gz(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
        let mut tar = tar::Builder::new(gz);
        for (path, data, mode) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_mtime(1_700_000_000);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    struct Fixture {
        repo: Repository,
        config: Config,
        cluster: ClusterConfig,
        config_file: PathBuf,
        dir: tempfile::TempDir,
        manifest: BackupManifest,
    }

    /// A backup of a tiny "cluster" with a tablespace, and WAL segments 2..=4 with commits.
    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::in_memory("core");
        let control = vec![3u8; 8192];
        let long_name = format!("base/1/{}", "9".repeat(120));
        let data: Vec<(&str, &[u8], u32)> = vec![
            ("PG_VERSION", b"15\n", 0o600),
            ("base/1/1259", b"relation data", 0o600),
            (&long_name, b"long", 0o640),
            (
                "postgresql.auto.conf",
                b"# Do not edit this file manually!\nwork_mem = '8MB'\n",
                0o600,
            ),
            (
                "pg_tblspc/16385/PG_15_202209061/5/16386",
                b"in a tablespace",
                0o600,
            ),
        ];
        let mut m = manifest_with_tablespace();
        m.tablespaces[0].location = dir.path().join("original-ts").display().to_string();
        let label = m.backup_label.clone();
        let map = m.tablespace_map.clone().unwrap();
        let ctl: Vec<(&str, &[u8], u32)> = vec![
            ("backup_label", label.as_bytes(), 0o600),
            ("tablespace_map", map.as_bytes(), 0o600),
            ("global/pg_control", &control, 0o600),
        ];
        for (index, (key, files)) in [("data-00.tar.gz", &data), (crate::repo::CONTROL_PART, &ctl)]
            .into_iter()
            .enumerate()
        {
            let bytes = tar_gz(files);
            m.parts.push(PartEntry {
                key: key.into(),
                size: bytes.len() as u64,
                sha256: Sha256::of(&bytes),
                original_size: files.iter().map(|f| f.1.len() as u64).sum(),
            });
            for (path, content, mode) in files.iter() {
                m.files.push(FileEntry {
                    path: path.to_string(),
                    size: content.len() as u64,
                    mode: *mode,
                    mtime: 1_700_000_000,
                    sha256: Sha256::of(content),
                    part: index,
                });
            }
            repo.put_part(&m.id, key, bytes.into()).await.unwrap();
        }
        for (d, mode) in [
            ("base", 0o700),
            ("base/1", 0o700),
            ("global", 0o700),
            ("pg_replslot", 0o700),
            ("pg_tblspc", 0o700),
            ("pg_tblspc/16385", 0o700),
            ("pg_tblspc/16385/PG_15_202209061", 0o700),
            ("pg_tblspc/16385/PG_15_202209061/5", 0o700),
            ("pg_wal", 0o700),
            ("pg_wal/archive_status", 0o700),
        ] {
            m.directories.push(DirEntry {
                path: d.into(),
                mode,
            });
        }
        m.files.sort_by(|a, b| a.path.cmp(&b.path));
        repo.put_manifest(&m).await.unwrap();
        for (segno, commit) in [
            (2, "2024-01-01T02:00:30Z"),
            (3, "2024-01-01T03:00:00Z"),
            (4, "2024-01-01T04:00:00Z"),
        ] {
            let name = WalFileName::Segment(WalSegmentName::new(TimelineId(1), segno, SIZE));
            let mut extra = serde_json::Map::new();
            extra.insert("last_commit".into(), commit.into());
            let (gz, header) = crate::codec::compress(&[0u8; 1024], 1, extra);
            repo.put_wal(&name, gz.into(), &header).await.unwrap();
        }
        let config_file = dir.path().join("config.toml");
        let text = format!(
            "timezone = \"America/New_York\"\n[repository]\nurl = \"file://{}/repo\"\n[[cluster]]\nname = \"core\"\npgdata = \"{}/pgdata\"\n",
            dir.path().display(),
            dir.path().display()
        );
        fs::write(&config_file, &text).unwrap();
        let config = Config::parse(&text).unwrap();
        let cluster = config.clusters[0].clone();
        Fixture {
            repo,
            config,
            cluster,
            config_file,
            dir,
            manifest: m,
        }
    }

    fn args(target: &[&str], pgdata: &Path, extra: &[&str]) -> RestoreArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            args: RestoreArgs,
        }
        let mut argv = vec!["restore".to_string()];
        argv.extend(target.iter().map(|s| s.to_string()));
        argv.extend(["--pgdata".to_string(), pgdata.display().to_string()]);
        argv.extend(extra.iter().map(|s| s.to_string()));
        Wrap::parse_from(argv).args
    }

    async fn restore(f: &Fixture, a: &RestoreArgs) -> anyhow::Result<()> {
        run(&f.config, &f.cluster, &f.repo, a, Some(&f.config_file)).await
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn restores_files_tablespaces_and_recovery_settings() {
        let f = fixture().await;
        let pgdata = f.dir.path().join("restored");
        let ts = f.dir.path().join("moved-ts");
        let map = format!("--tablespace-map=16385={}", ts.display());
        // 2024-01-01 00:30 in New York is 05:30 UTC: after the last commit.
        let a = args(&["--to", "2023-12-31 22:30"], &pgdata, &[&map]);
        restore(&f, &a).await.unwrap();

        let read = |p: &str| fs::read(pgdata.join(p)).unwrap();
        assert_eq!(read("PG_VERSION"), b"15\n");
        assert_eq!(read("base/1/1259"), b"relation data");
        assert_eq!(read(&format!("base/1/{}", "9".repeat(120))), b"long");
        assert_eq!(read("global/pg_control"), vec![3u8; 8192]);
        assert_eq!(read("backup_label"), f.manifest.backup_label.as_bytes());
        assert!(!pgdata.join(INCOMPLETE_MARKER).exists());
        assert!(!pgdata.join(PG_CONTROL_PENDING).exists());
        assert!(read("recovery.signal").is_empty());
        assert!(pgdata.join("pg_replslot").is_dir());
        assert_eq!(
            fs::read_dir(pgdata.join("pg_wal/archive_status"))
                .unwrap()
                .count(),
            0
        );
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&pgdata), 0o700);
        assert_eq!(
            mode(&pgdata.join(format!("base/1/{}", "9".repeat(120)))),
            0o640
        );

        // The tablespace went to its new place, linked from pg_tblspc, and the map says so.
        assert_eq!(
            fs::read(ts.join("PG_15_202209061/5/16386")).unwrap(),
            b"in a tablespace"
        );
        assert_eq!(fs::read_link(pgdata.join("pg_tblspc/16385")).unwrap(), ts);
        assert_eq!(
            read("tablespace_map"),
            format!("16385 {}\n", ts.display()).as_bytes()
        );
        assert!(!f.dir.path().join("original-ts").exists());

        // postgresql.auto.conf keeps its contents and gains the recovery settings.
        let conf = String::from_utf8(read("postgresql.auto.conf")).unwrap();
        assert!(
            conf.starts_with("# Do not edit this file manually!\nwork_mem = '8MB'\n"),
            "{conf}"
        );
        assert!(
            conf.contains("recovery_target_time = '2024-01-01 03:30:00.000000+00'\n"),
            "{conf}"
        );
        assert!(
            conf.contains("recovery_target_action = 'promote'\n"),
            "{conf}"
        );
        let cfg_path = f.config_file.canonicalize().unwrap();
        assert!(
            conf.contains(&format!(
                "--config {} --cluster core wal-fetch --timeline 1 %f %p'",
                cfg_path.display()
            )),
            "{conf}"
        );
        // The timeline the checks followed, not 'latest' (which could pick another).
        assert!(conf.contains("recovery_target_timeline = '1'\n"), "{conf}");

        // PostgreSQL's backup_manifest lists every file with its real checksum.
        let text = String::from_utf8(read("backup_manifest")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let listed: HashMap<String, String> = v["Files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["Path"].as_str().unwrap().to_string(),
                    e["Checksum"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for (path, sum) in &listed {
            let disk = if let Some(rest) = path.strip_prefix("pg_tblspc/16385/") {
                fs::read(ts.join(rest)).unwrap()
            } else {
                read(path)
            };
            assert_eq!(&Sha256::of(&disk).to_string(), sum, "{path}");
        }
        for want in [
            "backup_label",
            "tablespace_map",
            "global/pg_control",
            "postgresql.auto.conf",
            "pg_tblspc/16385/PG_15_202209061/5/16386",
        ] {
            assert!(
                listed.contains_key(want),
                "{want} missing from backup_manifest"
            );
        }
        assert!(!listed.contains_key("recovery.signal"));
        assert_eq!(v["WAL-Ranges"][0]["Start-LSN"], "0/2000028");

        // A second restore into the same directory needs --force.
        let err = restore(&f, &a).await.unwrap_err();
        assert_eq!(
            crate::error::exit_code(&err),
            crate::error::exit::USAGE,
            "{err:#}"
        );
        assert!(format!("{err:#}").contains("--force"), "{err:#}");
        let forced = args(&["--latest"], &pgdata, &[&map, "--force"]);
        restore(&f, &forced).await.unwrap();
        let conf = String::from_utf8(read("postgresql.auto.conf")).unwrap();
        assert_eq!(conf.matches("restore_command").count(), 1, "{conf}");
        assert!(conf.contains("recovery_target_time = ''\n"), "{conf}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn targets_outside_the_window_are_refused_before_any_write() {
        let f = fixture().await;
        let pgdata = f.dir.path().join("never");
        for (target, want) in [
            // 04:00 UTC is the last commit: nothing after it can stop recovery.
            (["--to", "2024-01-01 04:00:00+00"], "last archived commit"),
            (
                ["--to", "2023-12-31 21:00"],
                "before the end of the earliest backup",
            ),
            (["--lsn", "0/5000000"], "end of the archived WAL"),
            (
                ["--lsn", "0/1000000"],
                "before the end of the earliest backup",
            ),
        ] {
            let err = restore(&f, &args(&target, &pgdata, &[])).await.unwrap_err();
            let text = format!("{err:#}");
            assert_eq!(
                crate::error::exit_code(&err),
                crate::error::exit::NOT_FOUND,
                "{text}"
            );
            assert!(text.contains(want), "{target:?}: {text}");
            assert!(
                text.contains("recoverable window: from 2024-01-01 02:01:00 UTC"),
                "{text}"
            );
            assert!(!pgdata.exists(), "{target:?} wrote to the target directory");
        }
        // Bad input is a usage error.
        let err = restore(&f, &args(&["--to", "2024-03-10 02:30"], &pgdata, &[]))
            .await
            .unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::exit::USAGE);
        assert!(format!("{err:#}").contains("does not exist in America/New_York"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_missing_segment_is_named_before_download() {
        let f = fixture().await;
        let seg3 = WalFileName::Segment(WalSegmentName::new(TimelineId(1), 3, SIZE));
        f.repo.delete_wal(&[seg3]).await.unwrap();
        let pgdata = f.dir.path().join("never");
        let err = restore(&f, &args(&["--latest"], &pgdata, &[]))
            .await
            .unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::exit::NOT_FOUND);
        assert!(
            format!("{err:#}").contains("000000010000000000000003 is missing"),
            "{err:#}"
        );
        // A time target whose stopping commit lies before the gap is fine (02:00:30 is in
        // segment 2); one that needs WAL past the gap is not.
        let err = restore(&f, &args(&["--to", "2024-01-01 03:30:00+00"], &pgdata, &[]))
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("000000010000000000000003 is missing"),
            "{err:#}"
        );
        assert!(!pgdata.exists());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_corrupt_part_is_named_and_the_directory_stays_marked() {
        let f = fixture().await;
        let (id, part) = (&f.manifest.id, "data-00.tar.gz");
        let key = f.repo.part_location(id, part);
        let mut bytes = f.repo.get_part(id, part).await.unwrap().unwrap().to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        f.repo.put_part(id, part, bytes.into()).await.unwrap();
        let pgdata = f.dir.path().join("half");
        let map = format!(
            "--tablespace-map=16385={}",
            f.dir.path().join("ts2").display()
        );
        let err = restore(&f, &args(&["--latest"], &pgdata, &[&map]))
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("{key}: corrupt part: SHA-256")),
            "{text}"
        );
        assert!(text.contains("does not match the manifest"), "{text}");
        assert!(pgdata.join(INCOMPLETE_MARKER).exists());
        assert!(!pgdata.join("global/pg_control").exists());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_part_with_unexpected_entries_is_refused() {
        let f = fixture().await;
        // Replace the data part with one holding a symlink (and fix its hash in a new manifest).
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        tar.append_link(&mut h, "PG_VERSION", "/etc/passwd")
            .unwrap();
        let bytes = tar.into_inner().unwrap().finish().unwrap();
        let mut m = f.manifest.clone();
        m.id = "20240101T020001Z".parse().unwrap();
        m.parts[0].sha256 = Sha256::of(&bytes);
        m.parts[0].size = bytes.len() as u64;
        for p in &m.parts {
            let body = if p.key == "data-00.tar.gz" {
                bytes.clone()
            } else {
                let from = f.repo.get_part(&f.manifest.id, &p.key).await.unwrap();
                from.unwrap().to_vec()
            };
            f.repo.put_part(&m.id, &p.key, body.into()).await.unwrap();
        }
        f.repo.put_manifest(&m).await.unwrap();
        let pgdata = f.dir.path().join("links");
        let map = format!(
            "--tablespace-map=16385={}",
            f.dir.path().join("ts3").display()
        );
        let err = restore(
            &f,
            &args(
                &["--latest", "--backup", "20240101T020001Z"],
                &pgdata,
                &[&map],
            ),
        )
        .await
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("data-00.tar.gz: entry \"PG_VERSION\" is a Symlink"),
            "{text}"
        );
        assert!(pgdata.join(INCOMPLETE_MARKER).exists());
    }
}
