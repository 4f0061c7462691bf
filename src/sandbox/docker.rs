//! The `docker` runtime: `docker run --network none` with a configurable image (default
//! `postgres:<major>`), the scratch directory mounted at the same path inside (so the
//! restored tablespace links and the staging path mean the same on both sides), the staged
//! WAL mounted read-only on top, a read-only root file system, no capabilities, and memory
//! and process limits. The server runs as the owner of the restored files (`--user uid:gid`),
//! with the image's entrypoint replaced by the `postgres` binary. The container gets no
//! environment from the verifier (no `-e`), only the image's own `ENV`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

use super::{env_error, Instance, InstanceKind, RunAs, ScratchDirs, ToolOutput, SCRATCH_PREFIX};

pub struct Docker {
    image: String,
    bin_dir: PathBuf,
    run_as: RunAs,
    memory_mb: u64,
}

const HINT: &str = "use --runtime namespace (or [verify] runtime = \"namespace\")";

impl Docker {
    /// Check that a Docker engine answers and that the image is here (or can be pulled).
    pub async fn prepare(
        image: String,
        bin_dir: PathBuf,
        run_as: RunAs,
        memory_mb: u64,
    ) -> anyhow::Result<Self> {
        let info = docker(
            &["info", "--format", "{{.ServerVersion}}"],
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| env_error(format!("the docker runtime needs Docker: {e:#}; {HINT}")))?;
        if !info.success {
            return Err(env_error(format!(
                "no Docker engine is reachable (docker info: {}); {HINT}",
                info.text()
            )));
        }
        let inspect = docker(
            &["image", "inspect", "--format", "{{.Id}}", &image],
            Duration::from_secs(30),
        )
        .await?;
        if !inspect.success {
            eprintln!("verify: docker image {image} is not here; pulling it");
            let pull = docker(&["pull", "--quiet", &image], Duration::from_secs(600)).await?;
            if !pull.success {
                return Err(env_error(format!(
                    "docker image {image} is not available here and could not be pulled ({}); \
                     build one (see integration/docker-image.sh) and set [verify] docker_image, or {HINT}",
                    pull.text()
                )));
            }
        }
        let me = Docker {
            image,
            bin_dir,
            run_as,
            memory_mb,
        };
        // The image must have the binaries where we expect them.
        let version = me
            .run_tool_container(None, "postgres", &["--version".into()], &[])
            .await?;
        if !version.success {
            return Err(env_error(format!(
                "docker image {} has no {}/postgres ({}); set [verify] docker_pg_bin_dir, or {HINT}",
                me.image,
                me.bin_dir.display(),
                version.text()
            )));
        }
        Ok(me)
    }

    pub fn image(&self) -> &str {
        &self.image
    }

    fn user(&self) -> String {
        format!("{}:{}", self.run_as.uid, self.run_as.gid)
    }

    fn mounts(dirs: &ScratchDirs) -> Vec<String> {
        vec![
            "-v".into(),
            format!("{0}:{0}", dirs.root.display()),
            "-v".into(),
            format!("{0}:{0}:ro", dirs.wal.display()),
        ]
    }

    /// `docker run` options shared by the server and the one-off tool containers.
    fn isolation(&self) -> Vec<String> {
        vec![
            "--network".into(),
            "none".into(),
            "--user".into(),
            self.user(),
            "--read-only".into(),
            "--tmpfs".into(),
            "/tmp".into(),
            "--cap-drop".into(),
            "ALL".into(),
            "--security-opt".into(),
            "no-new-privileges".into(),
            "--memory".into(),
            format!("{}m", self.memory_mb),
            "--pids-limit".into(),
            "1024".into(),
            "--shm-size".into(),
            "256m".into(),
        ]
    }

    /// A one-off container running a tool (before the server starts).
    async fn run_tool_container(
        &self,
        dirs: Option<&ScratchDirs>,
        tool: &str,
        args: &[OsString],
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<ToolOutput> {
        let mut cmd = tokio::process::Command::new("docker");
        cmd.args(["run", "--rm"]).args(self.isolation());
        if let Some(d) = dirs {
            cmd.args(Self::mounts(d));
        }
        for (k, v) in extra_env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        cmd.arg("--entrypoint")
            .arg(self.bin_dir.join(tool))
            .arg(&self.image)
            .args(args);
        output(cmd, Duration::from_secs(6 * 3600)).await
    }

    /// Run a tool: in the running server's container (`docker exec`), else in a one-off one.
    pub async fn tool(
        &self,
        dirs: &ScratchDirs,
        instance: Option<&Instance>,
        tool: &str,
        args: &[OsString],
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<ToolOutput> {
        match instance.and_then(Instance::container) {
            Some(name) => {
                let mut cmd = tokio::process::Command::new("docker");
                cmd.args(["exec", "--user", &self.user()]);
                for (k, v) in extra_env {
                    cmd.args(["-e", &format!("{k}={v}")]);
                }
                cmd.arg(name).arg(self.bin_dir.join(tool)).args(args);
                output(cmd, Duration::from_secs(6 * 3600)).await
            }
            None => {
                self.run_tool_container(Some(dirs), tool, args, extra_env)
                    .await
            }
        }
    }

    pub async fn start(
        &self,
        dirs: &ScratchDirs,
        settings: &[(String, String)],
    ) -> anyhow::Result<Instance> {
        let name = dirs
            .root
            .file_name()
            .and_then(|n| n.to_str())
            .context("scratch directory name")?
            .to_string();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&dirs.log)
            .context("open the server log")?;
        let mut cmd = tokio::process::Command::new("docker");
        cmd.args(["run", "--rm", "--name", &name])
            .args(self.isolation())
            .args(Self::mounts(dirs))
            .arg("--entrypoint")
            .arg(self.bin_dir.join("postgres"))
            .arg(&self.image)
            .args(super::postgres_args(&dirs.data, settings))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("open the server log")?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| env_error(format!("start the scratch container (docker run): {e}")))?;
        Ok(Instance {
            child,
            kind: InstanceKind::Docker { name },
            stopped: false,
        })
    }

    /// Remove containers of verifiers that are no longer running.
    pub async fn remove_stale(&self) {
        let Ok(out) = docker(
            &[
                "ps",
                "-a",
                "--filter",
                &format!("name={SCRATCH_PREFIX}"),
                "--format",
                "{{.Names}}",
            ],
            Duration::from_secs(30),
        )
        .await
        else {
            return;
        };
        for name in out.stdout.lines().map(str::trim) {
            let Some(pid) = super::owner_pid(name) else {
                continue;
            };
            if pid != std::process::id() && !crate::os::process_alive(pid) {
                eprintln!("verify: removing container {name} left by an earlier run (pid {pid})");
                remove_container(name).await;
            }
        }
    }
}

/// `docker rm -f NAME` (kills and removes; a missing container is fine).
pub async fn remove_container(name: &str) {
    let _ = docker(&["rm", "-f", name], Duration::from_secs(60)).await;
}

pub fn remove_container_blocking(name: &str) {
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

async fn docker(args: &[&str], limit: Duration) -> anyhow::Result<ToolOutput> {
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args(args);
    output(cmd, limit).await
}

async fn output(mut cmd: tokio::process::Command, limit: Duration) -> anyhow::Result<ToolOutput> {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let program = format!("{:?}", cmd.as_std().get_program());
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(out)) => Ok(ToolOutput::from(out)),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(env_error(format!("{program} is not installed; {HINT}")))
        }
        Ok(Err(e)) => Err(e).with_context(|| format!("run {program}")),
        Err(_) => anyhow::bail!("{program} did not finish within {}s", limit.as_secs()),
    }
}
