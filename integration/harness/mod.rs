//! Real services for the integration tests: PostgreSQL 15 clusters that the tests `initdb`,
//! an S3-compatible server (SeaweedFS) on 127.0.0.1, and the real binary.
//!
//! Services are never skipped silently: a missing PostgreSQL or S3 server fails the test with
//! the package to install, unless `SYNAPSE_SKIP_INTEGRATION=1` is set (then the skip is printed).
//!
//! This file holds the plumbing every test uses (skipping, the `postgres` OS user, scratch
//! directories, config files, running the binary). The rest is split by what it serves:
//! - [`cluster`]: throwaway clusters, archiving into a repository, stopping restored copies;
//! - [`repo`]: the repository of a test config, backups taken as the agent takes them;
//! - [`load`]: what the tests write: background pgbench load, status-table markers, targets;
//! - [`s3`]: the shared S3 server and private ones a test may stop;
//! - [`replica`]: streaming standbys, promotion, multi-host connection strings.

pub mod cluster;
pub mod kill;
pub mod load;
pub mod replica;
pub mod repo;
pub mod s3;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use cluster::{
    append_conf, archiving_cluster, archiving_cluster_with, pg_ctl_stop, PgCluster, RestoredServer,
};
pub use load::{
    add_marker, create_status, create_tablespace, set_marker, target_time, BackgroundLoad,
};
pub use repo::{
    assert_no_wal_below, backup, backup_id, backup_ids, backup_incr, backup_output,
    backup_output_with, repository, repository_of,
};
pub use s3::{shared_s3, write_creds, PrivateS3};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
pub const BIN: &str = env!("CARGO_BIN_EXE_synapse-backup");

/// `true` (after printing why) when integration tests are switched off.
pub fn skip(test: &str) -> bool {
    if std::env::var("SYNAPSE_SKIP_INTEGRATION").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: SYNAPSE_SKIP_INTEGRATION=1");
        return true;
    }
    assert!(
        Path::new(PG_BIN).join("initdb").exists(),
        "PostgreSQL 15 is not installed at {PG_BIN}: apt-get install postgresql-15 postgresql-contrib-15 (or set SYNAPSE_SKIP_INTEGRATION=1)"
    );
    false
}

fn is_root() -> bool {
    // SAFETY-free check: root owns /proc/self.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A command that runs as the `postgres` OS user when we are root (PostgreSQL refuses root).
pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Hand a path to the `postgres` user (when we are root).
pub fn give_to_postgres(path: &Path) {
    if is_root() {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .expect("run chown");
        assert!(st.success(), "chown {}", path.display());
    }
}

/// A scratch directory that the `postgres` user can use; removed on drop.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("synapse-it-{tag}-"))
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        give_to_postgres(dir.path());
        Scratch { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// A subdirectory owned by postgres.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        give_to_postgres(&p);
        p
    }
}

/// Run a command and return its output, panicking with stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where a test repository lives.
#[derive(Clone, Debug)]
pub enum RepoTarget {
    Local(PathBuf),
    S3 {
        endpoint: String,
        bucket: String,
        prefix: String,
        creds_file: PathBuf,
    },
}

/// A synapse-backup config file for one cluster.
pub struct TestConfig {
    pub path: PathBuf,
}

impl TestConfig {
    pub fn write(
        dir: &Path,
        repo: &RepoTarget,
        cluster: &str,
        pgdata: &Path,
        connection: &str,
        extra: &str,
    ) -> Self {
        let repo_section = match repo {
            RepoTarget::Local(p) => format!("url = \"file://{}\"\n", p.display()),
            RepoTarget::S3 { endpoint, bucket, prefix, creds_file } => format!(
                "url = \"s3://{bucket}/{prefix}\"\nendpoint = \"{endpoint}\"\nallow_http = true\nretries = 2\ntimeout_seconds = 10\ncredentials_file = \"{}\"\n",
                creds_file.display()
            ),
        };
        let text = format!(
            "timezone = \"UTC\"\n[repository]\n{repo_section}\n{extra}\n[[cluster]]\nname = \"{cluster}\"\npgdata = \"{}\"\nconnection = \"{connection}\"\n",
            pgdata.display()
        );
        let path = dir.join(format!("synapse-{cluster}.toml"));
        std::fs::write(&path, text).expect("write config");
        give_to_postgres(&path);
        TestConfig { path }
    }

    /// Append `text` to the config file (settings the test adds after `write`).
    pub fn append(&self, text: &str) {
        let mut all = std::fs::read_to_string(&self.path).expect("read config");
        all.push_str(text);
        std::fs::write(&self.path, all).expect("write config");
    }

    /// Run the binary with this config; returns the whole output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run synapse-backup")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(&self.path)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Run as the postgres OS user (for commands that touch a data directory).
    pub fn run_as_postgres(&self, args: &[&str], cwd: &Path) -> Output {
        as_postgres(BIN)
            .arg("--config")
            .arg(&self.path)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .output()
            .expect("run")
    }
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
