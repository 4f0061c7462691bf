//! What the tests write into a cluster: pgbench load running in the background while a backup
//! is taken, the `status` table whose markers a restored copy is read back by (pgBackRest's
//! status-table markers), and target times with commits clearly on either side.

use std::process::{Child, Stdio};
use std::time::Duration;

use super::PgCluster;

/// `pgbench -c 2 -T SECONDS -n` writing into a cluster in the background (its output
/// discarded). Killed when dropped, should a test end while it still runs.
pub struct BackgroundLoad {
    child: Option<Child>,
}

impl BackgroundLoad {
    /// Start the load and give it two seconds to get going: what the caller does next runs
    /// under load.
    pub fn start(pg: &PgCluster, seconds: u32) -> Self {
        let child = pg
            .pgbench_command(&["-c", "2", "-T", &seconds.to_string(), "-n"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbench");
        std::thread::sleep(Duration::from_secs(2));
        BackgroundLoad { child: Some(child) }
    }

    /// Let the load run to its end.
    pub fn wait(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// End the load now.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for BackgroundLoad {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `create table status(message text)` with one row saying `message`.
pub fn create_status(pg: &PgCluster, message: &str) {
    pg.psql(&format!(
        "create table status(message text); insert into status values ('{message}')"
    ));
}

/// Tablespace `ts1` in `dir` holding table `in_ts` with the row 'in tablespace'; its OID.
pub fn create_tablespace(pg: &PgCluster, dir: &std::path::Path) -> String {
    pg.psql(&format!(
        "create tablespace ts1 location '{}'",
        dir.display()
    ));
    pg.psql(
        "create table in_ts(v text) tablespace ts1; insert into in_ts values ('in tablespace')",
    );
    pg.psql("select oid from pg_tablespace where spcname = 'ts1'")
}

/// Set the one-row `status` table (see [`create_status`]) to `message`.
pub fn set_marker(pg: &PgCluster, message: &str) {
    pg.psql(&format!("update status set message = '{message}'"));
}

/// Add the row `marker` to a `status` table that collects markers (one row each).
pub fn add_marker(pg: &PgCluster, marker: &str) {
    pg.psql(&format!("insert into status values ('{marker}')"));
}

/// `now()` as RFC 3339 in UTC, after `pause`, then another `pause`: a target time with commits
/// clearly on either side.
pub fn target_time(pg: &PgCluster, pause: Duration) -> String {
    std::thread::sleep(pause);
    let t = pg.now_rfc3339();
    std::thread::sleep(pause);
    t
}
