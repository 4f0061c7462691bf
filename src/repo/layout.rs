//! The only place repository keys are formatted. Keys are relative to one cluster's prefix
//! (`<store prefix>/<cluster>/`). Changing any of them breaks existing repositories: bump
//! `FORMAT_VERSION` first.

use crate::pg::WalFileName;

pub(super) const FORMAT_VERSION: u32 = 1;
pub(super) const REPOSITORY_INFO: &str = "repository.json";
/// The sealed keyring of an encrypted repository: an age file to the operator recipients
/// whose plaintext is an age identity file (see `crypt`).
pub(super) const KEYRING: &str = "keyring.age";
pub(super) const WAL_DIR: &str = "wal";
pub(super) const BACKUPS_DIR: &str = "backups";
/// The newest segment `wal-push` archived for PostgreSQL's archiver (see
/// `Repository::record_pushed`).
pub(super) const ARCHIVER_POSITION: &str = "archiver-position.json";

/// `wal/<first 16 hex>/<segment>.gz`, `wal/<tli>.history.gz`.
pub(super) fn wal_key(name: &WalFileName) -> String {
    match name {
        WalFileName::History(tli) => format!("{WAL_DIR}/{tli}.history.gz"),
        other => {
            let seg = other
                .segment()
                .expect("non-history WAL names have a segment");
            format!("{WAL_DIR}/{}/{other}.gz", seg.log_dir())
        }
    }
}

/// Parse a key under `wal/` back to the file name it stores.
pub(super) fn wal_name_from_key(key: &str) -> Option<WalFileName> {
    let file = key.rsplit('/').next()?.strip_suffix(".gz")?;
    let name: WalFileName = file.parse().ok()?;
    (wal_key(&name) == key).then_some(name)
}

/// Prefix listing every WAL object of a timeline's log dir, or all WAL.
pub(super) fn wal_prefix() -> &'static str {
    WAL_DIR
}

/// Whether a key names a data object (encrypted in an encrypted repository), as opposed to
/// the plaintext bookkeeping objects (`repository.json`, the keyring, the lock, the archiver
/// position, probes).
pub(super) fn holds_data(key: &str) -> bool {
    [WAL_DIR, BACKUPS_DIR, CONFLICTS_DIR, EVENTS_DIR, CATALOG_DIR]
        .iter()
        .any(|dir| {
            key.strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// Where a refused WAL file is kept (`conflicts/<name>.<sha256>.gz`): the content a second
/// server tried to archive under a name that already holds different content.
pub(super) const CONFLICTS_DIR: &str = "conflicts";

pub(super) fn conflict_key(name: &WalFileName, sha256: &crate::codec::Sha256) -> String {
    format!("{CONFLICTS_DIR}/{name}.{sha256}.gz")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        let cases = [
            (
                "000000010000000A000000FF",
                "wal/000000010000000A/000000010000000A000000FF.gz",
            ),
            ("00000002.history", "wal/00000002.history.gz"),
            (
                "000000020000000000000003.partial",
                "wal/0000000200000000/000000020000000000000003.partial.gz",
            ),
            (
                "000000010000000000000002.00000028.backup",
                "wal/0000000100000000/000000010000000000000002.00000028.backup.gz",
            ),
        ];
        for (name, key) in cases {
            let n: WalFileName = name.parse().unwrap();
            assert_eq!(wal_key(&n), key);
            assert_eq!(wal_name_from_key(key), Some(n));
        }
        assert_eq!(wal_name_from_key("wal/x/000000010000000A000000FF.gz"), None);
        assert_eq!(wal_name_from_key(REPOSITORY_INFO), None);
    }
}

use super::manifest::BackupId;

pub(super) fn backup_dir(id: &BackupId) -> String {
    backup_dir_named(id.as_str())
}

/// A backup directory by name (a leftover's name need not be a valid id).
pub(super) fn backup_dir_named(name: &str) -> String {
    format!("{BACKUPS_DIR}/{name}")
}

pub(super) fn manifest_key(id: &BackupId) -> String {
    format!("{BACKUPS_DIR}/{id}/manifest.json")
}

/// A part of a backup, `key` as recorded in the manifest.
pub(super) fn part_key(id: &BackupId, key: &str) -> String {
    format!("{BACKUPS_DIR}/{id}/{key}")
}

pub(super) fn data_part_name(index: usize) -> String {
    format!("data-{index:02}.tar.gz")
}

/// The block digests of a backup's relation files (`repo::blockmap`), beside its parts.
pub(super) const BLOCK_MAP: &str = "blockmap.gz";

/// The last part: backup_label, tablespace_map and global/pg_control, written after the stop call.
pub(super) const CONTROL_PART: &str = "control.tar.gz";

pub(super) fn verify_report_key(id: &BackupId, time: &str) -> String {
    format!("{BACKUPS_DIR}/{id}/verify/{time}.json")
}

/// Prefix of a backup's verification reports.
pub(super) fn verify_dir(id: &BackupId) -> String {
    format!("{BACKUPS_DIR}/{id}/verify")
}

/// A key under `backups/`, taken apart.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BackupKey<'a> {
    /// `backups/<dir>/manifest.json`.
    Manifest { dir: &'a str },
    /// `backups/<dir>/verify/<name>.json`: `name` is the report's time.
    Report { dir: &'a str, name: &'a str },
    /// Anything else under `backups/<dir>/` (a part).
    Other { dir: &'a str },
}

/// Parse a key under `backups/`; `None` for keys elsewhere.
pub(super) fn parse_backup_key(key: &str) -> Option<BackupKey<'_>> {
    let rest = key.strip_prefix(BACKUPS_DIR)?.strip_prefix('/')?;
    let (dir, file) = rest.split_once('/')?;
    Some(match file.split('/').collect::<Vec<_>>()[..] {
        ["manifest.json"] => BackupKey::Manifest { dir },
        ["verify", name] if name.ends_with(".json") => BackupKey::Report {
            dir,
            name: name.strip_suffix(".json").expect("checked"),
        },
        _ => BackupKey::Other { dir },
    })
}

/// Where `check` writes its probe objects.
pub(super) fn probe_key(name: &str) -> String {
    format!("check/{name}")
}

pub(super) const LOCK_KEY: &str = "lock.json";

#[cfg(test)]
mod backup_layout_tests {
    use super::*;

    #[test]
    fn backup_layout_is_stable() {
        let id: BackupId = "20240101T020000Z".parse().unwrap();
        assert_eq!(manifest_key(&id), "backups/20240101T020000Z/manifest.json");
        assert_eq!(
            part_key(&id, &data_part_name(3)),
            "backups/20240101T020000Z/data-03.tar.gz"
        );
        assert_eq!(
            verify_report_key(&id, "20240101T030000Z"),
            "backups/20240101T020000Z/verify/20240101T030000Z.json"
        );
        assert_eq!(
            parse_backup_key("backups/20240101T020000Z/manifest.json"),
            Some(BackupKey::Manifest {
                dir: "20240101T020000Z"
            })
        );
        assert_eq!(
            parse_backup_key("backups/20240101T020000Z-2/verify/20240101T030000Z.json"),
            Some(BackupKey::Report {
                dir: "20240101T020000Z-2",
                name: "20240101T030000Z"
            })
        );
        assert_eq!(
            parse_backup_key("backups/x/data-00.tar.gz"),
            Some(BackupKey::Other { dir: "x" })
        );
        assert_eq!(parse_backup_key("wal/00000002.history.gz"), None);
    }
}

/// Per-segment WAL event indexes (issue 16): `events/<first 16 hex>/<segment>.json`.
pub(super) const EVENTS_DIR: &str = "events";

pub(super) fn events_key(seg: &crate::pg::WalSegmentName) -> String {
    format!("{EVENTS_DIR}/{}/{seg}.json", seg.log_dir())
}

/// Parse a key under `events/` back to its segment.
pub(super) fn events_segment_from_key(key: &str) -> Option<crate::pg::WalSegmentName> {
    let file = key.rsplit('/').next()?.strip_suffix(".json")?;
    let seg: crate::pg::WalSegmentName = file.parse().ok()?;
    (events_key(&seg) == key).then_some(seg)
}

/// Catalog snapshots (issue 16): `catalog/<YYYYMMDDTHHMMSSZ>-<content hash prefix>.json`.
pub(super) const CATALOG_DIR: &str = "catalog";

pub(super) fn catalog_key(time: &str, hash: &str) -> String {
    format!("{CATALOG_DIR}/{time}-{hash}.json")
}

/// A catalog snapshot's name, `<time>-<hash>`, from its key (what a manifest records).
pub(super) fn catalog_name_from_key(key: &str) -> Option<&str> {
    key.strip_prefix(CATALOG_DIR)?
        .strip_prefix('/')?
        .strip_suffix(".json")
}

#[cfg(test)]
mod events_layout_tests {
    use super::*;

    #[test]
    fn events_layout_is_stable() {
        let seg: crate::pg::WalSegmentName = "000000010000000A000000FF".parse().unwrap();
        let key = events_key(&seg);
        assert_eq!(key, "events/000000010000000A/000000010000000A000000FF.json");
        assert_eq!(events_segment_from_key(&key), Some(seg));
        assert_eq!(
            events_segment_from_key("events/x/000000010000000A000000FF.json"),
            None
        );
        assert_eq!(
            catalog_key("20240101T020000Z", "abcd"),
            "catalog/20240101T020000Z-abcd.json"
        );
        assert_eq!(
            catalog_name_from_key("catalog/20240101T020000Z-abcd.json"),
            Some("20240101T020000Z-abcd")
        );
        assert_eq!(catalog_name_from_key("events/x.json"), None);
    }
}
