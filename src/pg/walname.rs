//! Names of the files PostgreSQL archives (`%f`): segments, partial segments, timeline
//! history files and backup history files. Anything else is rejected when parsed.

use std::fmt;
use std::str::FromStr;

use super::lsn::{Lsn, TimelineId, WalSegmentSize};

/// `TTTTTTTTLLLLLLLLSSSSSSSS`: timeline, log id, segment within the log id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct WalSegmentName {
    pub timeline: TimelineId,
    pub log: u32,
    pub seg: u32,
}

/// Everything PostgreSQL can pass as `%f`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum WalFileName {
    /// `000000010000000A000000FF`
    Segment(WalSegmentName),
    /// `000000010000000A000000FF.partial`, left behind at promotion.
    Partial(WalSegmentName),
    /// `00000002.history`
    History(TimelineId),
    /// `000000010000000A000000FF.00000028.backup`: segment and start offset.
    BackupLabel(WalSegmentName, u32),
}

#[derive(Debug, thiserror::Error)]
#[error("not a WAL file name: {0:?} (expected a 24-hex-digit segment name, optionally .partial, a TTTTTTTT.history or a ….backup file)")]
pub struct ParseWalNameError(String);

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
    .then(|| u32::from_str_radix(s, 16).ok())
    .flatten()
}

impl WalSegmentName {
    pub fn new(timeline: TimelineId, segno: u64, size: WalSegmentSize) -> Self {
        let per = size.segs_per_id();
        WalSegmentName {
            timeline,
            log: (segno / per) as u32,
            seg: (segno % per) as u32,
        }
    }

    /// The segment number within the timeline's WAL stream.
    pub fn segno(&self, size: WalSegmentSize) -> u64 {
        u64::from(self.log) * size.segs_per_id() + u64::from(self.seg)
    }

    pub fn start_lsn(&self, size: WalSegmentSize) -> Lsn {
        Lsn(self.segno(size) * u64::from(size.bytes()))
    }

    pub fn next(&self, size: WalSegmentSize) -> Self {
        Self::new(self.timeline, self.segno(size) + 1, size)
    }

    /// The first 16 characters: timeline and log id, the archive's directory for this segment.
    pub fn log_dir(&self) -> String {
        format!("{}{:08X}", self.timeline, self.log)
    }

    /// Whether the segment part is valid for this segment size.
    pub fn fits(&self, size: WalSegmentSize) -> bool {
        u64::from(self.seg) < size.segs_per_id()
    }
}

impl fmt::Display for WalSegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

impl FromStr for WalSegmentName {
    type Err = ParseWalNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseWalNameError(s.to_string());
        if s.len() != 24 || !s.is_ascii() {
            return Err(err());
        }
        Ok(WalSegmentName {
            timeline: TimelineId(hex8(&s[0..8]).ok_or_else(err)?),
            log: hex8(&s[8..16]).ok_or_else(err)?,
            seg: hex8(&s[16..24]).ok_or_else(err)?,
        })
    }
}

impl WalFileName {
    /// The segment this file belongs to, if any.
    pub fn segment(&self) -> Option<WalSegmentName> {
        match self {
            WalFileName::Segment(s) | WalFileName::Partial(s) | WalFileName::BackupLabel(s, _) => {
                Some(*s)
            }
            WalFileName::History(_) => None,
        }
    }

    pub fn timeline(&self) -> TimelineId {
        match self {
            WalFileName::History(t) => *t,
            other => {
                other
                    .segment()
                    .expect("non-history names have a segment")
                    .timeline
            }
        }
    }

    /// Files whose content is a whole WAL segment with a long page header.
    pub fn is_segment_data(&self) -> bool {
        matches!(self, WalFileName::Segment(_) | WalFileName::Partial(_))
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment(s) => write!(f, "{s}"),
            WalFileName::Partial(s) => write!(f, "{s}.partial"),
            WalFileName::History(t) => write!(f, "{t}.history"),
            WalFileName::BackupLabel(s, off) => write!(f, "{s}.{off:08X}.backup"),
        }
    }
}

impl FromStr for WalFileName {
    type Err = ParseWalNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseWalNameError(s.to_string());
        if let Some(seg) = s.strip_suffix(".partial") {
            return Ok(WalFileName::Partial(seg.parse().map_err(|_| err())?));
        }
        if let Some(tli) = s.strip_suffix(".history") {
            return Ok(WalFileName::History(TimelineId(hex8(tli).ok_or_else(err)?)));
        }
        if let Some(rest) = s.strip_suffix(".backup") {
            let (seg, off) = rest.split_once('.').ok_or_else(err)?;
            return Ok(WalFileName::BackupLabel(
                seg.parse().map_err(|_| err())?,
                hex8(off).ok_or_else(err)?,
            ));
        }
        Ok(WalFileName::Segment(s.parse()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            "000000010000000A000000FF",
            "000000020000000000000001.partial",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
        ] {
            assert_eq!(s.parse::<WalFileName>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_names_are_rejected() {
        for bad in [
            "",
            "RECOVERYXLOG",
            "000000010000000A000000F",
            "000000010000000a000000ff",
            "000000010000000A000000FF.gz",
            "0000002.history",
            "000000010000000000000002.backup",
            "../00000001000000000000000",
            "postgresql.conf",
        ] {
            assert!(
                bad.parse::<WalFileName>().is_err(),
                "{bad:?} must not parse"
            );
        }
    }

    #[test]
    fn segment_arithmetic_matches_postgres() {
        let size = WalSegmentSize::DEFAULT;
        // pg-reference §1.3: LSN 1A/2B3C4D5E on timeline 1 is in 000000010000001A0000002B.
        let lsn: Lsn = "1A/2B3C4D5E".parse().unwrap();
        let name = WalSegmentName::new(TimelineId(1), lsn.segno(size), size);
        assert_eq!(name.to_string(), "000000010000001A0000002B");
        assert_eq!(name.log_dir(), "000000010000001A");
        assert_eq!(name.next(size).to_string(), "000000010000001A0000002C");
        let last: WalSegmentName = "0000000100000001000000FF".parse().unwrap();
        assert_eq!(last.next(size).to_string(), "000000010000000200000000");
        assert_eq!(last.start_lsn(size).to_string(), "1/FF000000");
    }
}
