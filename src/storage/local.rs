//! Writing a local repository: private modes whatever the process umask, durable on return.
//!
//! Every directory created is 0700 and every object 0600, set explicitly (the mode given at
//! creation, then `chmod`, since the umask can only remove bits). The process umask is not
//! changed: that would be process-wide state, and would also affect files this program
//! writes elsewhere (a restored data directory, `wal-fetch` output inside `pg_wal`).
//! An object is written to a staging file next to its key (`<key>#<digits>`, a name
//! object_store's listing skips), fsynced, and renamed (or hard-linked, for a create-only
//! put) into place, then its directory is fsynced. Nothing is ever readable by others, not
//! even while it is written.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use object_store::PutPayload;
use tokio::io::AsyncWriteExt;

use super::Put;

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// Create `dir` and any missing directory above it, each 0700. Existing directories are
/// left as they are (an operator may have chosen the parent's mode).
pub(super) fn make_private_dirs(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_private_dirs(parent)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)),
        // Another writer (a parallel wal-push) created it first.
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// A staging file for `dest`, created 0600 (its parent directories 0700).
fn create_staged(dest: &Path) -> std::io::Result<(File, PathBuf)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if let Some(parent) = dest.parent() {
        make_private_dirs(parent)?;
    }
    loop {
        // Digits only after '#': object_store's listing skips such names.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut staged = dest.as_os_str().to_owned();
        staged.push(format!("#{}{n:06}", std::process::id()));
        let staged = PathBuf::from(staged);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&staged)
        {
            Ok(f) => {
                f.set_permissions(Permissions::from_mode(FILE_MODE))?;
                return Ok((f, staged));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Move a complete, fsynced staging file into place: rename, or for a create-only put a hard
/// link that fails when `dest` exists. Fsyncs the directory.
fn publish(staged: &Path, dest: &Path, create_only: bool) -> std::io::Result<Put> {
    let put = if create_only {
        let linked = std::fs::hard_link(staged, dest);
        let _ = std::fs::remove_file(staged);
        match linked {
            Ok(()) => Put::Stored,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Put::AlreadyExists),
            Err(e) => return Err(e),
        }
    } else {
        std::fs::rename(staged, dest)?;
        Put::Stored
    };
    if let Some(dir) = dest.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(put)
}

/// Store `data` at `dest` (blocking). `create_only`: leave an existing object alone.
pub(super) fn put(dest: &Path, data: &PutPayload, create_only: bool) -> std::io::Result<Put> {
    let (mut file, staged) = create_staged(dest)?;
    let written = data
        .iter()
        .try_for_each(|chunk| file.write_all(chunk))
        .and_then(|()| file.sync_all());
    drop(file);
    match written.and_then(|()| publish(&staged, dest, create_only)) {
        Ok(put) => Ok(put),
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            Err(e)
        }
    }
}

/// A streaming upload of a large object (a backup part) into a staging file.
pub(crate) struct LocalUpload {
    file: tokio::fs::File,
    staged: PathBuf,
    dest: PathBuf,
}

impl LocalUpload {
    /// Create the staging file (blocking).
    pub(super) fn start(dest: PathBuf) -> std::io::Result<Self> {
        let (file, staged) = create_staged(&dest)?;
        Ok(LocalUpload {
            file: tokio::fs::File::from_std(file),
            staged,
            dest,
        })
    }

    pub(super) async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data).await
    }

    /// Fsync and move into place; nothing is visible under the key before.
    pub(super) async fn finish(mut self) -> std::io::Result<()> {
        let synced = async {
            self.file.flush().await?;
            self.file.sync_all().await
        }
        .await;
        let (staged, dest) = (self.staged.clone(), self.dest.clone());
        drop(self.file);
        let result = match synced {
            Ok(()) => tokio::task::spawn_blocking({
                let staged = staged.clone();
                move || publish(&staged, &dest, false).map(|_| ())
            })
            .await
            .expect("publish task does not panic"),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(&staged).await;
        }
        result
    }

    pub(super) async fn abort(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.staged).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_and_directories_are_private_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("a/b/object");
        let data = PutPayload::from(b"one".to_vec());
        assert_eq!(put(&dest, &data, true).unwrap(), Put::Stored);
        assert_eq!(
            put(&dest, &PutPayload::from(b"two".to_vec()), true).unwrap(),
            Put::AlreadyExists
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"one");
        put(&dest, &PutPayload::from(b"three".to_vec()), false).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"three");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dest), 0o600);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
        let left: Vec<_> = std::fs::read_dir(tmp.path().join("a/b")).unwrap().collect();
        assert_eq!(left.len(), 1, "no staging file is left behind");
    }
}
