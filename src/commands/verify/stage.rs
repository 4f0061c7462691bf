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

pub(super) fn prepare_staging(plan: &Plan, wal: &Path) -> anyhow::Result<()> {
    let expected = wal.join(EXPECTED_DIR);
    std::fs::create_dir(&expected).with_context(|| format!("create {}", expected.display()))?;
    for name in &plan.segments {
        let p = expected.join(name.to_string());
        std::fs::write(&p, b"").with_context(|| format!("create {}", p.display()))?;
    }
    Ok(())
}

/// Fetch every file of the plan from the repository (each checked against its SHA-256) into
/// the staging directory, in plan order, each under a temporary name first so that
/// restore_command never sees a partial file. Stops early when `stop` is set.
pub(super) async fn stage_wal(
    repo: &Repository,
    plan: &Plan,
    dir: &Path,
    progress: &tokio::sync::watch::Sender<StageProgress>,
    stop: &AtomicBool,
) -> anyhow::Result<String> {
    let mut fetches = futures::stream::iter(plan.segments.iter().map(|name| async move {
        let Some((content, _)) = repo.get_wal(name).await? else {
            return Ok(None); // removed since the listing (expire): recovery will say so
        };
        let path = dir.join(name.to_string());
        let tmp = dir.join(format!(".tmp-{name}"));
        let len = content.len() as u64;
        tokio::fs::write(&tmp, content)
            .await
            .with_context(|| format!("write {}", tmp.display()))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .with_context(|| format!("rename {}", tmp.display()))?;
        Ok::<_, anyhow::Error>(Some(len))
    }))
    // Two at a time: replay uses one core, staging must keep ahead of it, not crowd it.
    .buffered(2);
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
