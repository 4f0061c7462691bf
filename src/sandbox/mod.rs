//! Scratch PostgreSQL instances for `verify`.
//!
//! The contract every runtime keeps (design invariant 8):
//!
//! * **No network.** The instance listens on a unix socket in its own scratch directory only
//!   (`listen_addresses = ''`), inside a new network namespace (`namespace`: only a loopback
//!   device that is down) or `--network none` (`docker`).
//! * **No store credentials.** The instance's environment is built from nothing: `PATH`,
//!   `LANG=C` and `TZ=UTC` for the namespace runtime, the image's own `ENV` for docker. The
//!   namespace runtime also gets a private `/proc` (the verifier's environment cannot be read
//!   through `/proc/<pid>/environ`) and masks the configured credentials file.
//! * **No archiving.** `archive_mode = off`, so a promoted scratch instance never pushes a new
//!   timeline into the real archive (pg-reference §0 item 8). Its `restore_command` only copies
//!   from the staging directory, which the verifier filled from the repository (every file
//!   checked against its SHA-256) and which is mounted read-only.
//! * **Only scratch is writable** (namespace: every other mount is remounted read-only inside
//!   the mount namespace; docker: `--read-only` with the scratch directory mounted).
//! * **Always cleaned up.** [`Instance`] kills the instance when dropped, [`ScratchDirs`]
//!   removes its directory when dropped, and [`remove_stale`] removes what a killed verifier
//!   left behind (directories and containers are named after the verifier's pid).

pub mod docker;
pub mod namespace;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::config::VerifyRuntime;
use crate::os::process_alive;
pub use crate::os::RunAs;
use crate::pg::server;

/// Scratch directories and docker containers are named `synapse-verify-<pid>-<n>`.
pub const SCRATCH_PREFIX: &str = "synapse-verify-";
/// The port number of every scratch instance. It only names the socket file
/// (`.s.PGSQL.55432`) in the instance's own socket directory: nothing listens on TCP.
pub const PORT: u16 = 55432;
/// The environment of the scratch instance and of the PostgreSQL tools run for it.
pub const CLEAN_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("LANG", "C"),
    ("TZ", "UTC"),
];

static NEXT: AtomicU32 = AtomicU32::new(0);

/// An environment problem (no Docker, no binaries for this major version, …): not a verdict
/// about the backup. `verify` exits 1 for these and stores no report.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EnvironmentError(pub String);

pub fn env_error(msg: impl Into<String>) -> anyhow::Error {
    EnvironmentError(msg.into()).into()
}

/// Whether an error (anywhere in its chain) is an [`EnvironmentError`].
pub fn is_environment_error(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|c| c.downcast_ref::<EnvironmentError>().is_some())
}

/// The OS user the instance runs as: as root, the `postgres` user (PostgreSQL refuses to run
/// as root); otherwise ourselves.
pub fn run_as() -> anyhow::Result<RunAs> {
    RunAs::decide()?.ok_or_else(|| {
        env_error(
            "running as root, and there is no `postgres` user to run the scratch instance as \
             (PostgreSQL refuses to run as root): create one, or run verify as the user that owns PostgreSQL",
        )
    })
}

/// One scratch instance's directories, under `<base>/synapse-verify-<pid>-<n>/`. Removed
/// when dropped.
#[derive(Debug)]
pub struct ScratchDirs {
    pub root: PathBuf,
    /// The restored data directory (owned by the instance's user, 0700).
    pub data: PathBuf,
    /// WAL staged from the repository; read-only for the instance.
    pub wal: PathBuf,
    /// The unix socket directory.
    pub run: PathBuf,
    /// Where tablespaces are restored (`ts/<oid>`).
    pub tablespaces: PathBuf,
    /// The server log (the instance's stderr).
    pub log: PathBuf,
    pub hba_file: PathBuf,
    pub ident_file: PathBuf,
    keep: bool,
}

impl ScratchDirs {
    /// Make a new scratch directory under `base` for an instance run as `run_as`.
    pub fn create(base: &Path, run_as: &RunAs) -> anyhow::Result<Self> {
        let base = std::path::absolute(base).context("resolve the scratch directory")?;
        // The paths go unquoted into restore_command and into docker -v: keep them plain.
        let text = base.to_string_lossy();
        if !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
        {
            return Err(env_error(format!(
                "scratch directory {text:?} has characters other than letters, digits, '/', '.', '_' and '-'; \
                 set [verify] scratch_dir to a plain path"
            )));
        }
        fs::create_dir_all(&base)
            .map_err(|e| env_error(format!("create scratch directory {text}: {e}")))?;
        let root = base.join(format!(
            "{SCRATCH_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        if root.exists() {
            fs::remove_dir_all(&root).with_context(|| format!("remove {}", root.display()))?;
        }
        fs::create_dir(&root).with_context(|| format!("create {}", root.display()))?;
        let dirs = ScratchDirs {
            data: root.join("data"),
            wal: root.join("wal"),
            run: root.join("run"),
            tablespaces: root.join("ts"),
            log: root.join("server.log"),
            hba_file: root.join("pg_hba.conf"),
            ident_file: root.join("pg_ident.conf"),
            root,
            keep: false,
        };
        set_mode(&dirs.root, 0o755)?;
        for (dir, mode, theirs) in [
            (&dirs.data, 0o700, true),
            (&dirs.wal, 0o755, false),
            (&dirs.run, 0o700, true),
            (&dirs.tablespaces, 0o755, true),
        ] {
            fs::create_dir(dir).with_context(|| format!("create {}", dir.display()))?;
            set_mode(dir, mode)?;
            if theirs {
                run_as.chown(dir)?;
            }
        }
        // The verifier connects over the socket as a superuser without a password: trust is
        // safe because the socket directory is private to the instance's user.
        fs::write(
            &dirs.hba_file,
            "# synapse-backup verify: unix socket only\nlocal all all trust\n",
        )
        .context("write pg_hba.conf")?;
        fs::write(&dirs.ident_file, "").context("write pg_ident.conf")?;
        for f in [&dirs.hba_file, &dirs.ident_file] {
            set_mode(f, 0o644)?;
        }
        fs::write(&dirs.log, "").context("create the server log")?;
        Ok(dirs)
    }

    /// The socket file name's directory and port, for a connection.
    pub fn socket(&self) -> (&Path, u16) {
        (&self.run, PORT)
    }

    /// Keep the directory (for debugging: `SYNAPSE_VERIFY_KEEP=1`).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ScratchDirs {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("verify: keeping {}", self.root.display());
            return;
        }
        // A restore interrupted by a signal may still be writing for a moment (its blocking
        // extraction threads cannot be cancelled): retry briefly. What is left is removed by
        // the next run, as after a kill.
        for attempt in 1..=5 {
            match remove_tree(&self.root) {
                Ok(()) => return,
                Err(e) if attempt == 5 => {
                    eprintln!("warning: could not remove {}: {e:#}", self.root.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {} {}", format_args!("{mode:o}"), path.display()))
}

/// Remove a directory tree, making read-only directories writable first.
fn remove_tree(root: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            let _ = std::process::Command::new("chmod")
                .args(["-R", "u+rwX"])
                .arg(root)
                .stderr(Stdio::null())
                .status();
            fs::remove_dir_all(root).with_context(|| format!("remove {}", root.display()))
        }
    }
}

/// The pid in a scratch name `synapse-verify-<pid>-<n>`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(SCRATCH_PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Remove what killed verifiers left in `base`: each `synapse-verify-<pid>-<n>` directory
/// whose pid is gone, after killing any process still running from it (an instance whose
/// verifier died with SIGKILL before it could stop it). Returns the directories removed.
pub fn remove_stale(base: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(base) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        kill_processes_using(&path);
        match remove_tree(&path) {
            Ok(()) => {
                eprintln!(
                    "verify: removed {} left by an earlier run (pid {pid}, no longer running)",
                    path.display()
                );
                removed.push(path);
            }
            Err(e) => eprintln!("warning: could not remove stale {}: {e:#}", path.display()),
        }
    }
    removed
}

/// SIGKILL every process whose command line mentions `dir` (a scratch instance started with
/// `-D <dir>/data`, or the unshare around it).
fn kill_processes_using(dir: &Path) {
    let needle = format!("{}/", dir.display());
    let me = std::process::id();
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for p in procs.filter_map(Result::ok) {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            kill_pid(pid);
        }
    }
}

/// The `-c name=value` settings every scratch instance runs with, whatever the restored
/// `postgresql.conf` says. Command-line settings override the configuration files.
pub fn server_settings(
    dirs: &ScratchDirs,
    pg_major: u32,
    restore_command: &str,
    shared_buffers: &str,
) -> Vec<(String, String)> {
    let path = |p: &Path| p.display().to_string();
    let mut s: Vec<(&str, String)> = vec![
        // Isolation: no TCP, a private socket, no TLS files from the original host.
        ("listen_addresses", String::new()),
        ("port", PORT.to_string()),
        ("unix_socket_directories", path(&dirs.run)),
        ("unix_socket_permissions", "0700".into()),
        ("unix_socket_group", String::new()),
        ("hba_file", path(&dirs.hba_file)),
        ("ident_file", path(&dirs.ident_file)),
        ("external_pid_file", String::new()),
        ("ssl", "off".into()),
        // Never archive, never stream, never run another command from the original config.
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("restore_command", restore_command.into()),
        ("recovery_end_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        // The log goes to stderr, which the runtime sends to the scratch log file.
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        ("log_min_messages", "warning".into()),
        // The verifier reads the log: untranslated messages.
        ("lc_messages", "C".into()),
        ("log_line_prefix", "%m [%p] ".into()),
        // A throwaway: no fsync, modest memory, and a name in `ps`.
        ("fsync", "off".into()),
        ("synchronous_commit", "off".into()),
        ("shared_buffers", shared_buffers.into()),
        ("cluster_name", "synapse-verify".into()),
        ("hot_standby", "on".into()),
    ];
    if pg_major >= 15 {
        s.push(("archive_library", String::new()));
    }
    s.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Arguments `-D <data> -c k=v …` for `postgres`.
pub fn postgres_args(data: &Path, settings: &[(String, String)]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-D".into(), data.into()];
    for (k, v) in settings {
        args.push("-c".into());
        args.push(format!("{k}={v}").into());
    }
    args
}

/// A PostgreSQL client tool's result.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    fn from(out: std::process::Output) -> Self {
        ToolOutput {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// stdout and stderr, trimmed, for a report.
    pub fn text(&self) -> String {
        let mut t = self.stdout.trim().to_string();
        if !self.stderr.trim().is_empty() {
            if !t.is_empty() {
                t.push('\n');
            }
            t.push_str(self.stderr.trim());
        }
        t
    }
}

/// Where scratch instances run.
pub enum Runtime {
    Namespace(namespace::Namespace),
    Docker(docker::Docker),
}

impl Runtime {
    /// Check that the runtime can run PostgreSQL `pg_major` here. Failures are
    /// [`EnvironmentError`]s that name the other runtime.
    pub async fn prepare(
        kind: VerifyRuntime,
        config: &crate::config::Config,
        cluster: &crate::config::ClusterConfig,
        pg_major: u32,
        run_as: &RunAs,
    ) -> anyhow::Result<Runtime> {
        match kind {
            VerifyRuntime::Namespace => {
                let bin = server::bin_dir(cluster.pg_bin_dir.as_deref(), pg_major);
                namespace::Namespace::prepare(bin, pg_major, run_as.clone())
                    .await
                    .map(Runtime::Namespace)
            }
            VerifyRuntime::Docker => {
                let image = config
                    .verify
                    .docker_image
                    .clone()
                    .unwrap_or_else(|| format!("postgres:{pg_major}"));
                let bin = server::bin_dir(config.verify.docker_pg_bin_dir.as_deref(), pg_major);
                docker::Docker::prepare(image, bin, run_as.clone(), config.verify.memory_mb)
                    .await
                    .map(Runtime::Docker)
            }
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Runtime::Namespace(_) => "namespace",
            Runtime::Docker(_) => "docker",
        }
    }

    /// A short description for the report (binaries or image).
    pub fn describe(&self) -> String {
        match self {
            Runtime::Namespace(n) => format!("namespace ({})", n.bin_dir().display()),
            Runtime::Docker(d) => format!("docker ({})", d.image()),
        }
    }

    /// Remove what killed verifiers left behind (containers; directories are removed by
    /// [`remove_stale`]).
    pub async fn remove_stale(&self) {
        if let Runtime::Docker(d) = self {
            d.remove_stale().await;
        }
    }

    /// Run a PostgreSQL tool (`pg_verifybackup`, `pg_amcheck`, …) of the runtime's version
    /// on the scratch directories, as the instance's user, with a clean environment.
    /// `instance` is the running server, when the tool connects to it.
    pub async fn tool(
        &self,
        dirs: &ScratchDirs,
        instance: Option<&Instance>,
        tool: &str,
        args: &[OsString],
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<ToolOutput> {
        match self {
            Runtime::Namespace(n) => n.tool(tool, args, extra_env).await,
            Runtime::Docker(d) => d.tool(dirs, instance, tool, args, extra_env).await,
        }
    }

    /// Start `postgres` on the scratch data directory with `settings`; its stderr goes to
    /// the scratch log. `hide` are files and directories the instance must not read.
    pub async fn start(
        &self,
        dirs: &ScratchDirs,
        settings: &[(String, String)],
        hide: &[PathBuf],
    ) -> anyhow::Result<Instance> {
        match self {
            Runtime::Namespace(n) => n.start(dirs, settings, hide).await,
            Runtime::Docker(d) => d.start(dirs, settings).await,
        }
    }
}

/// A running scratch instance. Dropping it kills it.
pub struct Instance {
    child: tokio::process::Child,
    kind: InstanceKind,
    stopped: bool,
}

enum InstanceKind {
    /// `unshare` is the child; `pid1` the PostgreSQL postmaster (pid 1 in its namespace).
    Namespace { pid1: Option<u32> },
    /// The container's name; the child is the attached `docker run` client.
    Docker { name: String },
}

impl Instance {
    /// Whether the instance is still running (the child has not exited).
    pub fn running(&mut self) -> bool {
        !self.stopped && matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status once the instance has stopped by itself.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The container name (docker runtime).
    pub fn container(&self) -> Option<&str> {
        match &self.kind {
            InstanceKind::Docker { name } => Some(name),
            InstanceKind::Namespace { .. } => None,
        }
    }

    /// Stop the instance and wait until every process of it is gone. It is thrown away, so
    /// it is killed rather than shut down cleanly.
    pub async fn stop(&mut self) {
        if self.stopped {
            return;
        }
        match &mut self.kind {
            InstanceKind::Namespace { pid1 } => {
                if pid1.is_none() {
                    *pid1 = self.child.id().and_then(namespace::first_child);
                }
                // SIGKILL to pid 1 of the namespace (the postmaster): the kernel kills
                // everything else in the namespace with it. Then unshare, which exits anyway.
                if let Some(pid) = *pid1 {
                    kill_pid(pid);
                }
                let _ = self.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
                if let Some(pid) = *pid1 {
                    wait_gone(pid, Duration::from_secs(30)).await;
                }
            }
            InstanceKind::Docker { name } => {
                docker::remove_container(name).await;
                let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
                let _ = self.child.start_kill();
            }
        }
        self.stopped = true;
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        match &self.kind {
            InstanceKind::Namespace { pid1 } => {
                let pid1 = pid1.or_else(|| self.child.id().and_then(namespace::first_child));
                if let Some(pid) = pid1 {
                    kill_pid(pid);
                }
                let _ = self.child.start_kill();
                if let Some(pid) = pid1 {
                    let deadline = std::time::Instant::now() + Duration::from_secs(10);
                    while process_alive(pid) && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            InstanceKind::Docker { name } => docker::remove_container_blocking(name),
        }
    }
}

/// SIGKILL one process (ours: the instance's pid 1, or a process of a dead verifier's).
fn kill_pid(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

async fn wait_gone(pid: u32, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while process_alive(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A SQL session with the scratch instance over its unix socket (no TLS, no password).
pub struct Sql {
    client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Sql {
    pub async fn connect(dirs: &ScratchDirs, user: &str, dbname: &str) -> anyhow::Result<Sql> {
        let (socket, port) = dirs.socket();
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(socket)
            .port(port)
            .user(user)
            .dbname(dbname)
            .application_name("synapse-backup verify")
            .connect_timeout(Duration::from_secs(10))
            // Role or database settings of the original must not make the checks fail.
            .options(
                "-c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0 \
                 -c default_transaction_read_only=off",
            );
        let (client, connection) =
            config
                .connect(tokio_postgres::NoTls)
                .await
                .with_context(|| {
                    format!(
                        "connect to the scratch instance as {user:?} to database {dbname:?} on {}",
                        socket.display()
                    )
                })?;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Sql { client, task })
    }

    /// Run `sql` (one or more statements, simple protocol). Returns the first column of the
    /// last statement's rows as text (`None` for NULL).
    pub async fn query_column(&self, sql: &str) -> anyhow::Result<Vec<Option<String>>> {
        use tokio_postgres::SimpleQueryMessage;
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| match e.as_db_error() {
                Some(db) => anyhow!("{}: {}", db.severity(), db.message()),
                None => anyhow!(e),
            })?;
        let mut current = Vec::new();
        let mut last = Vec::new();
        for m in messages {
            match m {
                SimpleQueryMessage::Row(row) => current.push(row.get(0).map(str::to_string)),
                SimpleQueryMessage::CommandComplete(_) => last = std::mem::take(&mut current),
                _ => {}
            }
        }
        if !current.is_empty() {
            last = current;
        }
        Ok(last)
    }

    /// Every column of the first row of a one-statement query, as text.
    pub async fn query_row(&self, sql: &str) -> anyhow::Result<Vec<Option<String>>> {
        use tokio_postgres::SimpleQueryMessage;
        let messages = self
            .client
            .simple_query(sql)
            .await
            .with_context(|| format!("run {sql:?}"))?;
        for m in messages {
            if let SimpleQueryMessage::Row(row) = m {
                return Ok((0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect());
            }
        }
        bail!("{sql}: no rows")
    }

    pub async fn close(self) {
        drop(self.client);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_carry_the_owner_pid() {
        assert_eq!(owner_pid("synapse-verify-1234-0"), Some(1234));
        assert_eq!(owner_pid("synapse-verify-1234-17"), Some(1234));
        for bad in [
            "synapse-verify-",
            "synapse-verify-x-1",
            "synapse-verify-12",
            "other-1-2",
        ] {
            assert_eq!(owner_pid(bad), None, "{bad}");
        }
    }

    #[test]
    fn stale_scratch_dirs_of_dead_verifiers_are_removed() {
        let base = tempfile::tempdir().unwrap();
        // pid 0x7ffffff0 is not running; our own pid is.
        let dead = base.path().join("synapse-verify-2147483632-0");
        let ours = base
            .path()
            .join(format!("synapse-verify-{}-99", std::process::id()));
        let other = base.path().join("unrelated");
        for d in [&dead, &ours, &other] {
            fs::create_dir_all(d.join("data")).unwrap();
        }
        fs::set_permissions(dead.join("data"), fs::Permissions::from_mode(0o500)).unwrap();
        let removed = remove_stale(base.path());
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists() && ours.exists() && other.exists());
    }

    #[test]
    fn settings_isolate_the_instance() {
        let run_as = RunAs {
            uid: 1,
            gid: 1,
            name: None,
        };
        let base = tempfile::tempdir().unwrap();
        let dirs = ScratchDirs::create(base.path(), &run_as).unwrap();
        let s = server_settings(&dirs, 15, "cp /x/%f %p", "64MB");
        let get = |k: &str| s.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("listen_addresses"), Some(""));
        assert_eq!(get("archive_mode"), Some("off"));
        assert_eq!(get("restore_command"), Some("cp /x/%f %p"));
        assert_eq!(get("archive_library"), Some(""));
        assert_eq!(
            get("unix_socket_directories"),
            Some(dirs.run.to_str().unwrap())
        );
        assert!(server_settings(&dirs, 14, "x", "1MB")
            .iter()
            .all(|(k, _)| k != "archive_library"));
        let args = postgres_args(&dirs.data, &s);
        assert_eq!(args[0], "-D");
        assert!(args.contains(&OsString::from("archive_mode=off")));
        let root = dirs.root.clone();
        assert!(root.join("pg_hba.conf").exists());
        drop(dirs);
        assert!(!root.exists(), "dropping the scratch dirs removes them");
        let err = ScratchDirs::create(Path::new("/tmp/with space"), &run_as).unwrap_err();
        assert!(is_environment_error(&err), "{err:#}");
    }
}
