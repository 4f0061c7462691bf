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
//! * The network namespace has only a loopback device, and it is down: nothing is reachable.
//! * The mount namespace makes every mount read-only except the scratch directory, mounts the
//!   staged WAL read-only, puts a private tmpfs on `/dev/shm`, and hides the credentials file.
//!   `--mount-proc` gives the PID namespace its own `/proc`: the verifier's environment (which
//!   may hold `AWS_*` credentials) is not visible through `/proc/<pid>/environ`.
//! * `postgres` is pid 1 of the PID namespace: when it dies, the kernel kills everything in
//!   the namespace. `--kill-child` kills it when `unshare` dies, and `--pdeathsig` kills
//!   `unshare` when the verifier dies, so a killed verifier leaves no server running.
//! * As root, the server runs as `postgres`. As another user (the agent runs as `postgres`),
//!   an unprivileged user namespace maps that user to root for the mounts, and a nested one
//!   maps it back to itself to run the server (PostgreSQL refuses to run as root). Debian
//!   allows unprivileged user namespaces by default.
//! * Resource limits: no core dumps (`prlimit --core=0`), `shared_buffers` from
//!   `[verify]`. Memory and CPU limits need cgroups; use the docker runtime for those.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;

use super::{env_error, Instance, InstanceKind, RunAs, ScratchDirs, ToolOutput, CLEAN_ENV};

/// Runs inside the new namespaces as (namespace) root: `$1` scratch root, `$2` staged WAL,
/// then paths to hide up to `--`, then the command to exec.
const MOUNT_SCRIPT: &str = r#"set -e
root=$1; wal=$2; shift 2
# The scratch directory stays writable: a mount point of its own, skipped below.
mount --bind "$root" "$root"
mount --bind "$wal" "$wal"
while [ "$1" != "--" ]; do
    if [ -d "$1" ]; then
        mount -t tmpfs -o ro,size=4k,mode=0 none "$1"
    elif [ -e "$1" ]; then
        mount --bind /dev/null "$1"
    fi
    shift
done
shift
# PostgreSQL's dynamic shared memory: private, and gone with the namespace.
mount -t tmpfs -o mode=1777 none /dev/shm
# Everything else read-only.
while read -r _ _ _ _ mp _; do
    case "$mp" in
        "$root"|/proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;;
    esac
    mount -o remount,bind,ro "$mp" 2>/dev/null || echo "synapse-verify: could not make $mp read-only" >&2
done < /proc/self/mountinfo
mount -o remount,bind,ro "$wal"
exec "$@"
"#;

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
        for tool in ["unshare", "setpriv", "prlimit", "mount"] {
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
            "--init-groups".into(),
        ]
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
        let mut cmd = tokio::process::Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", "unshare"]);
        if !self.run_as.is_root_verifier() {
            cmd.args(["--user", "--map-root-user"]);
        }
        cmd.args(UNSHARE_FLAGS)
            .args(["--", "/bin/sh", "-c", MOUNT_SCRIPT, "synapse-verify"])
            .arg(&dirs.root)
            .arg(&dirs.wal)
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
