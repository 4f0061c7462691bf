//! The target directory: refuse one a running server uses or one that is not empty (unless
//! forced), then create or empty it, restrict it and mark it incomplete.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chrono::Utc;

use crate::error::{usage, Failure};
use crate::os::{self, Owner};
use crate::pg::datadir;
use crate::timeparse::format_utc;

/// Left in the data directory while a restore runs, and after one fails.
pub const INCOMPLETE_MARKER: &str = "SYNAPSE_RESTORE_INCOMPLETE";

/// A data directory to restore into, inspected and accepted.
#[derive(Debug, Clone)]
pub struct TargetDir {
    pub pgdata: PathBuf,
    state: DirState,
    /// Replace the contents of non-empty directories (`--force`).
    pub force: bool,
}

impl TargetDir {
    /// Look at `pgdata`; refuse it when a running server uses it, or when it is not empty and
    /// `force` is not given.
    pub fn inspect(pgdata: &Path, force: bool) -> anyhow::Result<TargetDir> {
        let state = inspect_dir(pgdata)?;
        refuse_non_empty(pgdata, &state, force)?;
        Ok(TargetDir {
            pgdata: pgdata.to_path_buf(),
            state,
            force,
        })
    }

    /// Create or empty the directory, restrict it, and mark it incomplete.
    pub(super) fn prepare(&self, owner: Option<Owner>) -> anyhow::Result<()> {
        prepare_dir(&self.pgdata, &self.state, self.force, owner)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirState {
    pub exists: bool,
    pub non_empty: bool,
    pub incomplete: bool,
}

/// Look at a target directory; refuse one that a running server uses.
pub fn inspect_dir(dir: &Path) -> anyhow::Result<DirState> {
    let meta = match fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(DirState {
                exists: false,
                non_empty: false,
                incomplete: false,
            })
        }
        Err(e) => return Err(e).with_context(|| format!("inspect {}", dir.display())),
    };
    if !meta.is_dir() {
        return Err(usage(format!(
            "{} exists and is not a directory",
            dir.display()
        )));
    }
    if let Some(pid) = datadir::live_postmaster(dir) {
        return Err(Failure::Conflict(format!(
            "a PostgreSQL server (pid {pid}) is running on {}; stop it first \
             (if process {pid} is not PostgreSQL, the postmaster.pid file is stale: remove it)",
            dir.display()
        ))
        .into());
    }
    let mut entries = fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?;
    Ok(DirState {
        exists: true,
        non_empty: entries.next().is_some(),
        incomplete: dir.join(INCOMPLETE_MARKER).exists(),
    })
}

fn refuse_non_empty(pgdata: &Path, state: &DirState, force: bool) -> anyhow::Result<()> {
    if state.non_empty && !force {
        let hint = if state.incomplete {
            " It holds an earlier restore that did not finish (SYNAPSE_RESTORE_INCOMPLETE)."
        } else {
            ""
        };
        return Err(usage(format!(
            "{} is not empty.{hint} Use --force to replace its contents, or restore into an empty directory with --pgdata",
            pgdata.display()
        )));
    }
    Ok(())
}

/// Create (or, with `--force`, empty) the data directory, restrict it, and mark it incomplete.
fn prepare_dir(
    pgdata: &Path,
    state: &DirState,
    force: bool,
    owner: Option<Owner>,
) -> anyhow::Result<()> {
    if !state.exists {
        fs::create_dir_all(pgdata).with_context(|| format!("create {}", pgdata.display()))?;
    }
    // The marker goes in before anything is removed or written, and stays if we fail.
    write_marker(pgdata, owner)?;
    if state.non_empty && force {
        eprintln!("--force: removing the contents of {}", pgdata.display());
        clear_dir(pgdata, &[INCOMPLETE_MARKER])?;
    }
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", pgdata.display()))?;
    os::chown(pgdata, owner)?;
    Ok(())
}

fn write_marker(pgdata: &Path, owner: Option<Owner>) -> anyhow::Result<()> {
    let path = pgdata.join(INCOMPLETE_MARKER);
    let text = format!(
        "This data directory is being restored by synapse-backup (started {}, pid {}), or a restore into it failed.\n\
         It is INCOMPLETE: do not start PostgreSQL on it. Run the restore again (with --force) to finish it.\n\
         synapse-backup removes this file only after everything was restored and checked.\n",
        format_utc(Utc::now()),
        std::process::id()
    );
    fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    os::chown(&path, owner)?;
    os::sync_path(&path)?;
    os::sync_path(pgdata)
}

/// Remove everything in `dir` except the names in `keep`, without following symlinks.
fn clear_dir(dir: &Path, keep: &[&str]) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("read {}", dir.display()))?;
        if keep.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        let path = entry.path();
        let kind = entry
            .file_type()
            .with_context(|| format!("inspect {}", path.display()))?;
        if kind.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .with_context(|| format!("remove {}", path.display()))?;
    }
    Ok(())
}

/// Create a tablespace's directory (absent or empty: never cleared, `--force` is for the data
/// directory only) and the `pg_tblspc/<oid>` link to it; an in-place tablespace is the
/// `pg_tblspc/<oid>` directory itself.
pub(super) fn prepare_tablespace(
    pgdata: &Path,
    oid: u32,
    dir: &Path,
    owner: Option<Owner>,
) -> anyhow::Result<()> {
    ensure_dir(pgdata, "pg_tblspc", 0o700, owner)?;
    let link = pgdata.join("pg_tblspc").join(oid.to_string());
    if dir == link {
        return ensure_dir(pgdata, &format!("pg_tblspc/{oid}"), 0o700, owner);
    }
    if inspect_dir(dir)?.non_empty {
        // Checked before anything was written; it filled up since.
        bail!(
            "tablespace directory {} is no longer empty; nothing in it was touched",
            dir.display()
        );
    }
    if !dir.exists() {
        fs::create_dir_all(dir)
            .with_context(|| format!("create tablespace directory {}", dir.display()))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", dir.display()))?;
    os::chown(dir, owner)?;
    std::os::unix::fs::symlink(dir, &link)
        .with_context(|| format!("link {} to {}", link.display(), dir.display()))?;
    os::chown(&link, owner)
}

/// Create `rel` under `root` (one level) if missing.
pub(super) fn ensure_dir(
    root: &Path,
    rel: &str,
    mode: u32,
    owner: Option<Owner>,
) -> anyhow::Result<()> {
    let path = root.join(rel);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("{} exists and is not a directory", path.display()),
        Err(_) => {
            fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))?;
            os::chown(&path, owner)
        }
    }
}
