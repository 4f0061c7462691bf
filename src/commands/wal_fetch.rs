//! `wal-fetch NAME DEST`: PostgreSQL's `restore_command`.
//!
//! Exit 0 with DEST written (atomically, after its SHA-256 checked out); exit 1 when the
//! file is not in the archive; any other failure (store unreachable after retries, a
//! corrupt object) exits 255 so that PostgreSQL stops recovery instead of taking the
//! failure as the end of WAL and promoting on a partial history.
//!
//! Each call also downloads the next segments into `pg_wal/synapse_spool/fetched/`
//! (verified content only), so replay does not wait on one GET at a time.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::codec::Sha256;
use crate::error::Failure;
use crate::pg::{WalFileName, WalSegmentName, WalSegmentSize};
use crate::repo::Repository;

pub async fn run(
    repo: &Repository,
    prefetch: usize,
    name: &WalFileName,
    dest: &Path,
) -> anyhow::Result<()> {
    let wal_dir = dest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let spool = wal_dir.join("synapse_spool").join("fetched");

    if let Some(len) = take_from_spool(&spool, name, dest)? {
        tracing::info!(file = %name, "restored from prefetch spool");
        if let WalFileName::Segment(seg) = name {
            prefetch_after(repo, &spool, *seg, len, prefetch).await;
        }
        return Ok(());
    }

    let Some((content, _header)) = repo
        .get_wal(name)
        .await
        .with_context(|| format!("fetch {name}"))?
    else {
        tracing::info!(file = %name, "not in the archive");
        return Err(Failure::WalNotFound(name.to_string()).into());
    };
    let len = content.len() as u64;
    write_atomically(dest, &content).with_context(|| format!("write {}", dest.display()))?;
    drop(content);
    tracing::info!(file = %name, "restored from archive");
    if let WalFileName::Segment(seg) = name {
        prefetch_after(repo, &spool, *seg, len, prefetch).await;
    }
    Ok(())
}

/// Move a prefetched, still-intact file to DEST. Returns its length.
fn take_from_spool(spool: &Path, name: &WalFileName, dest: &Path) -> anyhow::Result<Option<u64>> {
    let file = spool.join(name.to_string());
    let sum_file = spool.join(format!("{name}.sha256"));
    let (Ok(content), Ok(sum)) = (std::fs::read(&file), std::fs::read_to_string(&sum_file)) else {
        return Ok(None);
    };
    let good = sum
        .trim()
        .parse::<Sha256>()
        .is_ok_and(|s| s == Sha256::of(&content));
    let _ = std::fs::remove_file(&sum_file);
    if !good {
        // Damaged on local disk since it was verified: ignore it and go to the archive.
        tracing::warn!(file = %name, "prefetched copy is damaged; fetching again");
        let _ = std::fs::remove_file(&file);
        return Ok(None);
    }
    std::fs::rename(&file, dest)
        .or_else(|_| {
            write_atomically(dest, &content).map(|()| {
                let _ = std::fs::remove_file(&file);
            })
        })
        .with_context(|| format!("write {}", dest.display()))?;
    Ok(Some(content.len() as u64))
}

/// Download the segments after `seg` that are not spooled yet. Failures only mean less
/// prefetch: the call that needs the file will report them.
async fn prefetch_after(
    repo: &Repository,
    spool: &Path,
    seg: WalSegmentName,
    seg_len: u64,
    count: usize,
) {
    let Some(size) = u32::try_from(seg_len).ok().and_then(WalSegmentSize::new) else {
        return;
    };
    if count == 0 || std::fs::create_dir_all(spool).is_err() {
        return;
    }
    clean_spool(spool, seg, size);
    let mut next = seg;
    let mut wanted = Vec::new();
    for _ in 0..count {
        next = next.next(size);
        if !spool.join(next.to_string()).exists() {
            wanted.push(next);
        }
    }
    let fetches = wanted.into_iter().map(|s| {
        let spool = spool.to_path_buf();
        async move {
            let name = WalFileName::Segment(s);
            match repo.get_wal(&name).await {
                Ok(Some((content, header))) => {
                    let res = write_atomically(
                        &spool.join(format!("{name}.sha256")),
                        header.sha256.to_string().as_bytes(),
                    )
                    .and_then(|()| write_atomically(&spool.join(name.to_string()), &content));
                    if let Err(e) = res {
                        tracing::debug!(file = %name, "prefetch not kept: {e}");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(file = %name, "prefetch failed: {e:#}"),
            }
        }
    });
    futures::future::join_all(fetches).await;
}

/// Remove spooled segments at or before `current` on its timeline, and leftovers.
fn clean_spool(spool: &Path, current: WalSegmentName, size: WalSegmentSize) {
    let Ok(entries) = std::fs::read_dir(spool) else {
        return;
    };
    for e in entries.filter_map(|e| e.ok()) {
        let fname = e.file_name();
        let Some(s) = fname.to_str() else { continue };
        let base = s.strip_suffix(".sha256").unwrap_or(s);
        let stale = match base.parse::<WalSegmentName>() {
            Ok(n) => n.timeline != current.timeline || n.segno(size) <= current.segno(size),
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
    let tmp = dir.join(format!(".{fname}.synapse-tmp"));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, dest).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
