//! A fixed set of threads that deflate blocks, shared by every stream of one job so that the
//! cores go wherever there is work.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use flate2::{Compress, Compression};

use super::deflate::deflate_block;

/// What a stream asks the pool to compress.
pub(super) struct Block {
    pub input: Vec<u8>,
    /// The input just before this block (at most 32 KiB).
    pub dictionary: Vec<u8>,
    /// Where the deflate data goes (a buffer to reuse; cleared first).
    pub output: Vec<u8>,
    pub level: Compression,
    pub last: bool,
}

/// A compressed block (in `block.output`), with all its buffers handed back for reuse.
pub(super) struct Done {
    pub block: Block,
    pub deflated: io::Result<()>,
    pub crc: crc32fast::Hasher,
}

struct Job {
    block: Block,
    reply: SyncSender<Done>,
}

/// Handle to the compression threads. Cloning shares the same threads; they exit once every
/// handle is dropped and the queued blocks are done.
#[derive(Clone)]
pub struct Pool {
    queue: Sender<Job>,
    threads: usize,
}

impl Pool {
    /// Start `threads` compression threads (at least one).
    pub fn new(threads: usize) -> io::Result<Pool> {
        let threads = threads.max(1);
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for n in 0..threads {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("pgz-{n}"))
                .spawn(move || work(&jobs))?;
        }
        Ok(Pool { queue, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Queue a block; its result (or error) arrives on the returned receiver. The caller
    /// bounds how many blocks it has in flight.
    pub(super) fn submit(&self, block: Block) -> io::Result<Receiver<Done>> {
        let (reply, done) = mpsc::sync_channel(1);
        self.queue
            .send(Job { block, reply })
            .map_err(|_| stopped())?;
        Ok(done)
    }
}

pub(super) fn stopped() -> io::Error {
    io::Error::other("the gzip compression threads stopped")
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    // One compressor per thread, reset for each block: its state (a few hundred KiB) is not
    // allocated again for every block.
    let mut compressor: Option<(Compression, Compress)> = None;
    loop {
        // Only the wait for the next job holds the lock, never the compression.
        let next = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(Job { mut block, reply }) = next else {
            return;
        };
        let deflate = match &mut compressor {
            Some((level, deflate)) if *level == block.level => deflate,
            slot => {
                &mut slot
                    .insert((block.level, Compress::new(block.level, false)))
                    .1
            }
        };
        let deflated = deflate_block(
            deflate,
            &block.input,
            &block.dictionary,
            block.last,
            &mut block.output,
        );
        let mut crc = crc32fast::Hasher::new();
        crc.update(&block.input);
        // The writer may have given up (an error elsewhere): nobody needs the result then.
        let _ = reply.send(Done {
            block,
            deflated,
            crc,
        });
    }
}
