//! The final switch: the files PostgreSQL needs to recover, its `backup_manifest`, a sync,
//! then `pg_control` into place and the incomplete marker gone.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};

use super::extract::Extracted;
use super::layout::Layout;
use super::target_dir::ensure_dir;
use super::{INCOMPLETE_MARKER, PG_CONTROL_PENDING};
use crate::codec::Sha256;
use crate::os::{self, Owner};
use crate::pg::backup_manifest::{self, ManifestFile, WalRange};
use crate::pg::datadir::{self, render_tablespace_map};
use crate::pg::recovery_conf::{recovery_conf, RecoverySettings};
use crate::repo::manifest::{BackupManifest, FileEntry};

/// Write the files PostgreSQL needs to recover, the `backup_manifest`, sync, then move
/// `pg_control` into place and drop the marker.
pub(super) fn finish(
    layout: &Layout,
    backup: &BackupManifest,
    extracted: &[Extracted],
    settings: Option<&RecoverySettings>,
    durable: bool,
    owner: Option<Owner>,
) -> anyhow::Result<()> {
    let pgdata = &layout.pgdata;
    let now = Utc::now();
    ensure_dir(pgdata, "pg_wal", 0o700, owner)?;
    ensure_dir(pgdata, "pg_wal/archive_status", 0o700, owner)?;
    if extracted.iter().any(|e| e.path == datadir::STANDBY_SIGNAL) {
        eprintln!(
            "note: the backup's standby.signal was not restored (a restore recovers with recovery.signal and promotes)"
        );
    }

    let mut ours: Vec<(&str, Vec<u8>)> =
        vec![("backup_label", backup.backup_label.clone().into_bytes())];
    let linked = layout.linked_tablespaces();
    if !linked.is_empty() {
        ours.push((
            "tablespace_map",
            render_tablespace_map(&linked).into_bytes(),
        ));
    }
    // A plain export (no settings) leaves recovery to whoever starts it.
    if let Some(settings) = settings {
        ours.push((
            "postgresql.auto.conf",
            recovery_auto_conf(layout, backup, settings, now)?,
        ));
        ours.push((datadir::RECOVERY_SIGNAL, Vec::new()));
    }
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
        if *name != datadir::RECOVERY_SIGNAL {
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
    for root in roots.into_iter().filter(|_| durable) {
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
        fs::rename(&pending, pgdata.join(datadir::PG_CONTROL))
            .context("move global/pg_control into place")?;
        os::sync_path(&pgdata.join("global"))?;
    } else if !pgdata.join(datadir::PG_CONTROL).exists() {
        bail!(
            "backup {} has no global/pg_control; the backup is damaged",
            backup.id
        );
    }
    fs::remove_file(pgdata.join(INCOMPLETE_MARKER)).context("remove the incomplete marker")?;
    os::sync_path(pgdata)
}

/// `postgresql.auto.conf` as restored, with the recovery settings appended.
fn recovery_auto_conf(
    layout: &Layout,
    backup: &BackupManifest,
    settings: &RecoverySettings,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<u8>> {
    let auto_conf = layout.pgdata.join("postgresql.auto.conf");
    let mut conf = match fs::read(&auto_conf) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).context("read postgresql.auto.conf"),
    };
    if !conf.is_empty() && !conf.ends_with(b"\n") {
        conf.push(b'\n');
    }
    conf.extend_from_slice(recovery_conf(settings, &backup.id, now).as_bytes());
    if layout
        .tablespaces
        .keys()
        .any(|oid| layout.is_in_place(*oid))
    {
        conf.extend_from_slice(datadir::IN_PLACE_TABLESPACES.as_bytes());
    }
    Ok(conf)
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
    os::chown(&tmp, owner)?;
    fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}
