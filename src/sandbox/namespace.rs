//! The `namespace` runtime: this machine's PostgreSQL binaries in new Linux namespaces
//! (network, PID, mount, IPC, UTS), started with util-linux `unshare`. No daemon is needed.
//!
//! ```text
//! setpriv --pdeathsig KILL -- unshare [--user --map-root-user] --net --pid --mount --ipc --uts
//!         --fork --kill-child --mount-proc -- /bin/sh -c <MOUNT_SCRIPT> …
//!     -- (as root)     setpriv --reuid postgres --regid postgres --init-groups --pdeathsig KILL --
//!        (as a user)   unshare --user --map-user <uid> --map-group <gid> --
//!        prlimit --core=0 -- <bin>/postgres -D <scratch>/data -c …
//! ```
//!
//! * The network namespace has only a loopback device, and it is down: nothing is reachable
//!   over IP, and abstract unix sockets belong to the network namespace too.
//! * **A minimal root.** A network namespace does not isolate *filesystem* unix sockets, and
//!   the server runs as the same OS user as production (`postgres`), so peer authentication
//!   on production's socket would succeed (review F1). Masking the known socket directories
//!   is not enough: `unix_socket_directories` may name any path. So the mount namespace
//!   builds a new root on an empty tmpfs and `pivot_root`s into it; the old root is detached.
//!   Only this is in it: the read-only system trees PostgreSQL and `restore_command` need
//!   ([`SYSTEM_PATHS`]: `/usr/bin`, `/usr/lib*`, `/usr/share/postgresql`, the time zone
//!   database, the merged-`/usr` links `/bin` `/lib*`, and from `/etc` only `passwd`, `group`,
//!   `nsswitch.conf`, `localtime` and the dynamic loader's cache), the PostgreSQL install prefix
//!   when it is outside `/usr`, the devices `null zero full random urandom`, a private `/proc`
//!   and `/dev/shm`, an empty `/tmp`, the scratch directory (writable) and the staged WAL
//!   (read-only). No `/run`, `/var`, `/home`, `/root`, `/tmp` of the host, no socket
//!   (`/dev/log`, `/var/run/docker.sock`, `/var/run/postgresql`, any cluster's socket
//!   directory), no pgdata of another cluster, no credential and no config file.
//! * Belt and braces: the paths the verifier names as secret (credentials, password files,
//!   the config file and its directory, every configured cluster's socket directory and
//!   pgdata, the Docker socket) are masked as well should a bound tree hold one.
//! * `--mount-proc` gives the PID namespace its own `/proc`: the verifier's environment (which
//!   may hold `AWS_*` credentials) is not visible through `/proc/<pid>/environ`.
//! * `postgres` is pid 1 of the PID namespace: when it dies, the kernel kills everything in
//!   the namespace. `--kill-child` kills it when `unshare` dies, and `--pdeathsig` kills
//!   `unshare` when the verifier dies, so a killed verifier leaves no server running.
//! * As root, the server runs as `postgres` with no supplementary groups (`--clear-groups`:
//!   a `postgres` in group `docker` must not take it along). As another user (the agent runs
//!   as `postgres`), an unprivileged user namespace maps that user to root for the mounts, and
//!   a nested one maps it back to itself to run the server (PostgreSQL refuses to run as
//!   root); its supplementary groups cannot be dropped there, but nothing they open is in the
//!   new root. Debian allows unprivileged user namespaces by default.
//! * Resource limits: no core dumps (`prlimit --core=0`), `shared_buffers` from
//!   `[verify]`. Memory and CPU limits need cgroups; use the docker runtime for those.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;

use super::{env_error, Instance, InstanceKind, RunAs, ScratchDirs, ToolOutput, CLEAN_ENV};

/// Runs inside the new namespaces as (namespace) root: `$1` scratch root, `$2` staged WAL,
/// `$3` the (empty) mount point of the new root; then the system paths to bind read-only up
/// to `--`, the paths to mask up to `--`, and the command to exec in the new root.
const MOUNT_SCRIPT: &str = r#"set -e
root=$1; wal=$2; new=$3; shift 3
mount -t tmpfs -o mode=0755,nosuid,nodev,size=16m synapse-verify "$new"
bind_ro() {
    mount --rbind "$1" "$new$1"
    mount -o remount,bind,ro,nosuid,nodev "$new$1" 2>/dev/null || mount -o remount,bind,ro "$new$1"
}
while [ "$1" != "--" ]; do
    if [ -L "$1" ]; then
        mkdir -p "$new${1%/*}"; ln -s "$(readlink "$1")" "$new$1"
    elif [ -d "$1" ]; then
        mkdir -p "$new$1"; bind_ro "$1"
    elif [ -e "$1" ]; then
        mkdir -p "$new${1%/*}"; : > "$new$1"; bind_ro "$1"
    fi
    shift
done
shift
mkdir -p "$new/dev/shm" "$new/proc" "$new/tmp"
for d in null zero full random urandom; do
    : > "$new/dev/$d"; mount --bind "/dev/$d" "$new/dev/$d"
done
# PostgreSQL's dynamic shared memory: private, and gone with the namespace.
mount -t tmpfs -o mode=1777,nosuid,nodev none "$new/dev/shm"
chmod 1777 "$new/tmp"
mount --rbind /proc "$new/proc"
while [ "$1" != "--" ]; do
    if [ -d "$new$1" ]; then
        mount -t tmpfs -o ro,size=4k,mode=0 none "$new$1"
    elif [ -e "$new$1" ]; then
        mount --bind /dev/null "$new$1"
    fi
    shift
done
shift
# The scratch directory stays writable; the staged WAL in it is read-only.
mkdir -p "$new$root"
mount --bind "$root" "$new$root"
mount --bind "$wal" "$new$wal"
mount -o remount,bind,ro,nosuid,nodev "$new$wal" 2>/dev/null || mount -o remount,bind,ro "$new$wal"
cd "$new"
mkdir .old
pivot_root . .old
umount -l /.old
rmdir /.old
cd "$root"
exec "$@"
"#;

/// What the new root holds of the host, read-only (each where it exists): the binaries
/// `restore_command` and probes use, the libraries, PostgreSQL's share directory, the time
/// zone database, and the few `/etc` files the C library reads. Symlinks (merged `/usr`) are
/// copied as symlinks.
pub const SYSTEM_PATHS: [&str; 20] = [
    "/bin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/usr/bin",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/libx32",
    "/usr/libexec",
    "/usr/share/postgresql",
    "/usr/share/zoneinfo",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
];

/// The mount point of the new root, in the scratch directory (empty outside the namespace).
const NEW_ROOT: &str = "newroot";

const UNSHARE_FLAGS: [&str; 9] = [
    "--net",
    "--pid",
    "--mount",
    "--ipc",
    "--uts",
    "--fork",
    "--kill-child",
    "--mount-proc",
    "--propagation=private",
];

pub struct Namespace {
    bin_dir: PathBuf,
    run_as: RunAs,
}

impl Namespace {
    /// Check for the binaries of `pg_major` and that namespaces can be made here.
    pub async fn prepare(bin_dir: PathBuf, pg_major: u32, run_as: RunAs) -> anyhow::Result<Self> {
        let hint = "use --runtime docker (or [verify] runtime = \"docker\")";
        for tool in ["postgres", "pg_verifybackup", "pg_amcheck", "pg_waldump"] {
            let p = bin_dir.join(tool);
            if !p.exists() {
                return Err(env_error(format!(
                    "the namespace runtime needs the PostgreSQL {pg_major} binaries, but {} does not exist \
                     (install postgresql-{pg_major} and postgresql-contrib-{pg_major}, or set pg_bin_dir for the cluster); \
                     or {hint}",
                    p.display()
                )));
            }
        }
        for tool in [
            "unshare",
            "setpriv",
            "prlimit",
            "mount",
            "pivot_root",
            "umount",
        ] {
            if which(tool).is_none() {
                return Err(env_error(format!(
                    "the namespace runtime needs `{tool}` (util-linux), which is not installed; or {hint}"
                )));
            }
        }
        // Can we make the namespaces at all (a container without CAP_SYS_ADMIN cannot)?
        let mut probe = tokio::process::Command::new("unshare");
        if !run_as.is_root_verifier() {
            probe.args(["--user", "--map-root-user"]);
        }
        let out = probe
            .args(UNSHARE_FLAGS)
            .args(["--", "true"])
            .env_clear()
            .envs(CLEAN_ENV)
            .stdin(Stdio::null())
            .output()
            .await
            .context("run unshare")?;
        if !out.status.success() {
            return Err(env_error(format!(
                "cannot create Linux namespaces here (unshare: {}); {hint}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Namespace { bin_dir, run_as })
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Run a client tool as the instance's user with a clean environment. Tools run outside
    /// the namespaces: they only read the scratch directory or use the instance's socket.
    pub async fn tool(
        &self,
        tool: &str,
        args: &[OsString],
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<ToolOutput> {
        let exe = self.bin_dir.join(tool);
        let mut cmd = match &self.run_as.name {
            Some(_) => {
                let mut c = tokio::process::Command::new("setpriv");
                c.args(self.setpriv_args()).arg("--").arg(&exe);
                c
            }
            None => tokio::process::Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .env_clear()
            .envs(CLEAN_ENV)
            .envs(extra_env.iter().copied())
            .current_dir("/")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("run {}", exe.display()))?;
        Ok(ToolOutput::from(out))
    }

    fn setpriv_args(&self) -> Vec<String> {
        vec![
            format!("--reuid={}", self.run_as.uid),
            format!("--regid={}", self.run_as.gid),
            "--clear-groups".into(),
        ]
    }

    /// [`SYSTEM_PATHS`], and the PostgreSQL install prefix (the parent of `bin/`) when it is
    /// outside them.
    fn system_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = SYSTEM_PATHS.iter().map(PathBuf::from).collect();
        let prefix = self.bin_dir.parent().unwrap_or(&self.bin_dir);
        if !paths.iter().any(|p| prefix.starts_with(p)) {
            paths.push(prefix.to_path_buf());
        }
        paths
    }

    /// For the server: the uid change clears the parent-death signal that `--kill-child`
    /// set (prctl(2)), so it is set again after it.
    fn setpriv_server_args(&self) -> Vec<String> {
        let mut args = self.setpriv_args();
        args.extend(["--pdeathsig".into(), "KILL".into()]);
        args
    }

    pub async fn start(
        &self,
        dirs: &ScratchDirs,
        settings: &[(String, String)],
        hide: &[PathBuf],
    ) -> anyhow::Result<Instance> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&dirs.log)
            .context("open the server log")?;
        let system = self.system_paths();
        // A mask over a path that holds a bound tree or the scratch directory would hide it.
        let hide: Vec<&PathBuf> = hide
            .iter()
            .filter(|h| !system.iter().chain([&dirs.root]).any(|s| s.starts_with(h)))
            .collect();
        let new_root = dirs.root.join(NEW_ROOT);
        std::fs::create_dir(&new_root).with_context(|| format!("create {}", new_root.display()))?;
        let mut cmd = tokio::process::Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", "unshare"]);
        if !self.run_as.is_root_verifier() {
            cmd.args(["--user", "--map-root-user"]);
        }
        cmd.args(UNSHARE_FLAGS)
            .args(["--", "/bin/sh", "-c", MOUNT_SCRIPT, "synapse-verify"])
            .arg(&dirs.root)
            .arg(&dirs.wal)
            .arg(&new_root)
            .args(&system)
            .arg("--")
            .args(hide)
            .arg("--");
        if self.run_as.is_root_verifier() {
            cmd.arg("setpriv")
                .args(self.setpriv_server_args())
                .arg("--");
        } else {
            cmd.args([
                "unshare",
                "--user",
                &format!("--map-user={}", self.run_as.uid),
                &format!("--map-group={}", self.run_as.gid),
                "--",
            ]);
        }
        cmd.args(["prlimit", "--core=0", "--"])
            .arg(self.bin_dir.join("postgres"))
            .args(super::postgres_args(&dirs.data, settings))
            .env_clear()
            .envs(CLEAN_ENV)
            .current_dir(&dirs.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("open the server log")?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| env_error(format!("start the scratch instance (setpriv/unshare): {e}")))?;
        let pid1 = None;
        Ok(Instance {
            child,
            kind: InstanceKind::Namespace { pid1 },
            stopped: false,
        })
    }
}

/// The first child of `pid` (the namespace's pid 1 for `unshare --fork`).
pub fn first_child(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn which(tool: &str) -> Option<PathBuf> {
    CLEAN_ENV[0]
        .1
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_script_is_plain_sh() {
        let out = std::process::Command::new("sh")
            .args(["-n", "-c", MOUNT_SCRIPT])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(which("sh").is_some());
    }
}
