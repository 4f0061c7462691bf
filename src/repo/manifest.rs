//! `backups/<id>/manifest.json`: everything about one base backup. Written last: a backup
//! without a manifest does not exist.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec::Sha256;
use crate::pg::{Lsn, SystemId, TimelineId};

pub const MANIFEST_FORMAT: u32 = 1;

/// `YYYYMMDDTHHMMSSZ`, the UTC start time, with `-N` (N ≥ 2) appended for the N-th backup
/// started in the same second. Ordered by time, then by N (not by the string, which would put
/// `…Z-10` before `…Z-9`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BackupId {
    text: String,
    time: DateTime<Utc>,
    /// 1 for the plain form, N for `-N`.
    seq: u32,
}

const ID_TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

impl BackupId {
    pub fn from_time(t: DateTime<Utc>) -> Self {
        let text = t.format(ID_TIME_FORMAT).to_string();
        text.parse().expect("a formatted time is a backup id")
    }

    /// The id after this one in the same second: `…Z-2`, `…Z-3`, …
    pub fn next(&self) -> Self {
        let seq = self.seq + 1;
        BackupId {
            text: format!("{}-{seq}", self.time.format(ID_TIME_FORMAT)),
            time: self.time,
            seq,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The start time the id names (to the second).
    pub fn time(&self) -> DateTime<Utc> {
        self.time
    }
}

impl Ord for BackupId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

impl PartialOrd for BackupId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for BackupId {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let bad = || anyhow::anyhow!("not a backup id: {s:?} (expected the form 20240101T020000Z)");
        let (time, seq) = match s.split_once('-') {
            None => (s, 1),
            // One spelling per id: no sign, no leading zero, no `-1`.
            Some((time, n)) if !n.starts_with(['0', '+']) => (
                time,
                n.parse::<u32>().ok().filter(|&n| n >= 2).ok_or_else(bad)?,
            ),
            Some(_) => return Err(bad()),
        };
        let time = chrono::NaiveDateTime::parse_from_str(time, ID_TIME_FORMAT)
            .map_err(|_| bad())?
            .and_utc();
        Ok(BackupId {
            text: s.to_string(),
            time,
            seq,
        })
    }
}

impl Serialize for BackupId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for BackupId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One file of the data directory, as stored in a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the data directory, `/`-separated; tablespace files are under `pg_tblspc/<oid>/`.
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub sha256: Sha256,
    /// Index into `parts` (meaningless when `stored` is `unchanged`).
    pub part: usize,
    /// How this backup stores the file: whole (every full; absent from the JSON), its
    /// changed blocks, or not at all (unchanged since the parent). `size` and `sha256` are
    /// always those of the whole file as restored.
    #[serde(default, skip_serializing_if = "Stored::is_whole")]
    pub stored: Stored,
}

/// How an incremental stores one file (README "Incremental format").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Stored {
    /// The whole file, as tar entry `<path>` of `part`.
    #[default]
    Whole,
    /// The blocks changed since the parent, as tar entry `<path>.blocks` of `part`; every
    /// other block (below `size`) comes from the parent's copy of the file.
    Blocks {
        /// How many blocks the entry holds.
        count: u32,
    },
    /// Identical to the parent's copy (which may itself be stored in its parent).
    Unchanged,
}

impl Stored {
    pub fn is_whole(&self) -> bool {
        matches!(self, Stored::Whole)
    }
}

/// The tar entry name of a file stored as changed blocks.
pub fn blocks_entry_name(path: &str) -> String {
    format!("{path}{BLOCKS_SUFFIX}")
}

/// Suffix of a [`Stored::Blocks`] file's tar entry.
pub const BLOCKS_SUFFIX: &str = ".blocks";

/// A directory or symlink that must exist in the restored data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub path: String,
    pub mode: u32,
}

/// One stored gzip'd tar object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartEntry {
    /// Key relative to the backup's directory, e.g. `data-00.tar.gz`.
    pub key: String,
    /// Stored (compressed) size and the SHA-256 of the stored bytes.
    pub size: u64,
    pub sha256: Sha256,
    /// Uncompressed bytes of file content in this part.
    pub original_size: u64,
}

/// A data page whose checksum did not match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageProblem {
    pub path: String,
    pub block: u32,
    pub expected: u16,
    pub found: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    pub location: String,
}

/// What a backup stores: every file whole, or (issue 15) only what changed since its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    #[default]
    Full,
    Incr,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incr => "incr",
        }
    }
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackupKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "full" => Ok(BackupKind::Full),
            "incr" => Ok(BackupKind::Incr),
            _ => anyhow::bail!("unknown backup type {s:?} (expected full or incr)"),
        }
    }
}

/// The backup an incremental was taken against: its id and the SHA-256 of its stored
/// manifest, so a replaced or damaged parent is detected rather than combined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    pub id: BackupId,
    pub manifest_sha256: Sha256,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format_version: u32,
    pub id: BackupId,
    pub cluster: String,
    /// `full` for manifests written before incrementals existed.
    #[serde(default)]
    pub kind: BackupKind,
    /// Set exactly when `kind` is `incr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    pub system_identifier: SystemId,
    pub pg_version: u32,
    pub pg_version_num: u32,
    pub wal_segment_size: u32,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// Where the backup was taken: "primary" or "standby".
    pub backup_from: String,
    pub data_checksums: bool,
    pub backup_label: String,
    pub tablespace_map: Option<String>,
    pub tablespaces: Vec<Tablespace>,
    pub parts: Vec<PartEntry>,
    pub files: Vec<FileEntry>,
    pub directories: Vec<DirEntry>,
    pub page_problems: Vec<PageProblem>,
    /// The catalog snapshot current when the backup ended (`<time>-<hash>` of a
    /// `catalog/` object, issue 16); absent when none could be taken, and in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_snapshot: Option<String>,
    /// The per-block digests of every relation file (README "Incremental format"): what the
    /// next incremental compares against. Not a tar part: restore never reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_map: Option<PartEntry>,
    /// The SHA-256 of the manifest's bytes as they were read from the repository (set by
    /// [`from_checked_json`], never stored): what a child's `parent.manifest_sha256` records.
    /// Hashing the stored bytes, not a re-serialisation, keeps a chain valid across versions
    /// of this program that spell the same manifest differently.
    #[serde(skip)]
    pub stored_sha256: Option<Sha256>,
}

impl BackupManifest {
    /// What a child's `parent.manifest_sha256` records: the SHA-256 of this manifest's
    /// stored bytes (its checked JSON, which ends with its own checksum). A manifest not read
    /// from a repository has no stored bytes yet: the JSON it would be stored as.
    pub fn fingerprint(&self) -> Sha256 {
        self.stored_sha256
            .unwrap_or_else(|| Sha256::of(&to_checked_json(self)))
    }

    /// Total bytes of file content (the "original size").
    pub fn original_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
    /// Total stored bytes (parts and block map).
    pub fn stored_size(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum::<u64>()
            + self.block_map.as_ref().map_or(0, |b| b.size)
    }
    pub fn duration_seconds(&self) -> f64 {
        (self.stop_time - self.start_time).num_milliseconds() as f64 / 1000.0
    }
}

const CHECKSUM_FIELD: &str = ",\n  \"manifest_checksum\": \"";

/// Pretty JSON whose last field is the SHA-256 of everything before it (like PostgreSQL's
/// `backup_manifest`), so the manifest verifies itself.
pub fn to_checked_json(m: &BackupManifest) -> Vec<u8> {
    let body = serde_json::to_string_pretty(m).expect("manifest serializes");
    let body = body
        .trim_end()
        .strip_suffix('}')
        .expect("a JSON object")
        .trim_end();
    let sum = Sha256::of(body.as_bytes());
    format!("{body}{CHECKSUM_FIELD}{sum}\"\n}}\n").into_bytes()
}

/// Parse a manifest and check its own checksum; errors name the object.
pub fn from_checked_json(bytes: &[u8], name: &str) -> anyhow::Result<BackupManifest> {
    use anyhow::Context;
    let text = std::str::from_utf8(bytes)
        .with_context(|| format!("{name}: corrupt manifest (not UTF-8)"))?;
    let at = text
        .rfind(CHECKSUM_FIELD)
        .with_context(|| format!("{name}: corrupt manifest (no manifest_checksum)"))?;
    let want: Sha256 = text[at + CHECKSUM_FIELD.len()..]
        .split('"')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("{name}: corrupt manifest checksum"))?;
    let got = Sha256::of(&bytes[..at]);
    if got != want {
        anyhow::bail!("{name}: corrupt manifest: SHA-256 {got} does not match its recorded {want}");
    }
    let mut m: BackupManifest =
        serde_json::from_str(text).with_context(|| format!("{name}: unreadable manifest"))?;
    m.stored_sha256 = Some(Sha256::of(bytes));
    Ok(m)
}

/// Reject manifest paths that could escape the data directory.
pub fn check_relative_path(path: &str) -> anyhow::Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || path.contains('\0');
    if bad {
        anyhow::bail!("unsafe path in backup manifest: {path:?} (absolute, empty or containing '..'); refusing to restore it");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn backup_id_sorts_by_time_and_validates() {
        let a = BackupId::from_time("2024-01-01T02:00:00Z".parse().unwrap());
        let b = BackupId::from_time("2024-01-02T01:00:00Z".parse().unwrap());
        assert_eq!(a.as_str(), "20240101T020000Z");
        assert!(a < b);
        assert!("20240101T020000Z".parse::<BackupId>().is_ok());
        for bad in ["", "x", "2024-01-01", "../20240101T020000Z"] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_of_one_second_get_a_counter_and_sort_by_value() {
        let a = BackupId::from_time("2024-01-01T02:00:00Z".parse().unwrap());
        let mut ids = vec![a.clone()];
        for _ in 0..10 {
            ids.push(ids.last().unwrap().next());
        }
        assert_eq!(ids[1].as_str(), "20240101T020000Z-2");
        assert_eq!(ids[10].as_str(), "20240101T020000Z-11");
        let later: BackupId = "20240101T020001Z".parse().unwrap();
        let earlier: BackupId = "20240101T015959Z".parse().unwrap();
        let mut shuffled: Vec<BackupId> = ids.iter().rev().cloned().collect();
        shuffled.push(later.clone());
        shuffled.insert(3, earlier.clone());
        shuffled.sort();
        let mut want = vec![earlier];
        want.extend(ids.iter().cloned());
        want.push(later);
        assert_eq!(shuffled, want);
        for id in &want {
            assert_eq!(&id.as_str().parse::<BackupId>().unwrap(), id);
        }
        assert_eq!(ids[4].time(), a.time());
        for bad in [
            "20240101T020000Z-1",
            "20240101T020000Z-02",
            "20240101T020000Z-",
            "20240101T020000Z-+3",
            "20240101T020000Z-x",
        ] {
            assert!(bad.parse::<BackupId>().is_err(), "{bad}");
        }
    }

    pub fn sample() -> BackupManifest {
        BackupManifest {
            format_version: MANIFEST_FORMAT,
            id: "20240101T020000Z".parse().unwrap(),
            cluster: "core".into(),
            kind: BackupKind::Full,
            parent: None,
            system_identifier: SystemId(7),
            pg_version: 15,
            pg_version_num: 150018,
            wal_segment_size: 16 << 20,
            timeline: TimelineId(1),
            start_lsn: Lsn(0x2000028),
            stop_lsn: Lsn(0x2000100),
            start_time: "2024-01-01T02:00:00Z".parse().unwrap(),
            stop_time: "2024-01-01T02:01:00Z".parse().unwrap(),
            backup_from: "primary".into(),
            data_checksums: true,
            backup_label: "START WAL LOCATION: 0/2000028\n".into(),
            tablespace_map: None,
            tablespaces: vec![],
            parts: vec![PartEntry {
                key: "data-00.tar.gz".into(),
                size: 10,
                sha256: Sha256::of(b"x"),
                original_size: 3,
            }],
            files: vec![FileEntry {
                path: "PG_VERSION".into(),
                size: 3,
                mode: 0o600,
                mtime: 0,
                sha256: Sha256::of(b"15\n"),
                part: 0,
                stored: Stored::Whole,
            }],
            directories: vec![DirEntry {
                path: "base".into(),
                mode: 0o700,
            }],
            page_problems: vec![],
            catalog_snapshot: None,
            block_map: None,
            stored_sha256: None,
        }
    }

    /// A manifest read back, without what only reading adds (the stored bytes' SHA-256).
    pub fn as_written(read: Option<BackupManifest>) -> Option<BackupManifest> {
        read.map(|mut m| {
            m.stored_sha256 = None;
            m
        })
    }

    /// `json` read back: it knows the SHA-256 of its stored bytes, and is otherwise `m`.
    fn read_back(json: &[u8]) -> BackupManifest {
        let mut read = from_checked_json(json, "m").unwrap();
        assert_eq!(read.stored_sha256, Some(Sha256::of(json)));
        assert_eq!(read.fingerprint(), Sha256::of(json));
        read.stored_sha256 = None;
        read
    }

    #[test]
    fn stored_kinds_round_trip_and_whole_is_implicit() {
        let mut m = sample();
        let json = String::from_utf8(to_checked_json(&m)).unwrap();
        assert!(!json.contains("\"stored\""), "{json}");
        m.files[0].stored = Stored::Blocks { count: 3 };
        m.files.push(FileEntry {
            path: "base/5/16384".into(),
            stored: Stored::Unchanged,
            ..m.files[0].clone()
        });
        let json = to_checked_json(&m);
        let text = String::from_utf8_lossy(&json);
        assert!(text.contains("\"kind\": \"blocks\""), "{text}");
        assert!(text.contains("\"kind\": \"unchanged\""), "{text}");
        assert_eq!(read_back(&json), m);
        assert_eq!(blocks_entry_name("base/5/1"), "base/5/1.blocks");
        assert_ne!(m.fingerprint(), sample().fingerprint());
    }

    /// A parent written by another version of this program (here: with a field this one
    /// does not know) is fingerprinted by its stored bytes, which its children recorded,
    /// not by how this version would spell it.
    #[test]
    fn the_fingerprint_is_of_the_stored_bytes() {
        let json = String::from_utf8(to_checked_json(&sample())).unwrap();
        let body = json.rsplit_once(CHECKSUM_FIELD).unwrap().0;
        let body = format!("{body},\n  \"written_by_a_later_version\": 1");
        let stored = format!(
            "{body}{CHECKSUM_FIELD}{}\"\n}}\n",
            Sha256::of(body.as_bytes())
        );
        let read = from_checked_json(stored.as_bytes(), "m").unwrap();
        assert_eq!(read.fingerprint(), Sha256::of(stored.as_bytes()));
        assert_ne!(read.fingerprint(), Sha256::of(&to_checked_json(&read)));
    }

    #[test]
    fn manifest_checks_itself() {
        let m = sample();
        let json = to_checked_json(&m);
        assert_eq!(read_back(&json), m);
        let mut bad = json.clone();
        let i = String::from_utf8_lossy(&bad).find("primary").unwrap();
        bad[i] = b'P';
        let err = from_checked_json(&bad, "x/manifest.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("x/manifest.json") && err.contains("corrupt"),
            "{err}"
        );
    }

    #[test]
    fn unsafe_paths_are_rejected() {
        for ok in [
            "base/1/1259",
            "global/pg_control",
            "pg_tblspc/16384/PG_15_x/5/1",
        ] {
            check_relative_path(ok).unwrap();
        }
        for bad in ["/etc/passwd", "../x", "base/../../x", "", "./x", "a/./b"] {
            assert!(check_relative_path(bad).is_err(), "{bad}");
        }
    }
}
