//! Data page checksums (`checksum_impl.h`), for validating relation files during a base
//! backup.
//!
//! The algorithm is PostgreSQL's FNV-1a variant: 32 parallel sums over the page read as
//! 2048 u32 words, two extra rounds of zeros, XOR-folded, mixed with the block number and
//! reduced to 1..=65535 (docs/pg-reference.md §7.2). Pages are read as little-endian, like
//! the rest of this crate.
//!
//! What this module does not decide: which files and pages to check. A base backup skips
//! pages whose LSN is at or after the backup start ([`page_lsn`]; they may be torn and WAL
//! replay rewrites them) and re-reads a block once before reporting it (§7.3).

/// Size of a data page.
pub const BLCKSZ: usize = 8192;

/// Blocks per relation segment file (1 GiB / 8 KiB): file `<relfilenode>.<n>` starts at
/// absolute block `n * RELSEG_SIZE`.
pub const RELSEG_SIZE: u32 = 131_072;

/// A page whose stored checksum differs from the one computed from its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("page checksum mismatch in block {blkno}: calculated {computed:04X} but the page has {stored:04X}")]
pub struct PageChecksumMismatch {
    /// Absolute block number the checksum was computed for.
    pub blkno: u32,
    /// `pd_checksum` as found in the page.
    pub stored: u16,
    /// What PostgreSQL would compute for the page's contents.
    pub computed: u16,
}

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
/// Offset of `pd_checksum` in the page header.
const PD_CHECKSUM: usize = 8;

/// Initial values of the 32 sums (`checksumBaseOffsets`).
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

/// `pd_checksum` as PostgreSQL would compute it for block `blkno`: the absolute block number
/// in the relation fork, i.e. `segment_no * RELSEG_SIZE + block in file`. The page's own
/// `pd_checksum` is treated as zero.
pub fn page_checksum(page: &[u8; BLCKSZ], blkno: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    for (row_no, row) in page.chunks_exact(4 * N_SUMS).enumerate() {
        if row_no == 0 {
            let mut first = [0u8; 4 * N_SUMS];
            first.copy_from_slice(row);
            first[PD_CHECKSUM..PD_CHECKSUM + 2].fill(0);
            mix_row(&mut sums, &first);
        } else {
            mix_row(&mut sums, row);
        }
    }
    for _ in 0..2 {
        for sum in &mut sums {
            *sum = mix(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0, |acc, s| acc ^ s) ^ blkno;
    // `% 65535` then `+ 1` (docs pitfall 12): the result is never 0, which means "no checksum".
    (folded % 65535 + 1) as u16
}

fn mix_row(sums: &mut [u32; N_SUMS], row: &[u8]) {
    for (sum, word) in sums.iter_mut().zip(row.chunks_exact(4)) {
        *sum = mix(
            *sum,
            u32::from_le_bytes([word[0], word[1], word[2], word[3]]),
        );
    }
}

fn mix(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// The page's `pd_lsn`. It is two u32s, the high word (`xlogid`) first, each little-endian:
/// not a little-endian u64 (docs pitfall 11).
///
/// # Panics
/// If `page` is shorter than 8 bytes.
pub fn page_lsn(page: &[u8]) -> u64 {
    let word =
        |off: usize| u32::from_le_bytes([page[off], page[off + 1], page[off + 2], page[off + 3]]);
    u64::from(word(0)) << 32 | u64::from(word(4))
}

/// The page's stored `pd_checksum` (offset 8; 0 when checksums are off).
///
/// # Panics
/// If `page` is shorter than 10 bytes.
pub fn stored_checksum(page: &[u8]) -> u16 {
    u16::from_le_bytes([page[PD_CHECKSUM], page[PD_CHECKSUM + 1]])
}

/// Check block `blkno`'s checksum. A new page that is all zeros is valid (PostgreSQL's
/// `PageIsVerified` accepts it); any other page must carry the checksum its contents give.
/// Only call this when the cluster has data checksums on.
pub fn verify_page(page: &[u8; BLCKSZ], blkno: u32) -> Result<(), PageChecksumMismatch> {
    if page.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let stored = stored_checksum(page);
    let computed = page_checksum(page, blkno);
    if stored == computed {
        Ok(())
    } else {
        Err(PageChecksumMismatch {
            blkno,
            stored,
            computed,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Three real pages from a PostgreSQL 15.18 cluster made with `initdb -k`, read after a
    /// CHECKPOINT: (relation, absolute block number, pd_checksum, pd_lsn).
    /// pg_class (heap, catalog), a user heap table, and its btree index.
    const REAL_PAGES: [(&str, u32, u16, u64); 3] = [
        ("base/5/1259 (pg_class)", 0, 0x5AAF, 0x0000_0000_065C_3600),
        ("base/5/16384 (heap)", 1000, 0xE6E9, 0x0000_0000_046B_D788),
        ("base/5/16389 (btree)", 272, 0x876E, 0x0000_0000_0901_2038),
    ];

    fn real_pages() -> Vec<[u8; BLCKSZ]> {
        let gz: &[u8] = include_bytes!("testdata/pages.bin.gz");
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), REAL_PAGES.len() * BLCKSZ);
        raw.chunks_exact(BLCKSZ)
            .map(|c| c.try_into().unwrap())
            .collect()
    }

    #[test]
    fn real_pages_match_their_stored_checksums() {
        for (page, (name, blkno, checksum, lsn)) in real_pages().iter().zip(REAL_PAGES) {
            assert_eq!(stored_checksum(page), checksum, "{name}");
            assert_eq!(page_checksum(page, blkno), checksum, "{name}");
            assert_eq!(page_lsn(page), lsn, "{name}");
            assert_eq!(verify_page(page, blkno), Ok(()), "{name}");
        }
    }

    #[test]
    fn block_number_is_part_of_the_checksum() {
        for (page, (name, blkno, checksum, _)) in real_pages().iter().zip(REAL_PAGES) {
            assert_ne!(page_checksum(page, blkno + 1), checksum, "{name}");
            // The same block in the next 1 GiB segment file of the relation.
            let err = verify_page(page, blkno + RELSEG_SIZE).unwrap_err();
            assert_eq!(err.stored, checksum, "{name}");
        }
    }

    #[test]
    fn a_flipped_byte_fails() {
        for (mut page, (name, blkno, checksum, _)) in real_pages().into_iter().zip(REAL_PAGES) {
            for off in [0, 100, 4096, BLCKSZ - 1] {
                page[off] ^= 0x01;
                let err = verify_page(&page, blkno).unwrap_err();
                assert_eq!(err.stored, checksum, "{name} byte {off}");
                assert_eq!(err.computed, page_checksum(&page, blkno));
                assert_eq!(err.blkno, blkno);
                page[off] ^= 0x01;
            }
            assert_eq!(verify_page(&page, blkno), Ok(()), "{name}");
        }
    }

    #[test]
    fn stored_checksum_is_excluded_from_the_computation() {
        let mut page = real_pages()[0];
        page[PD_CHECKSUM] ^= 0xFF;
        page[PD_CHECKSUM + 1] ^= 0x0F;
        assert_eq!(page_checksum(&page, 0), REAL_PAGES[0].2);
        let err = verify_page(&page, 0).unwrap_err();
        assert_eq!(err.computed, REAL_PAGES[0].2);
        assert_eq!(
            err.to_string(),
            "page checksum mismatch in block 0: calculated 5AAF but the page has 5550"
        );
    }

    #[test]
    fn all_zero_page_is_valid_but_not_a_zero_page_with_one_byte_set() {
        let mut page = [0u8; BLCKSZ];
        assert_eq!(verify_page(&page, 0), Ok(()));
        assert_eq!(verify_page(&page, 12345), Ok(()));
        page[5000] = 1;
        assert!(verify_page(&page, 0).is_err());
    }

    #[test]
    fn lsn_is_high_word_first() {
        let mut page = [0u8; 24];
        page[..8].copy_from_slice(&[0x16, 0, 0, 0, 0x48, 0xD8, 0x74, 0xB3]);
        assert_eq!(page_lsn(&page), 0x16_B374_D848);
    }
}
