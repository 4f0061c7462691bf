//! What a base backup copies: PostgreSQL's own rules (basebackup.c), applied while walking
//! the data directory and its tablespaces.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Files never copied, at any depth.
const EXCLUDE_FILES: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "backup_manifest.tmp",
    "backup_label.old",
    "postmaster.pid",
    "postmaster.opts",
    "SYNAPSE_RESTORE_INCOMPLETE",
];

/// Top-level directories kept empty.
const EXCLUDE_DIR_CONTENTS: &[&str] = &[
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Files in checksummed directories that are not relation files.
const NO_CHECKSUM_FILES: &[&str] = &["pg_control", "pg_filenode.map", "PG_VERSION"];

#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// Relative to the data directory, `/`-separated.
    pub rel: String,
    pub abs: PathBuf,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    /// Absolute block number of the file's first page, when its pages carry checksums.
    pub checksum_base_block: Option<u32>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub files: Vec<PlannedFile>,
    /// Directories to recreate (relative path, mode), parents first.
    pub dirs: Vec<(String, u32)>,
    /// (oid, location) for each `pg_tblspc/<oid>` link.
    pub tablespaces: Vec<(u32, PathBuf)>,
    /// `global/pg_control`, copied last.
    pub control: Option<PlannedFile>,
    /// Special files and stray symlinks that were skipped.
    pub skipped: Vec<String>,
}

/// Walk `pgdata` (following `pg_tblspc/<oid>` links into the tablespaces).
pub fn plan(pgdata: &Path) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    walk_dir(pgdata, "", &mut plan).with_context(|| format!("walk {}", pgdata.display()))?;
    Ok(plan)
}

fn walk_dir(dir: &Path, rel: &str, plan: &mut Plan) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // A directory that vanished during the walk (a dropped database): WAL covers it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read directory {}", dir.display())),
    };
    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("read directory {}", dir.display()))?;
        match entry.file_name().into_string() {
            Ok(n) => names.push(n),
            Err(n) => plan.skipped.push(format!("{rel}/{}", n.to_string_lossy())),
        }
    }
    names.sort();
    let database_dir = is_database_dir(rel);
    let unlogged: HashSet<&str> = if database_dir {
        names
            .iter()
            .filter_map(|n| n.strip_suffix("_init"))
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .collect()
    } else {
        HashSet::new()
    };
    for name in &names {
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let abs = dir.join(name);
        if EXCLUDE_FILES.contains(&name.as_str())
            || name.starts_with("pg_internal.init")
            || name.starts_with("pgsql_tmp")
        {
            continue;
        }
        if database_dir && (is_temp_relation(name) || is_unlogged_fork(name, &unlogged)) {
            continue;
        }
        let meta = match std::fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("stat {}", abs.display())),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            if rel == "pg_tblspc" {
                let oid: u32 = match name.parse() {
                    Ok(o) => o,
                    Err(_) => {
                        plan.skipped.push(child_rel);
                        continue;
                    }
                };
                let target = std::fs::read_link(&abs)
                    .with_context(|| format!("read link {}", abs.display()))?;
                plan.tablespaces.push((oid, target.clone()));
                plan.dirs.push((child_rel.clone(), 0o700));
                walk_dir(&target, &child_rel, plan)?;
            } else if rel.is_empty() && name == "pg_wal" {
                plan.dirs.push(("pg_wal".into(), 0o700));
                plan.dirs.push(("pg_wal/archive_status".into(), 0o700));
            } else {
                plan.skipped.push(child_rel);
            }
            continue;
        }
        if ft.is_dir() {
            let mode = meta.permissions().mode() & 0o7777;
            plan.dirs.push((child_rel.clone(), mode));
            if rel.is_empty() && name == "pg_wal" {
                plan.dirs.push(("pg_wal/archive_status".into(), mode));
                continue;
            }
            if rel.is_empty() && EXCLUDE_DIR_CONTENTS.contains(&name.as_str()) {
                continue;
            }
            walk_dir(&abs, &child_rel, plan)?;
            continue;
        }
        if !ft.is_file() {
            plan.skipped.push(child_rel);
            continue;
        }
        let checksum_base_block =
            if checksummed_dir(rel) && !NO_CHECKSUM_FILES.contains(&name.as_str()) {
                relation_segment(name).map(|seg| seg.saturating_mul(super::page::RELSEG_SIZE))
            } else {
                None
            };
        let file = PlannedFile {
            rel: child_rel.clone(),
            abs,
            size: meta.len(),
            mode: meta.permissions().mode() & 0o7777,
            mtime: meta.mtime(),
            checksum_base_block,
        };
        if child_rel == "global/pg_control" {
            plan.control = Some(file);
        } else {
            plan.files.push(file);
        }
    }
    Ok(())
}

/// `base/<digits>` or `pg_tblspc/<oid>/PG_<ver>_<cat>/<digits>`.
fn is_database_dir(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        ["base", db] => digits(db),
        ["pg_tblspc", oid, ver, db] => digits(oid) && ver.starts_with("PG_") && digits(db),
        _ => false,
    }
}

fn checksummed_dir(rel: &str) -> bool {
    rel == "global" || is_database_dir(rel)
}

/// `t<backend>_<relfilenode>...`: a temporary relation.
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let Some((backend, tail)) = rest.split_once('_') else {
        return false;
    };
    !backend.is_empty()
        && backend.bytes().all(|b| b.is_ascii_digit())
        && tail.starts_with(|c: char| c.is_ascii_digit())
}

/// A fork or segment of an unlogged relation other than its init fork.
fn is_unlogged_fork(name: &str, unlogged: &HashSet<&str>) -> bool {
    let base = name.split(['_', '.']).next().unwrap_or(name);
    unlogged.contains(base) && !name.ends_with("_init") && !name.contains("_init.")
}

/// The segment number of a relation file (`16384`, `16384.2`, `16384_fsm`), or `None` when
/// the name is not a relation file.
fn relation_segment(name: &str) -> Option<u32> {
    let (stem, seg) = match name.split_once('.') {
        Some((s, n)) => (s, n.parse().ok()?),
        None => (name, 0),
    };
    let node = stem.split('_').next()?;
    let fork_ok = match stem.split_once('_') {
        None => true,
        Some((_, fork)) => matches!(fork, "fsm" | "vm" | "init"),
    };
    (!node.is_empty() && node.bytes().all(|b| b.is_ascii_digit()) && fork_ok).then_some(seg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_matches_basebackup() {
        assert!(is_database_dir("base/5"));
        assert!(is_database_dir("pg_tblspc/16384/PG_15_202209061/5"));
        assert!(!is_database_dir("base"));
        assert!(!is_database_dir("global"));
        assert!(is_temp_relation("t3_16384"));
        assert!(is_temp_relation("t12_16384_fsm"));
        assert!(!is_temp_relation("16384"));
        assert!(!is_temp_relation("t_x"));
        assert_eq!(relation_segment("16384"), Some(0));
        assert_eq!(relation_segment("16384.3"), Some(3));
        assert_eq!(relation_segment("16384_vm"), Some(0));
        assert_eq!(relation_segment("pg_filenode.map"), None);
        assert_eq!(relation_segment("16384_xx"), None);
        let unlogged: HashSet<&str> = ["16399"].into_iter().collect();
        assert!(is_unlogged_fork("16399", &unlogged));
        assert!(is_unlogged_fork("16399.1", &unlogged));
        assert!(is_unlogged_fork("16399_fsm", &unlogged));
        assert!(!is_unlogged_fork("16399_init", &unlogged));
        assert!(!is_unlogged_fork("16400", &unlogged));
    }

    #[test]
    fn walk_applies_the_exclusions() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        for dir in [
            "base/5",
            "global",
            "pg_wal/archive_status",
            "pg_replslot/slot",
            "pg_stat_tmp",
            "pg_xact",
            "base/5/pgsql_tmp",
        ] {
            std::fs::create_dir_all(p.join(dir)).unwrap();
        }
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "backup_label",
            "global/pg_control",
            "global/1262",
            "global/pg_internal.init",
            "base/5/16384",
            "base/5/16399",
            "base/5/16399_init",
            "base/5/16399_fsm",
            "base/5/t3_16500",
            "base/5/pgsql_tmp/x",
            "pg_wal/000000010000000000000001",
            "pg_replslot/slot/state",
            "pg_stat_tmp/x.stat",
            "pg_xact/0000",
        ] {
            std::fs::write(p.join(f), b"x").unwrap();
        }
        let plan = plan(p).unwrap();
        let files: Vec<&str> = plan.files.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(
            files,
            [
                "PG_VERSION",
                "base/5/16384",
                "base/5/16399_init",
                "global/1262",
                "pg_xact/0000"
            ]
        );
        assert_eq!(plan.control.as_ref().unwrap().rel, "global/pg_control");
        let dirs: Vec<&str> = plan.dirs.iter().map(|d| d.0.as_str()).collect();
        for want in [
            "pg_wal",
            "pg_wal/archive_status",
            "pg_replslot",
            "pg_stat_tmp",
            "base/5",
        ] {
            assert!(dirs.contains(&want), "{want} missing from {dirs:?}");
        }
        assert!(!dirs.contains(&"pg_replslot/slot"));
        let base = plan.files.iter().find(|f| f.rel == "base/5/16384").unwrap();
        assert_eq!(base.checksum_base_block, Some(0));
        assert_eq!(
            plan.files
                .iter()
                .find(|f| f.rel == "PG_VERSION")
                .unwrap()
                .checksum_base_block,
            None
        );
    }
}
