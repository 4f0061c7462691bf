//! Free space: refuse a restore that would fill a file system, before anything is written.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::anyhow;

use crate::format;
use crate::os;
use crate::pg::WalSegmentSize;
use crate::repo::manifest::BackupManifest;
use crate::restore::Layout;

/// Refuse when a file system lacks room for what goes on it (the backup's files, plus a
/// little WAL for recovery in the data directory). With `--force`, what will be removed counts
/// as free.
pub(super) fn check_disk_space(
    layout: &Layout,
    backup: &BackupManifest,
    force: bool,
    prefetch: usize,
    size: WalSegmentSize,
) -> anyhow::Result<()> {
    let wal = (prefetch as u64 + 4) * u64::from(size.bytes());
    let need = space_needed(layout, backup, wal);
    let roots: Vec<PathBuf> = need.keys().cloned().collect();
    let probes: Vec<PathBuf> = roots.iter().map(|r| os::nearest_existing(r)).collect();
    let mounts = match os::free_space(&probes) {
        Ok(mounts) => mounts,
        Err(why) => {
            eprintln!("warning: could not check free space ({why})");
            return Ok(());
        }
    };
    let per_root: Vec<RootSpace> = roots
        .iter()
        .zip(mounts)
        .map(|(root, (avail, mount))| RootSpace {
            mount,
            avail,
            freed: if force { os::dir_usage(root) } else { 0 },
            need: need[root],
        })
        .collect();
    space_shortfall(&per_root).map_or(Ok(()), |(mount, needed, avail)| {
        Err(anyhow!(
            "not enough free space on {mount}: backup {} needs {} there, {} is available",
            backup.id,
            format::human_bytes(needed),
            format::human_bytes(avail)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Sha256;
    use crate::repo::manifest::FileEntry;
    use crate::restore::layout::tests::manifest_with_tablespace;
    use std::path::Path;

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
                stored: Default::default(),
            });
        }
        let original = BTreeMap::from([(16385, PathBuf::from("/srv/ts1"))]);
        let layout = Layout::new(Path::new("/data/pgdata"), &m, &original).unwrap();
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
}
