//! Streaming replication for the integration tests: a standby of a running test cluster
//! (`pg_basebackup -R` over the primary's unix socket, as the `postgres` OS user), waiting for
//! replay to catch up, promotion, and multi-host connection strings.
//!
//! Shared by the standby-backup and failover tests: keep these signatures stable.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{append_conf, as_postgres, give_to_postgres, run_ok, tail, PgCluster, PG_BIN};

/// How long a standby may take to start streaming or to catch up.
pub const REPLICATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Create and start a streaming standby of `primary` in `dir` (its data directory is
/// `dir/pgdata`, its socket directory and log are in `dir`).
///
/// `pg_basebackup -R` copies the primary's `postgresql.conf` (archive settings included: with
/// `archive_mode = on` a standby does not archive) and writes `standby.signal` and a
/// `primary_conninfo` that reaches the primary over its unix socket. `extra_conf` is appended
/// to the standby's `postgresql.conf` (e.g. `archive_mode = always`). Returns once the standby
/// is in recovery and its WAL receiver is streaming.
pub fn start_standby(dir: &Path, primary: &PgCluster, extra_conf: &str) -> PgCluster {
    std::fs::create_dir_all(dir).expect("mkdir standby dir");
    give_to_postgres(dir);
    let pgdata = dir.join("pgdata");
    run_ok(
        as_postgres(format!("{PG_BIN}/pg_basebackup"))
            .arg("-h")
            .arg(&primary.socket_dir)
            .args(["-p", &primary.port.to_string(), "-U", "postgres"])
            .args(["-X", "stream", "-c", "fast", "-R", "-D"])
            .arg(&pgdata),
    );
    append_conf(&pgdata, &format!("\nhot_standby = on\n{extra_conf}\n"));
    let mut standby = PgCluster::existing(dir, &pgdata);
    standby.start();
    wait_streaming(&standby);
    standby
}

/// Wait until `standby` is in recovery and its WAL receiver streams.
pub fn wait_streaming(standby: &PgCluster) {
    wait_for(
        standby,
        "the standby to stream from its primary",
        "select pg_is_in_recovery() and exists (select 1 from pg_stat_wal_receiver where status = 'streaming')",
    );
}

/// Wait until `standby` has replayed everything `primary` has inserted so far. The insert
/// position, not the write position: with `synchronous_commit = off` (the harness's setting) a
/// commit can still be unwritten when the caller moves on.
pub fn wait_replayed(primary: &PgCluster, standby: &PgCluster) {
    let lsn = primary.psql("select pg_current_wal_insert_lsn()");
    wait_for(
        standby,
        &format!("the standby to replay up to {lsn}"),
        &format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"),
    );
}

/// Promote `standby` (`pg_ctl promote -w`) and wait until it accepts writes.
pub fn promote(standby: &PgCluster) {
    run_ok(
        as_postgres(format!("{PG_BIN}/pg_ctl"))
            .args(["-w", "-t", "120", "-D"])
            .arg(&standby.pgdata)
            .arg("promote"),
    );
    wait_for(
        standby,
        "the promoted standby to leave recovery",
        "select not pg_is_in_recovery()",
    );
}

/// A libpq connection string listing every node, in the order given:
/// `host=/sockA,/sockB port=pA,pB user=postgres dbname=postgres`. Append
/// `target_session_attrs=…` as needed.
pub fn multi_host_connection(nodes: &[&PgCluster]) -> String {
    let hosts: Vec<String> = nodes
        .iter()
        .map(|n| n.socket_dir.display().to_string())
        .collect();
    let ports: Vec<String> = nodes.iter().map(|n| n.port.to_string()).collect();
    format!(
        "host={} port={} user=postgres dbname=postgres",
        hosts.join(","),
        ports.join(",")
    )
}

/// Poll `sql` (which returns one boolean) on `node` until it is true.
fn wait_for(node: &PgCluster, what: &str, sql: &str) {
    let start = Instant::now();
    loop {
        if node.psql(sql) == "t" {
            return;
        }
        if start.elapsed() > REPLICATION_TIMEOUT {
            panic!(
                "timed out after {REPLICATION_TIMEOUT:?} waiting for {what}\nlog tail:\n{}",
                tail(&node.log_text(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
