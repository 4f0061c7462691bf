//! Throwaway PostgreSQL 15 clusters: `initdb`, start and stop on a unix socket in a scratch
//! directory, SQL through psql, pgbench, WAL switches and waiting for the archiver; a running
//! cluster archiving into a repository through our `wal-push`; and stopping the copies that
//! `restore --start` leaves running.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{
    as_postgres, give_to_postgres, run_ok, stderr, tail, RepoTarget, Scratch, TestConfig, BIN,
    PG_BIN,
};

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A throwaway PostgreSQL 15 cluster on a unix socket in its own directory.
pub struct PgCluster {
    pub pgdata: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    log: PathBuf,
    running: bool,
}

impl PgCluster {
    /// `initdb -k` into `dir/pgdata`; `conf` is appended to postgresql.conf.
    pub fn init(dir: &Path, conf: &str) -> Self {
        let pgdata = dir.join("pgdata");
        let socket_dir = dir.join("sock");
        std::fs::create_dir_all(&socket_dir).expect("mkdir sock");
        give_to_postgres(&socket_dir);
        run_ok(
            as_postgres(format!("{PG_BIN}/initdb"))
                .args(["-k", "-A", "trust", "-U", "postgres", "-D"])
                .arg(&pgdata),
        );
        let port = 25432
            + (std::process::id() % 1000) as u16 * 10
            + (NEXT_PORT.fetch_add(1, Ordering::SeqCst) % 10) as u16;
        let base = format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\nport = {port}\nwal_level = replica\nmax_wal_senders = 4\n\
             fsync = off\nsynchronous_commit = off\nshared_buffers = 32MB\nmax_connections = 30\n{conf}\n",
            socket_dir.display()
        );
        let conf_path = pgdata.join("postgresql.conf");
        let mut all = std::fs::read_to_string(&conf_path).expect("read conf");
        all.push_str(&base);
        std::fs::write(&conf_path, all).expect("write conf");
        PgCluster {
            log: dir.join("pg.log"),
            pgdata,
            socket_dir,
            port,
            running: false,
        }
    }

    /// A cluster over an existing data directory (e.g. a restored one).
    pub fn existing(dir: &Path, pgdata: &Path) -> Self {
        let socket_dir = dir.join("sock-restored");
        std::fs::create_dir_all(&socket_dir).expect("mkdir sock");
        give_to_postgres(&socket_dir);
        let port = 26432
            + (std::process::id() % 1000) as u16 * 10
            + (NEXT_PORT.fetch_add(1, Ordering::SeqCst) % 10) as u16;
        PgCluster {
            log: dir.join("pg-restored.log"),
            pgdata: pgdata.to_path_buf(),
            socket_dir,
            port,
            running: false,
        }
    }

    pub fn connection(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }

    pub fn start(&mut self) {
        let opts = format!(
            "-c port={} -c unix_socket_directories='{}' -c listen_addresses=''",
            self.port,
            self.socket_dir.display()
        );
        let out = as_postgres(format!("{PG_BIN}/pg_ctl"))
            .args(["-w", "-t", "120", "-D"])
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log)
            .args(["-o", &opts, "start"])
            .output()
            .expect("pg_ctl");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\nlog:\n{}",
                stderr(&out),
                self.log_text()
            );
        }
        self.running = true;
    }

    pub fn stop(&mut self) {
        if self.running {
            pg_ctl_stop(&self.pgdata, "fast");
            self.running = false;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run SQL through psql; returns trimmed unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        run_ok(
            as_postgres(format!("{PG_BIN}/psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
                .arg(&self.socket_dir)
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                    sql,
                ]),
        )
        .trim()
        .to_string()
    }

    pub fn pgbench(&self, args: &[&str]) {
        run_ok(&mut self.pgbench_command(args));
    }

    /// `pgbench ARGS postgres` against this cluster, as the `postgres` OS user, not yet run.
    pub fn pgbench_command(&self, args: &[&str]) -> Command {
        let mut c = as_postgres(format!("{PG_BIN}/pgbench"));
        c.arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(args)
            .arg("postgres");
        c
    }

    /// `now()` as RFC 3339 in UTC, microseconds.
    pub fn now_rfc3339(&self) -> String {
        self.psql(r#"select to_char(now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#)
    }

    /// Switch WAL and return the name of the segment that was just completed.
    pub fn switch_wal(&self) -> String {
        self.psql("select pg_walfile_name(pg_current_wal_lsn()) from (select pg_switch_wal()) s")
    }

    /// Wait for the current segment (with everything so far) to reach the archive.
    pub fn archive_everything(&self) {
        let seg = self.switch_wal();
        self.wait_archived(&seg, Duration::from_secs(120));
    }

    /// Wait until the archiver has archived `segment` (or later).
    pub fn wait_archived(&self, segment: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let last = self.psql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
            if last.len() >= 24 && last[..24] >= *segment {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "segment {segment} not archived after {timeout:?}; pg_stat_archiver: {}\nlog tail:\n{}",
                    self.psql("select * from pg_stat_archiver"),
                    tail(&self.log_text(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            pg_ctl_stop(&self.pgdata, "immediate");
        }
    }
}

/// A running cluster whose archive_command is our `wal-push`.
pub fn archiving_cluster(
    scratch: &Scratch,
    target: &RepoTarget,
    extra_conf: &str,
) -> (PgCluster, TestConfig) {
    archiving_cluster_with(scratch, target, extra_conf, "")
}

/// [`archiving_cluster`] whose config's `[repository]` also holds `repository_conf` (set
/// before the first WAL file is archived, e.g. a signing key).
pub fn archiving_cluster_with(
    scratch: &Scratch,
    target: &RepoTarget,
    extra_conf: &str,
    repository_conf: &str,
) -> (PgCluster, TestConfig) {
    let dir = scratch.path();
    // The config must exist before the cluster starts archiving; the connection needs the port,
    // which `init` picks, so write the config after init and before start.
    let mut pg = PgCluster::init(dir, "");
    let cfg = TestConfig::write(
        dir,
        target,
        "core",
        &pg.pgdata,
        &pg.connection(),
        &format!("{repository_conf}\n[archive]\npush_parallelism = 4\n"),
    );
    let conf = format!(
        "archive_mode = on\narchive_command = '{BIN} --config {} wal-push %p'\narchive_timeout = 0\nwal_keep_size = '2GB'\n{extra_conf}\n",
        cfg.path.display()
    );
    append_conf(&pg.pgdata, &conf);
    pg.start();
    (pg, cfg)
}

pub fn append_conf(pgdata: &Path, conf: &str) {
    let path = pgdata.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&path).expect("read conf");
    text.push_str(conf);
    std::fs::write(&path, text).expect("write conf");
}

/// `pg_ctl stop -w -m MODE` on `pgdata`, as the `postgres` OS user; its failure (no server
/// running there) is ignored.
pub fn pg_ctl_stop(pgdata: &Path, mode: &str) {
    let _ = as_postgres(format!("{PG_BIN}/pg_ctl"))
        .args(["-w", "-m", mode, "-D"])
        .arg(pgdata)
        .arg("stop")
        .output();
}

/// A server that `restore --start` starts in `pgdata`: stopped (immediately) when dropped, so
/// a failing test does not leave it running.
pub struct RestoredServer {
    pgdata: PathBuf,
}

impl RestoredServer {
    pub fn new(pgdata: &Path) -> Self {
        RestoredServer {
            pgdata: pgdata.to_path_buf(),
        }
    }

    /// Stop it now (fast shutdown).
    pub fn stop(&self) {
        pg_ctl_stop(&self.pgdata, "fast");
    }
}

impl Drop for RestoredServer {
    fn drop(&mut self) {
        if self.pgdata.join("postmaster.pid").exists() {
            pg_ctl_stop(&self.pgdata, "immediate");
        }
    }
}
