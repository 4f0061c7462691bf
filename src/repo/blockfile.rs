//! The tar entry of a file stored as changed blocks (`<path>.blocks`, README "Incremental
//! format"): the magic `SYNBLKS1`, the file's size as restored (`u64`), the block count
//! (`u32`), that many block numbers (`u32`, ascending), then that many 8 KiB pages in the
//! same order; integers little-endian. Block numbers count from the start of the file (not
//! of the relation).

use std::io::Read;

use anyhow::{bail, Context};

use crate::pg::page::BLCKSZ;

const MAGIC: &[u8; 8] = b"SYNBLKS1";

/// The head of a `.blocks` entry: what follows it is `blocks.len()` pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlocksHeader {
    /// The whole file's size as restored (a multiple of 8 KiB).
    pub file_size: u64,
    pub blocks: Vec<u32>,
}

impl BlocksHeader {
    /// Size of the whole tar entry: header and pages.
    pub fn entry_size(&self) -> u64 {
        self.encode().len() as u64 + self.blocks.len() as u64 * BLCKSZ as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + 4 * self.blocks.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.file_size.to_le_bytes());
        out.extend_from_slice(&(self.blocks.len() as u32).to_le_bytes());
        for b in &self.blocks {
            out.extend_from_slice(&b.to_le_bytes());
        }
        out
    }

    /// Read the header from the start of an entry; the pages follow in `r`.
    pub fn read(r: &mut impl Read) -> anyhow::Result<BlocksHeader> {
        let mut head = [0u8; 20];
        r.read_exact(&mut head).context("read the .blocks header")?;
        if &head[..8] != MAGIC {
            bail!("not a .blocks entry (bad magic)");
        }
        let file_size = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) as usize;
        if !file_size.is_multiple_of(BLCKSZ as u64) {
            bail!("a .blocks entry for a file of {file_size} bytes, not whole blocks");
        }
        let mut raw = vec![0u8; count * 4];
        r.read_exact(&mut raw)
            .context("read the .blocks block numbers")?;
        let blocks: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if blocks.windows(2).any(|w| w[0] >= w[1]) {
            bail!("a .blocks entry whose block numbers are not ascending");
        }
        Ok(BlocksHeader { file_size, blocks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_reject_nonsense() {
        let h = BlocksHeader {
            file_size: 5 * BLCKSZ as u64,
            blocks: vec![0, 3, 4],
        };
        let bytes = h.encode();
        assert_eq!(h.entry_size(), bytes.len() as u64 + 3 * BLCKSZ as u64);
        assert_eq!(BlocksHeader::read(&mut bytes.as_slice()).unwrap(), h);
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(BlocksHeader::read(&mut bad.as_slice()).is_err());
        let unsorted = BlocksHeader {
            file_size: 8192 * 9,
            blocks: vec![4, 3],
        };
        assert!(BlocksHeader::read(&mut unsorted.encode().as_slice()).is_err());
        assert!(BlocksHeader::read(&mut &bytes[..10]).is_err());
    }
}
