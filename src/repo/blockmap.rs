//! The block map of a backup (issue 15): a 64-bit digest of every 8 KiB block of every
//! relation file, as the backup restores it. The next incremental reads its parent's map and
//! stores exactly the blocks whose digest changed, so it needs no trust in page LSNs (hint
//! bits and visibility-map clears change pages without advancing them) and its files restore
//! byte-identical to what it read, which their SHA-256 then proves.
//!
//! Stored next to the manifest as `blockmap.gz` (README "Incremental format"), gzip of
//! little-endian fields. A full's map is the magic `SYNBMAP1`, then per file `u32 path length,
//! path (UTF-8), u32 block count, count × u64 digest`. An incremental's map is relative to its
//! parent's (most of a cluster's blocks do not change): the magic `SYNBMAPD`, then per file
//! the path and a tag: 0 = as in the parent; 1 = `u32 block count, u32 n, n × (u32 block, u64
//! digest)`, the blocks that differ from the parent's or lie past its end; 2 = a whole list as
//! in a full's map. A file absent from the list is absent from the backup.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use anyhow::{bail, Context};

const MAGIC: &[u8; 8] = b"SYNBMAP1";
const DELTA_MAGIC: &[u8; 8] = b"SYNBMAPD";
const SAME: u8 = 0;
const CHANGED: u8 = 1;
const WHOLE: u8 = 2;

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

    /// The stored form (gzip): relative to `parent`'s map when there is one.
    pub fn encode(&self, parent: Option<&BlockMap>) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut put = |b: &[u8]| gz.write_all(b).expect("writing to memory does not fail");
        put(if parent.is_some() { DELTA_MAGIC } else { MAGIC });
        for (path, digests) in &self.files {
            put(&(path.len() as u32).to_le_bytes());
            put(path.as_bytes());
            let before = parent.map(|p| p.get(path));
            match before {
                None => {}
                Some(Some(old)) if old == digests.as_slice() => {
                    put(&[SAME]);
                    continue;
                }
                Some(Some(old)) => {
                    let changed: Vec<(usize, &u64)> = digests
                        .iter()
                        .enumerate()
                        .filter(|(i, d)| old.get(*i) != Some(*d))
                        .collect();
                    put(&[CHANGED]);
                    put(&(digests.len() as u32).to_le_bytes());
                    put(&(changed.len() as u32).to_le_bytes());
                    for (i, d) in changed {
                        put(&(i as u32).to_le_bytes());
                        put(&d.to_le_bytes());
                    }
                    continue;
                }
                Some(None) => put(&[WHOLE]),
            }
            put(&(digests.len() as u32).to_le_bytes());
            for d in digests {
                put(&d.to_le_bytes());
            }
        }
        gz.finish().expect("writing to memory does not fail")
    }

    /// Parse the stored form; `name` is the object's, for errors. An incremental's map needs
    /// its parent's (`parent`).
    pub fn decode(
        stored: &[u8],
        name: &str,
        parent: Option<&BlockMap>,
    ) -> anyhow::Result<BlockMap> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(stored)
            .read_to_end(&mut raw)
            .with_context(|| format!("{name}: corrupt block map (gzip)"))?;
        let (delta, body) = if let Some(b) = raw.strip_prefix(MAGIC.as_slice()) {
            (false, b)
        } else if let Some(b) = raw.strip_prefix(DELTA_MAGIC.as_slice()) {
            (true, b)
        } else {
            bail!("{name}: not a block map");
        };
        let parent = match (delta, parent) {
            (true, None) => bail!("{name}: an incremental's block map, read without its parent's"),
            (true, Some(p)) => Some(p),
            (false, _) => None,
        };
        let mut r = Fields { rest: body, name };
        let mut map = BlockMap::default();
        while !r.rest.is_empty() {
            let len = r.u32()? as usize;
            let path = std::str::from_utf8(r.take(len)?)
                .with_context(|| format!("{name}: corrupt block map (path)"))?
                .to_string();
            let tag = if parent.is_some() {
                r.take(1)?[0]
            } else {
                WHOLE
            };
            let old = || {
                parent
                    .and_then(|p| p.get(&path))
                    .map(<[u64]>::to_vec)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{name}: {path} is relative to a parent's map that lacks it"
                        )
                    })
            };
            let digests = match tag {
                SAME => old()?,
                CHANGED => {
                    let mut d = old()?;
                    d.resize(r.u32()? as usize, 0);
                    for _ in 0..r.u32()? {
                        let block = r.u32()? as usize;
                        let digest = r.u64()?;
                        *d.get_mut(block).ok_or_else(|| r.corrupt())? = digest;
                    }
                    d
                }
                WHOLE => {
                    let count = r.u32()?;
                    (0..count).map(|_| r.u64()).collect::<anyhow::Result<_>>()?
                }
                _ => return Err(r.corrupt()),
            };
            map.files.insert(path, digests);
        }
        Ok(map)
    }
}

/// Little-endian fields read off the front of a block map.
struct Fields<'a> {
    rest: &'a [u8],
    name: &'a str,
}

impl<'a> Fields<'a> {
    fn corrupt(&self) -> anyhow::Error {
        anyhow::anyhow!("{}: corrupt block map", self.name)
    }
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(self.corrupt());
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
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
        let stored = m.encode(None);
        assert_eq!(BlockMap::decode(&stored, "x", None).unwrap(), m);
        assert!(BlockMap::decode(b"nonsense", "x", None).is_err());
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(stored.as_slice())
            .read_to_end(&mut raw)
            .unwrap();
        raw.truncate(raw.len() - 3);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let err = BlockMap::decode(&gz.finish().unwrap(), "b/blockmap.gz", None).unwrap_err();
        assert!(err.to_string().contains("b/blockmap.gz"), "{err}");
    }

    #[test]
    fn an_incrementals_map_holds_only_what_changed() {
        let mut parent = BlockMap::default();
        parent.insert("same".into(), (0..1000).collect());
        parent.insert("changed".into(), (0..1000).collect());
        parent.insert("shrunk".into(), vec![1, 2, 3]);
        parent.insert("dropped".into(), vec![1]);
        let mut child = BlockMap::default();
        child.insert("same".into(), (0..1000).collect());
        let mut changed: Vec<u64> = (0..1002).collect();
        changed[7] = 99;
        child.insert("changed".into(), changed);
        child.insert("shrunk".into(), vec![1]);
        child.insert("new".into(), vec![5, 6]);
        let delta = child.encode(Some(&parent));
        assert!(
            delta.len() < child.encode(None).len() / 4,
            "{}",
            delta.len()
        );
        assert_eq!(BlockMap::decode(&delta, "d", Some(&parent)).unwrap(), child);
        assert!(BlockMap::decode(&delta, "d", None).is_err());
        // A full's map reads the same with or without a parent.
        let whole = child.encode(None);
        assert_eq!(BlockMap::decode(&whole, "w", Some(&parent)).unwrap(), child);
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
