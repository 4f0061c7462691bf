//! `wal-push PATH`: PostgreSQL's `archive_command`.
//!
//! Exit 0 only after the file is durably stored with its checksum. PostgreSQL calls this
//! one file at a time, so each call that has to do real work also stores the next files
//! that `pg_wal/archive_status/*.ready` shows are waiting (look-ahead), in parallel, and
//! leaves a marker for each; the later call for such a file finds its marker and returns
//! at once. A marker is written only after the file is stored and checked.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context};
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::codec;
use crate::config::ArchiveConfig;
use crate::error::usage;
use crate::pg::events::EventIndex;
use crate::pg::walevents;
use crate::pg::walscan::LongPageHeader;
use crate::pg::{SystemId, WalFileName};
use crate::repo::{Archived, Repository, RepositoryInfo, WalCommits, WalObject};
use crate::settings::WalPushSettings;

/// Where look-ahead markers live, inside `pg_wal`.
const SPOOL: &str = "synapse_spool";

pub async fn run(
    repo: &Repository,
    cfg: &ArchiveConfig,
    push: &WalPushSettings,
) -> anyhow::Result<()> {
    let (path, name) = (push.path.as_path(), push.name);
    let wal_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let pushed_dir = wal_dir.join(SPOOL).join("pushed");

    let meta = std::fs::metadata(path).with_context(|| format!("read {}", path.display()))?;
    if !meta.is_file() {
        return Err(usage(format!("{} is not a regular file", path.display())));
    }
    if let Some(marker) = Marker::read(&pushed_dir, &name) {
        if marker.matches(&meta) {
            let _ = std::fs::remove_file(pushed_dir.join(name.to_string()));
            tracing::info!(file = %name, "already stored by look-ahead");
            return Ok(());
        }
    }

    let limits = Arc::new(Limits::new());
    let ahead = look_ahead(
        &wal_dir,
        &pushed_dir,
        &name,
        cfg.push_parallelism.saturating_sub(1),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (other, other_path) in ahead {
        let (repo, limits, pushed_dir, level) = (
            repo.clone(),
            limits.clone(),
            pushed_dir.clone(),
            cfg.compress_level,
        );
        tasks.spawn(async move {
            match push_one(&repo, &limits, &other, &other_path, level).await {
                Ok(marker) => {
                    if let Err(e) = marker.write(&pushed_dir, &other) {
                        tracing::warn!(file = %other, "could not record look-ahead push: {e:#}");
                    }
                    Some(other)
                }
                // The call for this file will report it properly.
                Err(e) => {
                    tracing::warn!(file = %other, "look-ahead push failed: {e:#}");
                    None
                }
            }
        });
    }
    let result = push_one(repo, &limits, &name, path, cfg.compress_level).await;
    let mut stored: Vec<WalFileName> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        stored.extend(joined.ok().flatten());
    }
    if result.is_ok() {
        stored.push(name);
    }
    // The archiver's position: the newest segment this call stored, its own or one pushed
    // ahead (the later call for that one returns at its marker and records nothing). Lets
    // `list`, `check` and the agent notice the newest segments deleted later. Best effort:
    // the segments are safely archived whatever happens here.
    if let Some(seg) = newest_segment(&stored) {
        if let Err(e) = repo.record_pushed(&seg).await {
            tracing::warn!(file = %seg, "could not record the archiver position: {e:#}");
        }
    }
    result?;
    Ok(())
}

/// The newest segment among `files` (by name: timeline, then position), as the archiver
/// position records it; history files, partial segments and backup labels are not positions.
fn newest_segment(files: &[WalFileName]) -> Option<crate::pg::WalSegmentName> {
    files
        .iter()
        .filter_map(|f| match f {
            WalFileName::Segment(seg) => Some(*seg),
            _ => None,
        })
        .max_by_key(|seg| seg.to_string())
}

/// Bounds on memory and CPU for one call: whole segments are held in memory one at a time,
/// in one reused buffer (to check, scan and hash them), and compressed in a streaming pass on
/// every core. Reusing the buffer matters: freed 16 MiB blocks are not always returned to
/// the OS, so fresh ones per segment would grow the process.
struct Limits {
    whole_file: tokio::sync::Mutex<Vec<u8>>,
    cpu: Semaphore,
}

impl Limits {
    fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Limits {
            whole_file: tokio::sync::Mutex::new(Vec::new()),
            cpu: Semaphore::new(cores),
        }
    }
}

/// Read, check, compress and store one WAL file.
async fn push_one(
    repo: &Repository,
    limits: &Limits,
    name: &WalFileName,
    path: &Path,
    level: u32,
) -> anyhow::Result<Marker> {
    let mut buffer = limits.whole_file.lock().await;
    let (name2, path2, mut data) = (*name, path.to_path_buf(), std::mem::take(&mut *buffer));
    let (checked, data) = tokio::task::spawn_blocking(move || {
        let checked = check(&name2, &path2, &mut data);
        (checked, data)
    })
    .await
    .expect("check task does not panic");
    *buffer = data;
    drop(buffer);
    let checked = checked?;
    if let Some(info) = &checked.identity {
        repo.ensure_identity(info).await?;
    }
    let permit = limits
        .cpu
        .acquire()
        .await
        .expect("semaphore is never closed");
    let (path2, header) = (path.to_path_buf(), checked.header.clone());
    let chunks = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Bytes>> {
        let file =
            std::fs::File::open(&path2).with_context(|| format!("read {}", path2.display()))?;
        let (chunks, read_sha) = codec::compress_stream(file, &header, level)
            .with_context(|| format!("read {}", path2.display()))?;
        if read_sha != header.sha256 {
            bail!(
                "{} changed while it was being archived; PostgreSQL will retry",
                path2.display()
            );
        }
        Ok(chunks)
    })
    .await
    .expect("compress task does not panic")?;
    drop(permit);
    let outcome = repo
        .put_wal(
            name,
            chunks.into_iter().collect::<WalObject>(),
            &checked.header,
        )
        .await
        .with_context(|| format!("archive {name}"))?;
    // The event index goes in after the segment: an index never names a segment the archive
    // lacks. Stored again when the segment was already archived (a retry after a failed
    // index write).
    if let (Some(index), WalFileName::Segment(seg)) = (&checked.events, name) {
        repo.put_events(seg, index)
            .await
            .with_context(|| format!("archive {name}: store its event index"))?;
    }
    match outcome {
        Archived::Stored => {
            tracing::info!(file = %name, sha256 = %checked.header.sha256, "archived")
        }
        Archived::AlreadyArchived => {
            tracing::info!(file = %name, "already archived with identical content")
        }
    }
    Ok(checked.marker)
}

/// What the first, whole-file pass learned.
struct Checked {
    header: codec::ObjectHeader,
    identity: Option<RepositoryInfo>,
    marker: Marker,
    /// The segment's events, when it has any.
    events: Option<EventIndex>,
}

/// Read the whole file: check it is what its name says, scan it for commit times and events,
/// hash it.
fn check(name: &WalFileName, path: &Path, data: &mut Vec<u8>) -> anyhow::Result<Checked> {
    use std::io::Read;
    data.clear();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(data))
        .with_context(|| format!("read {}", path.display()))?;
    let data = &data[..];
    let meta = std::fs::metadata(path).with_context(|| format!("read {}", path.display()))?;
    let mut commits = WalCommits::default();
    let mut events = None;
    let identity = if name.is_segment_data() {
        let header = LongPageHeader::parse(data)
            .with_context(|| format!("{}: not a valid WAL segment", path.display()))?;
        if let WalFileName::Segment(_) = name {
            if data.len() as u64 != u64::from(header.seg_size) {
                bail!(
                    "{}: truncated WAL segment: {} bytes, its header says segments are {} bytes",
                    path.display(),
                    data.len(),
                    header.seg_size
                );
            }
        }
        let seg = name.segment().expect("segment data has a segment");
        let size =
            crate::pg::WalSegmentSize::new(header.seg_size).context("invalid segment size")?;
        if header.page_addr != seg.start_lsn(size).0 {
            bail!(
                "{}: the file's first page is for LSN {}, but the name {} means {}; refusing a misnamed segment",
                path.display(),
                crate::pg::Lsn(header.page_addr),
                name,
                seg.start_lsn(size)
            );
        }
        // One walk for the commit times and the events (issue 16), unless the events are off.
        if !events_enabled() {
            if let Ok(summary) = crate::pg::walscan::scan_segment(data) {
                commits = WalCommits {
                    first_commit: summary.first_commit,
                    last_commit: summary.last_commit,
                };
            }
        } else if let Ok(scan) = walevents::scan_segment_events(data, seg.timeline) {
            commits = WalCommits {
                first_commit: scan.summary.first_commit,
                last_commit: scan.summary.last_commit,
            };
            if let (false, WalFileName::Segment(s)) = (scan.events.is_empty(), name) {
                events = Some(EventIndex::new(s.to_string(), scan.events));
            }
        }
        Some(RepositoryInfo::new(
            SystemId(header.system_id),
            header.pg_major(),
            header.seg_size,
        ))
    } else {
        None
    };
    let header = codec::ObjectHeader {
        sha256: codec::Sha256::of(data),
        size: data.len() as u64,
        extra: commits.to_extra(),
    };
    Ok(Checked {
        header,
        identity,
        marker: Marker::of(&meta),
        events,
    })
}

/// Whether segments are stored with their event index (`SYNAPSE_WAL_EVENTS=off`: not).
fn events_enabled() -> bool {
    std::env::var(crate::env::WAL_EVENTS).as_deref() != Ok("off")
}

/// Files waiting to be archived after `current`: `.history` first, then in WAL order.
fn look_ahead(
    wal_dir: &Path,
    pushed_dir: &Path,
    current: &WalFileName,
    max: usize,
) -> Vec<(WalFileName, PathBuf)> {
    if max == 0 {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(wal_dir.join("archive_status")) else {
        return Vec::new();
    };
    let mut ready: Vec<WalFileName> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".ready")?.parse().ok())
        .filter(|n| n != current)
        .collect();
    // Clear markers whose file PostgreSQL no longer lists as waiting.
    if let Ok(markers) = std::fs::read_dir(pushed_dir) {
        for m in markers.filter_map(|e| e.ok()) {
            let stale = m
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<WalFileName>().ok())
                .is_none_or(|n| !ready.contains(&n) && n != *current);
            if stale {
                let _ = std::fs::remove_file(m.path());
            }
        }
    }
    ready.retain(|n| !pushed_dir.join(n.to_string()).exists());
    ready.sort_by_key(|n| (!matches!(n, WalFileName::History(_)), order_key(n)));
    ready
        .into_iter()
        .take(max)
        .map(|n| (n, wal_dir.join(n.to_string())))
        .collect()
}

/// WAL order across timelines: compare the position part, then the timeline.
fn order_key(n: &WalFileName) -> (u32, u32, u32) {
    match n.segment() {
        Some(s) => (s.log, s.seg, s.timeline.0),
        None => (0, 0, n.timeline().0),
    }
}

/// Proof that a file was stored ahead: its size and modification time when it was read.
#[derive(Debug, PartialEq, Eq)]
struct Marker {
    size: u64,
    mtime_ns: u128,
}

impl Marker {
    fn of(meta: &std::fs::Metadata) -> Self {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Marker {
            size: meta.len(),
            mtime_ns,
        }
    }

    fn matches(&self, meta: &std::fs::Metadata) -> bool {
        *self == Marker::of(meta)
    }

    fn read(dir: &Path, name: &WalFileName) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(name.to_string())).ok()?;
        let (size, mtime) = text.trim().split_once(' ')?;
        Some(Marker {
            size: size.parse().ok()?,
            mtime_ns: mtime.parse().ok()?,
        })
    }

    fn write(&self, dir: &Path, name: &WalFileName) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, format!("{} {}\n", self.size, self.mtime_ns))?;
        std::fs::rename(tmp, dir.join(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_position_is_the_newest_segment_stored() {
        let files: Vec<WalFileName> = [
            "000000010000000000000004",
            "00000002.history",
            "000000020000000000000003",
            "000000010000000000000009",
        ]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
        assert_eq!(
            newest_segment(&files).unwrap().to_string(),
            "000000020000000000000003"
        );
        assert_eq!(newest_segment(&files[1..2]), None);
    }

    #[test]
    fn look_ahead_orders_history_first_and_skips_marked() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("archive_status");
        std::fs::create_dir_all(&status).unwrap();
        for f in [
            "000000010000000000000003.ready",
            "000000010000000000000002.ready",
            "000000010000000000000004.ready",
            "00000002.history.ready",
            "000000010000000000000001.done",
        ] {
            std::fs::write(status.join(f), "").unwrap();
        }
        let pushed = dir.path().join(SPOOL).join("pushed");
        let cur: WalFileName = "000000010000000000000002".parse().unwrap();
        Marker {
            size: 1,
            mtime_ns: 1,
        }
        .write(&pushed, &"000000010000000000000003".parse().unwrap())
        .unwrap();
        Marker {
            size: 1,
            mtime_ns: 1,
        }
        .write(&pushed, &"000000010000000000000001".parse().unwrap())
        .unwrap();
        let got: Vec<String> = look_ahead(dir.path(), &pushed, &cur, 5)
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(got, ["00000002.history", "000000010000000000000004"]);
        // the stale marker (…01 is .done) is cleared, the live one kept
        assert!(!pushed.join("000000010000000000000001").exists());
        assert!(pushed.join("000000010000000000000003").exists());
    }
}
