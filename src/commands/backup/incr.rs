//! The incremental copy of one relation file (issue 15): read it whole (page checksums
//! checked, SHA-256 and block digests taken, as for a full), keep the blocks whose digest
//! differs from the parent's block map or lie past the parent's end, and store them as one
//! `<path>.blocks` tar entry (`repo::blockfile`). A file with no such block and the parent's
//! size is `unchanged` and stores nothing.
//!
//! One read per file: the changed pages are kept from that read (in memory up to
//! [`SPILL_AFTER`], then in an unlinked temporary file), so what is stored is exactly what
//! was hashed, and the file restores to the SHA-256 the manifest records.

use std::fs::File;
use std::io::{self, Read, Seek, Write};

use anyhow::Context;

use super::copy::{Copied, WorkerCtx};
use crate::pg::exclude::PlannedFile;
use crate::pg::page::BLCKSZ;
use crate::repo::blockfile::BlocksHeader;
use crate::repo::manifest::{blocks_entry_name, PageProblem, Stored};

/// Changed pages kept in memory per file before they go to a temporary file.
const SPILL_AFTER: usize = 16 << 20;

/// Whether the file is a relation file made of whole blocks (its blocks get digests).
pub(super) fn is_relation_of_blocks(planned: &PlannedFile) -> bool {
    planned.checksum_base_block.is_some() && planned.size.is_multiple_of(BLCKSZ as u64)
}

/// Whether an incremental may store the file as changed blocks (given a parent copy).
pub(super) fn block_wise(planned: &PlannedFile) -> bool {
    is_relation_of_blocks(planned)
}

impl WorkerCtx {
    /// Copy the blocks of `planned` that differ from `parent` (its digests in the parent).
    pub(super) fn copy_changed<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        planned: &PlannedFile,
        parent: &[u64],
        problems: &mut Vec<PageProblem>,
    ) -> anyhow::Result<Option<Copied>> {
        let Some(mut reader) = self.open(planned)? else {
            return Ok(None);
        };
        let blocks = planned.size / BLCKSZ as u64;
        let mut changed = Vec::new();
        let mut pages = Spill::default();
        let mut page = vec![0u8; BLCKSZ];
        for block in 0..blocks {
            reader
                .read_exact(&mut page)
                .with_context(|| format!("read {}", planned.abs.display()))?;
            let digest = reader
                .digests
                .as_ref()
                .and_then(|d| d.get(block as usize))
                .copied()
                .expect("a relation file's blocks get digests as they are read");
            if parent.get(block as usize) != Some(&digest) {
                changed.push(block as u32);
                pages
                    .write_all(&page)
                    .context("keep a changed page (temporary file)")?;
            }
        }
        problems.append(&mut reader.problems);
        let digests = reader.digests.take();
        if changed.is_empty() && blocks == parent.len() as u64 {
            return Ok(Some((reader.entry(self.part, Stored::Unchanged), digests)));
        }
        let header = BlocksHeader {
            file_size: planned.size,
            blocks: changed,
        };
        let mut h = tar::Header::new_gnu();
        h.set_size(header.entry_size());
        h.set_mode(planned.mode);
        h.set_mtime(planned.mtime.max(0) as u64);
        h.set_entry_type(tar::EntryType::Regular);
        let content = io::Cursor::new(header.encode()).chain(pages.reader()?);
        tar.append_data(&mut h, blocks_entry_name(&planned.rel), content)
            .with_context(|| format!("copy the changed blocks of {}", planned.abs.display()))?;
        let count = header.blocks.len() as u32;
        Ok(Some((
            reader.entry(self.part, Stored::Blocks { count }),
            digests,
        )))
    }
}

/// Pages in memory, then in an unlinked temporary file.
#[derive(Default)]
struct Spill {
    mem: Vec<u8>,
    file: Option<File>,
}

impl Write for Spill {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.mem.len() + data.len() > SPILL_AFTER {
            let mut f = temp_file()?;
            f.write_all(&self.mem)?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        match self.file.as_mut() {
            Some(f) => f.write(data),
            None => {
                self.mem.extend_from_slice(data);
                Ok(data.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Spill {
    fn reader(self) -> io::Result<Box<dyn Read>> {
        match self.file {
            Some(mut f) => {
                f.rewind()?;
                Ok(Box::new(io::BufReader::with_capacity(1 << 20, f)))
            }
            None => Ok(Box::new(io::Cursor::new(self.mem))),
        }
    }
}

/// A private file in the temporary directory, unlinked at once (gone with the process).
fn temp_file() -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    for attempt in 0..100u32 {
        let path = dir.join(format!(
            "synapse-backup-blocks-{}-{attempt}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free temporary file name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spilled_pages_read_back_in_order() {
        let mut s = Spill::default();
        let page = vec![3u8; BLCKSZ];
        let n = SPILL_AFTER / BLCKSZ + 2;
        for i in 0..n {
            let mut p = page.clone();
            p[0] = i as u8;
            s.write_all(&p).unwrap();
        }
        assert!(s.file.is_some());
        let mut back = Vec::new();
        s.reader().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), n * BLCKSZ);
        assert_eq!(back[(n - 1) * BLCKSZ], (n - 1) as u8);
        assert_eq!(back[BLCKSZ + 1], 3);
    }
}
