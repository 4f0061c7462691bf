//! Extract [`WalEvent`]s from one WAL segment, in the same walk that builds its
//! [`SegmentSummary`] ([`super::walscan::walk_segment`]).
//!
//! Record layouts are PostgreSQL 15's (`xact.h`/`xactdesc.c` `ParseCommitRecord`,
//! `heapam_xlog.h`, `storage_xlog.h`, `pg_control.h`); 13–17 agree on every field read here
//! (16 renamed `RelFileNode` to `RelFileLocator`, same 12 bytes).
//!
//! # What becomes an event
//! * **Restore point**: an `XLOG_RESTORE_POINT` record (`xl_restore_point {rp_time,
//!   rp_name[64]}`); its own time, xid 0, the record's LSN.
//! * **Drop**: a COMMIT or COMMIT_PREPARED record listing dropped relfilenodes
//!   (`XACT_XINFO_HAS_RELFILENODES`) whose transaction created no storage in this segment.
//! * **Truncate**, one of:
//!   - a heap `XLOG_HEAP_TRUNCATE` record (relation OIDs) in the transaction. PostgreSQL
//!     writes it **only with `wal_level = logical`** (for logical decoding); with `replica`
//!     it is absent (checked with `pg_waldump` on 15.18);
//!   - otherwise: the commit drops relfilenodes and the same transaction (or its
//!     subtransactions) created new main-fork storage (`XLOG_SMGR_CREATE`) earlier in this
//!     segment. That is what TRUNCATE does in PG 15 (new relfilenode, old one dropped at
//!     commit), but also VACUUM FULL, CLUSTER, REINDEX, REFRESH MATERIALIZED VIEW and a
//!     rewriting ALTER TABLE, and a transaction that drops one table and creates another.
//!     WAL alone cannot tell these apart, so such an event keeps the new relfilenodes in
//!     `created` and is shown as "TRUNCATE (or rewrite)";
//!   - an `XLOG_SMGR_TRUNCATE` to 0 blocks of the main fork in a transaction that then
//!     commits without dropping storage (TRUNCATE of a table created in the same
//!     transaction, or a VACUUM that emptied a table).
//! * **Mass delete**: a committed transaction with at least [`MASS_DELETE_ROWS`]
//!   `XLOG_HEAP_DELETE` records for one relfilenode.
//!
//! Times are the commit record's `xact_time`; the xid is the top-level one (the prepared
//! transaction's for COMMIT_PREPARED); the LSN is the commit record's start.
//!
//! # Per-segment limitation
//! Each segment is scanned on its own (`wal-push` sees one file), so what a transaction did
//! is only known from records in the segment holding its commit: storage created or rows
//! deleted in an earlier segment are not seen. A TRUNCATE whose new storage was created in
//! the previous segment is reported as a Drop, and a delete spread over two segments counts
//! only its rows in the commit's segment. Events are only produced at the commit, so a
//! transaction that is still open at the end of the segment yields none here.

use std::collections::HashMap;

use super::events::{EventKind, RelFileNode, WalEvent};
use super::walscan::{
    decode, main_data, pg_timestamp, u32_at, walk_segment, Bytes, LongPageHeader, Record,
    SegmentSummary, WalScanError, RM_XACT_ID, RM_XLOG_ID, XLOG_XACT_ABORT,
    XLOG_XACT_ABORT_PREPARED, XLOG_XACT_COMMIT, XLOG_XACT_COMMIT_PREPARED, XLOG_XACT_OPMASK,
};
use super::{Lsn, TimelineId};
use chrono::{DateTime, Utc};

/// Deleted rows of one relation in one transaction (within one segment) that make an event.
pub const MASS_DELETE_ROWS: u64 = 10_000;

const RM_SMGR_ID: u8 = 2;
const RM_HEAP_ID: u8 = 10;
const XLOG_RESTORE_POINT: u8 = 0x70;
const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
const SMGR_TRUNCATE_HEAP: u32 = 0x0001;
const XLOG_HEAP_OPMASK: u8 = 0x70;
const XLOG_HEAP_DELETE: u8 = 0x10;
const XLOG_HEAP_TRUNCATE: u8 = 0x30;
const XLOG_XACT_HAS_INFO: u8 = 0x80;
const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;
/// `sizeof(xl_xact_stats_item)` in 15–17: kind, dboid, objoid.
const SIZE_OF_STATS_ITEM: usize = 12;
/// `sizeof(SharedInvalidationMessage)`.
const SIZE_OF_INVAL_MSG: usize = 16;
/// `MAXFNAMELEN`: `rp_name`'s size.
const MAXFNAMELEN: usize = 64;

/// A segment's summary and events, from one walk.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    pub header: LongPageHeader,
    pub summary: SegmentSummary,
    /// In LSN order.
    pub events: Vec<WalEvent>,
}

/// Scan a whole segment like [`super::walscan::scan_segment`] and also extract its events.
/// `timeline` is the segment's timeline from its file name (the first page's `xlp_tli` can
/// be the previous timeline's in the first segment after a promotion).
pub fn scan_segment_events(
    segment: &[u8],
    timeline: TimelineId,
) -> Result<SegmentScan, WalScanError> {
    let magic = LongPageHeader::parse(segment)?.magic;
    let mut extractor = Extractor {
        magic,
        timeline,
        pending: HashMap::new(),
        events: Vec::new(),
    };
    let (header, summary) = walk_segment(segment, |record| {
        if interesting(record) {
            extractor.record(record);
        }
    })?;
    Ok(SegmentScan {
        header,
        summary,
        events: extractor.events,
    })
}

/// The cheap test every record passes through: only records of these kinds can matter.
#[inline(always)]
fn interesting(record: &Record<'_>) -> bool {
    match record.rmid() {
        RM_HEAP_ID => matches!(
            record.info() & XLOG_HEAP_OPMASK,
            XLOG_HEAP_DELETE | XLOG_HEAP_TRUNCATE
        ),
        RM_XACT_ID | RM_SMGR_ID => true,
        RM_XLOG_ID => record.info() & 0xF0 == XLOG_RESTORE_POINT,
        _ => false,
    }
}

/// What one (sub)transaction did so far in this segment.
#[derive(Default)]
struct Pending {
    created: Vec<RelFileNode>,
    /// (database OID, relation OIDs) of heap TRUNCATE records.
    heap_truncates: Vec<(u32, Vec<u32>)>,
    /// Main forks truncated to 0 blocks in place.
    emptied: Vec<RelFileNode>,
    deletes: HashMap<RelFileNode, u64>,
}

impl Pending {
    fn absorb(&mut self, other: Pending) {
        self.created.extend(other.created);
        self.heap_truncates.extend(other.heap_truncates);
        self.emptied.extend(other.emptied);
        for (rel, n) in other.deletes {
            *self.deletes.entry(rel).or_default() += n;
        }
    }
}

struct Extractor {
    magic: u16,
    timeline: TimelineId,
    /// Keyed by the xid in the records' headers (a subtransaction's own xid).
    pending: HashMap<u32, Pending>,
    events: Vec<WalEvent>,
}

impl Extractor {
    fn record(&mut self, record: &Record<'_>) {
        let op = record.info() & 0xF0;
        match record.rmid() {
            RM_HEAP_ID => match record.info() & XLOG_HEAP_OPMASK {
                XLOG_HEAP_DELETE => {
                    let Some(rel) = decode(record.bytes, self.magic)
                        .and_then(|d| d.first_block_rel)
                        .map(rel_file_node)
                    else {
                        return;
                    };
                    let pending = self.pending.entry(record.xid()).or_default();
                    *pending.deletes.entry(rel).or_default() += 1;
                }
                XLOG_HEAP_TRUNCATE => {
                    // xl_heap_truncate: dbId, nrelids, flags (u8, padded), relids[] at 12.
                    let Some(main) = main_data(record.bytes, self.magic) else {
                        return;
                    };
                    let Some(relids) = heap_truncate(main) else {
                        return;
                    };
                    self.pending
                        .entry(record.xid())
                        .or_default()
                        .heap_truncates
                        .push(relids);
                }
                _ => {}
            },
            RM_SMGR_ID if op == XLOG_SMGR_CREATE || op == XLOG_SMGR_TRUNCATE => {
                let Some(main) = main_data(record.bytes, self.magic) else {
                    return;
                };
                if op == XLOG_SMGR_CREATE {
                    // xl_smgr_create: rnode (12), forkNum (4).
                    if main.len() >= 16 && u32_at(main, 12) == 0 {
                        self.pending
                            .entry(record.xid())
                            .or_default()
                            .created
                            .push(rel_at(main, 0));
                    }
                } else if main.len() >= 20
                    // xl_smgr_truncate: blkno (4), rnode (12), flags (4).
                    && u32_at(main, 0) == 0
                    && u32_at(main, 16) & SMGR_TRUNCATE_HEAP != 0
                {
                    self.pending
                        .entry(record.xid())
                        .or_default()
                        .emptied
                        .push(rel_at(main, 4));
                }
            }
            RM_XLOG_ID if op == XLOG_RESTORE_POINT => {
                if let Some(event) = self.restore_point(record) {
                    self.events.push(event);
                }
            }
            RM_XACT_ID => {
                let op = record.info() & XLOG_XACT_OPMASK;
                let commit = matches!(op, XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED);
                let abort = matches!(op, XLOG_XACT_ABORT | XLOG_XACT_ABORT_PREPARED);
                if !commit && !abort {
                    return;
                }
                // Fast path: a plain commit of a transaction we saw nothing of.
                let has_rels = record.info() & XLOG_XACT_HAS_INFO != 0
                    && main_data(record.bytes, self.magic)
                        .and_then(|m| m.get(8..12))
                        .is_some_and(|x| u32_at(x, 0) & XACT_XINFO_HAS_RELFILENODES != 0);
                if self.pending.is_empty() && (abort || !has_rels) {
                    return;
                }
                let Some(parsed) = main_data(record.bytes, self.magic)
                    .and_then(|m| parse_xact_end(record.info(), m))
                else {
                    return;
                };
                let xid = match (op, parsed.twophase_xid) {
                    (XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT_PREPARED, Some(xid)) => xid,
                    _ => record.xid(),
                };
                let mut done = self.pending.remove(&xid).unwrap_or_default();
                for sub in &parsed.subxacts {
                    if let Some(p) = self.pending.remove(sub) {
                        done.absorb(p);
                    }
                }
                if commit {
                    self.commit(Lsn(record.lsn), xid, &parsed, done);
                }
            }
            _ => {}
        }
    }

    fn restore_point(&self, record: &Record<'_>) -> Option<WalEvent> {
        let main = main_data(record.bytes, self.magic)?;
        let time = pg_timestamp(main.get(..8)?)?;
        let name = main.get(8..(8 + MAXFNAMELEN).min(main.len()))?;
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        Some(WalEvent {
            restore_point: Some(String::from_utf8_lossy(name).into_owned()),
            ..self.event(EventKind::RestorePoint, time, 0, Lsn(record.lsn))
        })
    }

    fn commit(&mut self, lsn: Lsn, xid: u32, parsed: &XactEnd, mut done: Pending) {
        let database = parsed.db.or_else(|| parsed.rels.first().map(|r| r.db_node));
        let relation_oids: Vec<u32> = done
            .heap_truncates
            .iter()
            .flat_map(|(_, oids)| oids.iter().copied())
            .collect();
        let truncate_db = done.heap_truncates.first().map(|(db, _)| *db);
        if !parsed.rels.is_empty() {
            let kind = if relation_oids.is_empty() && done.created.is_empty() {
                EventKind::Drop
            } else {
                EventKind::Truncate
            };
            self.events.push(WalEvent {
                database: truncate_db.or(database),
                relfilenodes: parsed.rels.clone(),
                relation_oids,
                created: std::mem::take(&mut done.created),
                ..self.event(kind, parsed.time, xid, lsn)
            });
        } else if !relation_oids.is_empty() || !done.emptied.is_empty() {
            self.events.push(WalEvent {
                database: truncate_db.or(done.emptied.first().map(|r| r.db_node)),
                relfilenodes: std::mem::take(&mut done.emptied),
                relation_oids,
                ..self.event(EventKind::Truncate, parsed.time, xid, lsn)
            });
        }
        let mut big: Vec<(RelFileNode, u64)> = done
            .deletes
            .into_iter()
            .filter(|&(_, n)| n >= MASS_DELETE_ROWS)
            .collect();
        big.sort();
        for (rel, rows) in big {
            self.events.push(WalEvent {
                database: Some(rel.db_node),
                relfilenodes: vec![rel],
                rows: Some(rows),
                ..self.event(EventKind::MassDelete, parsed.time, xid, lsn)
            });
        }
    }

    fn event(&self, kind: EventKind, time: DateTime<Utc>, xid: u32, lsn: Lsn) -> WalEvent {
        WalEvent {
            kind,
            time,
            xid,
            lsn,
            timeline: self.timeline,
            database: None,
            relfilenodes: Vec::new(),
            relation_oids: Vec::new(),
            created: Vec::new(),
            restore_point: None,
            rows: None,
        }
    }
}

/// The parts of a COMMIT/ABORT(_PREPARED) record we use (`ParseCommitRecord`,
/// `ParseAbortRecord` in xactdesc.c).
struct XactEnd {
    time: DateTime<Utc>,
    db: Option<u32>,
    subxacts: Vec<u32>,
    rels: Vec<RelFileNode>,
    twophase_xid: Option<u32>,
}

/// Parse `xl_xact_commit`/`xl_xact_abort` and the optional parts that follow in xact.h's
/// order: xinfo, dbinfo, subxacts, relfilenodes, dropped stats (15+), invals (commit
/// only; the bit is never set on aborts), twophase.
fn parse_xact_end(info: u8, main: &[u8]) -> Option<XactEnd> {
    let mut r = Bytes { rest: main };
    let time = pg_timestamp(r.take(8)?)?;
    let mut end = XactEnd {
        time,
        db: None,
        subxacts: Vec::new(),
        rels: Vec::new(),
        twophase_xid: None,
    };
    if info & XLOG_XACT_HAS_INFO == 0 {
        return Some(end);
    }
    let xinfo = r.u32()?;
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        end.db = Some(r.u32()?);
        r.take(4)?; // tsId
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = count(&mut r)?;
        end.subxacts = (0..n).map(|_| r.u32()).collect::<Option<_>>()?;
    }
    if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
        let n = count(&mut r)?;
        let bytes = r.take(n.checked_mul(12)?)?;
        end.rels = bytes.chunks_exact(12).map(|c| rel_at(c, 0)).collect();
    }
    if xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        let n = count(&mut r)?;
        r.take(n.checked_mul(SIZE_OF_STATS_ITEM)?)?;
    }
    if xinfo & XACT_XINFO_HAS_INVALS != 0 {
        let n = count(&mut r)?;
        r.take(n.checked_mul(SIZE_OF_INVAL_MSG)?)?;
    }
    if xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
        end.twophase_xid = Some(r.u32()?);
    }
    Some(end)
}

/// `xl_heap_truncate`: (dbId, relids).
fn heap_truncate(main: &[u8]) -> Option<(u32, Vec<u32>)> {
    let db = u32_at(main.get(..4)?, 0);
    let n = u32_at(main.get(4..8)?, 0) as usize;
    let relids = main.get(12..12 + n.checked_mul(4)?)?;
    Some((db, relids.chunks_exact(4).map(|c| u32_at(c, 0)).collect()))
}

fn rel_at(b: &[u8], off: usize) -> RelFileNode {
    rel_file_node([u32_at(b, off), u32_at(b, off + 4), u32_at(b, off + 8)])
}

fn rel_file_node([spc_node, db_node, rel_node]: [u32; 3]) -> RelFileNode {
    RelFileNode {
        spc_node,
        db_node,
        rel_node,
    }
}

/// A C `int` count; negative is malformed.
fn count(r: &mut Bytes<'_>) -> Option<usize> {
    usize::try_from(r.u32()? as i32).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::walscan::scan_segment;
    use crate::pg::walscan::tests::{pg_micros, real_segment, t, Builder};

    const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
    const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
    const TL: TimelineId = TimelineId(3);

    fn rel(rel_node: u32) -> RelFileNode {
        RelFileNode {
            spc_node: 1663,
            db_node: 5,
            rel_node,
        }
    }

    fn rel_bytes(r: RelFileNode) -> Vec<u8> {
        [r.spc_node, r.db_node, r.rel_node]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// Wrap `main` as a record payload (long main-data header when needed).
    fn main_only(main: &[u8]) -> Vec<u8> {
        let mut p = if main.len() < 256 {
            vec![XLR_BLOCK_ID_DATA_SHORT, main.len() as u8]
        } else {
            let mut p = vec![XLR_BLOCK_ID_DATA_LONG];
            p.extend_from_slice(&(main.len() as u32).to_le_bytes());
            p
        };
        p.extend_from_slice(main);
        p
    }

    /// The main data of a commit or abort with every optional part `ParseCommitRecord` reads.
    fn xact_end(
        time: &str,
        db: Option<u32>,
        subxacts: &[u32],
        rels: &[RelFileNode],
        twophase: Option<u32>,
    ) -> Vec<u8> {
        let mut xinfo = XACT_XINFO_HAS_DROPPED_STATS | XACT_XINFO_HAS_INVALS;
        let mut m = pg_micros(t(time)).to_le_bytes().to_vec();
        let mut parts = Vec::new();
        if let Some(db) = db {
            xinfo |= XACT_XINFO_HAS_DBINFO;
            parts.extend_from_slice(&db.to_le_bytes());
            parts.extend_from_slice(&1663u32.to_le_bytes());
        }
        if !subxacts.is_empty() {
            xinfo |= XACT_XINFO_HAS_SUBXACTS;
            parts.extend_from_slice(&(subxacts.len() as u32).to_le_bytes());
            subxacts
                .iter()
                .for_each(|x| parts.extend_from_slice(&x.to_le_bytes()));
        }
        if !rels.is_empty() {
            xinfo |= XACT_XINFO_HAS_RELFILENODES;
            parts.extend_from_slice(&(rels.len() as u32).to_le_bytes());
            rels.iter().for_each(|r| parts.extend(rel_bytes(*r)));
        }
        parts.extend_from_slice(&2u32.to_le_bytes()); // 2 dropped-stats items
        parts.extend_from_slice(&[0xEE; 2 * SIZE_OF_STATS_ITEM]);
        parts.extend_from_slice(&3u32.to_le_bytes()); // 3 invalidation messages
        parts.extend_from_slice(&[0xDD; 3 * SIZE_OF_INVAL_MSG]);
        if let Some(xid) = twophase {
            xinfo |= XACT_XINFO_HAS_TWOPHASE;
            parts.extend_from_slice(&xid.to_le_bytes());
        }
        m.extend_from_slice(&xinfo.to_le_bytes());
        m.extend(parts);
        m
    }

    fn smgr_create(b: &mut Builder, xid: u32, r: RelFileNode, fork: u32) {
        let mut m = rel_bytes(r);
        m.extend_from_slice(&fork.to_le_bytes());
        b.record_of(xid, RM_SMGR_ID, XLOG_SMGR_CREATE | 0x01, &main_only(&m));
    }

    fn heap_delete(b: &mut Builder, xid: u32, r: RelFileNode) {
        let mut p = vec![0, 0x20, 0, 0]; // block 0, main fork, HAS_DATA, no data bytes
        p.extend(rel_bytes(r));
        p.extend_from_slice(&7u32.to_le_bytes()); // block number
        p.extend(main_only(&[1, 0, 0, 0, 0, 0, 0, 0])); // xl_heap_delete
        b.record_of(xid, RM_HEAP_ID, XLOG_HEAP_DELETE, &p);
    }

    fn scan(b: &Builder) -> SegmentScan {
        let scan = scan_segment_events(&b.seg, TL).unwrap();
        assert_eq!(scan.summary, scan_segment(&b.seg).unwrap());
        scan
    }

    #[test]
    fn drop_and_truncate_from_commit_records() {
        let mut b = Builder::new();
        // xid 800 drops two relations (its subtransaction 801 did nothing we track).
        let drop_lsn = b.record_of(
            800,
            RM_XACT_ID,
            XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO,
            &main_only(&xact_end(
                "2026-03-10T14:03:07.412345Z",
                Some(5),
                &[801],
                &[rel(16384), rel(16387)],
                None,
            )),
        );
        // xid 810 truncates in a subtransaction 811: new storage, then the old dropped.
        smgr_create(&mut b, 811, rel(16500), 0);
        smgr_create(&mut b, 811, rel(16501), 1); // an FSM fork: not new storage by itself
        let truncate_lsn = b.record_of(
            810,
            RM_XACT_ID,
            XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO,
            &main_only(&xact_end(
                "2026-03-10T14:04:00Z",
                None,
                &[811],
                &[rel(16391)],
                None,
            )),
        );
        // A prepared transaction 820 committed by a session without an xid.
        let prepared_lsn = b.record_of(
            0,
            RM_XACT_ID,
            XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO,
            &main_only(&xact_end(
                "2026-03-10T14:05:00Z",
                Some(5),
                &[],
                &[rel(17000)],
                Some(820),
            )),
        );
        // Not events: an abort with relations, a plain commit, a commit without drops.
        smgr_create(&mut b, 830, rel(16600), 0);
        b.record_of(
            830,
            RM_XACT_ID,
            XLOG_XACT_ABORT | XLOG_XACT_HAS_INFO,
            &main_only(&xact_end(
                "2026-03-10T14:06:00Z",
                Some(5),
                &[],
                &[rel(16600)],
                None,
            )),
        );
        b.xact(XLOG_XACT_COMMIT, t("2026-03-10T14:07:00Z"));
        b.record_of(
            840,
            RM_XACT_ID,
            XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO,
            &main_only(&xact_end(
                "2026-03-10T14:08:00Z",
                Some(5),
                &[841],
                &[],
                None,
            )),
        );
        let events = scan(&b).events;
        assert_eq!(events.len(), 3, "{events:#?}");
        assert_eq!(
            events[0],
            WalEvent {
                kind: EventKind::Drop,
                time: t("2026-03-10T14:03:07.412345Z"),
                xid: 800,
                lsn: Lsn(drop_lsn),
                timeline: TL,
                database: Some(5),
                relfilenodes: vec![rel(16384), rel(16387)],
                relation_oids: vec![],
                created: vec![],
                restore_point: None,
                rows: None,
            }
        );
        assert_eq!(
            (
                events[1].kind,
                events[1].xid,
                events[1].lsn,
                events[1].database
            ),
            (EventKind::Truncate, 810, Lsn(truncate_lsn), Some(5))
        );
        assert_eq!(
            (&events[1].relfilenodes, &events[1].created),
            (&vec![rel(16391)], &vec![rel(16500)])
        );
        assert_eq!(
            (events[2].kind, events[2].xid, events[2].lsn),
            (EventKind::Drop, 820, Lsn(prepared_lsn))
        );
        assert_eq!(events[2].time, t("2026-03-10T14:05:00Z"));
    }

    #[test]
    fn heap_and_smgr_truncate_records() {
        let mut b = Builder::new();
        // wal_level = logical: xl_heap_truncate names relation OIDs.
        let mut m = 5u32.to_le_bytes().to_vec();
        m.extend_from_slice(&2u32.to_le_bytes());
        m.extend_from_slice(&[0x01, 0, 0, 0]); // XLH_TRUNCATE_CASCADE, padding
        m.extend_from_slice(&16391u32.to_le_bytes());
        m.extend_from_slice(&16395u32.to_le_bytes());
        b.record_of(900, RM_HEAP_ID, XLOG_HEAP_TRUNCATE, &main_only(&m));
        smgr_create(&mut b, 900, rel(16700), 0);
        b.record_of(
            900,
            RM_XACT_ID,
            XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO,
            &main_only(&xact_end(
                "2026-03-10T15:00:00Z",
                Some(5),
                &[],
                &[rel(16391)],
                None,
            )),
        );
        // In-place: truncated to 0 blocks, committed without dropping storage.
        let mut m = 0u32.to_le_bytes().to_vec();
        m.extend(rel_bytes(rel(16800)));
        m.extend_from_slice(&7u32.to_le_bytes()); // SMGR_TRUNCATE_ALL
        b.record_of(910, RM_SMGR_ID, XLOG_SMGR_TRUNCATE | 0x01, &main_only(&m));
        // A VACUUM-style truncation to 3 blocks is not an event.
        let mut m = 3u32.to_le_bytes().to_vec();
        m.extend(rel_bytes(rel(16900)));
        m.extend_from_slice(&7u32.to_le_bytes());
        b.record_of(910, RM_SMGR_ID, XLOG_SMGR_TRUNCATE | 0x01, &main_only(&m));
        b.record_of(
            910,
            RM_XACT_ID,
            XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO,
            &main_only(&xact_end("2026-03-10T15:01:00Z", Some(5), &[], &[], None)),
        );
        let events = scan(&b).events;
        assert_eq!(events.len(), 2, "{events:#?}");
        assert_eq!(events[0].kind, EventKind::Truncate);
        assert_eq!(events[0].relation_oids, vec![16391, 16395]);
        assert_eq!(events[0].relfilenodes, vec![rel(16391)]);
        assert_eq!(
            (events[1].kind, events[1].xid, &events[1].relfilenodes),
            (EventKind::Truncate, 910, &vec![rel(16800)])
        );
    }

    /// `n` deletes of relfilenode 20000 by `xid`, then the end of transaction 1000 (with
    /// subtransaction 1001).
    fn deletes_then(n: u64, xid: u32, op: u8) -> (Builder, u64) {
        let mut b = Builder::new();
        for _ in 0..n {
            heap_delete(&mut b, xid, rel(20000));
        }
        heap_delete(&mut b, 1000, rel(20001));
        let end = b.record_of(
            1000,
            RM_XACT_ID,
            op | XLOG_XACT_HAS_INFO,
            &main_only(&xact_end(
                "2026-03-10T16:00:01Z",
                Some(5),
                &[1001],
                &[],
                None,
            )),
        );
        (b, end)
    }

    #[test]
    fn mass_deletes_count_per_relation_and_transaction() {
        // 10,000 rows deleted by subtransaction 1001 of 1000 (a 1 MiB test segment holds
        // about 18,000 delete records, so each case gets its own).
        let (b, commit) = deletes_then(MASS_DELETE_ROWS, 1001, XLOG_XACT_COMMIT);
        let events = scan(&b).events;
        assert_eq!(events.len(), 1, "{events:#?}");
        let e = &events[0];
        assert_eq!(
            (e.kind, e.xid, e.lsn, e.rows, &e.relfilenodes),
            (
                EventKind::MassDelete,
                1000,
                Lsn(commit),
                Some(MASS_DELETE_ROWS),
                &vec![rel(20000)]
            )
        );
        assert_eq!((e.time, e.database), (t("2026-03-10T16:00:01Z"), Some(5)));
        // One row fewer, an aborted transaction, or another transaction's rows: no event.
        let (b, _) = deletes_then(MASS_DELETE_ROWS - 1, 1000, XLOG_XACT_COMMIT);
        assert_eq!(scan(&b).events, vec![]);
        let (b, _) = deletes_then(MASS_DELETE_ROWS, 1001, XLOG_XACT_ABORT);
        assert_eq!(scan(&b).events, vec![]);
        let (b, _) = deletes_then(MASS_DELETE_ROWS, 1002, XLOG_XACT_COMMIT);
        assert_eq!(scan(&b).events, vec![]);
    }

    #[test]
    fn restore_point_and_cut_records() {
        let mut b = Builder::new();
        let mut m = pg_micros(t("2026-03-10T13:00:00.5Z"))
            .to_le_bytes()
            .to_vec();
        let mut name = [0u8; MAXFNAMELEN];
        name[..13].copy_from_slice(b"before-deploy");
        m.extend_from_slice(&name);
        let lsn = b.record_of(0, RM_XLOG_ID, XLOG_RESTORE_POINT, &main_only(&m));
        // Malformed bodies are skipped, never a panic: a commit whose relation count runs
        // past the record, a truncated restore point.
        let mut bad = xact_end("2026-03-10T13:00:01Z", Some(5), &[], &[rel(1)], None);
        bad[20..24].copy_from_slice(&1000u32.to_le_bytes());
        b.record_of(
            1,
            RM_XACT_ID,
            XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO,
            &main_only(&bad),
        );
        b.record_of(0, RM_XLOG_ID, XLOG_RESTORE_POINT, &main_only(&m[..6]));
        let events = scan(&b).events;
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(
            (
                events[0].kind,
                events[0].time,
                events[0].lsn,
                events[0].restore_point.as_deref()
            ),
            (
                EventKind::RestorePoint,
                t("2026-03-10T13:00:00.5Z"),
                Lsn(lsn),
                Some("before-deploy")
            )
        );
    }

    /// The PostgreSQL 15.18 segment of the walscan tests: `pg_waldump` shows a COMMIT at
    /// 0/091B2998 (xid 751) dropping base/5/16397, 16400 and 16401 (created by xid 745), an
    /// ABORT with a relation (not an event) and RESTORE_POINT rp9 at 0/091BB7A8.
    #[test]
    fn real_segment_events_match_pg_waldump() {
        let seg = real_segment();
        let scan = scan_segment_events(&seg, TimelineId(1)).unwrap();
        assert_eq!(scan.summary, scan_segment(&seg).unwrap());
        let got: Vec<_> = scan
            .events
            .iter()
            .map(|e| (e.kind, e.xid, e.lsn.to_string(), e.relfilenodes.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    EventKind::Drop,
                    751,
                    "0/91B2998".to_string(),
                    vec![rel(16397), rel(16400), rel(16401)]
                ),
                (EventKind::RestorePoint, 0, "0/91BB7A8".to_string(), vec![]),
            ]
        );
        assert_eq!(scan.events[0].time, t("2026-11-24T23:35:11.136530Z"));
        assert_eq!(scan.events[1].restore_point.as_deref(), Some("rp9"));
        let rp = scan.events[1].time;
        assert!(rp >= t("2026-11-24T23:35:11.159787Z") && rp < t("2026-11-24T23:35:13Z"));
    }
}
