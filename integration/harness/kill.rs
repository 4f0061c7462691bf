//! Killing our own commands with SIGKILL mid-run (the kill -9 tests), and what an operator
//! then sees listed.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{code, stderr, BIN};

/// Start the command: as the postgres OS user where it writes into the local repository (as
/// archive_command and the agent do), as root where the tests run it as root (restore, verify).
pub fn spawn(cfg_path: &Path, args: &[&str], cwd: &Path, as_postgres: bool) -> Child {
    let mut cmd = if as_postgres {
        super::as_postgres(BIN)
    } else {
        Command::new(BIN)
    };
    cmd.arg("--config")
        .arg(cfg_path)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn synapse-backup")
}

/// SIGKILL the command (runuser's child too: the whole process group would be cleaner, but
/// runuser forwards nothing on SIGKILL, so kill the real process, found as runuser's child).
pub fn kill_nine(child: &mut Child) -> bool {
    let pid = child.id();
    let mut killed = false;
    for p in children_of(pid).into_iter().chain(std::iter::once(pid)) {
        killed |= Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    }
    let _ = child.wait();
    killed
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) else {
        return Vec::new();
    };
    text.split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The backups `list --json` shows (what an operator sees as usable).
pub fn listed_backups(cfg: &super::TestConfig) -> Vec<String> {
    let out = cfg.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "list --json: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json is JSON");
    v["backups"]
        .as_array()
        .expect("backups array")
        .iter()
        .map(|b| b["id"].as_str().expect("id").to_string())
        .collect()
}
