//! Files in a PostgreSQL data directory that are not data: `postmaster.pid`, the signal files,
//! `tablespace_map`, `global/pg_control`'s place, `pg_wal`, and what `pg_controldata` prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::WalSegmentName;

/// The cluster's control file; PostgreSQL will not start a directory without it.
pub const PG_CONTROL: &str = "global/pg_control";
/// Makes a server start as a standby (it takes precedence over `recovery.signal`).
pub const STANDBY_SIGNAL: &str = "standby.signal";
/// Makes a server run targeted recovery, then promote.
pub const RECOVERY_SIGNAL: &str = "recovery.signal";
pub const POSTMASTER_PID: &str = "postmaster.pid";

/// What a running postmaster writes into `postmaster.pid` (the lines used here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostmasterPid {
    /// The data directory as the server names it (its `data_directory` setting).
    pub data_directory: PathBuf,
    /// Unix seconds.
    pub started: i64,
}

impl PostmasterPid {
    /// Parse the file's text; `None` when the first three lines are not there.
    pub fn parse(text: &str) -> Option<PostmasterPid> {
        postmaster_pid(text)?;
        let lines: Vec<&str> = text.lines().collect();
        Some(PostmasterPid {
            data_directory: PathBuf::from(lines.get(1)?.trim()),
            started: lines.get(2)?.trim().parse().ok()?,
        })
    }

    /// `pgdata/postmaster.pid`, or `None` when there is none (no server running there).
    pub fn read(pgdata: &Path) -> anyhow::Result<Option<PostmasterPid>> {
        let path = pgdata.join(POSTMASTER_PID);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        PostmasterPid::parse(&text)
            .map(Some)
            .with_context(|| format!("{} is not a postmaster.pid file", path.display()))
    }
}

/// The pid on the first line of a `postmaster.pid` text (a standalone backend writes it
/// negated).
pub fn postmaster_pid(text: &str) -> Option<u32> {
    let first = text.lines().next()?.trim();
    let pid: i64 = first.parse().ok()?;
    u32::try_from(pid.unsigned_abs()).ok().filter(|p| *p > 0)
}

/// The pid in `dir/postmaster.pid` if that process is alive.
pub fn live_postmaster(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join(POSTMASTER_PID)).ok()?;
    let pid = postmaster_pid(&text)?;
    crate::os::process_alive(pid).then_some(pid)
}

/// Whether the server on `pgdata` was started as a standby (`standby.signal`).
pub fn has_standby_signal(pgdata: &Path) -> bool {
    pgdata.join(STANDBY_SIGNAL).exists()
}

/// Whether the server on `pgdata` is in recovery: it was started with `standby.signal` or
/// `recovery.signal`, which it removes when it is promoted. (`postmaster.pid` does not tell:
/// a hot standby reports `ready` there, as a primary does.)
pub fn in_recovery(pgdata: &Path) -> bool {
    [STANDBY_SIGNAL, RECOVERY_SIGNAL]
        .iter()
        .any(|f| pgdata.join(f).exists())
}

/// Appended to `postgresql.auto.conf` when tablespaces are restored in place
/// (`pg_tblspc/<oid>` a directory, not a link): without it PostgreSQL 15 refuses them at the
/// end of recovery ("unexpected directory entry … found in pg_tblspc/").
pub const IN_PLACE_TABLESPACES: &str =
    "# Tablespaces restored inside the data directory (pg_tblspc/<oid>)\n\
allow_in_place_tablespaces = on\n";

/// The mode a data directory file gets from the mode a manifest records: what PostgreSQL
/// itself creates, 0600, or 0640 in a cluster with group access (`initdb -g`). Never set-id,
/// sticky, executable or other-accessible, whatever the manifest says.
pub fn file_mode(recorded: u32) -> u32 {
    recorded & 0o040 | 0o600
}

/// As [`file_mode`] for directories: 0700, or 0750 with group access.
pub fn dir_mode(recorded: u32) -> u32 {
    if recorded & 0o050 == 0o050 {
        0o750
    } else {
        0o700
    }
}

/// `tablespace_map`: `<oid> <path>` lines; backslash and line breaks escaped as PostgreSQL reads them.
pub fn render_tablespace_map(tablespaces: &BTreeMap<u32, PathBuf>) -> String {
    let mut out = String::new();
    for (oid, dir) in tablespaces {
        let mut path = String::new();
        for c in dir.to_string_lossy().chars() {
            if matches!(c, '\\' | '\n' | '\r') {
                path.push('\\');
            }
            path.push(c);
        }
        out.push_str(&format!("{oid} {path}\n"));
    }
    out
}

/// The newest WAL segment in `pg_wal` (restored segments land there as replay proceeds).
pub fn newest_wal_segment(pgdata: &Path) -> Option<String> {
    std::fs::read_dir(pgdata.join("pg_wal"))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.parse::<WalSegmentName>().is_ok())
        .max()
}

/// The value of one `pg_controldata` output field (`max_connections setting:  100`).
pub fn controldata_value<'a>(controldata: &'a str, field: &str) -> Option<&'a str> {
    controldata.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == field).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postmaster_pid() {
        const PID: &str =
            "9551\n/tmp/pgm/d\n1796161902\n29999\n/tmp/pgm\n\n 10010648         4\nready   \n";
        let pid = PostmasterPid::parse(PID).unwrap();
        assert_eq!(pid.data_directory, PathBuf::from("/tmp/pgm/d"));
        assert_eq!(pid.started, 1_796_161_902);
        // Written in steps at start-up: the first lines are enough.
        assert_eq!(PostmasterPid::parse("12\n/d\n5\n").unwrap().started, 5);
        assert_eq!(PostmasterPid::parse("12\n/d\n"), None);
        assert_eq!(PostmasterPid::parse("x\n/d\n5\n"), None);

        assert_eq!(
            postmaster_pid("12345\n/var/lib/pg\n1700000000\n"),
            Some(12345)
        );
        assert_eq!(postmaster_pid("-77\n"), Some(77));
        assert_eq!(postmaster_pid(""), None);
        assert_eq!(postmaster_pid("garbage\n"), None);
        assert_eq!(postmaster_pid("0\n"), None);
    }

    #[test]
    fn modes_are_masked_to_what_postgres_uses() {
        assert_eq!(file_mode(0o6777), 0o640);
        assert_eq!(file_mode(0o600), 0o600);
        assert_eq!(file_mode(0o4755), 0o640);
        assert_eq!(file_mode(0o4707), 0o600);
        assert_eq!(file_mode(0), 0o600);
        assert_eq!(dir_mode(0o7777), 0o750);
        assert_eq!(dir_mode(0o700), 0o700);
        assert_eq!(dir_mode(0o1777), 0o750);
        assert_eq!(dir_mode(0o740), 0o700);
    }

    #[test]
    fn tablespace_map_escapes_like_postgres_reads_it() {
        let mut map = BTreeMap::new();
        map.insert(16385, PathBuf::from("/a b/c\\d"));
        map.insert(16384, PathBuf::from("/x"));
        assert_eq!(render_tablespace_map(&map), "16384 /x\n16385 /a b/c\\\\d\n");
    }

    #[test]
    fn controldata_fields() {
        let text = "max_connections setting:              200\nwal_level setting: replica\n";
        assert_eq!(
            controldata_value(text, "max_connections setting"),
            Some("200")
        );
        assert_eq!(controldata_value(text, "max_wal_senders setting"), None);
    }
}
