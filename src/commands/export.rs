//! `export ID DIR`: any backup, full or incremental, as a plain full backup directory — the
//! data files, `backup_label`, `tablespace_map` (none: tablespaces are written in place
//! under `pg_tblspc/<oid>`) and a PostgreSQL `backup_manifest`, what `pg_combinebackup`
//! writes for PostgreSQL 17. Start it like any base backup: with a `restore_command` and
//! `recovery.signal` (README "Incremental format"). It goes through the restore engine, so
//! every part, block and file is checked on the way.

use std::collections::BTreeMap;

use crate::error::Failure;
use crate::format::human_bytes;
use crate::repo::Repository;
use crate::restore::{Destination, TargetDir};
use crate::settings::ExportSettings;

pub async fn run(repo: &Repository, settings: &ExportSettings) -> anyhow::Result<()> {
    let backup = repo.get_manifest(&settings.id).await?.ok_or_else(|| {
        Failure::NotFound(format!(
            "backup {} is not in the repository (synapse-backup list shows the backups)",
            settings.id
        ))
    })?;
    let dir = &settings.dir;
    let target = TargetDir::inspect(dir, false)?;
    let in_place: BTreeMap<u32, std::path::PathBuf> = backup
        .tablespaces
        .iter()
        .map(|t| (t.oid, dir.join("pg_tblspc").join(t.oid.to_string())))
        .collect();
    let dest = Destination::new(target, &backup, &in_place)?;
    let started = std::time::Instant::now();
    let files = dest.export(repo, &backup).await?;
    eprintln!(
        "exported backup {} ({}) into {}: {files} files, {} in {:.1}s; start it with a restore_command and \
         recovery.signal (README \"Incremental format\")",
        backup.id,
        backup.kind,
        dir.display(),
        human_bytes(backup.original_size()),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
