//! The block map of a backup (issue 15): a 64-bit digest of every 8 KiB block of every
//! relation file, as the backup restores it. The next incremental reads its parent's map and
//! stores exactly the blocks whose digest changed, so it needs no trust in page LSNs (hint
//! bits and visibility-map clears change pages without advancing them) and its files restore
//! byte-identical to what it read, which their SHA-256 then proves.
//!
//! Stored next to the manifest as `blockmap.gz` (README "Incremental format"): gzip of the
//! magic `SYNBMAP1`, then per file `u32 path length, path (UTF-8), u32 block count, count × u64
//! digest`, all little-endian.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use anyhow::{bail, Context};

const MAGIC: &[u8; 8] = b"SYNBMAP1";

/// The digest of one block: CRC-32C and CRC-32 (IEEE) side by side, two different
/// polynomials, both computed in hardware. Not a security boundary: a collision only makes
/// an incremental miss a block, and the restored file's SHA-256 then fails loudly.
pub fn page_digest(page: &[u8]) -> u64 {
    (u64::from(crc32c::crc32c(page)) << 32) | u64::from(crc32fast::hash(page))
}

/// Relation file path → digest of each of its blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockMap {
    files: BTreeMap<String, Vec<u64>>,
}

impl BlockMap {
    pub fn insert(&mut self, path: String, digests: Vec<u64>) {
        self.files.insert(path, digests);
    }

    pub fn get(&self, path: &str) -> Option<&[u64]> {
        self.files.get(path).map(Vec::as_slice)
    }

    pub fn extend(&mut self, other: BlockMap) {
        self.files.extend(other.files);
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The stored form (gzip).
    pub fn encode(&self) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut put = |b: &[u8]| gz.write_all(b).expect("writing to memory does not fail");
        put(MAGIC);
        for (path, digests) in &self.files {
            put(&(path.len() as u32).to_le_bytes());
            put(path.as_bytes());
            put(&(digests.len() as u32).to_le_bytes());
            for d in digests {
                put(&d.to_le_bytes());
            }
        }
        gz.finish().expect("writing to memory does not fail")
    }

    /// Parse the stored form; `name` is the object's, for errors.
    pub fn decode(stored: &[u8], name: &str) -> anyhow::Result<BlockMap> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(stored)
            .read_to_end(&mut raw)
            .with_context(|| format!("{name}: corrupt block map (gzip)"))?;
        let corrupt = || anyhow::anyhow!("{name}: corrupt block map (truncated)");
        let Some(mut rest) = raw.strip_prefix(MAGIC.as_slice()) else {
            bail!("{name}: not a block map");
        };
        let mut take = |n: usize| -> anyhow::Result<&[u8]> {
            if rest.len() < n {
                return Err(corrupt());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let mut map = BlockMap::default();
        loop {
            let len = match take(4) {
                Ok(b) => u32_of(b) as usize,
                Err(_) => break,
            };
            let path = std::str::from_utf8(take(len)?)
                .with_context(|| format!("{name}: corrupt block map (path)"))?
                .to_string();
            let count = u32_of(take(4)?) as usize;
            let bytes = take(count.checked_mul(8).ok_or_else(corrupt)?)?;
            let digests = bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            map.files.insert(path, digests);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_maps_round_trip_and_reject_damage() {
        let mut m = BlockMap::default();
        m.insert("base/5/16384".into(), vec![1, u64::MAX, 3]);
        m.insert("base/5/16384_vm".into(), vec![]);
        let stored = m.encode();
        assert_eq!(BlockMap::decode(&stored, "x").unwrap(), m);
        assert!(BlockMap::decode(b"nonsense", "x").is_err());
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(stored.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        raw.truncate(raw.len() - 3);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let err = BlockMap::decode(&gz.finish().unwrap(), "b/blockmap.gz").unwrap_err();
        assert!(err.to_string().contains("b/blockmap.gz"), "{err}");
    }

    #[test]
    fn digests_see_any_byte() {
        let page = [7u8; 8192];
        let mut other = page;
        other[4000] ^= 1;
        assert_ne!(page_digest(&page), page_digest(&other));
        assert_eq!(page_digest(&page), page_digest(&[7u8; 8192]));
    }
}
