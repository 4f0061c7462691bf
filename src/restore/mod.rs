//! The restore engine that `restore` and `verify` share: put a backup into a data directory,
//! every part and file checked against the manifest, and leave it ready for recovery.
//!
//! 1. [`TargetDir::inspect`] refuses what must not be touched (a live server in the directory,
//!    a non-empty directory without `force`); [`Destination::new`] maps every manifest path
//!    (tablespaces included) before anything is written.
//! 2. [`Destination::restore`] marks the directory incomplete (`SYNAPSE_RESTORE_INCOMPLETE`),
//!    downloads the parts in parallel and extracts them. `global/pg_control` stays under a
//!    temporary name until the very end, so PostgreSQL refuses to start a half-restored
//!    directory.
//! 3. It then writes `backup_label`, `tablespace_map`, `recovery.signal`, the recovery settings
//!    and a PostgreSQL `backup_manifest`, syncs, moves `pg_control` into place and drops the
//!    marker.

pub mod chain;
mod chunk_pipe;
mod combine;
mod extract;
mod finish;
pub mod layout;
pub mod target_dir;
mod writeback;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::usage;
use crate::os::{self, Owner};
use crate::pg::recovery_conf::RecoverySettings;
use crate::repo::manifest::BackupManifest;
use crate::repo::Repository;

pub use layout::Layout;
pub use target_dir::{TargetDir, INCOMPLETE_MARKER};

/// Where `global/pg_control` waits until everything else is in place.
pub(crate) const PG_CONTROL_PENDING: &str = "global/pg_control.synapse-restore";

/// Restore `backup` into `pgdata`, which must be absent or empty, with its tablespaces moved
/// to `relocations` (OID → directory), and write `settings` as its recovery configuration.
/// Every part and file is checked against the manifest, as for `restore`. The caller has made
/// its own target and WAL checks, and starts the server itself (`verify` does both). Returns
/// the number of files restored. `durable`: sync the restored files before `pg_control` goes
/// into place (`verify` does not: its copy is thrown away, and a crash only means verifying
/// again).
pub async fn restore_into(
    repo: &Repository,
    backup: &BackupManifest,
    pgdata: &Path,
    relocations: &BTreeMap<u32, PathBuf>,
    settings: &RecoverySettings,
    durable: bool,
) -> anyhow::Result<usize> {
    let target = TargetDir::inspect(pgdata, false)?;
    Destination::new(target, backup, relocations)?
        .restore(repo, backup, settings, durable)
        .await
}

/// A checked place to restore one backup: the target directory, where every backup path goes,
/// and who the files belong to.
pub struct Destination {
    target: TargetDir,
    pub layout: Layout,
    owner: Option<Owner>,
    /// The predicted duration of what follows the restore (WAL replay), for the progress
    /// display's ETA of the whole restore.
    then: Option<Duration>,
}

impl Destination {
    /// Map the backup's paths into `target` (tablespaces into `relocations`, which places
    /// every one) and check every manifest path, before anything is downloaded.
    pub fn new(
        target: TargetDir,
        backup: &BackupManifest,
        relocations: &BTreeMap<u32, PathBuf>,
    ) -> anyhow::Result<Destination> {
        let layout = Layout::new(&target.pgdata, backup, relocations)?;
        layout.check_manifest(backup)?;
        // A tablespace directory outside the data directory must be absent or empty, with or
        // without --force: --force clears the data directory the operator named, nothing else.
        for (oid, dir) in &layout.tablespaces {
            if layout.is_in_place(*oid) {
                continue;
            }
            if target_dir::inspect_dir(dir)?.non_empty {
                return Err(usage(format!(
                    "tablespace {oid} would be restored into {}, which is not empty (is it in use by another cluster?); \
                     nothing was written. Restore it elsewhere with --tablespace-map {oid}=DIR (an absent or empty \
                     directory); --force never clears a tablespace directory",
                    dir.display()
                )));
            }
        }
        let owner = os::restore_owner(&target.pgdata);
        Ok(Destination {
            target,
            layout,
            owner,
            then: None,
        })
    }

    /// Who the restored files belong to (`None`: whoever we are).
    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }

    /// Say how long what follows the restore is predicted to take (for the ETA).
    pub fn followed_by(&mut self, then: Duration) {
        self.then = Some(then);
    }

    /// Whether what the target directories hold now is removed first (`--force`).
    pub fn replaces_contents(&self) -> bool {
        self.target.force
    }

    /// Mark and prepare the directories, download and extract every part, then write the
    /// recovery files and move `pg_control` into place. Returns the number of files.
    pub async fn restore(
        &self,
        repo: &Repository,
        backup: &BackupManifest,
        settings: &RecoverySettings,
        durable: bool,
    ) -> anyhow::Result<usize> {
        self.materialise(repo, backup, Some(settings), durable)
            .await
    }

    /// As [`Destination::restore`], without recovery settings: a plain full backup
    /// directory (data files, `backup_label`, `tablespace_map`, `backup_manifest`), what
    /// `pg_combinebackup` writes (`export`).
    pub async fn export(
        &self,
        repo: &Repository,
        backup: &BackupManifest,
    ) -> anyhow::Result<usize> {
        self.materialise(repo, backup, None, true).await
    }

    async fn materialise(
        &self,
        repo: &Repository,
        backup: &BackupManifest,
        settings: Option<&RecoverySettings>,
        durable: bool,
    ) -> anyhow::Result<usize> {
        let (layout, owner) = (&self.layout, self.owner);
        // An incremental's chain, checked before anything is written or downloaded.
        let chain = chain::resolve(repo, backup).await?;
        self.target.prepare(owner)?;
        for (oid, dir) in &layout.tablespaces {
            target_dir::prepare_tablespace(&layout.pgdata, *oid, dir, owner)?;
        }
        let extracted =
            extract::restore_parts(repo, chain, layout, owner, durable, self.then).await?;
        finish::finish(layout, backup, &extracted, settings, durable, owner)?;
        Ok(extracted.len())
    }
}
