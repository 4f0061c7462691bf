//! Early write-back: large files being written are `fdatasync`ed piece by piece on a background
//! thread, so the disk writes while the CPU still decompresses, instead of all at once in a
//! final sync.
//!
//! On a machine with much RAM the kernel starts write-back only when dirty pages exceed
//! `vm.dirty_background_ratio` (10 % of memory, gigabytes), so a restore would otherwise leave
//! almost everything to its final `sync -f` and pay CPU time plus disk time one after the other.
//! This does not replace that final sync: it only moves most of its work earlier. It never
//! blocks the writer: when the syncing thread is behind, a request is dropped (the disk is busy
//! anyway, and the next request or the final sync covers the same pages).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A write-back request is made after this many bytes of one file.
pub const EVERY: u64 = 32 << 20;
/// Requests queued at most; more are dropped.
const QUEUE: usize = 2;

struct Request {
    file: File,
    path: PathBuf,
}

/// The syncing thread and its queue. `finish` reports the first failed sync.
pub struct Flusher {
    queue: Mutex<Option<SyncSender<Request>>>,
    pending: Arc<AtomicUsize>,
    thread: Mutex<Option<JoinHandle<io::Result<()>>>>,
}

impl Flusher {
    pub fn start() -> io::Result<Flusher> {
        let (queue, requests) = mpsc::sync_channel::<Request>(QUEUE);
        let pending = Arc::new(AtomicUsize::new(0));
        let thread = {
            let pending = pending.clone();
            std::thread::Builder::new()
                .name("writeback".into())
                .spawn(move || {
                    let mut first_error = Ok(());
                    for request in requests {
                        let synced = request.file.sync_data();
                        pending.fetch_sub(1, Ordering::Relaxed);
                        if let (Err(e), Ok(())) = (synced, &first_error) {
                            first_error = Err(io::Error::new(
                                e.kind(),
                                format!("fsync {}: {e}", request.path.display()),
                            ));
                        }
                    }
                    first_error
                })?
        };
        Ok(Flusher {
            queue: Mutex::new(Some(queue)),
            pending,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Ask for `file`'s dirty pages to be written back, unless the thread is already behind.
    pub(super) fn request(&self, file: &File, path: &std::path::Path) -> io::Result<()> {
        if self.pending.load(Ordering::Relaxed) >= QUEUE {
            return Ok(());
        }
        let Ok(queue) = self.queue.lock() else {
            return Ok(());
        };
        let Some(queue) = queue.as_ref() else {
            return Ok(());
        };
        let request = Request {
            file: file.try_clone()?,
            path: path.to_path_buf(),
        };
        self.pending.fetch_add(1, Ordering::Relaxed);
        if queue.try_send(request).is_err() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Stop taking requests, wait for the queued ones, and report the first failed sync.
    /// Blocks: call it off the async threads.
    pub fn finish(&self) -> io::Result<()> {
        if let Ok(mut queue) = self.queue.lock() {
            queue.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        match thread {
            Some(thread) => thread
                .join()
                .map_err(|_| io::Error::other("the write-back thread panicked"))?,
            None => Ok(()),
        }
    }
}

/// A buffered file writer that asks a [`Flusher`] (if any) for write-back every [`EVERY`]
/// bytes.
pub struct FileWriter<'a> {
    inner: BufWriter<File>,
    flusher: Option<&'a Flusher>,
    path: PathBuf,
    unsynced: u64,
}

impl<'a> FileWriter<'a> {
    pub fn new(file: File, path: PathBuf, flusher: Option<&'a Flusher>) -> Self {
        FileWriter {
            inner: BufWriter::with_capacity(256 * 1024, file),
            flusher,
            path,
            unsynced: 0,
        }
    }

    /// Flush the buffer and return the file.
    pub fn into_file(self) -> io::Result<File> {
        self.inner.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for FileWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.unsynced += n as u64;
        if self.unsynced >= EVERY {
            if let Some(flusher) = self.flusher {
                self.inner.flush()?;
                flusher.request(self.inner.get_ref(), &self.path)?;
            }
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_everything_with_and_without_write_back() {
        let dir = tempfile::tempdir().unwrap();
        let flusher = Flusher::start().unwrap();
        for (name, flusher) in [("a", Some(&flusher)), ("b", None)] {
            let path = dir.path().join(name);
            let file = File::create(&path).unwrap();
            let mut w = FileWriter::new(file, path.clone(), flusher);
            let data: Vec<u8> = (0..(EVERY as usize * 2 + 12345)).map(|i| i as u8).collect();
            for piece in data.chunks(100_000) {
                w.write_all(piece).unwrap();
            }
            drop(w.into_file().unwrap());
            assert_eq!(std::fs::read(&path).unwrap(), data);
        }
        flusher.finish().unwrap();
        // Finished: later requests are ignored, a second finish is harmless.
        let path = dir.path().join("c");
        let file = File::create(&path).unwrap();
        flusher.request(&file, &path).unwrap();
        flusher.finish().unwrap();
    }
}
