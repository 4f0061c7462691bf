//! Proof, before anything is copied, that the server the backup session is on is the one
//! running on the configured `pgdata`. The system identifier alone does not prove it: a
//! primary and its standbys share it. So the data directory must also match the connected
//! server: its role (a server in recovery has `standby.signal` or `recovery.signal` there), and
//! the data directory and start time its postmaster wrote into `postmaster.pid`.

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::error::Failure;
use crate::pg::client::ServerInfo;
use crate::pg::datadir::{in_recovery, PostmasterPid};

/// `postmaster.pid` holds the postmaster's start time in whole seconds, taken before shared
/// memory is set up; `pg_postmaster_start_time()` is taken after it. Allow this much between.
const START_TIME_SLACK_SECONDS: i64 = 10;

/// The connected server, as the refusal messages name it.
pub struct Connected<'a> {
    pub endpoint: &'a str,
    pub server: &'a ServerInfo,
}

impl Connected<'_> {
    fn role(&self) -> &'static str {
        if self.server.in_recovery {
            "a standby"
        } else {
            "the primary"
        }
    }
}

/// Refuse (exit 4) unless the connected server runs on `pgdata`.
pub fn check_runs_on(pgdata: &Path, connected: &Connected<'_>) -> anyhow::Result<()> {
    let Some(pid) = PostmasterPid::read(pgdata)? else {
        return Err(Failure::Conflict(format!(
            "pgdata {} has no running PostgreSQL server (no postmaster.pid), but the backup is \
             connected to {} at {}: refusing to copy a data directory that is not the connected \
             server's. Point pgdata at the data directory of that server, or run the backup on \
             the host where pgdata's server runs",
            pgdata.display(),
            connected.role(),
            connected.endpoint
        ))
        .into());
    };
    let differences = differences(pgdata, &pid, connected.server);
    if differences.is_empty() {
        return Ok(());
    }
    Err(Failure::Conflict(format!(
        "connected to {} at {}, but pgdata {} belongs to another server ({}): refusing to copy. \
         Run the backup on that server's host, or set backup_from (\"primary\", \"standby\") so \
         that the connection reaches the server running on pgdata",
        connected.role(),
        connected.endpoint,
        pgdata.display(),
        differences.join("; ")
    ))
    .into())
}

/// Why the server of `pid` is not `server`; empty when nothing says so.
fn differences(pgdata: &Path, pid: &PostmasterPid, server: &ServerInfo) -> Vec<String> {
    let mut out = Vec::new();
    match (in_recovery(pgdata), server.in_recovery) {
        (false, true) => {
            out.push("pgdata's server is a primary, the connected one a standby".to_string())
        }
        (true, false) => {
            out.push("pgdata's server is a standby, the connected one a primary".to_string())
        }
        _ => {}
    }
    if pid.data_directory != Path::new(&server.data_directory) {
        out.push(format!(
            "pgdata's server runs on {}, the connected one on {}",
            pid.data_directory.display(),
            server.data_directory
        ));
    }
    let connected_start = server.postmaster_started.timestamp();
    let gap = connected_start - pid.started;
    if !(0..=START_TIME_SLACK_SECONDS).contains(&gap) {
        out.push(format!(
            "pgdata's server started at {}, the connected one at {}",
            utc(pid.started),
            utc(connected_start)
        ));
    }
    out
}

fn utc(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0).map_or_else(
        || secs.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::{SystemId, TimelineId};

    const PID: &str =
        "9551\n/tmp/pgm/d\n1796161902\n29999\n/tmp/pgm\n\n 10010648         4\nready   \n";

    fn server(in_recovery: bool, started: f64, data_directory: &str) -> ServerInfo {
        ServerInfo {
            system_id: SystemId(1),
            version_num: 150_000,
            wal_segment_size: 16 << 20,
            data_checksums: true,
            in_recovery,
            timeline: TimelineId(1),
            data_directory: data_directory.into(),
            postmaster_started: DateTime::from_timestamp_micros((started * 1e6) as i64).unwrap(),
        }
    }

    #[test]
    fn the_server_on_pgdata_matches() {
        let dir = tempfile::tempdir().unwrap();
        let pid = PostmasterPid::parse(PID).unwrap();
        // pg_postmaster_start_time() comes a little after the time in postmaster.pid.
        for started in [1_796_161_902.0, 1_796_161_902.17, 1_796_161_905.9] {
            let s = server(false, started, "/tmp/pgm/d");
            assert!(differences(dir.path(), &pid, &s).is_empty(), "{started}");
        }
        std::fs::write(dir.path().join("standby.signal"), b"").unwrap();
        let s = server(true, 1_796_161_902.5, "/tmp/pgm/d");
        assert!(differences(dir.path(), &pid, &s).is_empty());
    }

    #[test]
    fn another_server_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pid = PostmasterPid::parse(PID).unwrap();
        let d = "/tmp/pgm/d";
        let standby = differences(dir.path(), &pid, &server(true, 1_796_161_902.5, d));
        assert_eq!(
            standby,
            ["pgdata's server is a primary, the connected one a standby"]
        );
        let later = differences(dir.path(), &pid, &server(false, 1_796_161_990.0, d));
        assert_eq!(
            later,
            ["pgdata's server started at 2026-12-01 21:51:42 UTC, the connected one at 2026-12-01 21:53:10 UTC"]
        );
        let earlier = differences(dir.path(), &pid, &server(false, 1_796_161_901.9, d));
        assert_eq!(earlier.len(), 1, "{earlier:?}");
        let elsewhere = differences(dir.path(), &pid, &server(false, 1_796_161_902.0, "/srv/b"));
        assert_eq!(
            elsewhere,
            ["pgdata's server runs on /tmp/pgm/d, the connected one on /srv/b"]
        );
        std::fs::write(dir.path().join("recovery.signal"), b"").unwrap();
        let primary = differences(dir.path(), &pid, &server(false, 1_796_161_902.5, d));
        assert_eq!(
            primary,
            ["pgdata's server is a standby, the connected one a primary"]
        );
    }
}
