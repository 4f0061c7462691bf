//! OS plumbing that restore and verify share: which user owns restored files or runs a
//! server (`/etc/passwd`), whether a process is alive and which process a pid is (`/proc`),
//! and free space (`df`).
//!
//! PostgreSQL refuses to run as root, so when we run as root, what we write for a server
//! belongs to the `postgres` user and the server is started as that user.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Who files belong to (when we run as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// The OS user a scratch server runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// Set when the verifier runs as root and the instance as this user (`postgres`).
    pub name: Option<String>,
}

impl RunAs {
    /// As root: the `postgres` user (PostgreSQL refuses to run as root), `None` when there is
    /// no such user. Otherwise ourselves.
    pub fn decide() -> anyhow::Result<Option<RunAs>> {
        let me = fs::metadata("/proc/self").context("read /proc/self")?;
        if me.uid() != 0 {
            return Ok(Some(RunAs {
                uid: me.uid(),
                gid: me.gid(),
                name: None,
            }));
        }
        Ok(postgres_user().map(|o| RunAs {
            uid: o.uid,
            gid: o.gid,
            name: Some(POSTGRES.into()),
        }))
    }

    pub fn is_root_verifier(&self) -> bool {
        self.name.is_some()
    }

    pub fn chown(&self, path: &Path) -> anyhow::Result<()> {
        if self.is_root_verifier() {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }
}

/// The user PostgreSQL runs as when we are root.
const POSTGRES: &str = "postgres";

fn current_uid() -> Option<u32> {
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// The `postgres` user's ids, if there is one.
fn postgres_user() -> Option<Owner> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd_entry(&passwd, |name, _| name == POSTGRES).map(|(_, uid, gid)| Owner { uid, gid })
}

/// The home directory of the user with `uid`, from `/etc/passwd`.
pub fn home_dir(uid: u32) -> Option<PathBuf> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse() == Ok(uid) && f[5].starts_with('/'))
            .then(|| PathBuf::from(f[5]))
    })
}

/// Who restored files in `pgdata` belong to. As root: the owner of an existing, non-root
/// target directory, else the `postgres` user (PostgreSQL refuses to run as root). Otherwise
/// files are simply ours (`None`).
pub fn restore_owner(pgdata: &Path) -> Option<Owner> {
    if current_uid() != Some(0) {
        return None;
    }
    if let Ok(meta) = fs::metadata(pgdata) {
        if meta.uid() != 0 {
            return Some(Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            });
        }
    }
    let owner = postgres_user();
    if owner.is_none() {
        eprintln!(
            "warning: running as root and there is no `postgres` user: the restored files stay owned by root, \
             and PostgreSQL will not start on them until they belong to the user that runs it"
        );
    }
    owner
}

/// The first `/etc/passwd` entry matching `pred(name, uid)`: (name, uid, gid).
fn passwd_entry(text: &str, pred: impl Fn(&str, u32) -> bool) -> Option<(String, u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let uid: u32 = f.next()?.parse().ok()?;
        let gid: u32 = f.next()?.parse().ok()?;
        pred(name, uid).then(|| (name.to_string(), uid, gid))
    })
}

/// The user name of `uid` in `/etc/passwd`.
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd_entry(&passwd, |_, u| u == uid).map(|(n, _, _)| n)
}

/// Give `path` (not following a symlink) to `owner`; nothing when `None`.
pub fn chown(path: &Path, owner: Option<Owner>) -> anyhow::Result<()> {
    if let Some(o) = owner {
        std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// Alive and not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat_fields(&stat)
            .first()
            .is_none_or(|state| *state != "Z" && *state != "X"),
        Err(_) => false,
    }
}

/// The fields of `/proc/PID/stat` after the parenthesised command name (which may hold
/// spaces and parentheses itself): index 0 is field 3 (the state).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// One process, told apart from a later one that reuses its pid: the boot, the pid and its
/// start time (clock ticks after boot, `/proc/PID/stat` field 22).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessId {
    pub host: String,
    pub boot_id: String,
    pub pid: u32,
    pub start_ticks: u64,
}

/// This machine's host name.
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|b| b.trim().to_string())
        .unwrap_or_default()
}

/// When `pid` started (field 22 of its stat), `None` when there is no such process or it is
/// a zombie (killed, not yet reaped: dead all the same).
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = stat_fields(&stat);
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

impl ProcessId {
    /// This process.
    pub fn current() -> ProcessId {
        let pid = std::process::id();
        ProcessId {
            host: host_name(),
            boot_id: boot_id(),
            pid,
            start_ticks: process_start_ticks(pid).unwrap_or_default(),
        }
    }

    /// `Some(true)` when this process is known to be gone: it ran on this host (and boot) and
    /// its pid is no longer alive or belongs to a later process, or this host rebooted since.
    /// `Some(false)` when it still runs here; `None` on another host, where we cannot tell.
    pub fn is_dead_here(&self) -> Option<bool> {
        if self.host != host_name() {
            return None;
        }
        if !self.boot_id.is_empty() && self.boot_id != boot_id() {
            return Some(true);
        }
        Some(process_start_ticks(self.pid) != Some(self.start_ticks))
    }
}

/// Free space of the file systems holding `paths` (which must exist), one `(available
/// bytes, mount point)` per path, from `df`. `Err` says why it could not be told.
pub fn free_space(paths: &[PathBuf]) -> Result<Vec<(u64, String)>, String> {
    let out = match std::process::Command::new("df")
        .args(["--output=avail,target", "-B1"])
        .args(paths)
        .output()
    {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            return Err(format!(
                "df: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
        Err(e) => return Err(format!("df: {e}")),
    };
    let mounts = parse_df(&String::from_utf8_lossy(&out.stdout));
    if mounts.len() != paths.len() {
        return Err("unexpected df output".into());
    }
    Ok(mounts)
}

/// `df --output=avail,target -B1` lines after the header: (available bytes, mount point).
fn parse_df(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let line = line.trim_start();
            let (avail, mount) = line.split_once(char::is_whitespace)?;
            Some((avail.parse().ok()?, mount.trim().to_string()))
        })
        .collect()
}

/// `path`, or its nearest ancestor that exists.
pub fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path;
    loop {
        if p.exists() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return PathBuf::from("/"),
        }
    }
}

/// Bytes of regular files under `dir`, not following symlinks.
pub fn dir_usage(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_usage(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// fsync a file or directory.
pub fn sync_path(path: &Path) -> anyhow::Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("fsync {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_df_and_processes() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
        let me = ProcessId::current();
        assert!(me.start_ticks > 0);
        assert_eq!(me.is_dead_here(), Some(false));
        let recycled = ProcessId {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert_eq!(
            recycled.is_dead_here(),
            Some(true),
            "a reused pid is not the holder"
        );
        let gone = ProcessId {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        assert_eq!(gone.is_dead_here(), Some(true));
        let elsewhere = ProcessId {
            host: "elsewhere.example".into(),
            ..gone
        };
        assert_eq!(elsewhere.is_dead_here(), None);
        assert_eq!(stat_fields("12 (a) b) c) S 1 2")[0], "S");

        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgres:x:104:108:PostgreSQL:/var/lib/postgresql:/bin/bash\nbroken\n";
        assert_eq!(
            passwd_entry(passwd, |n, _| n == "postgres"),
            Some(("postgres".into(), 104, 108))
        );
        assert_eq!(
            passwd_entry(passwd, |_, u| u == 0).map(|e| e.0),
            Some("root".into())
        );
        assert_eq!(passwd_entry(passwd, |n, _| n == "nobody"), None);
        let passwd = "root:x:0:0::/root:/bin/sh\npostgres:x:104:108::/var/lib/postgresql:/bin/sh\n";
        assert_eq!(
            passwd_entry(passwd, |n, _| n == "postgres").map(|(_, u, g)| (u, g)),
            Some((104, 108))
        );
        assert_eq!(passwd_entry(passwd, |n, _| n == "nobody"), None);

        let df = "      Avail Mounted on\n75000000000 /\n   1024 /mnt/my disk\n";
        assert_eq!(
            parse_df(df),
            vec![
                (75000000000, "/".to_string()),
                (1024, "/mnt/my disk".to_string())
            ]
        );
    }
}
