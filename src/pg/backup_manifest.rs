//! PostgreSQL's own `backup_manifest` (version 1), written into a restored data directory so
//! that `pg_verifybackup` can check it before the server is started.
//!
//! The layout is byte for byte what `pg_basebackup` writes (backup_manifest.c; pg-reference
//! §9.1), because the parser is strict (§9.2): the version key first, only the known keys,
//! every file object on its own line, `Manifest-Checksum` alone on the last line, which ends
//! with a newline, and the checksum is the SHA-256 of everything before that line. We use
//! `SHA256` file checksums: our manifests already hold them, so no file is read twice.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::codec::Sha256;
use crate::pg::{Lsn, TimelineId};

/// One regular file of the backup, path relative to the data directory with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub path: String,
    pub size: u64,
    pub modified: DateTime<Utc>,
    pub sha256: Sha256,
}

/// The WAL a backup needs on one timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalRange {
    pub timeline: TimelineId,
    pub start: Lsn,
    pub end: Lsn,
}

/// Render the manifest. Files are written sorted by path; WAL ranges as given (newest
/// timeline first, as PostgreSQL writes them).
pub fn render(files: &[ManifestFile], wal_ranges: &[WalRange]) -> Vec<u8> {
    let mut sorted: Vec<&ManifestFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));

    let mut out = String::with_capacity(200 + files.len() * 180);
    out.push_str("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
    for (i, f) in sorted.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        out.push_str("{ \"Path\": ");
        escape_json(&mut out, &f.path);
        let _ = write!(
            out,
            ", \"Size\": {}, \"Last-Modified\": \"{}\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"{}\" }}",
            f.size,
            f.modified.format("%Y-%m-%d %H:%M:%S GMT"),
            f.sha256
        );
    }
    out.push_str("\n],\n\"WAL-Ranges\": [");
    for (i, r) in wal_ranges.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let _ = write!(
            out,
            "{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}",
            r.timeline.0, r.start, r.end
        );
    }
    out.push_str("\n],\n");
    let checksum = Sha256::of(out.as_bytes());
    let _ = writeln!(out, "\"Manifest-Checksum\": \"{checksum}\"}}");
    out.into_bytes()
}

/// JSON string escaping as PostgreSQL's `escape_json` does it.
fn escape_json(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8]) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            size: content.len() as u64,
            modified: "2026-11-24T21:36:22Z".parse().unwrap(),
            sha256: Sha256::of(content),
        }
    }

    #[test]
    fn layout_matches_pg_basebackup() {
        let files = [file("PG_VERSION", b"15\n"), file("backup_label", b"x")];
        let ranges = [WalRange {
            timeline: TimelineId(1),
            start: "0/4000028".parse().unwrap(),
            end: "0/4000100".parse().unwrap(),
        }];
        let text = String::from_utf8(render(&files, &ranges)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "{ \"PostgreSQL-Backup-Manifest-Version\": 1,");
        assert_eq!(lines[1], "\"Files\": [");
        assert_eq!(
            lines[2],
            format!(
                "{{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Last-Modified\": \"2026-11-24 21:36:22 GMT\", \
                 \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"{}\" }},",
                Sha256::of(b"15\n")
            )
        );
        assert!(lines[3].starts_with("{ \"Path\": \"backup_label\", \"Size\": 1, "));
        assert!(lines[3].ends_with("\" }"));
        assert_eq!(lines[4], "],");
        assert_eq!(lines[5], "\"WAL-Ranges\": [");
        assert_eq!(
            lines[6],
            "{ \"Timeline\": 1, \"Start-LSN\": \"0/4000028\", \"End-LSN\": \"0/4000100\" }"
        );
        assert_eq!(lines[7], "],");
        assert!(lines[8].starts_with("\"Manifest-Checksum\": \""));
        assert_eq!(lines.len(), 9);
        assert!(text.ends_with("\"}\n"));

        // The checksum covers everything up to and including the newline before its line.
        let at = text.find("\"Manifest-Checksum\"").unwrap();
        let want = Sha256::of(&text.as_bytes()[..at]).to_string();
        assert_eq!(lines[8], format!("\"Manifest-Checksum\": \"{want}\"}}"));

        // And it is JSON.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["PostgreSQL-Backup-Manifest-Version"], 1);
        assert_eq!(v["Files"].as_array().unwrap().len(), 2);
        assert_eq!(v["WAL-Ranges"][0]["Timeline"], 1);
    }

    #[test]
    fn files_are_sorted_and_paths_escaped() {
        let files = [
            file("pg_tblspc/16385/PG_15_202209061/5/16386", b""),
            file("base/1/1259", b"a"),
            file("odd\"name\\x\n", b""),
        ];
        let text = String::from_utf8(render(&files, &[])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let paths: Vec<&str> = v["Files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["Path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "base/1/1259",
                "odd\"name\\x\n",
                "pg_tblspc/16385/PG_15_202209061/5/16386"
            ]
        );
        assert!(text.contains(r#""odd\"name\\x\n""#));
        // An empty WAL range list still has the brackets on their own lines.
        assert!(text.contains("\"WAL-Ranges\": [\n],\n"));
    }
}
