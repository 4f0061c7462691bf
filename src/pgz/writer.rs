//! The ordered side of block-parallel gzip: buffers a stream into blocks, hands them to the
//! pool, and writes the compressed blocks to the inner writer in order, between one gzip header
//! and one trailer.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, TryRecvError};

use flate2::Compression;

use super::deflate::{self, DICTIONARY};
use super::pool::{stopped, Block, Done, Pool};

/// A `Write` that produces one gzip member, compressed block by block on a [`Pool`].
///
/// Memory is bounded: at most `max_in_flight` blocks are queued or being compressed for this
/// writer, plus the block being filled. A writer that has that many blocks in flight waits for
/// the oldest one, which is also what keeps the output in order.
pub struct ParallelGzWriter<W: Write> {
    inner: W,
    pool: Pool,
    level: Compression,
    block_size: usize,
    max_in_flight: usize,
    block: Vec<u8>,
    /// The last 32 KiB of the input handed to the pool so far: the next block's history.
    history: Vec<u8>,
    in_flight: VecDeque<Receiver<Done>>,
    /// Buffers back from the pool, reused for the next blocks and histories.
    spare_blocks: Vec<Vec<u8>>,
    spare_histories: Vec<Vec<u8>>,
    spare_outputs: Vec<Vec<u8>>,
    header_written: bool,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> ParallelGzWriter<W> {
    /// `block_size` uncompressed bytes per block (at least 1); `max_in_flight` blocks at most
    /// handed to the pool at once (at least 1; more than the pool's threads keeps them busy).
    pub fn new(inner: W, pool: Pool, level: u32, block_size: usize, max_in_flight: usize) -> Self {
        let block_size = block_size.max(1);
        ParallelGzWriter {
            inner,
            pool,
            level: Compression::new(level),
            block_size,
            max_in_flight: max_in_flight.max(1),
            block: Vec::with_capacity(block_size),
            history: Vec::with_capacity(DICTIONARY),
            in_flight: VecDeque::new(),
            spare_blocks: Vec::new(),
            spare_histories: Vec::new(),
            spare_outputs: Vec::new(),
            header_written: false,
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }

    /// Compress what is left, write everything including the gzip trailer, and return the
    /// inner writer (not flushed). Empty input yields a valid, empty gzip file.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        Ok(self.inner)
    }

    /// Hand the current block to the pool, first making room if too many are in flight.
    fn submit(&mut self, last: bool) -> io::Result<()> {
        while self.in_flight.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let next = self
            .spare_blocks
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.block_size));
        let input = std::mem::replace(&mut self.block, next);
        let mut history = self.spare_histories.pop().unwrap_or_default();
        roll_history(&self.history, &input, &mut history);
        let dictionary = std::mem::replace(&mut self.history, history);
        self.in_flight.push_back(self.pool.submit(Block {
            input,
            dictionary,
            output: self.spare_outputs.pop().unwrap_or_default(),
            level: self.level,
            last,
        })?);
        self.write_ready()
    }

    /// Wait for the oldest block and write it.
    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(oldest) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let done = oldest.recv().map_err(|_| stopped())?;
        self.write_block(done)
    }

    /// Write the blocks that are already compressed, in order, without waiting: the output
    /// then streams steadily instead of in bursts.
    fn write_ready(&mut self) -> io::Result<()> {
        while let Some(oldest) = self.in_flight.front() {
            let done = match oldest.try_recv() {
                Ok(done) => done,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(stopped()),
            };
            self.in_flight.pop_front();
            self.write_block(done)?;
        }
        Ok(())
    }

    fn write_block(&mut self, done: Done) -> io::Result<()> {
        done.deflated?;
        let Block {
            mut input,
            mut dictionary,
            output,
            last,
            ..
        } = done.block;
        if !self.header_written {
            self.inner.write_all(&deflate::header(self.level))?;
            self.header_written = true;
        }
        self.inner.write_all(&output)?;
        self.spare_outputs.push(output);
        self.crc.combine(&done.crc);
        self.len += input.len() as u64;
        if last {
            let crc = self.crc.clone().finalize();
            self.inner.write_all(&deflate::trailer(crc, self.len))?;
        }
        input.clear();
        dictionary.clear();
        self.spare_blocks.push(input);
        self.spare_histories.push(dictionary);
        Ok(())
    }
}

/// `out` = the last 32 KiB of `previous` followed by `input`.
fn roll_history(previous: &[u8], input: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let keep = DICTIONARY.saturating_sub(input.len()).min(previous.len());
    out.extend_from_slice(&previous[previous.len() - keep..]);
    out.extend_from_slice(&input[input.len().saturating_sub(DICTIONARY)..]);
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = data.len().min(self.block_size - self.block.len());
        self.block.extend_from_slice(&data[..take]);
        if self.block.len() == self.block_size {
            self.submit(false)?;
        }
        Ok(take)
    }

    /// Writes the blocks already compressed. The open block is not cut short: a block per
    /// flush would cost compression, and only `finish` completes the stream.
    fn flush(&mut self) -> io::Result<()> {
        self.write_ready()?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pool(threads: usize) -> Pool {
        Pool::new(threads).expect("start compression threads")
    }

    /// Compressible but never repeating at block scale: every block's content differs, so a
    /// block written out of order shows up as a content mismatch.
    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                let i = i as u64;
                ((i / 97) ^ (i / 4099).wrapping_mul(31) ^ (i % 7)) as u8
            })
            .collect()
    }

    fn compress(data: &[u8], threads: usize, block: usize, in_flight: usize) -> Vec<u8> {
        let mut w = ParallelGzWriter::new(Vec::new(), pool(threads), 6, block, in_flight);
        // Odd write sizes, so that writes straddle block boundaries.
        for piece in data.chunks(1000 + 7) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    /// Decode with a multi-member reader and with a single-member one (which stops after the
    /// first member): both must see all of the content.
    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(gz)
            .read_to_end(&mut out)
            .unwrap();
        let mut single = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut single)
            .unwrap();
        assert_eq!(single, out, "a single-member reader sees the same content");
        out
    }

    /// Members in the output: each starts with the gzip magic and ends at its trailer.
    fn member_count(gz: &[u8]) -> usize {
        let mut count = 0;
        let mut rest = gz;
        while !rest.is_empty() {
            let mut dec = flate2::bufread::GzDecoder::new(rest);
            io::copy(&mut dec, &mut io::sink()).unwrap();
            rest = dec.into_inner();
            count += 1;
        }
        count
    }

    #[test]
    fn round_trips_as_one_gzip_member() {
        let data = sample(1_000_000);
        let gz = compress(&data, 3, 64 * 1024, 4);
        assert_eq!(gunzip(&gz), data);
        assert_eq!(member_count(&gz), 1);
    }

    #[test]
    fn gzip_binary_reads_the_output() {
        let data = sample(700_000);
        let gz = compress(&data, 2, 100_000, 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gz");
        std::fs::write(&path, &gz).unwrap();
        let out = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&path)
            .output()
            .expect("run gzip -dc");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn empty_input_is_one_valid_empty_member() {
        let gz = compress(&[], 2, 1024, 2);
        assert_eq!(member_count(&gz), 1);
        assert!(gunzip(&gz).is_empty());
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert!(plain.is_empty());
    }

    #[test]
    fn block_boundaries() {
        let block = 4096;
        for len in [1, block - 1, block, block + 1, 3 * block, 3 * block + 5] {
            let data = sample(len);
            let gz = compress(&data, 2, block, 2);
            assert_eq!(gunzip(&gz), data, "length {len}");
            assert_eq!(member_count(&gz), 1, "length {len}");
        }
    }

    #[test]
    fn blocks_smaller_than_the_window_get_the_whole_history() {
        let mut out = Vec::new();
        roll_history(b"", b"abc", &mut out);
        assert_eq!(out, b"abc");
        let previous = vec![1u8; DICTIONARY];
        roll_history(&previous, b"xy", &mut out);
        assert_eq!(out.len(), DICTIONARY);
        assert!(out.ends_with(b"\x01xy"));
        let big = sample(DICTIONARY + 10);
        roll_history(&previous, &big, &mut out);
        assert_eq!(out, big[10..]);
        // Tiny blocks refer back across several of them: the result must still decode.
        let data = sample(300_000);
        assert_eq!(gunzip(&compress(&data, 2, 100, 8)), data);
    }

    #[test]
    fn every_level_round_trips() {
        let data = sample(200_000);
        for level in 0..=9 {
            let mut w = ParallelGzWriter::new(Vec::new(), pool(2), level, 50_000, 2);
            w.write_all(&data).unwrap();
            assert_eq!(gunzip(&w.finish().unwrap()), data, "level {level}");
        }
    }

    #[test]
    fn output_keeps_the_input_order_under_contention() {
        // Tiny blocks, many threads and a deep queue: members finish out of order all the time.
        let data = sample(2_000_000);
        for in_flight in [1, 2, 16] {
            let gz = compress(&data, 4, 1500, in_flight);
            assert_eq!(gunzip(&gz), data, "in flight {in_flight}");
        }
    }

    #[test]
    fn writers_share_one_pool() {
        let shared = pool(2);
        let handles: Vec<_> = (0..3)
            .map(|n| {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let data = sample(300_000 + n * 1111);
                    let mut w = ParallelGzWriter::new(Vec::new(), shared, 6, 10_000, 3);
                    w.write_all(&data).unwrap();
                    (data, w.finish().unwrap())
                })
            })
            .collect();
        for h in handles {
            let (data, gz) = h.join().unwrap();
            assert_eq!(gunzip(&gz), data);
        }
    }

    #[test]
    fn compresses_about_as_well_as_one_stream() {
        let data = sample(8 << 20);
        let parallel = compress(&data, 2, 1 << 20, 2);
        let mut single = flate2::write::GzEncoder::new(Vec::new(), Compression::new(6));
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap();
        assert!(
            parallel.len() as f64 <= single.len() as f64 * 1.002 + 64.0,
            "{} vs {}",
            parallel.len(),
            single.len()
        );
    }

    #[test]
    fn an_inner_write_error_is_returned() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "upload failed"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = ParallelGzWriter::new(Broken, pool(1), 6, 1024, 1);
        let err = w
            .write_all(&sample(10_000))
            .and_then(|()| w.finish().map(drop))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
