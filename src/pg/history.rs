//! Timeline history files (`TTTTTTTT.history`) and the path of timelines they describe.
//!
//! A history file of timeline N lists, oldest first, every ancestor timeline and the LSN at
//! which it was left: `<parent TLI>\t<switch point>\t<reason>` (timeline.c
//! `readTimeLineHistory`). From it follows which timeline owns each point of WAL on the way to
//! N, and so which segment file (which timeline in its name) recovery reads for each segment
//! number (xlogrecovery.c `XLogFileReadAnyTLI`: the newest timeline that had begun by then).

use std::fmt;

use anyhow::{bail, Context};

use super::{Lsn, TimelineId, WalSegmentName, WalSegmentSize};

/// One line of a history file: `parent` was left at `switchpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent: TimelineId,
    pub switchpoint: Lsn,
    pub reason: String,
}

/// The parsed history file of `timeline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    pub timeline: TimelineId,
    /// Ancestors, oldest first.
    pub entries: Vec<HistoryEntry>,
}

impl TimelineHistory {
    /// Parse the content of `<timeline>.history` as PostgreSQL does: blank lines and lines
    /// starting with `#` are skipped; timelines must increase and be below `timeline`.
    pub fn parse(timeline: TimelineId, text: &str) -> anyhow::Result<Self> {
        let mut entries: Vec<HistoryEntry> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
                bail!(
                    "{timeline}.history line {}: expected `<timeline> <switch LSN> <reason>`",
                    n + 1
                );
            };
            let parent = TimelineId(tli.parse().with_context(|| {
                format!("{timeline}.history line {}: bad timeline {tli:?}", n + 1)
            })?);
            let switchpoint: Lsn = lsn
                .parse()
                .with_context(|| format!("{timeline}.history line {}: bad LSN {lsn:?}", n + 1))?;
            if let Some(prev) = entries.last() {
                if parent <= prev.parent || switchpoint < prev.switchpoint {
                    bail!(
                        "{timeline}.history line {}: timelines and switch points must increase",
                        n + 1
                    );
                }
            }
            if parent >= timeline {
                bail!("{timeline}.history line {}: ancestor {parent} is not older than the file's timeline", n + 1);
            }
            let reason = fields.collect::<Vec<_>>().join(" ");
            entries.push(HistoryEntry {
                parent,
                switchpoint,
                reason,
            });
        }
        if entries.is_empty() {
            bail!("{timeline}.history lists no ancestor timeline");
        }
        Ok(TimelineHistory { timeline, entries })
    }

    /// The timeline this one branched from, and where.
    pub fn branch_point(&self) -> &HistoryEntry {
        self.entries.last().expect("parse refuses an empty history")
    }
}

/// One timeline's stretch of the path: WAL in `begin..end` belongs to `timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub timeline: TimelineId,
    pub begin: Lsn,
    /// `None` for the path's own (newest) timeline, which has no end yet.
    pub end: Option<Lsn>,
}

/// The timelines recovery walks to reach one timeline, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelinePath {
    spans: Vec<Span>,
}

impl TimelinePath {
    /// The path of timeline 1 (or any timeline without history: it began at LSN 0).
    pub fn root(timeline: TimelineId) -> Self {
        TimelinePath {
            spans: vec![Span {
                timeline,
                begin: Lsn(0),
                end: None,
            }],
        }
    }

    pub fn from_history(history: &TimelineHistory) -> Self {
        let mut spans = Vec::new();
        let mut begin = Lsn(0);
        for e in &history.entries {
            spans.push(Span {
                timeline: e.parent,
                begin,
                end: Some(e.switchpoint),
            });
            begin = e.switchpoint;
        }
        spans.push(Span {
            timeline: history.timeline,
            begin,
            end: None,
        });
        TimelinePath { spans }
    }

    /// The timeline the path leads to.
    pub fn target(&self) -> TimelineId {
        self.spans.last().expect("a path has a span").timeline
    }

    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    pub fn span_of(&self, timeline: TimelineId) -> Option<&Span> {
        self.spans.iter().find(|s| s.timeline == timeline)
    }

    /// Which timeline's file recovery reads for segment `segno`: the newest timeline that
    /// had begun by the segment (the switch segment itself is read from the new timeline, whose
    /// copy holds the old timeline's WAL up to the switch).
    pub fn timeline_of_segment(&self, segno: u64, size: WalSegmentSize) -> TimelineId {
        self.spans
            .iter()
            .rev()
            .find(|s| s.begin.segno(size) <= segno)
            .map_or(self.spans[0].timeline, |s| s.timeline)
    }

    /// The segment file recovery along this path reads for `segno`.
    pub fn segment(&self, segno: u64, size: WalSegmentSize) -> WalSegmentName {
        WalSegmentName::new(self.timeline_of_segment(segno, size), segno, size)
    }

    /// Whether `segment` is the file this path reads for its segment number. Segments of an
    /// ancestor past the point where the path left it (an old primary that kept writing after
    /// a failover) are not.
    pub fn uses(&self, segment: &WalSegmentName, size: WalSegmentSize) -> bool {
        self.segment(segment.segno(size), size) == *segment
    }

    /// Whether WAL from `start` to `stop` written on `timeline` lies on this path: a backup
    /// taken there can be recovered along it. The reason when not.
    pub fn reaches(&self, timeline: TimelineId, start: Lsn, stop: Lsn) -> Result<(), String> {
        let Some(i) = self.spans.iter().position(|s| s.timeline == timeline) else {
            return Err(format!(
                "timeline {} is not in the history of timeline {}",
                timeline.0,
                self.target().0
            ));
        };
        let span = &self.spans[i];
        if start < span.begin {
            return Err(format!(
                "timeline {} begins at LSN {} on the way to timeline {}, after LSN {start}",
                timeline.0,
                span.begin,
                self.target().0
            ));
        }
        match (span.end, self.spans.get(i + 1)) {
            (Some(end), Some(next)) if stop > end => Err(format!(
                "timeline {} was left for timeline {} at LSN {end}, before LSN {stop}",
                timeline.0, next.timeline.0,
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for TimelinePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.spans.iter().enumerate() {
            if i > 0 {
                write!(f, " -> ")?;
            }
            write!(f, "{}", s.timeline.0)?;
            if let Some(end) = s.end {
                write!(f, " (until {end})")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: WalSegmentSize = WalSegmentSize::DEFAULT;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn parses_what_postgres_writes() {
        let h = TimelineHistory::parse(
            TimelineId(3),
            "1\t0/A1BCE98\tbefore 2026-11-24 21:37:52.430929+00\n\n# comment\n2\t0/C000000\tno recovery target specified\n",
        )
        .unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.entries[0].parent, TimelineId(1));
        assert_eq!(h.entries[0].switchpoint, lsn("0/A1BCE98"));
        assert_eq!(h.entries[0].reason, "before 2026-11-24 21:37:52.430929+00");
        assert_eq!(h.branch_point().parent, TimelineId(2));
    }

    #[test]
    fn refuses_malformed_histories() {
        for bad in [
            "",
            "# only a comment\n",
            "1\n",
            "x\t0/1\tr\n",
            "1\tnope\tr\n",
            "2\t0/10\tr\n1\t0/20\tr\n",
            "1\t0/20\tr\n2\t0/10\tr\n",
            "3\t0/10\tr\n",
        ] {
            assert!(
                TimelineHistory::parse(TimelineId(3), bad).is_err(),
                "{bad:?}"
            );
        }
    }

    fn path_1_2_3() -> TimelinePath {
        TimelinePath::from_history(
            &TimelineHistory::parse(TimelineId(3), "1\t0/A1BCE98\tr\n2\t0/C000000\tr\n").unwrap(),
        )
    }

    #[test]
    fn segments_come_from_the_newest_timeline_begun() {
        let p = path_1_2_3();
        assert_eq!(p.target(), TimelineId(3));
        assert_eq!(p.timeline_of_segment(9, SIZE), TimelineId(1));
        // The switch segment is read from the new timeline.
        assert_eq!(p.timeline_of_segment(0xA, SIZE), TimelineId(2));
        assert_eq!(p.timeline_of_segment(0xB, SIZE), TimelineId(2));
        assert_eq!(p.timeline_of_segment(0xC, SIZE), TimelineId(3));
        assert_eq!(p.timeline_of_segment(0x99, SIZE), TimelineId(3));
        let old_primary: WalSegmentName = "00000001000000000000000B".parse().unwrap();
        assert!(!p.uses(&old_primary, SIZE));
        let before: WalSegmentName = "000000010000000000000009".parse().unwrap();
        assert!(p.uses(&before, SIZE));
        assert_eq!(
            p.to_string(),
            "1 (until 0/A1BCE98) -> 2 (until 0/C000000) -> 3"
        );
    }

    #[test]
    fn a_backup_reaches_a_timeline_only_before_the_branch() {
        let p = path_1_2_3();
        assert!(p
            .reaches(TimelineId(1), lsn("0/5000028"), lsn("0/6000100"))
            .is_ok());
        assert!(p
            .reaches(TimelineId(2), lsn("0/B000028"), lsn("0/B000100"))
            .is_ok());
        assert!(p
            .reaches(TimelineId(3), lsn("0/D000028"), lsn("0/E000100"))
            .is_ok());
        // A backup of the old primary after it was left behind.
        let e = p
            .reaches(TimelineId(1), lsn("0/B000028"), lsn("0/B000100"))
            .unwrap_err();
        assert!(
            e.contains("was left for timeline 2 at LSN 0/A1BCE98"),
            "{e}"
        );
        assert!(p.reaches(TimelineId(4), lsn("0/1"), lsn("0/2")).is_err());
        let root = TimelinePath::root(TimelineId(1));
        assert!(root.reaches(TimelineId(1), lsn("0/1"), lsn("9/0")).is_ok());
        assert_eq!(root.timeline_of_segment(5, SIZE), TimelineId(1));
    }
}
