//! Walk the records of one WAL segment and extract the commit and abort times it holds.
//!
//! This is a pure parser: it takes the bytes of a whole segment file and returns a
//! [`SegmentSummary`]. The archive keeps the summary next to the segment so that a restore
//! to a time target knows which segments cover which transaction times.
//!
//! The format is PostgreSQL 13–17's (`xlog_internal.h`, `xlogrecord.h`, `xact.h`,
//! `xlogreader.c`); docs/pg-reference.md §8 has the details. WAL is written in the server's
//! byte order; like the rest of this crate we read it as little-endian (x86-64, arm64).
//!
//! Where valid WAL ends is decided the way `xlogreader.c` decides it: a page whose magic or
//! `xlp_pageaddr` is wrong, a record with `xl_tot_len == 0`, a bad prev-link, a bad
//! continuation header, or a bad CRC. A recycled or partly filled segment is normal, so that
//! ends the walk without an error; only a first page that is not a WAL long header is one.

use chrono::{DateTime, Utc};

use crate::pg::Lsn;

/// What one segment says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SegmentSummary {
    /// Earliest `xact_time` of the COMMIT, ABORT, COMMIT_PREPARED and ABORT_PREPARED records
    /// that start in this segment and whose bytes are complete within it.
    pub first_commit: Option<DateTime<Utc>>,
    /// Latest `xact_time` of those records.
    pub last_commit: Option<DateTime<Utc>>,
    /// Number of records that start in this segment and were decoded.
    pub records: u64,
    /// True when a record starting in this segment continues into the next one (we could not
    /// decode it, so a commit in it is not counted here).
    pub truncated_tail: bool,
}

/// Long page header of a segment's first page (`XLogLongPageHeaderData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    /// `xlp_magic`: the WAL format version, one per major release (see [`Self::pg_major`]).
    pub magic: u16,
    /// `xlp_tli`: timeline of the first record on the page. After a promotion the new
    /// timeline's first segment starts as a copy of the old one, so this can be the old TLI.
    pub timeline: u32,
    /// `xlp_pageaddr`: LSN of the segment's first byte.
    pub page_addr: u64,
    /// `xlp_sysid`: the cluster's system identifier, as in `pg_control`.
    pub system_id: u64,
    /// `xlp_seg_size`: WAL segment size in bytes.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`: WAL page size, always 8192 here.
    pub xlog_blcksz: u32,
}

/// Why a file is not a WAL segment we can read.
#[derive(Debug, thiserror::Error)]
pub enum WalScanError {
    #[error("not a WAL segment: {len} bytes is shorter than the {SIZE_OF_LONG_PHD}-byte long page header")]
    TooShort { len: usize },
    #[error("not a WAL segment from PostgreSQL 13-17: unknown page magic {magic:#06X}")]
    UnknownMagic { magic: u16 },
    #[error("not a WAL segment: first page has no long header (xlp_info {info:#06X})")]
    NoLongHeader { info: u16 },
    #[error("not a WAL segment: first page has unknown flags in xlp_info {info:#06X}")]
    UnknownFlags { info: u16 },
    #[error(
        "not a WAL segment: invalid segment size {seg_size} in the page header \
         (must be a power of two from 1 MiB to 1 GiB)"
    )]
    BadSegmentSize { seg_size: u32 },
    #[error("unsupported WAL block size {blcksz} in the page header (only 8192 is supported)")]
    BadBlockSize { blcksz: u32 },
    #[error("not a WAL segment: first page address {page_addr} is not at a segment boundary")]
    NotSegmentStart { page_addr: Lsn },
    #[error("WAL segment is {len} bytes but its page header says segments are {seg_size} bytes")]
    LengthMismatch { len: usize, seg_size: u32 },
}

const XLOG_BLCKSZ: usize = 8192;
const SIZE_OF_SHORT_PHD: usize = 24;
const SIZE_OF_LONG_PHD: usize = 40;
const SIZE_OF_XLOG_RECORD: usize = 24;

const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
const XLP_ALL_FLAGS: u16 = 0x000F;

pub(crate) const RM_XLOG_ID: u8 = 0;
pub(crate) const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
pub(crate) const XLOG_XACT_OPMASK: u8 = 0x70;
pub(crate) const XLOG_XACT_COMMIT: u8 = 0x00;
pub(crate) const XLOG_XACT_ABORT: u8 = 0x20;
pub(crate) const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
pub(crate) const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;

const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// `BKPIMAGE_IS_COMPRESSED` in PostgreSQL 13–14.
const BKPIMAGE_COMPRESSED_PG13: u8 = 0x02;
/// `BKPIMAGE_COMPRESS_PGLZ | _LZ4 | _ZSTD` in PostgreSQL 15–17.
const BKPIMAGE_COMPRESSED_PG15: u8 = 0x04 | 0x08 | 0x10;

/// `XLOG_PAGE_MAGIC` of each supported major version.
const MAGICS: [(u16, u32); 5] = [
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
];

/// Microseconds from the Unix epoch to the PostgreSQL epoch, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl LongPageHeader {
    /// Parse the first 40 bytes of a segment.
    ///
    /// Errors if the bytes are too short, the magic is not one of PostgreSQL 13–17's, the
    /// `XLP_LONG_HEADER` bit is missing, the segment size is not a power of two from 1 MiB to
    /// 1 GiB, the block size is not 8192, or the page address is not at a segment boundary.
    pub fn parse(bytes: &[u8]) -> Result<Self, WalScanError> {
        if bytes.len() < SIZE_OF_LONG_PHD {
            return Err(WalScanError::TooShort { len: bytes.len() });
        }
        let magic = u16_at(bytes, 0);
        let info = u16_at(bytes, 2);
        if major_for_magic(magic).is_none() {
            return Err(WalScanError::UnknownMagic { magic });
        }
        if info & XLP_LONG_HEADER == 0 {
            return Err(WalScanError::NoLongHeader { info });
        }
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(WalScanError::UnknownFlags { info });
        }
        let header = LongPageHeader {
            magic,
            timeline: u32_at(bytes, 4),
            page_addr: u64_at(bytes, 8),
            system_id: u64_at(bytes, 24),
            seg_size: u32_at(bytes, 32),
            xlog_blcksz: u32_at(bytes, 36),
        };
        let seg_size = header.seg_size;
        if !seg_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg_size) {
            return Err(WalScanError::BadSegmentSize { seg_size });
        }
        if header.xlog_blcksz as usize != XLOG_BLCKSZ {
            return Err(WalScanError::BadBlockSize {
                blcksz: header.xlog_blcksz,
            });
        }
        if !header.page_addr.is_multiple_of(u64::from(seg_size)) {
            return Err(WalScanError::NotSegmentStart {
                page_addr: Lsn(header.page_addr),
            });
        }
        Ok(header)
    }

    /// PostgreSQL major version from the magic: 0xD106=13, 0xD10D=14, 0xD110=15, 0xD113=16,
    /// 0xD116=17. Returns 0 for any other magic (which [`LongPageHeader::parse`] rejects).
    pub fn pg_major(&self) -> u32 {
        major_for_magic(self.magic).unwrap_or(0)
    }
}

fn major_for_magic(magic: u16) -> Option<u32> {
    MAGICS.iter().find(|(m, _)| *m == magic).map(|(_, v)| *v)
}

/// Walk all records that start in the segment. `segment` is the whole file (its length must
/// equal the `seg_size` in its header).
///
/// The walk stops cleanly at the end of valid WAL: a later page with a wrong address or
/// magic, `xl_tot_len == 0`, a bad CRC or prev-link, an XLOG SWITCH record, or a record that
/// runs past the end of the segment (then `truncated_tail` is set). A recycled or partly
/// filled segment is normal, not an error. Only a bad first page header is an error.
///
/// The scan does not know the file's name: callers should check that
/// [`LongPageHeader::page_addr`] and `timeline` match it, because a recycled segment that
/// was never rewritten still carries an old segment's valid header and records.
pub fn scan_segment(segment: &[u8]) -> Result<SegmentSummary, WalScanError> {
    walk_segment(segment, |_| {}).map(|(_, summary)| summary)
}

/// The one walk behind [`scan_segment`] and [`super::walevents`]: builds the summary and
/// hands every record it counts to `visit`, in LSN order.
pub(crate) fn walk_segment(
    segment: &[u8],
    mut visit: impl FnMut(&Record<'_>),
) -> Result<(LongPageHeader, SegmentSummary), WalScanError> {
    let header = LongPageHeader::parse(segment)?;
    if segment.len() != header.seg_size as usize {
        return Err(WalScanError::LengthMismatch {
            len: segment.len(),
            seg_size: header.seg_size,
        });
    }
    let mut walker = Walker::new(segment, &header);
    let mut summary = SegmentSummary::default();
    while let Some(record) = walker.next_record() {
        summary.records += 1;
        if let Some(time) = xact_end_time(record.bytes, header.magic) {
            summary.first_commit = Some(summary.first_commit.map_or(time, |t| t.min(time)));
            summary.last_commit = Some(summary.last_commit.map_or(time, |t| t.max(time)));
        }
        visit(&record);
    }
    summary.truncated_tail = walker.stop == Some(Stop::Truncated);
    Ok((header, summary))
}

/// Why the walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Reached the end of the segment between records.
    SegmentEnd,
    /// An XLOG SWITCH record: the rest of the segment is unused.
    Switch,
    /// A record continues into the next segment.
    Truncated,
    /// `xl_tot_len == 0`: the unwritten, zeroed part of the last page.
    ZeroLength,
    /// A page header with the wrong magic, address or flags (a stale or unwritten page).
    BadPageHeader,
    /// A continuation page that does not continue the record we are reading, or a record
    /// start on a page that says it begins with a continuation.
    BadContrecord,
    /// `xl_tot_len` too small, or `xl_prev` not pointing at the previous record.
    BadRecordHeader,
    /// The record's CRC-32C does not match.
    BadCrc,
}

/// One complete, CRC-checked record.
pub(crate) struct Record<'a> {
    /// Start LSN of the record.
    pub(crate) lsn: u64,
    /// The whole record: the 24-byte `XLogRecord` header, then the fragment headers and data.
    pub(crate) bytes: &'a [u8],
}

impl Record<'_> {
    /// `xl_xid`: the (sub)transaction that wrote the record, 0 if none.
    pub(crate) fn xid(&self) -> u32 {
        u32_at(self.bytes, 4)
    }
    /// `xl_info`: the high 4 bits belong to the resource manager.
    pub(crate) fn info(&self) -> u8 {
        self.bytes[16]
    }
    /// `xl_rmid`.
    pub(crate) fn rmid(&self) -> u8 {
        self.bytes[17]
    }
}

/// Outcome of assembling one record's bytes.
enum Read {
    /// The record is in `Walker::buf`; the next record starts at MAXALIGN(`end`).
    Complete {
        end: usize,
    },
    /// The record was overwritten (`XLP_FIRST_IS_OVERWRITE_CONTRECORD`); restart reading
    /// at `at`, the first record on the overwriting page.
    Restart {
        at: usize,
    },
    Stop(Stop),
}

/// Iterates the complete records that start in one segment, like `xlogreader.c` does.
struct Walker<'a> {
    seg: &'a [u8],
    start_lsn: u64,
    magic: u16,
    /// Offset of the next record (before alignment and page-header skipping).
    pos: usize,
    /// Start LSN of the last record returned, for the `xl_prev` check.
    prev: Option<u64>,
    buf: Vec<u8>,
    stop: Option<Stop>,
}

impl<'a> Walker<'a> {
    /// `seg` must be a whole segment whose first page `header` was parsed from.
    fn new(seg: &'a [u8], header: &LongPageHeader) -> Self {
        let mut walker = Walker {
            seg,
            start_lsn: header.page_addr,
            magic: header.magic,
            pos: SIZE_OF_LONG_PHD,
            prev: None,
            buf: Vec::new(),
            stop: None,
        };
        let info = u16_at(seg, 2);
        if info & XLP_FIRST_IS_CONTRECORD != 0 {
            walker.skip_continuation(u32_at(seg, 16) as usize);
        }
        walker
    }

    /// Skip the tail of a record that began in an earlier segment: `rem` bytes, which may
    /// span several pages, each with its own short header.
    fn skip_continuation(&mut self, mut rem: usize) {
        loop {
            let room = page_end(self.pos) - self.pos;
            if rem <= room {
                self.pos += rem;
                return;
            }
            rem -= room;
            self.pos += room;
            if self.pos == self.seg.len() {
                // The record that began earlier covers this whole segment.
                self.stop = Some(Stop::SegmentEnd);
                return;
            }
            match self.page_header(self.pos) {
                Some((info, rem_len))
                    if info & XLP_FIRST_IS_CONTRECORD != 0 && rem_len as usize == rem =>
                {
                    self.pos += SIZE_OF_SHORT_PHD;
                }
                Some(_) => {
                    self.stop = Some(Stop::BadContrecord);
                    return;
                }
                None => {
                    self.stop = Some(Stop::BadPageHeader);
                    return;
                }
            }
        }
    }

    /// The next complete record, or `None` when the walk has ended (see `self.stop`).
    fn next_record(&mut self) -> Option<Record<'_>> {
        loop {
            if self.stop.is_some() {
                return None;
            }
            let mut pos = maxalign(self.pos);
            if pos == self.seg.len() {
                self.stop = Some(Stop::SegmentEnd);
                return None;
            }
            if pos.is_multiple_of(XLOG_BLCKSZ) {
                match self.page_header(pos) {
                    // A record must start here, so the page may not begin with the rest of one.
                    Some((info, _)) if info & XLP_FIRST_IS_CONTRECORD != 0 => {
                        self.stop = Some(Stop::BadContrecord);
                        return None;
                    }
                    Some(_) => pos += SIZE_OF_SHORT_PHD,
                    None => {
                        self.stop = Some(Stop::BadPageHeader);
                        return None;
                    }
                }
            }
            let lsn = self.start_lsn + pos as u64;
            match self.read_record(pos, lsn) {
                Read::Complete { end } => {
                    self.pos = end;
                    if !crc_ok(&self.buf) {
                        self.stop = Some(Stop::BadCrc);
                        return None;
                    }
                    self.prev = Some(lsn);
                    if self.buf[17] == RM_XLOG_ID && self.buf[16] & 0xF0 == XLOG_SWITCH {
                        self.stop = Some(Stop::Switch);
                    }
                    return Some(Record {
                        lsn,
                        bytes: &self.buf,
                    });
                }
                Read::Restart { at } => self.pos = at,
                Read::Stop(stop) => {
                    self.stop = Some(stop);
                    return None;
                }
            }
        }
    }

    /// Copy the record starting at offset `start` (LSN `lsn`) into `self.buf`, skipping the
    /// page headers it crosses and checking that each continues this record.
    fn read_record(&mut self, start: usize, lsn: u64) -> Read {
        // Records are 8-aligned and pages end on multiples of 8, so xl_tot_len is always on
        // the record's first page even when the rest of the header is not.
        let tot_len = u32_at(self.seg, start) as usize;
        if tot_len == 0 {
            return Read::Stop(Stop::ZeroLength);
        }
        if tot_len < SIZE_OF_XLOG_RECORD {
            return Read::Stop(Stop::BadRecordHeader);
        }
        self.buf.clear();
        let mut pos = start;
        let mut header_checked = false;
        loop {
            let n = (tot_len - self.buf.len()).min(page_end(pos) - pos);
            self.buf.extend_from_slice(&self.seg[pos..pos + n]);
            pos += n;
            if !header_checked && self.buf.len() >= SIZE_OF_XLOG_RECORD {
                header_checked = true;
                let xl_prev = u64_at(&self.buf, 8);
                let prev_ok = match self.prev {
                    Some(prev) => xl_prev == prev,
                    None => xl_prev < lsn,
                };
                if !prev_ok {
                    return Read::Stop(Stop::BadRecordHeader);
                }
            }
            let remaining = tot_len - self.buf.len();
            if remaining == 0 {
                return Read::Complete { end: pos };
            }
            if pos == self.seg.len() {
                return Read::Stop(Stop::Truncated);
            }
            match self.page_header(pos) {
                None => return Read::Stop(Stop::BadPageHeader),
                // The rest of this record was lost and new WAL was written over it
                // (xlogreader.c restarts at the overwriting page the same way).
                Some((info, _)) if info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 => {
                    return Read::Restart {
                        at: pos + SIZE_OF_SHORT_PHD,
                    };
                }
                Some((info, rem_len))
                    if info & XLP_FIRST_IS_CONTRECORD != 0 && rem_len as usize == remaining =>
                {
                    pos += SIZE_OF_SHORT_PHD;
                }
                Some(_) => return Read::Stop(Stop::BadContrecord),
            }
        }
    }

    /// Check the short header of the (non-first) page at `off`; returns its `xlp_info` and
    /// `xlp_rem_len`, or `None` if the page is not this segment's WAL.
    fn page_header(&self, off: usize) -> Option<(u16, u32)> {
        let page = &self.seg[off..off + SIZE_OF_SHORT_PHD];
        let info = u16_at(page, 2);
        let valid = u16_at(page, 0) == self.magic
            && info & !XLP_ALL_FLAGS == 0
            && u64_at(page, 8) == self.start_lsn + off as u64;
        valid.then(|| (info, u32_at(page, 16)))
    }
}

/// The end time of a COMMIT, ABORT, COMMIT_PREPARED or ABORT_PREPARED record.
fn xact_end_time(record: &[u8], magic: u16) -> Option<DateTime<Utc>> {
    if record[17] != RM_XACT_ID {
        return None;
    }
    match record[16] & XLOG_XACT_OPMASK {
        XLOG_XACT_COMMIT
        | XLOG_XACT_ABORT
        | XLOG_XACT_COMMIT_PREPARED
        | XLOG_XACT_ABORT_PREPARED => {}
        _ => return None,
    }
    // xl_xact_commit / xl_xact_abort start with xact_time (TimestampTz).
    pg_timestamp(main_data(record, magic)?.get(..8)?)
}

/// A `TimestampTz` (little-endian i64 microseconds since 2000-01-01 00:00:00 UTC).
pub(crate) fn pg_timestamp(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let micros = i64::from_le_bytes(bytes.try_into().ok()?);
    DateTime::from_timestamp_micros(micros.checked_add(PG_EPOCH_UNIX_MICROS)?)
}

/// The main data of a complete record: walk the fragment headers after the `XLogRecord`
/// header (xlogreader.c `DecodeXLogRecord`). The main data is the last payload, so it is
/// the record's final `main_len` bytes. `None` if the headers do not add up.
pub(crate) fn main_data(record: &[u8], magic: u16) -> Option<&[u8]> {
    decode(record, magic).map(|d| d.main)
}

/// What [`decode`] finds in a record's fragment headers.
pub(crate) struct Decoded<'a> {
    /// The main data (the record's final bytes).
    pub(crate) main: &'a [u8],
    /// `RelFileNode` (spcNode, dbNode, relNode) of the first block reference, if any.
    pub(crate) first_block_rel: Option<[u32; 3]>,
}

/// Walk the fragment headers (see [`main_data`]); `None` if they do not add up.
pub(crate) fn decode(record: &[u8], magic: u16) -> Option<Decoded<'_>> {
    let compressed_mask = match major_for_magic(magic)? {
        13 | 14 => BKPIMAGE_COMPRESSED_PG13,
        _ => BKPIMAGE_COMPRESSED_PG15,
    };
    let mut r = Bytes {
        rest: record.get(SIZE_OF_XLOG_RECORD..)?,
    };
    // Declared payload (block images, block data, main data) not yet accounted for by
    // headers; headers end when the bytes left equal it.
    let mut payload: usize = 0;
    let mut main_len = 0;
    let mut first_block_rel = None;
    while r.rest.len() > payload {
        match r.u8()? {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = usize::from(r.u8()?);
                payload += main_len;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = r.u32()? as usize;
                payload = payload.checked_add(main_len)?;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => r.skip(2)?,
            XLR_BLOCK_ID_TOPLEVEL_XID => r.skip(4)?,
            id if id <= XLR_MAX_BLOCK_ID => {
                let fork_flags = r.u8()?;
                payload += usize::from(r.u16()?);
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    payload += usize::from(r.u16()?); // bimg_len
                    r.skip(2)?; // hole_offset
                    let bimg_info = r.u8()?;
                    if bimg_info & BKPIMAGE_HAS_HOLE != 0 && bimg_info & compressed_mask != 0 {
                        r.skip(2)?; // hole_length
                    }
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    let rel = r.take(12)?; // RelFileLocator
                    if first_block_rel.is_none() {
                        first_block_rel = Some([u32_at(rel, 0), u32_at(rel, 4), u32_at(rel, 8)]);
                    }
                }
                r.skip(4)?; // BlockNumber
            }
            _ => return None,
        }
    }
    if r.rest.len() != payload {
        return None;
    }
    Some(Decoded {
        main: record.get(record.len() - main_len..)?,
        first_block_rel,
    })
}

/// A little-endian reader over a byte slice that returns `None` instead of panicking.
pub(crate) struct Bytes<'a> {
    pub(crate) rest: &'a [u8],
}

impl Bytes<'_> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }
    pub(crate) fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16_at(b, 0))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32_at(b, 0))
    }
}

/// CRC-32C over the record body `[24, tot_len)`, then the header `[0, 20)`.
fn crc_ok(record: &[u8]) -> bool {
    let body = crc32c::crc32c(&record[SIZE_OF_XLOG_RECORD..]);
    crc32c::crc32c_append(body, &record[..20]) == u32_at(record, 20)
}

fn maxalign(off: usize) -> usize {
    (off + 7) & !7
}

/// Offset of the end of the page holding `off`.
fn page_end(off: usize) -> usize {
    (off / XLOG_BLCKSZ + 1) * XLOG_BLCKSZ
}

// Callers guarantee the bounds; these panic (a bug, not bad input) if they are wrong.
fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | u64::from(u32_at(b, off + 4)) << 32
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Read;

    use super::*;

    pub(crate) const SEG: usize = 1 << 20;
    pub(crate) const START: u64 = 5 * SEG as u64; // segment 0/500000 of a 1 MiB-segment cluster
    const PG15: u16 = 0xD110;

    pub(crate) fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    pub(crate) fn pg_micros(time: DateTime<Utc>) -> i64 {
        time.timestamp_micros() - PG_EPOCH_UNIX_MICROS
    }

    /// Lays out a synthetic segment: page headers at every page the data reaches, with
    /// continuation flags and lengths, records with correct prev-links and CRCs.
    pub(crate) struct Builder {
        pub(crate) seg: Vec<u8>,
        pos: usize,
        prev: u64,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Self::with_contrecord(0)
        }

        /// The segment begins with `rem` bytes of a record from the previous segment.
        fn with_contrecord(rem: usize) -> Self {
            let mut b = Builder {
                seg: vec![0; SEG],
                pos: 0,
                prev: START - 0x100,
            };
            let info = XLP_LONG_HEADER | 0x0004 | if rem > 0 { XLP_FIRST_IS_CONTRECORD } else { 0 };
            b.page_header(0, info, rem as u32);
            b.seg[24..32].copy_from_slice(&0x7000_0000_1234_5678u64.to_le_bytes());
            b.seg[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
            b.seg[36..40].copy_from_slice(&(XLOG_BLCKSZ as u32).to_le_bytes());
            b.pos = SIZE_OF_LONG_PHD;
            b.write(&vec![0xAB; rem], true);
            b
        }

        fn page_header(&mut self, off: usize, info: u16, rem_len: u32) {
            let h = &mut self.seg[off..off + SIZE_OF_SHORT_PHD];
            h[0..2].copy_from_slice(&PG15.to_le_bytes());
            h[2..4].copy_from_slice(&info.to_le_bytes());
            h[4..8].copy_from_slice(&1u32.to_le_bytes());
            h[8..16].copy_from_slice(&(START + off as u64).to_le_bytes());
            h[16..20].copy_from_slice(&rem_len.to_le_bytes());
        }

        /// Write `data` at the current position, adding a short page header (with
        /// XLP_FIRST_IS_CONTRECORD and the bytes left of `data`) at each page boundary it
        /// crosses. Stops at the end of the segment.
        fn write(&mut self, data: &[u8], continuation: bool) {
            let mut i = 0;
            while i < data.len() && self.pos < SEG {
                if self.pos.is_multiple_of(XLOG_BLCKSZ) {
                    let rem = (data.len() - i) as u32;
                    let (info, rem) = if continuation || i > 0 {
                        (XLP_FIRST_IS_CONTRECORD, rem)
                    } else {
                        (0, 0)
                    };
                    self.page_header(self.pos, info, rem);
                    self.pos += SIZE_OF_SHORT_PHD;
                }
                let n = (data.len() - i).min(page_end(self.pos) - self.pos);
                self.seg[self.pos..self.pos + n].copy_from_slice(&data[i..i + n]);
                self.pos += n;
                i += n;
            }
        }

        /// Offset where the next record will start.
        fn next_start(&self) -> usize {
            let pos = maxalign(self.pos);
            if pos.is_multiple_of(XLOG_BLCKSZ) {
                pos + SIZE_OF_SHORT_PHD
            } else {
                pos
            }
        }

        /// Append a record; `payload` is everything after the 24-byte header.
        pub(crate) fn record(&mut self, rmid: u8, info: u8, payload: &[u8]) -> u64 {
            self.record_of(777, rmid, info, payload)
        }

        /// [`Self::record`] with `xl_xid` = `xid`.
        pub(crate) fn record_of(&mut self, xid: u32, rmid: u8, info: u8, payload: &[u8]) -> u64 {
            self.pos = maxalign(self.pos);
            if self.pos.is_multiple_of(XLOG_BLCKSZ) && self.pos < SEG {
                self.page_header(self.pos, 0, 0);
                self.pos += SIZE_OF_SHORT_PHD;
            }
            let lsn = START + self.pos as u64;
            let mut rec = make_record(rmid, info, self.prev, payload);
            if xid != 777 {
                rec[4..8].copy_from_slice(&xid.to_le_bytes());
                let crc =
                    crc32c::crc32c_append(crc32c::crc32c(&rec[SIZE_OF_XLOG_RECORD..]), &rec[..20]);
                rec[20..24].copy_from_slice(&crc.to_le_bytes());
            }
            self.write(&rec, false);
            self.prev = lsn;
            lsn
        }

        pub(crate) fn xact(&mut self, op: u8, time: DateTime<Utc>) -> u64 {
            let mut payload = vec![XLR_BLOCK_ID_DATA_SHORT, 8];
            payload.extend_from_slice(&pg_micros(time).to_le_bytes());
            self.record(RM_XACT_ID, op, &payload)
        }

        /// A record that is not a transaction end, with `len` bytes of main data.
        pub(crate) fn other(&mut self, len: usize) -> u64 {
            let mut payload = vec![XLR_BLOCK_ID_DATA_LONG];
            payload.extend_from_slice(&(len as u32).to_le_bytes());
            payload.resize(payload.len() + len, 0x5A);
            self.record(21, 0x00, &payload) // a non-transactional logical message
        }

        /// Pad with one record so that the next record starts at `target` (same page).
        fn fill_until(&mut self, target: usize) {
            let start = self.next_start();
            assert_eq!(start / XLOG_BLCKSZ, target / XLOG_BLCKSZ);
            self.other(target - start - SIZE_OF_XLOG_RECORD - 5);
            assert_eq!(self.next_start(), target);
        }
    }

    fn make_record(rmid: u8, info: u8, prev: u64, payload: &[u8]) -> Vec<u8> {
        let mut rec = vec![0u8; SIZE_OF_XLOG_RECORD];
        rec[0..4].copy_from_slice(&((SIZE_OF_XLOG_RECORD + payload.len()) as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&777u32.to_le_bytes());
        rec[8..16].copy_from_slice(&prev.to_le_bytes());
        rec[16] = info;
        rec[17] = rmid;
        rec.extend_from_slice(payload);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[SIZE_OF_XLOG_RECORD..]), &rec[..20]);
        rec[20..24].copy_from_slice(&crc.to_le_bytes());
        rec
    }

    fn stop_of(seg: &[u8]) -> Stop {
        let header = LongPageHeader::parse(seg).unwrap();
        let mut walker = Walker::new(seg, &header);
        while walker.next_record().is_some() {}
        walker.stop.unwrap()
    }

    #[test]
    fn commit_and_abort_timestamps() {
        let mut b = Builder::new();
        b.other(100);
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:00.000001Z"));
        b.xact(XLOG_XACT_ABORT, t("2024-05-01T12:00:03Z"));
        b.xact(XLOG_XACT_COMMIT_PREPARED | 0x80, t("2024-05-01T12:00:04Z"));
        // Not transaction ends: PREPARE, ASSIGNMENT, and an XLOG record that starts the
        // same way. Their "times" lie outside the range and must be ignored.
        b.xact(0x10, t("2030-01-01T00:00:00Z"));
        b.xact(0x50, t("1999-01-01T00:00:00Z"));
        b.record(
            RM_XLOG_ID,
            0x70,
            &[XLR_BLOCK_ID_DATA_SHORT, 8, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        // Transaction ends need not be in time order: the earliest is last.
        b.xact(XLOG_XACT_ABORT_PREPARED, t("2024-05-01T11:59:59.999999Z"));
        let seg = b.seg;
        let summary = scan_segment(&seg).unwrap();
        assert_eq!(
            summary,
            SegmentSummary {
                first_commit: Some(t("2024-05-01T11:59:59.999999Z")),
                last_commit: Some(t("2024-05-01T12:00:04Z")),
                records: 8,
                truncated_tail: false,
            }
        );
        assert_eq!(stop_of(&seg), Stop::ZeroLength);
    }

    #[test]
    fn no_transaction_ends_gives_no_times() {
        let mut b = Builder::new();
        b.other(10);
        b.other(20000); // spans pages
        let summary = scan_segment(&b.seg).unwrap();
        assert_eq!(
            summary,
            SegmentSummary {
                records: 2,
                ..Default::default()
            }
        );
    }

    #[test]
    fn commit_with_origin_and_long_main_data() {
        let time = t("2024-02-29T23:59:59.5Z");
        let mut payload = vec![XLR_BLOCK_ID_ORIGIN, 7, 0, XLR_BLOCK_ID_DATA_LONG];
        payload.extend_from_slice(&12u32.to_le_bytes());
        payload.extend_from_slice(&pg_micros(time).to_le_bytes());
        payload.extend_from_slice(&0x01u32.to_le_bytes()); // xinfo (HAS_INFO is in xl_info)
        let mut b = Builder::new();
        b.record(RM_XACT_ID, XLOG_XACT_COMMIT | 0x80, &payload);
        let summary = scan_segment(&b.seg).unwrap();
        assert_eq!(
            (summary.first_commit, summary.last_commit),
            (Some(time), Some(time))
        );
    }

    #[test]
    fn commit_split_across_a_page_boundary() {
        let time = t("2024-05-01T12:00:00Z");
        // Bytes of the 34-byte commit on the first page: 8 and 16 split the XLogRecord
        // header itself, 24 splits right after it, 32 splits the timestamp.
        for on_first_page in [8, 16, 24, 32] {
            let mut b = Builder::new();
            b.fill_until(XLOG_BLCKSZ - on_first_page);
            let lsn = b.xact(XLOG_XACT_COMMIT, time);
            assert_eq!(lsn, START + (XLOG_BLCKSZ - on_first_page) as u64);
            b.xact(XLOG_XACT_ABORT, time + chrono::Duration::seconds(1));
            let summary = scan_segment(&b.seg).unwrap();
            assert_eq!(summary.records, 3, "split at {on_first_page}");
            assert_eq!(summary.first_commit, Some(time), "split at {on_first_page}");
            assert_eq!(
                summary.last_commit,
                Some(time + chrono::Duration::seconds(1))
            );
        }
    }

    #[test]
    fn record_ending_exactly_at_a_page_end() {
        let mut b = Builder::new();
        b.fill_until(XLOG_BLCKSZ - 40);
        b.other(11); // 24 + 5 + 11 = 40 bytes: ends exactly at the page end
        assert_eq!(b.pos, XLOG_BLCKSZ);
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:00Z"));
        let summary = scan_segment(&b.seg).unwrap();
        assert_eq!(summary.records, 3);
        assert_eq!(summary.last_commit, Some(t("2024-05-01T12:00:00Z")));
    }

    #[test]
    fn contrecord_at_segment_start_is_skipped() {
        // Continuation bytes covering the rest of page 0, all of page 1 and part of page 2.
        for rem in [1, 8152, 8152 + 8168 + 500] {
            let mut b = Builder::with_contrecord(rem);
            b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:00Z"));
            let summary = scan_segment(&b.seg).unwrap();
            assert_eq!(summary.records, 1, "rem {rem}");
            assert_eq!(summary.first_commit, Some(t("2024-05-01T12:00:00Z")));
        }
    }

    #[test]
    fn continued_record_covering_the_whole_segment() {
        let b = Builder::with_contrecord(SEG * 2);
        assert_eq!(scan_segment(&b.seg).unwrap(), SegmentSummary::default());
        assert_eq!(stop_of(&b.seg), Stop::SegmentEnd);
    }

    #[test]
    fn record_running_past_the_segment_end() {
        let mut b = Builder::new();
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:00Z"));
        b.other(SEG); // a large record that continues into the next segment
        let summary = scan_segment(&b.seg).unwrap();
        assert_eq!(
            summary,
            SegmentSummary {
                first_commit: Some(t("2024-05-01T12:00:00Z")),
                last_commit: Some(t("2024-05-01T12:00:00Z")),
                records: 1,
                truncated_tail: true,
            }
        );
    }

    #[test]
    fn commit_split_across_the_segment_end_is_not_counted() {
        for on_last_page in [8, 16, 32] {
            let mut b = Builder::new();
            b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:00Z"));
            let last_page = SEG - XLOG_BLCKSZ;
            b.other(last_page - b.next_start() - SIZE_OF_XLOG_RECORD - 5 + 100);
            b.fill_until(SEG - on_last_page);
            b.xact(XLOG_XACT_COMMIT, t("2024-05-01T13:00:00Z"));
            let summary = scan_segment(&b.seg).unwrap();
            assert_eq!(summary.records, 3, "split at {on_last_page}");
            assert!(summary.truncated_tail);
            assert_eq!(summary.last_commit, Some(t("2024-05-01T12:00:00Z")));
        }
    }

    #[test]
    fn last_record_ending_at_the_segment_end() {
        let mut b = Builder::new();
        let last_page = SEG - XLOG_BLCKSZ;
        b.other(last_page - b.next_start() - SIZE_OF_XLOG_RECORD - 5 + 100);
        b.fill_until(SEG - 40);
        b.other(11);
        assert_eq!(b.pos, SEG);
        let summary = scan_segment(&b.seg).unwrap();
        assert_eq!(summary.records, 3);
        assert!(!summary.truncated_tail);
        assert_eq!(stop_of(&b.seg), Stop::SegmentEnd);
    }

    #[test]
    fn switch_ends_the_segment() {
        let mut b = Builder::new();
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:00Z"));
        b.record(RM_XLOG_ID, XLOG_SWITCH, &[]);
        // Nothing after a SWITCH belongs to this segment, even what looks like a record.
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T13:00:00Z"));
        let summary = scan_segment(&b.seg).unwrap();
        assert_eq!(summary.records, 2);
        assert_eq!(summary.last_commit, Some(t("2024-05-01T12:00:00Z")));
        assert!(!summary.truncated_tail);
        assert_eq!(stop_of(&b.seg), Stop::Switch);
    }

    #[test]
    fn zero_tail_ends_cleanly() {
        // Mid-page: the next record has xl_tot_len 0.
        let mut b = Builder::new();
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:00Z"));
        assert_eq!(scan_segment(&b.seg).unwrap().records, 1);
        assert_eq!(stop_of(&b.seg), Stop::ZeroLength);
        // At a page boundary: the next page was never written.
        b.fill_until(XLOG_BLCKSZ - 40);
        b.other(11);
        assert_eq!(scan_segment(&b.seg).unwrap().records, 3);
        assert_eq!(stop_of(&b.seg), Stop::BadPageHeader);
        // Only the long header written at all.
        let empty = Builder::new().seg;
        assert_eq!(scan_segment(&empty).unwrap(), SegmentSummary::default());
    }

    #[test]
    fn stale_pages_of_a_recycled_segment_end_the_walk() {
        // Build a "previous life" of the file: an older segment full of commits.
        let mut old = Builder::new();
        for i in 0..2000 {
            old.xact(
                XLOG_XACT_COMMIT,
                t("2020-01-01T00:00:00Z") + chrono::Duration::seconds(i),
            );
        }
        // Rewrite the first two pages as the new segment, ending in a record that would
        // continue onto the stale third page.
        let mut b = Builder::new();
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:00Z"));
        b.other(XLOG_BLCKSZ);
        b.fill_until(XLOG_BLCKSZ * 2 - 64);
        b.other(100);
        let mut seg = old.seg.clone();
        seg[..2 * XLOG_BLCKSZ].copy_from_slice(&b.seg[..2 * XLOG_BLCKSZ]);
        // The stale page carries the same address but is an older life: make its address
        // point one "cycle" back, as a recycled file's pages do.
        for page in (2 * XLOG_BLCKSZ..SEG).step_by(XLOG_BLCKSZ) {
            let addr = START - 4 * SEG as u64 + page as u64;
            seg[page + 8..page + 16].copy_from_slice(&addr.to_le_bytes());
        }
        let summary = scan_segment(&seg).unwrap();
        assert_eq!(summary.records, 3);
        assert!(!summary.truncated_tail);
        assert_eq!(summary.first_commit, Some(t("2024-05-01T12:00:00Z")));
        assert_eq!(summary.last_commit, Some(t("2024-05-01T12:00:00Z")));
        assert_eq!(stop_of(&seg), Stop::BadPageHeader);
        // The old life on its own is fine, which is why callers must compare the first
        // page's address with the file name.
        assert_eq!(scan_segment(&old.seg).unwrap().records, 2000);
    }

    #[test]
    fn continuation_page_that_does_not_continue_the_record() {
        let mut b = Builder::new();
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:00Z"));
        b.other(9000);
        // Wrong xlp_rem_len on page 1.
        let mut seg = b.seg.clone();
        seg[XLOG_BLCKSZ + 16] ^= 1;
        assert_eq!(scan_segment(&seg).unwrap().records, 1);
        assert_eq!(stop_of(&seg), Stop::BadContrecord);
        // No XLP_FIRST_IS_CONTRECORD on page 1.
        let mut seg = b.seg.clone();
        seg[XLOG_BLCKSZ + 2] = 0;
        assert_eq!(scan_segment(&seg).unwrap().records, 1);
        assert_eq!(stop_of(&seg), Stop::BadContrecord);
    }

    #[test]
    fn overwritten_contrecord_restarts_at_the_new_page() {
        // A record whose continuation was lost in a crash; recovery wrote new WAL at the
        // start of the next page, marked XLP_FIRST_IS_OVERWRITE_CONTRECORD. Its prev-link
        // points at the last record before the broken one.
        let mut b = Builder::new();
        let good = b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:00Z"));
        b.other(9000); // the broken record, continuing onto page 1
        b.pos = XLOG_BLCKSZ;
        b.page_header(XLOG_BLCKSZ, XLP_FIRST_IS_OVERWRITE_CONTRECORD, 0);
        b.seg[XLOG_BLCKSZ + SIZE_OF_SHORT_PHD..2 * XLOG_BLCKSZ].fill(0);
        b.pos += SIZE_OF_SHORT_PHD;
        b.prev = good;
        b.record(
            RM_XLOG_ID,
            0xD0,
            &[XLR_BLOCK_ID_DATA_SHORT, 8, 1, 2, 3, 4, 5, 6, 7, 8],
        );
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:01Z"));
        let summary = scan_segment(&b.seg).unwrap();
        assert_eq!(summary.records, 3);
        assert_eq!(summary.last_commit, Some(t("2024-05-01T12:00:01Z")));
    }

    #[test]
    fn bad_crc_ends_cleanly() {
        let mut b = Builder::new();
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:00Z"));
        let second = b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:01Z"));
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:02Z"));
        let off = (second - START) as usize;
        for corrupt in [off + 33, off + 20, off + 4] {
            let mut seg = b.seg.clone();
            seg[corrupt] ^= 0x40;
            let summary = scan_segment(&seg).unwrap();
            assert_eq!(summary.records, 1, "corrupt byte {corrupt}");
            assert_eq!(summary.last_commit, Some(t("2024-05-01T12:00:00Z")));
            assert!(!summary.truncated_tail);
            assert_eq!(stop_of(&seg), Stop::BadCrc);
        }
    }

    #[test]
    fn bad_prev_link_ends_cleanly() {
        let mut b = Builder::new();
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:00Z"));
        b.prev += 8;
        b.xact(XLOG_XACT_COMMIT, t("2024-05-01T12:00:01Z"));
        assert_eq!(scan_segment(&b.seg).unwrap().records, 1);
        assert_eq!(stop_of(&b.seg), Stop::BadRecordHeader);
    }

    #[test]
    fn a_non_wal_file_errors_at_the_header() {
        let zeros = vec![0u8; 16 << 20];
        let err = scan_segment(&zeros).unwrap_err();
        assert!(
            matches!(err, WalScanError::UnknownMagic { magic: 0 }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "not a WAL segment from PostgreSQL 13-17: unknown page magic 0x0000"
        );

        let mut text = b"PostgreSQL WAL? No, just some text. ".repeat(30_000);
        text.truncate(1 << 20);
        assert!(matches!(
            scan_segment(&text),
            Err(WalScanError::UnknownMagic { .. })
        ));

        let err = scan_segment(b"short").unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a WAL segment: 5 bytes is shorter than the 40-byte long page header"
        );

        // A WAL page that is not a segment's first page: short header only.
        let good = Builder::new().seg;
        let mut seg = good.clone();
        seg[2] = 0x04;
        let err = scan_segment(&seg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a WAL segment: first page has no long header (xlp_info 0x0004)"
        );

        let mut seg = good.clone();
        seg[2] |= 0x10;
        assert!(matches!(
            scan_segment(&seg),
            Err(WalScanError::UnknownFlags { info: 0x16 })
        ));

        let mut seg = good.clone();
        seg[32..36].copy_from_slice(&3_000_000u32.to_le_bytes());
        assert!(matches!(
            scan_segment(&seg),
            Err(WalScanError::BadSegmentSize {
                seg_size: 3_000_000
            })
        ));
        seg[32..36].copy_from_slice(&(2u32 << 30).to_le_bytes());
        assert!(matches!(
            scan_segment(&seg),
            Err(WalScanError::BadSegmentSize { .. })
        ));
        seg[32..36].copy_from_slice(&(1u32 << 19).to_le_bytes());
        assert!(matches!(
            scan_segment(&seg),
            Err(WalScanError::BadSegmentSize { .. })
        ));

        let mut seg = good.clone();
        seg[36..40].copy_from_slice(&16384u32.to_le_bytes());
        assert!(matches!(
            scan_segment(&seg),
            Err(WalScanError::BadBlockSize { blcksz: 16384 })
        ));

        let mut seg = good.clone();
        seg[8..16].copy_from_slice(&(START + 8192).to_le_bytes());
        let err = scan_segment(&seg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a WAL segment: first page address 0/502000 is not at a segment boundary"
        );

        let err = scan_segment(&good[..SEG / 2]).unwrap_err();
        assert!(
            matches!(err, WalScanError::LengthMismatch { len, seg_size } if len == SEG / 2 && seg_size == SEG as u32)
        );
    }

    #[test]
    fn long_page_header_from_known_bytes() {
        // The first 40 bytes of a real PostgreSQL 15.18 segment, 000000010000000000000009.
        let bytes = hex::decode(
            "10d10700010000000000000900000000821901000000000064b34015fa1e066b0000000100200000",
        )
        .unwrap();
        let header = LongPageHeader::parse(&bytes).unwrap();
        assert_eq!(
            header,
            LongPageHeader {
                magic: 0xD110,
                timeline: 1,
                page_addr: 0x0900_0000,
                system_id: 0x6B06_1EFA_1540_B364,
                seg_size: 16 << 20,
                xlog_blcksz: 8192,
            }
        );
        assert_eq!(header.pg_major(), 15);
        for (magic, major) in [
            (0xD106, 13),
            (0xD10D, 14),
            (0xD110, 15),
            (0xD113, 16),
            (0xD116, 17),
        ] {
            let mut b = bytes.clone();
            b[..2].copy_from_slice(&u16::to_le_bytes(magic));
            assert_eq!(LongPageHeader::parse(&b).unwrap().pg_major(), major);
        }
        let mut b = bytes.clone();
        b[..2].copy_from_slice(&0xD118u16.to_le_bytes());
        assert!(matches!(
            LongPageHeader::parse(&b),
            Err(WalScanError::UnknownMagic { magic: 0xD118 })
        ));
    }

    /// A record with one block reference carrying an image, then `main` as short main data.
    fn record_with_image(bimg_info: u8, with_hole_length: bool, main: &[u8]) -> Vec<u8> {
        let image = [0x11u8; 300];
        let block_data = [0x22u8; 7];
        let mut p = vec![0, BKPBLOCK_HAS_IMAGE | 0x20]; // block 0, main fork, HAS_DATA
        p.extend_from_slice(&(block_data.len() as u16).to_le_bytes());
        p.extend_from_slice(&(image.len() as u16).to_le_bytes());
        p.extend_from_slice(&100u16.to_le_bytes()); // hole_offset
        p.push(bimg_info);
        if with_hole_length {
            p.extend_from_slice(&4000u16.to_le_bytes());
        }
        p.extend_from_slice(&[0x7F, 6, 0, 0, 5, 0, 0, 0, 0, 0x40, 0, 0]); // RelFileLocator
        p.extend_from_slice(&42u32.to_le_bytes()); // BlockNumber
        p.extend_from_slice(&[1, BKPBLOCK_SAME_REL, 0, 0]); // block 1: SAME_REL, no data
        p.extend_from_slice(&43u32.to_le_bytes());
        p.extend_from_slice(&[XLR_BLOCK_ID_TOPLEVEL_XID, 1, 2, 3, 4]);
        p.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, main.len() as u8]);
        p.extend_from_slice(&image);
        p.extend_from_slice(&block_data);
        p.extend_from_slice(main);
        make_record(10, 0, 0, &p)
    }

    #[test]
    fn main_data_after_block_images_of_each_version() {
        let main = b"main data!";
        // (magic, bimg_info, hole_length stored?)
        let cases = [
            (0xD106, 0x01 | 0x02, true),  // PG13: HAS_HOLE | IS_COMPRESSED
            (0xD10D, 0x01 | 0x04, false), // PG14: HAS_HOLE | APPLY
            (0xD110, 0x01 | 0x04, true),  // PG15: HAS_HOLE | COMPRESS_PGLZ
            (0xD113, 0x01 | 0x08, true),  // PG16: HAS_HOLE | COMPRESS_LZ4
            (0xD116, 0x01 | 0x10, true),  // PG17: HAS_HOLE | COMPRESS_ZSTD
            (0xD116, 0x01 | 0x02, false), // PG17: HAS_HOLE | APPLY
            (0xD116, 0x04, false),        // PG17: compressed, no hole
        ];
        for (magic, bimg_info, hole_len) in cases {
            let rec = record_with_image(bimg_info, hole_len, main);
            assert_eq!(
                main_data(&rec, magic),
                Some(&main[..]),
                "{magic:#x} {bimg_info:#x}"
            );
            // Where the other versions' flags would disagree about hole_length being
            // stored, reading with them must not add up.
            let (other, other_mask) = if matches!(magic, 0xD106 | 0xD10D) {
                (0xD110, BKPIMAGE_COMPRESSED_PG15)
            } else {
                (0xD106, BKPIMAGE_COMPRESSED_PG13)
            };
            if hole_len != (bimg_info & BKPIMAGE_HAS_HOLE != 0 && bimg_info & other_mask != 0) {
                assert_eq!(
                    main_data(&rec, other),
                    None,
                    "{magic:#x} {bimg_info:#x} read as {other:#x}"
                );
            }
        }
        // A cut record never panics and never yields the main data. (Some cuts are
        // well-formed records of their own, e.g. right after block 0's payload.)
        let rec = record_with_image(0x01, false, main);
        for len in SIZE_OF_XLOG_RECORD..rec.len() {
            assert_ne!(
                main_data(&rec[..len], 0xD110),
                Some(&main[..]),
                "cut at {len}"
            );
        }
        assert_eq!(main_data(&make_record(1, 0, 0, &[]), 0xD110), Some(&[][..]));
        assert_eq!(main_data(&make_record(1, 0, 0, &[200, 0]), 0xD110), None);
    }

    /// A real segment from PostgreSQL 15.18 (`initdb -k`, 16 MiB segments), gzip -9.
    /// It starts with the last 72066 bytes of a 16.8 MB logical message from the previous
    /// segment, then holds a COMMIT, an ABORT, 2PC COMMIT_PREPARED and ABORT_PREPARED, a
    /// subtransaction commit, commits with relation drops and invalidations, full-page images
    /// both plain and pglz-compressed with holes, a restore point, and ends in a SWITCH.
    /// `TZ=UTC pg_waldump --stats` and `-r Transaction` on it reported the numbers below.
    pub(crate) fn real_segment() -> Vec<u8> {
        let gz: &[u8] = include_bytes!("testdata/000000010000000000000009.gz");
        let mut seg = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut seg)
            .unwrap();
        seg
    }

    #[test]
    fn real_segment_matches_pg_waldump() {
        let seg = real_segment();

        let header = LongPageHeader::parse(&seg).unwrap();
        assert_eq!(
            (header.page_addr, header.timeline, header.pg_major()),
            (0x0900_0000, 1, 15)
        );
        assert_eq!(
            scan_segment(&seg).unwrap(),
            SegmentSummary {
                first_commit: Some(t("2026-11-24T23:35:10.382314Z")),
                last_commit: Some(t("2026-11-24T23:35:11.159787Z")),
                records: 5091,
                truncated_tail: false,
            }
        );

        // Every record's fragment headers add up, including those with block images, and
        // the walk ended at the SWITCH record pg_waldump shows last (0/091BB810).
        let mut walker = Walker::new(&seg, &header);
        let (mut first, mut last, mut xact_ends) = (None, 0, 0);
        while let Some(record) = walker.next_record() {
            assert!(
                main_data(record.bytes, header.magic).is_some(),
                "record at {}",
                Lsn(record.lsn)
            );
            first.get_or_insert(record.lsn);
            last = record.lsn;
            xact_ends += usize::from(xact_end_time(record.bytes, header.magic).is_some());
        }
        assert_eq!(walker.stop, Some(Stop::Switch));
        assert_eq!((first, last), (Some(0x0901_1A70), 0x091B_B810));
        assert_eq!(xact_ends, 14);
    }
}
