//! `wal-fetch NAME DEST`: PostgreSQL's `restore_command`.
//!
//! Exit 0 with DEST written (atomically, after its SHA-256 checked out); exit 1 when the
//! file is not in the archive; any other failure (store unreachable after retries, a
//! corrupt object) exits 255 so that PostgreSQL stops recovery instead of taking the
//! failure as the end of WAL and promoting on a partial history.
//!
//! Replay should not wait on one GET at a time: after serving a segment, `wal-fetch` makes
//! sure a background prefetcher (`wal-prefetch`, a detached process of our own) is filling
//! `pg_wal/synapse_spool/fetched/` with the next segments — verified content only, written
//! atomically — and returns at once. A later call for a spooled segment is a rename.

use std::path::{Path, PathBuf};

use anyhow::Context;
use futures::StreamExt;

use crate::error::Failure;
use crate::pg::history::{TimelineHistory, TimelinePath};
use crate::pg::{TimelineId, WalFileName, WalSegmentName, WalSegmentSize};
use crate::repo::Repository;
use crate::settings::{WalFetchSettings, WalPrefetchSettings};

/// How to start the background prefetcher: this binary with the same config and cluster.
pub struct PrefetchSpawn {
    pub count: usize,
    pub config: Option<PathBuf>,
    pub cluster: Option<String>,
}

const PID_FILE: &str = ".prefetch.pid";
/// Downloads the prefetcher runs at once (and verify's staging, so that the replay speed it
/// measures is the one a restore sees).
pub(crate) const PREFETCH_CONCURRENCY: usize = 4;

pub async fn run(
    repo: &Repository,
    prefetch: &PrefetchSpawn,
    fetch: &WalFetchSettings,
) -> anyhow::Result<()> {
    let (name, dest, timeline) = (&fetch.name, fetch.dest.as_path(), fetch.timeline);
    let wal_dir = dest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let spool_root = wal_dir.join("synapse_spool");
    let spool = spool_root.join("fetched");

    // The path recovery follows, when restore told us (`--timeline`).
    let path = match (name, timeline) {
        (WalFileName::Segment(_), Some(tli)) => Some(
            timeline_path(repo, &spool_root, tli)
                .await
                .with_context(|| format!("read the history of timeline {}", tli.0))?,
        ),
        _ => None,
    };
    if let (WalFileName::Segment(seg), Some((path, size))) = (name, &path) {
        if !path.uses(seg, *size) {
            tracing::warn!(
                file = %name,
                "not served: recovery follows timeline path {path}, and this segment lies off it \
                 (WAL of another branch, e.g. an old primary that kept writing after a failover)"
            );
            return Err(Failure::WalNotFound(name.to_string()).into());
        }
    }

    let len = match take_from_spool(&spool, name, dest)? {
        Some(len) => {
            tracing::info!(file = %name, "restored from prefetch spool");
            len
        }
        None => {
            let Some((content, _header)) = repo
                .get_wal(name)
                .await
                .with_context(|| format!("fetch {name}"))?
            else {
                tracing::info!(file = %name, "not in the archive");
                if name.is_segment_data() {
                    // The end of the archive: nothing after this is coming; free the spool.
                    let _ = std::fs::remove_dir_all(&spool);
                }
                return Err(Failure::WalNotFound(name.to_string()).into());
            };
            let len = content.len() as u64;
            write_atomically(dest, &content)
                .with_context(|| format!("write {}", dest.display()))?;
            tracing::info!(file = %name, "restored from archive");
            len
        }
    };
    if let (WalFileName::Segment(seg), Some(size)) =
        (name, u32::try_from(len).ok().and_then(WalSegmentSize::new))
    {
        let path = path.as_ref().map(|(p, _)| p);
        clean_spool(&spool, *seg, size, path);
        if let Err(e) = ensure_prefetcher(&spool, *seg, size, path, prefetch) {
            tracing::debug!("could not start the prefetcher: {e:#}");
        }
    }
    Ok(())
}

/// The path to `timeline` and the segment size, cached in the spool directory after the first
/// call (history files never change once archived: a different one is refused).
async fn timeline_path(
    repo: &Repository,
    spool_root: &Path,
    timeline: TimelineId,
) -> anyhow::Result<(TimelinePath, WalSegmentSize)> {
    let cache = spool_root.join(format!("path-{timeline}.json"));
    let cached: Option<(u32, String)> = std::fs::read(&cache)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let (size, history) = match cached {
        Some(c) => c,
        None => {
            let info = repo
                .info()
                .await?
                .context("the repository has no repository.json")?;
            let history = if timeline == TimelineId(1) {
                String::new()
            } else {
                let name = WalFileName::History(timeline);
                let (content, _) = repo
                    .get_wal(&name)
                    .await?
                    .with_context(|| format!("{name} is not in the archive"))?;
                String::from_utf8_lossy(&content).into_owned()
            };
            let entry = (info.wal_segment_size, history);
            if std::fs::create_dir_all(spool_root).is_ok() {
                let body = serde_json::to_vec(&entry).expect("serializes");
                let _ = write_atomically(&cache, &body);
            }
            entry
        }
    };
    let size = WalSegmentSize::new(size).context("invalid wal_segment_size")?;
    let path = if history.is_empty() {
        TimelinePath::root(timeline)
    } else {
        TimelinePath::from_history(&TimelineHistory::parse(timeline, &history)?)
    };
    Ok((path, size))
}

/// Move a prefetched file to DEST (a rename: it was verified before it was spooled).
/// Returns its length.
fn take_from_spool(spool: &Path, name: &WalFileName, dest: &Path) -> anyhow::Result<Option<u64>> {
    let file = spool.join(name.to_string());
    let Ok(meta) = std::fs::metadata(&file) else {
        return Ok(None);
    };
    match std::fs::rename(&file, dest) {
        Ok(()) => Ok(Some(meta.len())),
        // Another process took it, or another file system: fetch from the archive instead.
        Err(_) => Ok(None),
    }
}

/// The next `count` segments after `seg`: along `path` when known (crossing into a newer
/// timeline at its switch segment), else on `seg`'s timeline.
fn following(
    seg: WalSegmentName,
    size: WalSegmentSize,
    count: usize,
    path: Option<&TimelinePath>,
) -> Vec<WalSegmentName> {
    let mut next = seg;
    (0..count)
        .map(|_| {
            next = next.next(size);
            if let Some(p) = path {
                next = p.segment(next.segno(size), size);
            }
            next
        })
        .collect()
}

/// Start a prefetcher unless the spool already holds what comes next or one is running.
fn ensure_prefetcher(
    spool: &Path,
    seg: WalSegmentName,
    size: WalSegmentSize,
    path: Option<&TimelinePath>,
    p: &PrefetchSpawn,
) -> anyhow::Result<()> {
    if p.count == 0 {
        return Ok(());
    }
    let wanted = following(seg, size, p.count, path);
    if wanted.iter().all(|s| spool.join(s.to_string()).exists()) {
        return Ok(());
    }
    if prefetcher_running(spool) {
        return Ok(());
    }
    std::fs::create_dir_all(spool)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    if let Some(c) = &p.config {
        cmd.arg("--config")
            .arg(std::fs::canonicalize(c).unwrap_or_else(|_| c.clone()));
    }
    if let Some(c) = &p.cluster {
        cmd.arg("--cluster").arg(c);
    }
    cmd.arg("wal-prefetch")
        .arg(seg.to_string())
        .arg(std::fs::canonicalize(spool)?)
        .arg("--count")
        .arg(p.count.to_string())
        .arg("--segment-size")
        .arg(size.bytes().to_string());
    if let Some(path) = path {
        cmd.arg("--timeline").arg(path.target().0.to_string());
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Not waited for: it outlives this call and exits when the spool is full.
    cmd.spawn()?;
    Ok(())
}

fn prefetcher_running(spool: &Path) -> bool {
    std::fs::read_to_string(spool.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// `wal-prefetch` (internal): download the `count` segments after `after` into `spool`.
/// Failures only mean less prefetch: the call that needs a file reports them.
pub async fn prefetch(repo: &Repository, settings: &WalPrefetchSettings) -> anyhow::Result<()> {
    let WalPrefetchSettings {
        after,
        spool,
        count,
        segment_size: size,
        timeline,
    } = settings;
    let (spool, count, size, timeline) = (spool.as_path(), *count, *size, *timeline);
    let pid_file = spool.join(PID_FILE);
    let mine = std::process::id().to_string();
    // Claim the spool: create-only, or take over a dead prefetcher's file.
    let claimed = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&pid_file);
    if claimed.is_err() {
        if prefetcher_running(spool) {
            return Ok(());
        }
        write_atomically(&pid_file, mine.as_bytes())?;
    } else {
        write_atomically(&pid_file, mine.as_bytes())?;
    }
    let path = match (timeline, spool.parent()) {
        (Some(tli), Some(root)) => Some(timeline_path(repo, root, tli).await?.0),
        _ => None,
    };
    let wanted: Vec<WalSegmentName> = following(*after, size, count, path.as_ref())
        .into_iter()
        .filter(|s| !spool.join(s.to_string()).exists())
        .collect();
    futures::stream::iter(wanted)
        .map(|s| async move {
            let name = WalFileName::Segment(s);
            match repo.get_wal(&name).await {
                Ok(Some((content, _))) => {
                    if let Err(e) = write_atomically(&spool.join(name.to_string()), &content) {
                        tracing::debug!(file = %name, "prefetch not kept: {e}");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(file = %name, "prefetch failed: {e:#}"),
            }
        })
        .buffer_unordered(PREFETCH_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    if std::fs::read_to_string(&pid_file).is_ok_and(|s| s.trim() == mine) {
        let _ = std::fs::remove_file(&pid_file);
    }
    Ok(())
}

/// Remove spooled segments at or before `current`, segments off the timeline path (or, with no
/// path, on another timeline than `current`'s), and stray files.
fn clean_spool(
    spool: &Path,
    current: WalSegmentName,
    size: WalSegmentSize,
    path: Option<&TimelinePath>,
) {
    let Ok(entries) = std::fs::read_dir(spool) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let fname = e.file_name();
        let Some(s) = fname.to_str() else { continue };
        if s == PID_FILE || s.starts_with('.') {
            continue;
        }
        let stale = match s.parse::<WalSegmentName>() {
            Ok(n) => {
                let off = match path {
                    Some(p) => !p.uses(&n, size),
                    None => n.timeline != current.timeline,
                };
                off || n.segno(size) <= current.segno(size)
            }
            Err(_) => true,
        };
        if stale {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Write to a temporary name beside `dest`, then rename: readers never see a partial file.
pub fn write_atomically(dest: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = dest.parent().unwrap_or_else(|| Path::new("."));
    let fname = dest.file_name().and_then(|s| s.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{fname}.{}.synapse-tmp", std::process::id()));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, dest).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_cleaning_keeps_only_what_comes_next() {
        let d = tempfile::tempdir().unwrap();
        let size = WalSegmentSize::DEFAULT;
        for f in [
            "000000010000000000000003",
            "000000010000000000000005",
            "000000020000000000000006",
            "junk",
            PID_FILE,
        ] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        clean_spool(
            d.path(),
            "000000010000000000000004".parse().unwrap(),
            size,
            None,
        );
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [PID_FILE, "000000010000000000000005"]);
        let next: Vec<String> =
            following("0000000100000000000000FE".parse().unwrap(), size, 3, None)
                .iter()
                .map(|s| s.to_string())
                .collect();
        assert_eq!(
            next,
            [
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
    }

    #[test]
    fn prefetch_and_cleaning_follow_the_timeline_path() {
        let size = WalSegmentSize::DEFAULT;
        let history =
            TimelineHistory::parse(TimelineId(2), "1\t0/5000090\tno recovery target\n").unwrap();
        let path = TimelinePath::from_history(&history);
        let next: Vec<String> = following(
            "000000010000000000000003".parse().unwrap(),
            size,
            3,
            Some(&path),
        )
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            next,
            [
                "000000010000000000000004",
                "000000020000000000000005",
                "000000020000000000000006"
            ]
        );
        let d = tempfile::tempdir().unwrap();
        for f in [
            "000000020000000000000005",
            // The old primary's copy past the branch point.
            "000000010000000000000006",
        ] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        clean_spool(
            d.path(),
            "000000010000000000000004".parse().unwrap(),
            size,
            Some(&path),
        );
        let left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["000000020000000000000005"]);
    }
}
