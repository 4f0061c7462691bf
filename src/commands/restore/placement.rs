//! Where each tablespace goes, decided from what the operator said and never from the manifest
//! alone (a forged manifest, or a legitimate backup restored on another host, can name any
//! directory), and the plan that names every directory the restore will write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{RestoreSettings, Unmapped};
use crate::error::usage;
use crate::repo::manifest::BackupManifest;
use crate::restore::layout::in_place_dir;
use crate::restore::Layout;

/// OID → directory for every tablespace of `backup`: `--tablespace-map`, else what
/// `settings.unmapped` says; refused (naming every unplaced tablespace) when it says nothing.
pub(super) fn place_tablespaces(
    backup: &BackupManifest,
    pgdata: &Path,
    settings: &RestoreSettings,
) -> anyhow::Result<BTreeMap<u32, PathBuf>> {
    let mut placed = settings.tablespace_map.clone();
    let mut unplaced = Vec::new();
    for ts in &backup.tablespaces {
        if placed.contains_key(&ts.oid) {
            continue;
        }
        match settings.unmapped {
            Unmapped::InTarget => {
                placed.insert(ts.oid, in_place_dir(pgdata, ts.oid));
            }
            Unmapped::Original => {
                placed.insert(ts.oid, PathBuf::from(&ts.location));
            }
            Unmapped::Refuse => unplaced.push(format!("tablespace {} ({})", ts.oid, ts.location)),
        }
    }
    if !unplaced.is_empty() {
        return Err(usage(format!(
            "backup {} has tablespaces outside the target {}, with no place given: {}; nothing was written. Say where each goes: \
             --tablespace-map OID=DIR (an absent or empty directory), --tablespaces-in-target (inside {}), or \
             --tablespaces-at-original-location (each location must be absent or empty)",
            backup.id,
            pgdata.display(),
            unplaced.join(", "),
            pgdata.display()
        )));
    }
    Ok(placed)
}

/// The plan, printed before anything is written: every directory the restore writes.
pub(super) fn print_plan(layout: &Layout, settings: &RestoreSettings, replaces: bool) {
    let what = if replaces {
        "the data directory; --force: its contents are removed first"
    } else {
        "the data directory"
    };
    eprintln!("will write: {} ({what})", layout.pgdata.display());
    for (oid, dir) in &layout.tablespaces {
        let why = if layout.is_in_place(*oid) {
            "inside the data directory, --tablespaces-in-target"
        } else if settings.tablespace_map.contains_key(oid) {
            "--tablespace-map"
        } else {
            "its original location, --tablespaces-at-original-location"
        };
        eprintln!("will write: {} (tablespace {oid}, {why})", dir.display());
    }
}
