//! One block of a pigz-style gzip stream: raw deflate primed with the previous block's last
//! 32 KiB, so the blocks compress as well as one stream and concatenate into ONE deflate
//! stream (a single gzip member, which even single-member readers take).
//!
//! Every block but the last ends with a sync flush: an empty stored block that leaves the
//! output byte-aligned without the "final block" bit, so the next block's deflate data can
//! follow directly. The last block ends the stream. The gzip header and trailer (CRC-32 and
//! length of the whole input) are written around the blocks by the ordered writer.

use std::io;

use flate2::{Compress, Compression, FlushCompress, Status};

/// The deflate window: back-references reach at most this far, so this much history suffices.
pub const DICTIONARY: usize = 32 * 1024;

/// Compress `input` as one piece of a deflate stream into `out` (cleared first). `deflate` is
/// a raw-deflate compressor at the stream's level, reused across blocks; `dictionary` is the
/// input just before this block (empty for the first one); `last` ends the stream.
pub fn deflate_block(
    deflate: &mut Compress,
    input: &[u8],
    dictionary: &[u8],
    last: bool,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    deflate.reset();
    if !dictionary.is_empty() {
        deflate
            .set_dictionary(dictionary)
            .map_err(|e| io::Error::other(format!("deflate dictionary: {e}")))?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    out.clear();
    // Relation files and WAL compress 5-20x: start small and grow when needed.
    out.reserve(input.len() / 4 + 1024);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let consumed = deflate.total_in() as usize;
        let status = deflate
            .compress_vec(&input[consumed..], out, flush)
            .map_err(|e| io::Error::other(format!("deflate: {e}")))?;
        let all_in = deflate.total_in() as usize == input.len();
        let done = match status {
            Status::StreamEnd => true,
            // Room left in the output after a sync flush means the flush is complete; a
            // BufError with all input taken means there was nothing left to flush.
            Status::Ok => !last && all_in && out.len() < out.capacity(),
            Status::BufError => !last && all_in,
        };
        if done {
            return Ok(());
        }
    }
}

/// The 10-byte gzip header flate2's `GzEncoder` writes: no name, no time, OS "unknown".
pub fn header(level: Compression) -> [u8; 10] {
    // XFL: 2 = best compression, 4 = fastest (RFC 1952 §2.3.1).
    let xfl = match level.level() {
        9.. => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]
}

/// The gzip trailer: CRC-32 and length (mod 2^32) of the whole uncompressed input.
pub fn trailer(crc: u32, len: u64) -> [u8; 8] {
    let mut t = [0u8; 8];
    t[..4].copy_from_slice(&crc.to_le_bytes());
    t[4..].copy_from_slice(&(len as u32).to_le_bytes());
    t
}
