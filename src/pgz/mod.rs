//! Block-parallel gzip, in the manner of pigz: a stream is cut into blocks, each block is
//! deflated on a shared pool of threads with the previous block's last 32 KiB as its history,
//! and the blocks are written in order as ONE deflate stream in one gzip member (see
//! [`deflate`] for how the pieces join). The output is ordinary gzip: `gunzip`, `tar -xzf` and
//! any single-member reader take it, and it is about as small as a one-thread stream.
//!
//! This lets one large stream use every core: a backup part holding a 1 GiB relation file is no
//! longer compressed by a single thread while the others sit idle.

mod deflate;
mod pool;
mod writer;

pub use pool::Pool;
pub use writer::ParallelGzWriter;

/// Uncompressed bytes per block. Each block ends with a 4-byte sync marker and its deflate
/// state restarts (with the history kept), so tiny blocks would cost a little; larger ones
/// hold more memory per block in flight — and memory the agent keeps after a backup: glibc
/// keeps freed blocks in its per-thread arenas, and with 1 MiB blocks the idle agent held
/// ~4 MB more heap than before block-parallel gzip (integration/agent.rs bounds it); at
/// 256 KiB it is back to where it was.
pub const DEFAULT_BLOCK_SIZE: usize = 256 << 10;
