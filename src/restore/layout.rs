//! Where each backup path goes on disk: the data directory, or a tablespace's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

use crate::error::usage;
use crate::repo::manifest::{check_relative_path, BackupManifest};

/// Maps backup paths (relative to the data directory, as in the manifest and the parts) to
/// places on disk. Tablespace files (`pg_tblspc/<oid>/…`) go into the tablespace's directory
/// by rewriting the prefix, never by following the link.
#[derive(Debug, Clone)]
pub struct Layout {
    pub pgdata: PathBuf,
    pub tablespaces: BTreeMap<u32, PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// A place on disk.
    Path(PathBuf),
    /// `pg_tblspc/<oid>` itself: the link we create.
    TablespaceLink(u32),
}

impl Layout {
    /// `relocations` must place every tablespace of the backup: the manifest's location is
    /// never used unless the caller chose it (a forged or foreign manifest names any
    /// directory). A place of `<pgdata>/pg_tblspc/<oid>` is an in-place tablespace.
    pub fn new(
        pgdata: &Path,
        backup: &BackupManifest,
        relocations: &BTreeMap<u32, PathBuf>,
    ) -> anyhow::Result<Self> {
        if let Some(oid) = relocations
            .keys()
            .find(|o| !backup.tablespaces.iter().any(|t| t.oid == **o))
        {
            let known: Vec<String> = backup
                .tablespaces
                .iter()
                .map(|t| t.oid.to_string())
                .collect();
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
        let mut tablespaces = BTreeMap::new();
        for ts in &backup.tablespaces {
            let dir = relocations.get(&ts.oid).cloned().ok_or_else(|| {
                usage(format!(
                    "tablespace {} ({}) has no place to be restored: give --tablespace-map {}=DIR",
                    ts.oid, ts.location, ts.oid
                ))
            })?;
            if !dir.is_absolute() {
                bail!(
                    "tablespace {} would be restored into the relative path {}",
                    ts.oid,
                    dir.display()
                );
            }
            tablespaces.insert(ts.oid, dir);
        }
        let dirs: Vec<&PathBuf> = tablespaces.values().collect();
        let in_place: Vec<PathBuf> = tablespaces
            .keys()
            .map(|oid| in_place_dir(pgdata, *oid))
            .collect();
        for (i, a) in dirs.iter().enumerate() {
            if (a.starts_with(pgdata) && !in_place.contains(a)) || pgdata.starts_with(a) {
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

    /// Whether tablespace `oid` is restored in place (a directory in `pg_tblspc`, no link).
    pub fn is_in_place(&self, oid: u32) -> bool {
        self.tablespaces.get(&oid) == Some(&in_place_dir(&self.pgdata, oid))
    }

    /// The tablespaces that are links to directories outside the data directory, for
    /// `tablespace_map` (PostgreSQL removes what `pg_tblspc/<oid>` holds for each entry).
    pub fn linked_tablespaces(&self) -> BTreeMap<u32, PathBuf> {
        self.tablespaces
            .iter()
            .filter(|(oid, _)| !self.is_in_place(**oid))
            .map(|(oid, dir)| (*oid, dir.clone()))
            .collect()
    }

    /// Where a backup path goes. Rejects unsafe paths and unknown tablespaces.
    pub fn dest(&self, rel: &str) -> anyhow::Result<Dest> {
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
    pub fn root_of(&self, rel: &str) -> &Path {
        self.split_root(rel).0
    }

    /// (root directory, the backup-path prefix it stands for, the rest of the path).
    pub fn split_root<'a>(&self, rel: &'a str) -> (&Path, String, &'a str) {
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
    pub fn check_manifest(&self, backup: &BackupManifest) -> anyhow::Result<()> {
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

/// `<pgdata>/pg_tblspc/<oid>`: where `--tablespaces-in-target` puts a tablespace.
pub fn in_place_dir(pgdata: &Path, oid: u32) -> PathBuf {
    pgdata.join("pg_tblspc").join(oid.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pg::datadir::render_tablespace_map;
    use crate::pg::TimelineId;
    use crate::repo::manifest::{BackupKind, Tablespace, MANIFEST_FORMAT};
    use crate::settings::parse_tablespace_map;

    pub(crate) fn manifest_with_tablespace() -> BackupManifest {
        BackupManifest {
            format_version: MANIFEST_FORMAT,
            id: "20240101T020000Z".parse().unwrap(),
            cluster: "core".into(),
            kind: BackupKind::Full,
            parent: None,
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
            catalog_snapshot: None,
            block_map: None,
            stored_sha256: None,
        }
    }

    #[test]
    fn paths_map_into_the_data_directory_and_tablespaces() {
        let m = manifest_with_tablespace();
        // The manifest's location is used only when the caller places the tablespace there.
        let err = Layout::new(Path::new("/restore/pgdata"), &m, &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string().contains("tablespace 16385 (/srv/ts1)"),
            "{err}"
        );
        let original = parse_tablespace_map(&["16385=/srv/ts1".into()]).unwrap();
        let layout = Layout::new(Path::new("/restore/pgdata"), &m, &original).unwrap();
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
        // In place: pg_tblspc/<oid> itself, no link and no tablespace_map line.
        let pgdata = Path::new("/restore/pgdata");
        let in_place = BTreeMap::from([(16385, in_place_dir(pgdata, 16385))]);
        let layout = Layout::new(pgdata, &m, &in_place).unwrap();
        assert!(layout.is_in_place(16385));
        assert!(layout.linked_tablespaces().is_empty());
        assert_eq!(
            layout.dest("pg_tblspc/16385/PG_15_x/5/1").unwrap(),
            Dest::Path("/restore/pgdata/pg_tblspc/16385/PG_15_x/5/1".into())
        );
        for bad in ["16385", "x=/a", "16385=relative", "=/a"] {
            assert!(parse_tablespace_map(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse_tablespace_map(&["1=/a".into(), "1=/b".into()]).is_err());
    }
}
