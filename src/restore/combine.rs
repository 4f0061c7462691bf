//! Assembling a file from an incremental chain (issue 15), newest level first: a `.blocks`
//! entry writes the blocks no newer level wrote; the whole copy in the oldest level that
//! holds the file fills in every block still missing, reading back the newer blocks so the
//! file's SHA-256 is taken in the same pass, and cuts the file to its size. Every block is
//! written once; nothing is staged.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use anyhow::{bail, Context};
use sha2::Digest;

use crate::codec::Sha256;
use crate::pg::page::BLCKSZ;
use crate::repo::blockfile::BlocksHeader;

/// Blocks read from a whole copy at a time.
const RUN: usize = 128;

/// The blocks written so far of each file being assembled.
#[derive(Default)]
pub(super) struct Assembly {
    written: Mutex<HashMap<String, Written>>,
}

/// A set of block numbers below a file's size.
#[derive(Debug, Clone)]
struct Written {
    bits: Vec<u64>,
}

impl Written {
    fn new(blocks: u64) -> Self {
        Written {
            bits: vec![0; blocks.div_ceil(64) as usize],
        }
    }
    fn contains(&self, b: u64) -> bool {
        self.bits
            .get((b / 64) as usize)
            .is_some_and(|w| w & (1 << (b % 64)) != 0)
    }
    fn insert(&mut self, b: u64) {
        if let Some(w) = self.bits.get_mut((b / 64) as usize) {
            *w |= 1 << (b % 64);
        }
    }
}

/// Open (or create, at its final size) the file being assembled.
fn open(dest: &Path, size: u64) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dest)
        .with_context(|| format!("open {}", dest.display()))?;
    if file.metadata()?.len() != size {
        file.set_len(size)
            .with_context(|| format!("size {}", dest.display()))?;
    }
    Ok(file)
}

impl Assembly {
    /// Write the blocks of a `.blocks` entry that no newer level wrote (and that lie below
    /// the file's final `size`). Returns the bytes written.
    pub fn apply_blocks(
        &self,
        path: &str,
        dest: &Path,
        size: u64,
        content: &mut impl Read,
    ) -> anyhow::Result<u64> {
        let header = BlocksHeader::read(content)?;
        let blocks = size / BLCKSZ as u64;
        let mut written = self.take(path).unwrap_or_else(|| Written::new(blocks));
        let file = open(dest, size)?;
        let mut page = vec![0u8; BLCKSZ];
        let mut bytes = 0;
        for &b in &header.blocks {
            content
                .read_exact(&mut page)
                .context("read a page of the .blocks entry")?;
            let b = u64::from(b);
            if b >= blocks || written.contains(b) {
                continue;
            }
            file.write_all_at(&page, b * BLCKSZ as u64)
                .with_context(|| format!("write {}", dest.display()))?;
            written.insert(b);
            bytes += BLCKSZ as u64;
        }
        io::copy(content, &mut io::sink())?;
        self.written
            .lock()
            .expect("assembly lock is not poisoned")
            .insert(path.to_string(), written);
        Ok(bytes)
    }

    /// Finish a file from its whole copy in an older level: every block below `size` that
    /// no newer level wrote comes from `content`; returns the SHA-256 and length of the file
    /// as assembled.
    pub fn finish_whole(
        &self,
        path: &str,
        dest: &Path,
        size: u64,
        content: &mut impl Read,
    ) -> anyhow::Result<(File, Sha256, u64)> {
        let written = self.take(path);
        let file = open(dest, size)?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; RUN * BLCKSZ];
        let mut offset = 0u64;
        let mut source_done = false;
        while offset < size {
            let want = (size - offset).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..want];
            // What the whole copy has for this run (it may be shorter than the file now).
            let got = if source_done {
                0
            } else {
                read_full(content, chunk)?
            };
            source_done |= got < want;
            let mut at = 0;
            while at < want {
                let len = (want - at).min(BLCKSZ);
                let block = (offset + at as u64) / BLCKSZ as u64;
                let piece = &mut chunk[at..at + len];
                let pos = offset + at as u64;
                if written.as_ref().is_some_and(|w| w.contains(block)) {
                    file.read_exact_at(piece, pos)
                        .with_context(|| format!("read back {}", dest.display()))?;
                } else if at + len <= got {
                    file.write_all_at(piece, pos)
                        .with_context(|| format!("write {}", dest.display()))?;
                } else {
                    bail!(
                        "block {block} of {path} is in no backup of the chain (the oldest copy has {} bytes)",
                        offset + got as u64
                    );
                }
                at += len;
            }
            hasher.update(&chunk[..want]);
            offset += want as u64;
        }
        // The rest of a copy longer than the file now (truncated since).
        io::copy(content, &mut io::sink())?;
        Ok((file, Sha256(hasher.finalize().into()), size))
    }

    fn take(&self, path: &str) -> Option<Written> {
        self.written
            .lock()
            .expect("assembly lock is not poisoned")
            .remove(path)
    }
}

/// Fill `buf` as far as `r` goes; the count read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(tag: u8) -> Vec<u8> {
        vec![tag; BLCKSZ]
    }

    fn blocks_entry(size_blocks: u64, blocks: &[(u32, u8)]) -> Vec<u8> {
        let h = BlocksHeader {
            file_size: size_blocks * BLCKSZ as u64,
            blocks: blocks.iter().map(|b| b.0).collect(),
        };
        let mut out = h.encode();
        for (_, tag) in blocks {
            out.extend(page(*tag));
        }
        out
    }

    #[test]
    fn newest_blocks_win_and_the_file_is_cut_to_its_size() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("16384");
        let a = Assembly::default();
        let size = 4 * BLCKSZ as u64;
        // Newest: block 1 and a new block 3; the next level: blocks 1 (older) and 2.
        a.apply_blocks(
            "r",
            &dest,
            size,
            &mut blocks_entry(4, &[(1, b'N'), (3, b'X')]).as_slice(),
        )
        .unwrap();
        a.apply_blocks(
            "r",
            &dest,
            size,
            &mut blocks_entry(3, &[(1, b'o'), (2, b'M')]).as_slice(),
        )
        .unwrap();
        // The full: 5 blocks (the file was truncated to 4 since).
        let mut whole = Vec::new();
        for t in [b'0', b'1', b'2', b'3', b'4'] {
            whole.extend(page(t));
        }
        let (_, sha, len) = a
            .finish_whole("r", &dest, size, &mut whole.as_slice())
            .unwrap();
        let mut want = page(b'0');
        want.extend(page(b'N'));
        want.extend(page(b'M'));
        want.extend(page(b'X'));
        assert_eq!(std::fs::read(&dest).unwrap(), want);
        assert_eq!((sha, len), (Sha256::of(&want), size));
    }

    #[test]
    fn a_block_in_no_level_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("1");
        let a = Assembly::default();
        let err = a
            .finish_whole(
                "base/5/1",
                &dest,
                2 * BLCKSZ as u64,
                &mut page(b'a').as_slice(),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("block 1 of base/5/1"), "{err}");
    }
}
