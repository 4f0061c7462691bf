//! WAL positions, timelines, segment sizes and system identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A WAL position (`XLogRecPtr`), written `16/B374D848`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

#[derive(Debug, thiserror::Error)]
#[error("not an LSN: {0:?} (expected the form 16/B374D848)")]
pub struct ParseLsnError(String);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 {
                return Err(err());
            }
            u32::from_str_radix(p, 16).map_err(|_| err())
        };
        Ok(Lsn(u64::from(part(hi)?) << 32 | u64::from(part(lo)?)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Lsn {
    /// The segment holding this position (the plain rule, for a start LSN).
    pub fn segno(self, size: WalSegmentSize) -> u64 {
        self.0 / u64::from(size.0)
    }

    /// The last segment needed to reach this position as an end point
    /// (PostgreSQL's `XLByteToPrevSeg`: an LSN exactly on a boundary belongs to the previous segment).
    pub fn end_segno(self, size: WalSegmentSize) -> u64 {
        self.0.saturating_sub(1) / u64::from(size.0)
    }
}

/// A timeline ID, displayed as 8 uppercase hex digits in file names.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}", self.0)
    }
}

/// `wal_segment_size`: a power of two from 1 MiB to 1 GiB.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WalSegmentSize(u32);

impl WalSegmentSize {
    pub const DEFAULT: WalSegmentSize = WalSegmentSize(16 * 1024 * 1024);

    pub fn new(bytes: u32) -> Option<Self> {
        (bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes)).then_some(Self(bytes))
    }

    pub fn bytes(self) -> u32 {
        self.0
    }

    /// Segments per "log id" (the middle 8 hex digits of a name).
    pub fn segs_per_id(self) -> u64 {
        0x1_0000_0000 / u64::from(self.0)
    }
}

/// The cluster's database system identifier (from `pg_control` or a WAL long page header).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SystemId(pub u64);

impl fmt::Display for SystemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

// Serialized as a string: JSON numbers lose precision above 2^53 in many readers.
impl Serialize for SystemId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SystemId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(SystemId).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        for s in ["0/0", "1/A", "16/B374D848", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(s.parse::<Lsn>().unwrap().to_string(), s);
        }
        assert_eq!("1a/ff".parse::<Lsn>().unwrap(), Lsn(0x1A_0000_00FF));
        assert_eq!("0/000000FF".parse::<Lsn>().unwrap(), Lsn(0xFF));
        for bad in ["", "1", "1/2/3", "G/0", "100000000/0", "/1", "1/"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn lsn_segments_follow_the_boundary_rule() {
        let size = WalSegmentSize::DEFAULT;
        assert_eq!(Lsn(0x300_0000).segno(size), 3);
        assert_eq!(Lsn(0x300_0000).end_segno(size), 2);
        assert_eq!(Lsn(0x300_0001).end_segno(size), 3);
    }

    #[test]
    fn segment_size_is_validated() {
        assert!(WalSegmentSize::new(16 << 20).is_some());
        assert!(WalSegmentSize::new(1 << 20).is_some());
        assert!(WalSegmentSize::new(1 << 30).is_some());
        assert!(WalSegmentSize::new(3 << 20).is_none());
        assert!(WalSegmentSize::new(1 << 19).is_none());
        assert_eq!(WalSegmentSize::DEFAULT.segs_per_id(), 256);
    }

    #[test]
    fn system_id_serializes_as_string() {
        let id = SystemId(7_311_111_111_111_111_111);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"7311111111111111111\"");
        assert_eq!(serde_json::from_str::<SystemId>(&json).unwrap(), id);
    }
}
