//! Where a PostgreSQL major version's programs are, and starting a server with `pg_ctl`.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The programs of major version `major`: `configured` when set, else Debian's
/// `/usr/lib/postgresql/<major>/bin`.
pub fn bin_dir(configured: Option<&Path>, major: u32) -> PathBuf {
    configured.map_or_else(
        || PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
        Path::to_path_buf,
    )
}

/// `pg_ctl -D pgdata -l log -W start`, as `user` (through `runuser`) when given.
pub async fn pg_ctl_start(
    pg_ctl: &Path,
    pgdata: &Path,
    log: &Path,
    user: Option<&str>,
) -> anyhow::Result<std::process::Output> {
    let mut cmd = match user {
        Some(name) => {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", name, "--"]).arg(pg_ctl);
            c
        }
        None => tokio::process::Command::new(pg_ctl),
    };
    cmd.arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(log)
        .args(["-W", "start"])
        .current_dir(pgdata)
        .stdin(std::process::Stdio::null());
    cmd.output().await.context("run pg_ctl start")
}
