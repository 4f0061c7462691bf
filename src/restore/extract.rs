//! Download and extract: parts in parallel (the control part last), each on two threads (one
//! hashes and inflates the stored bytes, one parses the tar stream and writes the files), every
//! part and file checked against the manifest.

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sha2::Digest;

use super::chain::{ChainPlan, Need};
use super::combine::Assembly;
use super::layout::{Dest, Layout};
use super::{chunk_pipe, writeback, PG_CONTROL_PENDING};
use crate::codec::{HashingWriter, Sha256};
use crate::format;
use crate::os::{self, Owner};
use crate::pg::datadir;
use crate::progress::{Meter, Unit};
use crate::repo::manifest::{BackupManifest, FileEntry, PartEntry, BLOCKS_SUFFIX};
use crate::repo::{PartReader, PartSource, Repository, CONTROL_PART};

/// What the extraction shares across parts.
struct Extraction {
    layout: Layout,
    owner: Option<Owner>,
    /// Manifest files by path.
    files: HashMap<String, FileEntry>,
    /// Manifest directory modes by path.
    dir_modes: HashMap<String, u32>,
    backup_label: String,
    tablespace_map: Option<String>,
    written: AtomicU64,
    /// Set when a part failed: the others stop at their next entry.
    cancelled: AtomicBool,
    /// Writes large files back to disk during the extraction (durable restores only), so the
    /// final sync has little left to do.
    flusher: Option<writeback::Flusher>,
    /// An incremental's chain (None for a full): what each level provides.
    chain: Option<ChainPlan>,
    /// The level of the chain being extracted (0: the backup itself).
    level: AtomicUsize,
    /// Files being assembled from several levels.
    assembly: Assembly,
}

/// What a chain entry came to.
enum Chained {
    /// A file finished (assembled and checked).
    Done(Extracted),
    /// Blocks written, or an entry the restore does not need.
    Written,
    /// Not the chain's: an ordinary file of the newest level.
    NotPart,
}

/// A file restored from a part (or deliberately not written, like WAL left in `pg_wal`).
#[derive(Debug, Clone)]
pub(super) struct Extracted {
    pub path: String,
    /// False for files we skip (WAL, pid files) or write ourselves at the end.
    pub kept: bool,
}

/// Download and extract every part (data parts in parallel, the control part last) and check
/// that every file of the manifest arrived exactly once. Returns the manifest paths restored.
/// `durable`: the restore ends with a sync, so start writing large files back early.
/// `chain` is the backup's chain, newest first (the backup alone for a full): each older
/// level is extracted after the newer ones, only the parts it must provide.
pub(super) async fn restore_parts(
    repo: &Repository,
    chain: Vec<BackupManifest>,
    layout: &Layout,
    owner: Option<Owner>,
    durable: bool,
    then: Option<Duration>,
) -> anyhow::Result<Vec<Extracted>> {
    let backup = &chain[0].clone();
    let chain = if chain.len() > 1 {
        Some(ChainPlan::new(chain)?)
    } else {
        None
    };
    let flusher = if durable {
        Some(writeback::Flusher::start().context("start the write-back thread")?)
    } else {
        None
    };
    let shared = Arc::new(Extraction {
        layout: layout.clone(),
        owner,
        files: backup
            .files
            .iter()
            .map(|f| (f.path.clone(), f.clone()))
            .collect(),
        dir_modes: backup
            .directories
            .iter()
            .map(|d| (d.path.clone(), d.mode))
            .collect(),
        backup_label: backup.backup_label.clone(),
        tablespace_map: backup.tablespace_map.clone(),
        written: AtomicU64::new(0),
        cancelled: AtomicBool::new(false),
        flusher,
        chain,
        level: AtomicUsize::new(0),
        assembly: Assembly::default(),
    });

    // Directories first (parents before children), including empty ones such as pg_wal.
    let mut dirs: Vec<&str> = backup.directories.iter().map(|d| d.path.as_str()).collect();
    dirs.sort();
    for d in dirs {
        if let Dest::Path(_) = layout.dest(d)? {
            shared.make_dir(d)?;
        }
    }

    let (control, data): (Vec<usize>, Vec<usize>) =
        (0..backup.parts.len()).partition(|&i| backup.parts[i].key == CONTROL_PART);
    let parallel = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8);
    eprintln!(
        "downloading {} parts ({}), {} at a time",
        backup.parts.len(),
        format::human_bytes(backup.stored_size()),
        parallel
    );

    let reporter = spawn_progress(shared.clone(), backup.original_size(), then);
    let result = async {
        let mut extracted: Vec<Extracted> = futures::stream::iter(data)
            .map(|i| {
                let shared = shared.clone();
                async move {
                    let result = restore_part(repo, backup, i, shared.clone()).await;
                    if result.is_err() {
                        shared.cancelled.store(true, Ordering::Relaxed);
                    }
                    result
                }
            })
            .buffer_unordered(parallel)
            .try_concat()
            .await?;
        for i in control {
            extracted.extend(restore_part(repo, backup, i, shared.clone()).await?);
        }
        let levels = shared.chain.as_ref().map_or(1, |c| c.levels.len());
        for level in 1..levels {
            let plan = shared.chain.as_ref().expect("a chain has levels");
            let older = &plan.levels[level];
            let parts = plan.parts_needed(level);
            shared.level.store(level, Ordering::Relaxed);
            eprintln!(
                "then {} part(s) of backup {} ({}), for the blocks the newer backups do not hold",
                parts.len(),
                older.id,
                older.kind
            );
            let done: Vec<Extracted> = futures::stream::iter(parts)
                .map(|i| {
                    let shared = shared.clone();
                    async move {
                        let result = restore_part(repo, older, i, shared.clone()).await;
                        if result.is_err() {
                            shared.cancelled.store(true, Ordering::Relaxed);
                        }
                        result
                    }
                })
                .buffer_unordered(parallel)
                .try_concat()
                .await?;
            extracted.extend(done);
        }
        Ok::<_, anyhow::Error>(extracted)
    }
    .await;
    reporter.abort();
    let flushed = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || shared.flusher.as_ref().map_or(Ok(()), |f| f.finish()))
            .await
            .context("write-back task")?
    };
    let extracted = result?;
    flushed.context("write the restored files back to disk")?;

    check_every_file_once(repo, backup, &extracted)?;
    Ok(extracted)
}

/// Every second, how far the extraction is (see [`crate::progress`]); `then`: the predicted
/// duration of what follows (the WAL replay), for the whole restore's ETA.
fn spawn_progress(
    shared: Arc<Extraction>,
    total: u64,
    then: Option<Duration>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut meter = Meter::new("download", Unit::Bytes, total, then);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            meter.update(shared.written.load(Ordering::Relaxed));
        }
    })
}

/// Every manifest file exactly once.
fn check_every_file_once(
    repo: &Repository,
    backup: &BackupManifest,
    extracted: &[Extracted],
) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    for e in extracted {
        if !seen.insert(e.path.as_str()) {
            bail!(
                "backup {}: {} is stored twice in the parts",
                backup.id,
                e.path
            );
        }
    }
    if let Some(missing) = backup
        .files
        .iter()
        .find(|f| !seen.contains(f.path.as_str()))
    {
        bail!(
            "{}: the manifest lists {} in this part, but the part does not contain it",
            repo.part_location(&backup.id, &backup.parts[missing.part].key),
            missing.path
        );
    }
    Ok(())
}

/// Read one part from the store into a blocking extractor: a local file directly, a remote
/// object as a stream handed over through a bounded channel.
async fn restore_part(
    repo: &Repository,
    backup: &BackupManifest,
    index: usize,
    shared: Arc<Extraction>,
) -> anyhow::Result<Vec<Extracted>> {
    let part = backup.parts[index].clone();
    let PartReader { key, source } = repo.open_part(&backup.id, &part.key).await?;
    let mut stream = match source {
        PartSource::File(file) => {
            return tokio::task::spawn_blocking(move || {
                let reader = io::BufReader::with_capacity(1 << 20, file);
                shared.extract_part(index, &part, &key, reader)
            })
            .await
            .context("extraction task")?;
        }
        PartSource::Stream(stream) => stream,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<anyhow::Result<Bytes>>(16);
    let task = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || {
            shared.extract_part(index, &part, &key, ChannelReader::new(rx))
        })
    };
    while let Some(chunk) = stream.next().await {
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    task.await.context("extraction task")?
}

/// The blocking side of a remote part: a `Read` over the chunks the async side receives.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<anyhow::Result<Bytes>>,
    buf: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<anyhow::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            buf: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.buf = chunk,
                Some(Err(e)) => return Err(io::Error::other(format!("{e:#}"))),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

/// Hashes and counts the stored bytes of a part as they are read.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: sha2::Sha256::new(),
            len: 0,
        }
    }

    /// Read to the end, so that the digest covers the whole object.
    fn drain(&mut self) -> io::Result<()> {
        let mut scratch = vec![0u8; 256 * 1024];
        while self.read(&mut scratch)? > 0 {}
        Ok(())
    }

    fn digest(&self) -> (Sha256, u64) {
        (Sha256(self.hasher.clone().finalize().into()), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.hasher.update(&out[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Decompressed bytes handed from a part's inflating thread to its extracting thread at a time.
const INFLATED_CHUNK: usize = 1 << 20;
/// Chunks queued between the two: bounds the memory of a part.
const INFLATED_QUEUE: usize = 8;

/// What the inflating thread saw of a part's stored bytes.
struct StoredBytes {
    sha256: Sha256,
    size: u64,
    /// Reading the store failed before the end (a gzip error is the extractor's to report).
    read: io::Result<()>,
}

impl Extraction {
    /// Extract one part on two threads, so that one large part uses two cores: a helper
    /// thread hashes the stored bytes and inflates them; this thread parses the tar stream,
    /// hashes each file and writes it.
    fn extract_part(
        &self,
        index: usize,
        part: &PartEntry,
        key: &str,
        stored: impl Read + Send,
    ) -> anyhow::Result<Vec<Extracted>> {
        let (tx, mut rx) = chunk_pipe::pipe(INFLATED_CHUNK, INFLATED_QUEUE);
        let (result, stored) = std::thread::scope(|scope| {
            let inflater = std::thread::Builder::new()
                .name(format!("inflate-{index}"))
                .spawn_scoped(scope, || self.inflate(key, stored, tx))
                .with_context(|| format!("{key}: start a thread to decompress the part"))?;
            let result = self.extract_entries(index, key, &mut rx);
            // Dropping the reader as soon as the entries are done or failed tells the inflater
            // to stop decompressing and only hash the rest.
            drop(rx);
            let stored = inflater
                .join()
                .map_err(|_| anyhow!("{key}: the decompressing thread panicked"))?;
            Ok::<_, anyhow::Error>((result, stored))
        })?;
        if self.cancelled.load(Ordering::Relaxed) {
            return result;
        }
        // If the stored bytes are not what the manifest says, that is the error to report (it
        // explains any decoding failure).
        if stored.read.is_ok() && (stored.sha256 != part.sha256 || stored.size != part.size) {
            bail!(
                "{key}: corrupt part: SHA-256 {} ({} bytes) does not match the manifest ({}, {} bytes)",
                stored.sha256,
                stored.size,
                part.sha256,
                part.size
            );
        }
        stored.read.with_context(|| format!("download {key}"))?;
        result
    }

    /// The inflating thread: decompress `stored` into chunks for the extractor, then read the
    /// rest of the stored bytes (whatever happened), so that the digest covers the whole object.
    /// Stops early only when another part failed.
    fn inflate(
        &self,
        key: &str,
        stored: impl Read,
        mut tx: chunk_pipe::ChunkSender,
    ) -> StoredBytes {
        let mut reader = HashingReader::new(stored);
        let mut gz = flate2::read::MultiGzDecoder::new(&mut reader);
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                tx.send_error(io::Error::other(format!(
                    "{key}: stopped because another part failed"
                )));
                drop(gz);
                let (sha256, size) = reader.digest();
                return StoredBytes {
                    sha256,
                    size,
                    read: Ok(()),
                };
            }
            match tx.pump(&mut gz) {
                Ok(chunk_pipe::Pumped::Sent) => {}
                // The end, or the extractor is done or failed: only the digest is left to do.
                Ok(chunk_pipe::Pumped::End | chunk_pipe::Pumped::ReaderGone) => break,
                Err(e) => {
                    tx.send_error(io::Error::new(
                        e.kind(),
                        format!("{key}: corrupt part: gzip data: {e}"),
                    ));
                    break;
                }
            }
        }
        drop(gz);
        drop(tx);
        let read = reader.drain();
        let (sha256, size) = reader.digest();
        StoredBytes { sha256, size, read }
    }

    /// Parse the decompressed tar stream of a part and restore its entries.
    fn extract_entries(
        &self,
        index: usize,
        key: &str,
        tar_stream: &mut impl Read,
    ) -> anyhow::Result<Vec<Extracted>> {
        let mut archive = tar::Archive::new(tar_stream);
        let mut done = Vec::new();
        let entries = archive
            .entries()
            .with_context(|| format!("{key}: corrupt part: not a tar stream"))?;
        for entry in entries {
            if self.cancelled.load(Ordering::Relaxed) {
                bail!("{key}: stopped because another part failed");
            }
            let mut entry =
                entry.with_context(|| format!("{key}: corrupt part: unreadable tar entry"))?;
            let raw = entry.path_bytes().into_owned();
            let path = std::str::from_utf8(&raw)
                .map_err(|_| {
                    anyhow!(
                        "{key}: entry {:?} is not UTF-8",
                        String::from_utf8_lossy(&raw)
                    )
                })?
                .trim_end_matches('/')
                .to_string();
            let kind = entry.header().entry_type();
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let combined = match &self.chain {
                        Some(plan) => self
                            .extract_chained(plan, index, &path, &mut entry)
                            .with_context(|| format!("{key}: restore {path}"))?,
                        None => Chained::NotPart,
                    };
                    match combined {
                        Chained::Done(e) => done.push(e),
                        Chained::Written => {}
                        Chained::NotPart => done.push(
                            self.extract_file(index, &path, &mut entry)
                                .with_context(|| format!("{key}: restore {path}"))?,
                        ),
                    }
                }
                tar::EntryType::Directory => {
                    match self.layout.dest(&path).with_context(|| format!("{key}: entry {path:?}"))? {
                        Dest::Path(_) => self.make_dir(&path)?,
                        Dest::TablespaceLink(_) => {} // made by prepare_tablespace
                    }
                }
                tar::EntryType::XGlobalHeader => {}
                other => bail!(
                    "{key}: entry {path:?} is a {other:?}; backup parts hold only regular files and directories, refusing it"
                ),
            }
        }
        // Read the rest of the decompressed stream: the gzip trailer's CRC is checked at its end.
        let mut rest = archive.into_inner();
        io::copy(&mut rest, &mut io::sink())
            .with_context(|| format!("{key}: corrupt part: gzip stream"))?;
        Ok(done)
    }

    /// An entry of an incremental's chain: blocks or an older level's whole copy are
    /// assembled ([`Assembly`]); a whole copy in the newest level that nothing older adds to
    /// is an ordinary file ([`Chained::NotPart`]).
    fn extract_chained(
        &self,
        plan: &ChainPlan,
        index: usize,
        name: &str,
        content: &mut impl Read,
    ) -> anyhow::Result<Chained> {
        let level = self.level.load(Ordering::Relaxed);
        let (path, is_blocks) = match name.strip_suffix(BLOCKS_SUFFIX) {
            Some(p) if plan.need(level, p) == Some(Need::Blocks) => (p, true),
            _ => (name, false),
        };
        // The newest level's whole files are ordinary files.
        if level == 0 && !is_blocks {
            return Ok(Chained::NotPart);
        }
        let need = plan.need(level, path);
        let Some(entry) = plan.entry(level, path).filter(|_| need.is_some()) else {
            // What a newer level replaced, or a file the restored backup no longer has.
            io::copy(content, &mut io::sink())?;
            return Ok(Chained::Written);
        };
        if entry.part != index || (need == Some(Need::Blocks)) != is_blocks {
            bail!(
                "backup {}: the manifest stores {path} differently (part {}, {:?})",
                plan.levels[level].id,
                entry.part,
                entry.stored
            );
        }
        let target = self
            .files
            .get(path)
            .expect("planned from the newest manifest");
        let Dest::Path(dest) = self.layout.dest(path)? else {
            bail!("{path} is a tablespace link, not a file");
        };
        if let Some(parent) = Path::new(path).parent().and_then(Path::to_str) {
            if !parent.is_empty() {
                self.make_dir(parent)?;
            }
        }
        if is_blocks {
            let n = self
                .assembly
                .apply_blocks(path, &dest, target.size, content)?;
            self.written.fetch_add(n, Ordering::Relaxed);
            return Ok(Chained::Written);
        }
        let (file, sha, len) = self
            .assembly
            .finish_whole(path, &dest, target.size, content)?;
        if len != target.size || sha != target.sha256 {
            bail!(
                "the file assembled from backups {} to {} does not match the manifest: SHA-256 {sha} ({len} bytes),                  the manifest of {} says {} ({} bytes)",
                plan.levels[0].id,
                plan.levels[level].id,
                plan.levels[0].id,
                target.sha256,
                target.size
            );
        }
        self.set_attributes(&file, &dest, target)?;
        self.written.fetch_add(len, Ordering::Relaxed);
        Ok(Chained::Done(Extracted {
            path: path.to_string(),
            kept: true,
        }))
    }

    /// A restored file's mode, mtime and owner, as the manifest has them.
    fn set_attributes(
        &self,
        file: &fs::File,
        dest: &Path,
        entry: &FileEntry,
    ) -> anyhow::Result<()> {
        file.set_permissions(fs::Permissions::from_mode(datadir::file_mode(entry.mode)))
            .with_context(|| format!("chmod {}", dest.display()))?;
        let mtime = UNIX_EPOCH + Duration::from_secs(u64::try_from(entry.mtime).unwrap_or(0));
        let _ = file.set_modified(mtime);
        os::chown(dest, self.owner)
    }

    fn extract_file(
        &self,
        index: usize,
        path: &str,
        content: &mut impl Read,
    ) -> anyhow::Result<Extracted> {
        let Some(entry) = self.files.get(path) else {
            // Our own files from the control part, if the manifest does not list them.
            let expected = match path {
                "backup_label" => Some(self.backup_label.as_bytes()),
                "tablespace_map" => self.tablespace_map.as_deref().map(str::as_bytes),
                _ => None,
            };
            let Some(expected) = expected else {
                bail!("the part holds {path:?}, which the manifest does not list");
            };
            let mut got = Vec::new();
            content.read_to_end(&mut got)?;
            if got != expected {
                bail!("{path} in the part differs from the manifest's copy");
            }
            return Ok(Extracted {
                path: path.to_string(),
                kept: false,
            });
        };
        if entry.part != index {
            bail!(
                "the manifest puts {path} in part {}, not in this one",
                entry.part
            );
        }
        // WAL in the backup is stale for a restore (pg-reference §11 step 4); pid files belong to
        // the original server; backup_label and tablespace_map are written at the end; a
        // standby.signal would keep the restored server a standby forever (it takes precedence
        // over recovery.signal, §3.4).
        let skip = matches!(
            path,
            "postmaster.pid"
                | "postmaster.opts"
                | "backup_label"
                | "tablespace_map"
                | "standby.signal"
        ) || path.starts_with("pg_wal/");
        let dest = match self.layout.dest(path)? {
            Dest::Path(p) => p,
            Dest::TablespaceLink(_) => bail!("{path} is a tablespace link, not a file"),
        };
        let dest = if path == datadir::PG_CONTROL {
            self.layout.pgdata.join(PG_CONTROL_PENDING)
        } else {
            dest
        };

        let (sha, len) = if skip {
            let mut sink = HashingWriter::new(io::sink());
            io::copy(content, &mut sink)?;
            let (_, sha, len) = sink.finish();
            (sha, len)
        } else {
            if let Some(parent) = Path::new(path).parent().and_then(Path::to_str) {
                if !parent.is_empty() {
                    self.make_dir(parent)?;
                }
            }
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)
                .with_context(|| format!("create {}", dest.display()))?;
            let mut out = HashingWriter::new(writeback::FileWriter::new(
                file,
                dest.clone(),
                self.flusher.as_ref(),
            ));
            io::copy(content, &mut out).with_context(|| format!("write {}", dest.display()))?;
            let (writer, sha, len) = out.finish();
            let file = writer
                .into_file()
                .with_context(|| format!("write {}", dest.display()))?;
            self.set_attributes(&file, &dest, entry)?;
            (sha, len)
        };
        if len != entry.size || sha != entry.sha256 {
            bail!(
                "content does not match the manifest: SHA-256 {sha} ({len} bytes), the manifest says {} ({} bytes)",
                entry.sha256,
                entry.size
            );
        }
        self.written.fetch_add(len, Ordering::Relaxed);
        Ok(Extracted {
            path: path.to_string(),
            kept: !skip,
        })
    }

    /// Create a backup directory (and missing parents) with the manifest's modes and owner.
    fn make_dir(&self, rel: &str) -> anyhow::Result<()> {
        let Dest::Path(_) = self.layout.dest(rel)? else {
            return Ok(());
        };
        let (root, base, inside) = self.layout.split_root(rel);
        // Walk down from the root so every directory we create gets its mode and owner.
        let mut path = root.to_path_buf();
        let mut manifest_path = base.trim_end_matches('/').to_string();
        for name in inside.split('/').filter(|c| !c.is_empty()) {
            path.push(name);
            if !manifest_path.is_empty() {
                manifest_path.push('/');
            }
            manifest_path.push_str(name);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => bail!("{} exists and is not a directory", path.display()),
                Err(_) => {}
            }
            match fs::create_dir(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("create {}", path.display())),
            }
            // PostgreSQL's 0700/0750, whatever the manifest says.
            let mode =
                datadir::dir_mode(self.dir_modes.get(&manifest_path).copied().unwrap_or(0o700));
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {}", path.display()))?;
            os::chown(&path, self.owner)?;
        }
        Ok(())
    }
}
