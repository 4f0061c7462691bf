//! A bounded pipe of byte chunks from one thread to another, with the buffers sent back for
//! reuse: no allocation and no zeroing per chunk, and memory bounded by the queue length.
//!
//! The restore uses it between the thread that inflates a part and the one that extracts it.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

/// A pipe carrying chunks of up to `chunk_size` bytes, at most `queue` of them in transit.
pub fn pipe(chunk_size: usize, queue: usize) -> (ChunkSender, ChunkReader) {
    let (tx, rx) = mpsc::sync_channel(queue);
    let (back, returned) = mpsc::channel();
    (
        ChunkSender {
            tx,
            returned,
            chunk_size: chunk_size.max(1),
        },
        ChunkReader {
            rx,
            back,
            buf: Vec::new(),
            pos: 0,
        },
    )
}

/// What [`ChunkSender::pump`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    Sent,
    /// The source is at its end; nothing was sent.
    End,
    /// The reader was dropped: nobody wants more.
    ReaderGone,
}

pub struct ChunkSender {
    tx: SyncSender<io::Result<Vec<u8>>>,
    returned: Receiver<Vec<u8>>,
    chunk_size: usize,
}

impl ChunkSender {
    /// Fill one chunk from `source` (short only at its end) and send it, waiting while the
    /// queue is full. An error is the source's; the reader has not seen it (see `send_error`).
    pub fn pump(&mut self, source: &mut impl Read) -> io::Result<Pumped> {
        let mut chunk = self.returned.try_recv().unwrap_or_default();
        // A returned chunk is already initialised up to its length: nothing to zero then.
        chunk.resize(self.chunk_size, 0);
        let mut filled = 0;
        while filled < chunk.len() {
            match source.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(Pumped::End);
        }
        chunk.truncate(filled);
        match self.tx.send(Ok(chunk)) {
            Ok(()) => Ok(Pumped::Sent),
            Err(_) => Ok(Pumped::ReaderGone),
        }
    }

    /// Hand an error to the reader: its next read returns it, after the chunks before it.
    pub fn send_error(&self, error: io::Error) {
        // A reader that is gone does not need it.
        let _ = self.tx.send(Err(error));
    }
}

/// The receiving end, as a `Read`. The sender's end (dropped) is the end of the stream.
pub struct ChunkReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    back: Sender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            let next = match self.rx.recv() {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            };
            let used = std::mem::replace(&mut self.buf, next);
            self.pos = 0;
            if used.capacity() > 0 {
                // The sender may be gone already: then the buffer is simply freed.
                let _ = self.back.send(used);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_a_stream_in_order_and_reuses_buffers() {
        let data: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut tx, mut rx) = pipe(1000, 2);
        let source = data.clone();
        let sender = std::thread::spawn(move || {
            let mut source = &source[..];
            let mut sent = 0;
            while tx.pump(&mut source).unwrap() == Pumped::Sent {
                sent += 1;
            }
            sent
        });
        let mut got = Vec::new();
        rx.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(sender.join().unwrap(), 101);
    }

    #[test]
    fn an_error_arrives_after_the_data_before_it() {
        let (mut tx, mut rx) = pipe(4, 8);
        assert_eq!(tx.pump(&mut &b"abcdef"[..]).unwrap(), Pumped::Sent);
        tx.send_error(io::Error::other("bad gzip"));
        drop(tx);
        let mut buf = [0u8; 16];
        assert_eq!(rx.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"abcd");
        assert_eq!(rx.read(&mut buf).unwrap_err().to_string(), "bad gzip");
        assert_eq!(rx.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_dropped_reader_stops_the_sender() {
        let (mut tx, rx) = pipe(4, 1);
        drop(rx);
        assert_eq!(tx.pump(&mut &b"abc"[..]).unwrap(), Pumped::ReaderGone);
        assert_eq!(tx.pump(&mut &b""[..]).unwrap(), Pumped::End);
    }
}
