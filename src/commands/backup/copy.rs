//! Copy the data directory into a few gzip'd tar parts, compressed on all cores and streamed
//! to the store. Memory is bounded by the number of parts, not by the database size.
//!
//! Each part's tar stream is compressed block by block on one pool of `parallelism` threads
//! (see [`crate::pgz`]), so a part dominated by one large relation file still uses every core.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sha2::{Digest, Sha256 as Hasher};
use tokio::sync::mpsc;

use crate::codec::{HashingWriter, Sha256};
use crate::pg::exclude::PlannedFile;
use crate::pg::page::{self, BLCKSZ};
use crate::pg::Lsn;
use crate::pgz;
use crate::repo::blockmap::{page_digest, BlockMap};
use crate::repo::manifest::{BackupId, FileEntry, PageProblem, PartEntry, Stored};
use crate::repo::Repository;

/// Bytes handed to the uploader at a time.
const CHUNK: usize = 1 << 20;

pub struct CopyJob {
    pub repo: Repository,
    pub id: BackupId,
    pub files: Vec<PlannedFile>,
    pub parallelism: usize,
    pub level: u32,
    /// Pages newer than this were written during the backup and are not checked.
    pub start_lsn: Lsn,
    pub data_checksums: bool,
    pub progress: Arc<AtomicU64>,
    /// The parent's block map: set for an incremental, which stores only the blocks of a
    /// relation file whose digest differs from it (see [`super::incr`]).
    pub parent: Option<Arc<BlockMap>>,
}

pub struct CopyResult {
    pub parts: Vec<PartEntry>,
    pub files: Vec<FileEntry>,
    pub page_problems: Vec<PageProblem>,
    /// The digests of every relation file's blocks, as this backup restores them.
    pub block_map: BlockMap,
}

/// Run the copy: `parallelism` workers take files (largest first) from one queue, each
/// writing its own part; `parallelism` threads compress the blocks of all parts.
pub async fn copy(job: CopyJob) -> anyhow::Result<CopyResult> {
    let mut files = job.files;
    files.sort_by(|a, b| b.size.cmp(&a.size).then(a.rel.cmp(&b.rel)));
    let parts = job.parallelism.clamp(1, files.len().max(1));
    let pool = pgz::Pool::new(job.parallelism).context("start the compression threads")?;
    let queue = Arc::new(Mutex::new(VecDeque::from(files)));
    let mut workers = Vec::new();
    for index in 0..parts {
        let mut writer = job.repo.part_writer(&job.id, index).await?;
        let name = writer.name().to_string();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let uploader = tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if let Err(e) = writer.write(&chunk).await {
                    writer.abort().await;
                    return Err(e);
                }
            }
            writer.finish().await
        });
        let ctx = WorkerCtx {
            queue: queue.clone(),
            progress: job.progress.clone(),
            start_lsn: job.start_lsn,
            data_checksums: job.data_checksums,
            part: index,
            parent: job.parent.clone(),
        };
        let gz = pgz::ParallelGzWriter::new(
            HashingWriter::new(ChannelWriter::new(tx)),
            pool.clone(),
            job.level,
            pgz::DEFAULT_BLOCK_SIZE,
            // One block more than there are threads: when the other parts are done, this one
            // alone keeps every thread busy while its oldest block is being written out.
            pool.threads() + 1,
        );
        let compress = tokio::task::spawn_blocking(move || ctx.run(gz));
        workers.push((name, compress, uploader));
    }
    let mut result = CopyResult {
        parts: Vec::new(),
        files: Vec::new(),
        page_problems: Vec::new(),
        block_map: BlockMap::default(),
    };
    let mut first_error = None;
    for (name, compress, uploader) in workers {
        let compressed = compress.await.expect("copy worker does not panic");
        let uploaded = uploader.await.expect("upload task does not panic");
        match (compressed, uploaded) {
            (Ok(out), Ok(())) => {
                result.parts.push(PartEntry {
                    key: name,
                    size: out.stored_size,
                    sha256: out.stored_sha256,
                    original_size: out.original_size,
                });
                result.files.extend(out.files);
                result.page_problems.extend(out.problems);
                result.block_map.extend(out.block_map);
            }
            // An upload failure also breaks the compressor's pipe: report the upload's error.
            (_, Err(e)) | (Err(e), Ok(())) => {
                first_error.get_or_insert(e.context(format!("write part {name}")));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    result.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(result)
}

/// A part as it is written: tar → block-parallel gzip → SHA-256 of the stored bytes → uploader.
type PartWriter = pgz::ParallelGzWriter<HashingWriter<ChannelWriter>>;

pub(super) struct WorkerCtx {
    queue: Arc<Mutex<VecDeque<PlannedFile>>>,
    pub(super) progress: Arc<AtomicU64>,
    pub(super) start_lsn: Lsn,
    data_checksums: bool,
    pub(super) part: usize,
    parent: Option<Arc<BlockMap>>,
}

struct WorkerOutput {
    files: Vec<FileEntry>,
    problems: Vec<PageProblem>,
    block_map: BlockMap,
    stored_size: u64,
    stored_sha256: Sha256,
    original_size: u64,
}

impl WorkerCtx {
    fn run(self, gz: PartWriter) -> anyhow::Result<WorkerOutput> {
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Complete);
        let mut files = Vec::new();
        let mut problems = Vec::new();
        let mut block_map = BlockMap::default();
        let mut original_size = 0;
        loop {
            let next = self
                .queue
                .lock()
                .expect("queue lock is not poisoned")
                .pop_front();
            let Some(planned) = next else { break };
            let parent = self.parent.as_ref().and_then(|p| p.get(&planned.rel));
            let copied = match parent.filter(|_| super::incr::block_wise(&planned)) {
                Some(parent) => self.copy_changed(&mut tar, &planned, parent, &mut problems)?,
                None => self.copy_file(&mut tar, &planned, &mut problems)?,
            };
            let Some((entry, digests)) = copied else {
                continue;
            };
            if let Some(digests) = digests {
                block_map.insert(entry.path.clone(), digests);
            }
            original_size += match entry.stored {
                Stored::Whole => entry.size,
                Stored::Blocks { count } => u64::from(count) * BLCKSZ as u64,
                Stored::Unchanged => 0,
            };
            files.push(entry);
        }
        let gz = tar.into_inner().context("finish tar stream")?;
        let hashing = gz.finish().context("finish gzip stream")?;
        let (mut sink, sha, size) = hashing.finish();
        sink.flush().context("flush part")?;
        Ok(WorkerOutput {
            files,
            problems,
            block_map,
            stored_size: size,
            stored_sha256: sha,
            original_size,
        })
    }

    /// Open a planned file for reading, checking page checksums when the cluster has them;
    /// `None` when it vanished before it could be opened.
    pub(super) fn open<'a>(
        &'a self,
        planned: &'a PlannedFile,
    ) -> anyhow::Result<Option<FileReader<'a>>> {
        let file = match File::open(&planned.abs) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("open {}", planned.abs.display())),
        };
        let checks = if self.data_checksums {
            planned.checksum_base_block
        } else {
            None
        };
        Ok(Some(FileReader::new(
            file,
            planned,
            checks,
            self.start_lsn,
            &self.progress,
        )))
    }

    /// Copy one file whole; `None` when it vanished before it could be opened. With the
    /// entry, the digests of its blocks when it is a relation file.
    fn copy_file<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        planned: &PlannedFile,
        problems: &mut Vec<PageProblem>,
    ) -> anyhow::Result<Option<Copied>> {
        let Some(mut reader) = self.open(planned)? else {
            return Ok(None);
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(planned.size);
        header.set_mode(planned.mode);
        header.set_mtime(planned.mtime.max(0) as u64);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, &planned.rel, &mut reader)
            .with_context(|| format!("copy {}", planned.abs.display()))?;
        problems.append(&mut reader.problems);
        let digests = reader.digests.take();
        Ok(Some((reader.entry(self.part, Stored::Whole), digests)))
    }
}

/// A copied file's manifest entry, and its block digests when it is a relation file.
pub(super) type Copied = (FileEntry, Option<Vec<u64>>);

/// Reads exactly the planned size (a file that grew is cut, one that shrank is padded with
/// zeros: WAL replay fixes both), hashing the bytes, checking page checksums and, for a
/// relation file of whole blocks, taking every block's digest.
pub(super) struct FileReader<'a> {
    file: File,
    planned: &'a PlannedFile,
    checks: Option<u32>,
    start_lsn: Lsn,
    progress: &'a AtomicU64,
    buf: Vec<u8>,
    pos: usize,
    /// Bytes of the file consumed into `buf` so far.
    offset: u64,
    hasher: Hasher,
    pub(super) problems: Vec<PageProblem>,
    /// The digest of every block read so far, when the file is a relation file.
    pub(super) digests: Option<Vec<u64>>,
    eof: bool,
}

impl<'a> FileReader<'a> {
    fn new(
        file: File,
        planned: &'a PlannedFile,
        checks: Option<u32>,
        start_lsn: Lsn,
        progress: &'a AtomicU64,
    ) -> Self {
        FileReader {
            file,
            planned,
            checks,
            start_lsn,
            progress,
            buf: Vec::with_capacity(CHUNK),
            pos: 0,
            offset: 0,
            hasher: Hasher::new(),
            problems: Vec::new(),
            digests: super::incr::is_relation_of_blocks(planned).then(Vec::new),
            eof: false,
        }
    }

    /// The manifest entry of what was read (call at the end).
    pub(super) fn entry(&mut self, part: usize, stored: Stored) -> FileEntry {
        FileEntry {
            path: self.planned.rel.clone(),
            size: self.planned.size,
            mode: self.planned.mode,
            mtime: self.planned.mtime,
            sha256: Sha256(std::mem::take(&mut self.hasher).finalize().into()),
            part,
            stored,
        }
    }

    fn refill(&mut self) -> std::io::Result<()> {
        let want = (self.planned.size - self.offset).min(CHUNK as u64) as usize;
        self.buf.clear();
        self.buf.resize(want, 0);
        let mut filled = 0;
        while filled < want && !self.eof {
            match self.file.read(&mut self.buf[filled..]) {
                Ok(0) => self.eof = true, // shrank: the rest stays zero
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(base) = self.checks {
            self.check_pages(base, filled);
        }
        self.hasher.update(&self.buf);
        if let Some(digests) = self.digests.as_mut() {
            digests.extend(self.buf.chunks_exact(BLCKSZ).map(page_digest));
        }
        self.offset += want as u64;
        self.pos = 0;
        self.progress.fetch_add(want as u64, Ordering::Relaxed);
        Ok(())
    }

    fn check_pages(&mut self, base_block: u32, filled: usize) {
        let whole = filled - filled % BLCKSZ;
        for start in (0..whole).step_by(BLCKSZ) {
            let page: &[u8; BLCKSZ] = self.buf[start..start + BLCKSZ]
                .try_into()
                .expect("page-sized slice");
            // New pages (pd_upper == 0) and pages written since the backup started are skipped.
            if u16::from_le_bytes([page[14], page[15]]) == 0
                || page::page_lsn(page) >= self.start_lsn.0
            {
                continue;
            }
            let file_offset = self.offset + start as u64;
            let block = base_block + (file_offset / BLCKSZ as u64) as u32;
            if page::verify_page(page, block).is_ok() {
                continue;
            }
            // Re-read once: the first read may have raced a concurrent write of this page.
            let mut again = [0u8; BLCKSZ];
            if self.file.read_exact_at(&mut again, file_offset).is_err() {
                continue;
            }
            if page::page_lsn(&again) >= self.start_lsn.0 {
                continue;
            }
            if let Err(bad) = page::verify_page(&again, block) {
                tracing::warn!(
                    file = %self.planned.rel,
                    block = block,
                    "page checksum mismatch: calculated {:04X} but the page has {:04X}",
                    bad.computed,
                    bad.stored
                );
                self.problems.push(PageProblem {
                    path: self.planned.rel.clone(),
                    block,
                    expected: bad.stored,
                    found: bad.computed,
                });
            }
        }
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.offset >= self.planned.size {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A `Write` that hands 1 MiB chunks to the async uploader, blocking when it is behind.
struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Vec<u8>>) -> Self {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(chunk).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload of this part failed")
        })
    }
}
