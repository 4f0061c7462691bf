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
use crate::repo::manifest::{BackupId, FileEntry, PageProblem, PartEntry};
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
}

pub struct CopyResult {
    pub parts: Vec<PartEntry>,
    pub files: Vec<FileEntry>,
    pub page_problems: Vec<PageProblem>,
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

struct WorkerCtx {
    queue: Arc<Mutex<VecDeque<PlannedFile>>>,
    progress: Arc<AtomicU64>,
    start_lsn: Lsn,
    data_checksums: bool,
    part: usize,
}

struct WorkerOutput {
    files: Vec<FileEntry>,
    problems: Vec<PageProblem>,
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
        let mut original_size = 0;
        loop {
            let next = self
                .queue
                .lock()
                .expect("queue lock is not poisoned")
                .pop_front();
            let Some(planned) = next else { break };
            let Some(entry) = self.copy_file(&mut tar, &planned, &mut problems)? else {
                continue;
            };
            original_size += entry.size;
            files.push(entry);
        }
        let gz = tar.into_inner().context("finish tar stream")?;
        let hashing = gz.finish().context("finish gzip stream")?;
        let (mut sink, sha, size) = hashing.finish();
        sink.flush().context("flush part")?;
        Ok(WorkerOutput {
            files,
            problems,
            stored_size: size,
            stored_sha256: sha,
            original_size,
        })
    }

    /// Copy one file; `None` when it vanished before it could be opened.
    fn copy_file<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        planned: &PlannedFile,
        problems: &mut Vec<PageProblem>,
    ) -> anyhow::Result<Option<FileEntry>> {
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
        let mut reader = FileReader::new(file, planned, checks, self.start_lsn, &self.progress);
        let mut header = tar::Header::new_gnu();
        header.set_size(planned.size);
        header.set_mode(planned.mode);
        header.set_mtime(planned.mtime.max(0) as u64);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, &planned.rel, &mut reader)
            .with_context(|| format!("copy {}", planned.abs.display()))?;
        problems.append(&mut reader.problems);
        Ok(Some(FileEntry {
            path: planned.rel.clone(),
            size: planned.size,
            mode: planned.mode,
            mtime: planned.mtime,
            sha256: Sha256(reader.hasher.finalize().into()),
            part: self.part,
        }))
    }
}

/// Reads exactly the planned size (a file that grew is cut, one that shrank is padded with
/// zeros: WAL replay fixes both), hashing the bytes and checking page checksums.
struct FileReader<'a> {
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
    problems: Vec<PageProblem>,
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
            eof: false,
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
