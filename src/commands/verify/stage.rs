//! Staging: the WAL of the plan fetched from the repository (each file checked against its
//! SHA-256) into the staging directory, in WAL order, while the instance recovers; its
//! restore_command waits for a planned file until it is staged.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use futures::StreamExt;

use super::plan::Plan;
use crate::format;
use crate::repo::Repository;
use crate::sandbox::ScratchDirs;

/// Created in the staging directory when staging has ended (done or failed).
pub(super) const STAGED_MARKER: &str = ".staged";
/// `.expected/<name>` for every file of the plan: restore_command waits only for those.
const EXPECTED_DIR: &str = ".expected";

/// How far staging is: files staged in plan order, and whether it has ended.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct StageProgress {
    pub staged: usize,
    pub done: bool,
}

/// The instance's restore_command: copy the file from the staging directory; for a file of
/// the plan that is not staged yet, wait until it is (or staging has ended). Anything else,
/// or a file staging could not get, exits 1 ("not in the archive") at once.
pub(super) fn staged_restore_command(wal: &Path) -> String {
    let w = wal.display();
    format!(
        "while [ ! -f {w}/%f ] && [ -f {w}/{EXPECTED_DIR}/%f ] && [ ! -f {w}/{STAGED_MARKER} ]; do sleep 0.1; done; \
         [ -f {w}/%f ] && cp {w}/%f %p"
    )
}

/// Mark the files of the plan as expected. Like everything in the staging directory, owned
/// by the instance's user (its restore_command reads them) and private (0700/0600).
pub(super) fn prepare_staging(plan: &Plan, dirs: &ScratchDirs) -> anyhow::Result<()> {
    let expected = dirs.wal.join(EXPECTED_DIR);
    std::fs::create_dir(&expected).with_context(|| format!("create {}", expected.display()))?;
    dirs.private_dir(&expected)?;
    for name in &plan.segments {
        dirs.write_private(&expected.join(name.to_string()), b"")?;
    }
    Ok(())
}

/// Fetch every file of the plan from the repository (each checked against its SHA-256) into
/// the staging directory, in plan order, each under a temporary name first so that
/// restore_command never sees a partial file; 0600 from the start, and the instance user's.
/// Stops early when `stop` is set.
pub(super) async fn stage_wal(
    repo: &Repository,
    plan: &Plan,
    dirs: &ScratchDirs,
    progress: &tokio::sync::watch::Sender<StageProgress>,
    stop: &AtomicBool,
) -> anyhow::Result<String> {
    let mut fetches = futures::stream::iter(plan.segments.iter().map(|name| async move {
        let Some((content, _)) = repo.get_wal(name).await? else {
            return Ok(None); // removed since the listing (expire): recovery will say so
        };
        let path = dirs.wal.join(name.to_string());
        let tmp = dirs.wal.join(format!(".tmp-{name}"));
        let len = content.len() as u64;
        write_private(&tmp, &content).await?;
        dirs.give(&tmp)?;
        tokio::fs::rename(&tmp, &path)
            .await
            .with_context(|| format!("rename {}", tmp.display()))?;
        Ok::<_, anyhow::Error>(Some(len))
    }))
    // As many at a time as a restore's prefetcher fetches: the replay speed measured here
    // predicts a restore's (`restore --dry-run`), so the WAL must arrive as it would there.
    // (Two at a time made staging the bottleneck: the prediction read up to 2.7x the
    // restore.)
    .buffered(crate::commands::wal_fetch::PREFETCH_CONCURRENCY);
    let mut files = 0;
    let mut bytes = 0;
    let mut seen = 0;
    while let Some(fetched) = fetches.next().await {
        if let Some(len) = fetched? {
            files += 1;
            bytes += len;
        }
        seen += 1;
        progress.send_modify(|p| p.staged = seen);
        if stop.load(Ordering::Relaxed) && seen < plan.segments.len() {
            return Ok(format!(
                "{files} of {} WAL files ({}) staged, SHA-256 checked, when recovery ended",
                plan.segments.len(),
                format::human_bytes(bytes)
            ));
        }
    }
    Ok(format!(
        "{files} WAL files ({}) from {} through {}, SHA-256 checked{}",
        format::human_bytes(bytes),
        plan.first_segment(),
        plan.last_segment(),
        if plan.missing.is_empty() {
            String::new()
        } else {
            format!(";{}", plan.missing_note())
        }
    ))
}

/// Write `data` to a new 0600 file (whatever the umask) and flush it.
async fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(data)
        .await
        .with_context(|| format!("write {}", path.display()))?;
    f.flush()
        .await
        .with_context(|| format!("write {}", path.display()))
}
