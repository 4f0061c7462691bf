//! A fixed set of threads that compress blocks into gzip members, shared by every stream of
//! one job so that the cores go wherever there is work.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use flate2::write::GzEncoder;
use flate2::Compression;

/// A compressed block, with its input buffer handed back for reuse.
pub(super) struct Done {
    pub input: Vec<u8>,
    pub member: io::Result<Vec<u8>>,
}

struct Job {
    input: Vec<u8>,
    level: Compression,
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

    /// Queue `input` for compression; the member (or the error) arrives on the returned
    /// receiver. The caller bounds how many blocks it has in flight.
    pub(super) fn submit(&self, input: Vec<u8>, level: Compression) -> io::Result<Receiver<Done>> {
        let (reply, done) = mpsc::sync_channel(1);
        self.queue
            .send(Job {
                input,
                level,
                reply,
            })
            .map_err(|_| stopped())?;
        Ok(done)
    }
}

pub(super) fn stopped() -> io::Error {
    io::Error::other("the gzip compression threads stopped")
}

fn work(jobs: &Mutex<Receiver<Job>>) {
    loop {
        // Only the wait for the next job holds the lock, never the compression.
        let next = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else { return };
        let member = compress_member(&job.input, job.level);
        // The writer may have given up (an error elsewhere): nobody needs the result then.
        let _ = job.reply.send(Done {
            input: job.input,
            member,
        });
    }
}

/// One complete gzip member (header, deflate data, CRC-32 and length trailer).
fn compress_member(input: &[u8], level: Compression) -> io::Result<Vec<u8>> {
    // Relation files and WAL compress 5-20x; start small and let the Vec grow if needed.
    let mut gz = GzEncoder::new(Vec::with_capacity(input.len() / 4 + 64), level);
    gz.write_all(input)?;
    gz.finish()
}
