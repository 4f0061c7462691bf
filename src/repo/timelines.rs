//! The timelines in the archive: their history files, read once, and the path recovery walks
//! to each of them. A restore on timeline N uses only the segments on N's path; segments an
//! old primary kept writing on its timeline after a failover lie past the branch point and
//! are never counted (pg-reference §1.5).

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::{ObjectInfo, Repository};
use crate::pg::history::{TimelineHistory, TimelinePath};
use crate::pg::{Lsn, TimelineId, WalFileName, WalSegmentName, WalSegmentSize};

/// Every history file of the archive, parsed.
#[derive(Debug, Clone, Default)]
pub struct Timelines {
    histories: BTreeMap<TimelineId, TimelineHistory>,
    /// Timelines that have segments in the archive.
    with_segments: Vec<TimelineId>,
}

impl Timelines {
    /// From the archive's listing: reads (and verifies) each `.history` file it names.
    pub async fn load(repo: &Repository, listing: &[WalFileName]) -> anyhow::Result<Self> {
        Self::reload(repo, listing, &Timelines::default()).await
    }

    /// As [`Timelines::load`], reusing the histories `known` already holds: an archived history
    /// file never changes (a different one is refused), so a long-running reader (the agent)
    /// reads each one once.
    pub async fn reload(
        repo: &Repository,
        listing: &[WalFileName],
        known: &Timelines,
    ) -> anyhow::Result<Self> {
        let mut out = Timelines::default();
        for name in listing {
            match name {
                WalFileName::History(tli) if known.histories.contains_key(tli) => {
                    out.histories.insert(*tli, known.histories[tli].clone());
                }
                WalFileName::History(tli) => {
                    let (content, _) = repo
                        .get_wal(name)
                        .await?
                        .with_context(|| format!("{name} was listed but is gone"))?;
                    let text = String::from_utf8_lossy(&content);
                    let history = TimelineHistory::parse(*tli, &text)
                        .with_context(|| format!("read {name} from the archive"))?;
                    out.histories.insert(*tli, history);
                }
                WalFileName::Segment(seg) if !out.with_segments.contains(&seg.timeline) => {
                    out.with_segments.push(seg.timeline);
                }
                _ => {}
            }
        }
        out.with_segments.sort();
        Ok(out)
    }

    #[cfg(test)]
    fn from_histories(
        histories: impl IntoIterator<Item = TimelineHistory>,
        with_segments: Vec<TimelineId>,
    ) -> Self {
        Timelines {
            histories: histories.into_iter().map(|h| (h.timeline, h)).collect(),
            with_segments,
        }
    }

    /// What `recovery_target_timeline = 'latest'` picks: the newest timeline that has a
    /// history file (PostgreSQL finds timelines through their history files), else the
    /// lowest timeline that has WAL.
    pub fn latest(&self) -> TimelineId {
        self.histories
            .keys()
            .next_back()
            .copied()
            .or_else(|| self.with_segments.first().copied())
            .unwrap_or(TimelineId(1))
    }

    /// Every timeline known from history files or segments, oldest first.
    pub fn all(&self) -> Vec<TimelineId> {
        let mut all: Vec<TimelineId> = self.histories.keys().copied().collect();
        all.extend(self.with_segments.iter().copied());
        all.sort();
        all.dedup();
        all
    }

    pub fn history(&self, timeline: TimelineId) -> Option<&TimelineHistory> {
        self.histories.get(&timeline)
    }

    /// The path to `timeline`. A timeline other than the first needs its history file.
    pub fn path(&self, timeline: TimelineId) -> anyhow::Result<TimelinePath> {
        if let Some(h) = self.histories.get(&timeline) {
            return Ok(TimelinePath::from_history(h));
        }
        let lowest = self.with_segments.first().copied().unwrap_or(TimelineId(1));
        if timeline == TimelineId(1) || (timeline == lowest && self.histories.is_empty()) {
            return Ok(TimelinePath::root(timeline));
        }
        anyhow::bail!(
            "timeline {} has no history file ({}.history) in the archive, so the way to it is unknown; \
             known timelines: {}",
            timeline.0,
            timeline,
            self.all()
                .iter()
                .map(|t| t.0.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Two timelines that both received WAL after their branch point: a restored copy promoted
/// (or a failed-over standby) archives `child` while the server on `parent` keeps archiving
/// too. Which one is "the" database is the operator's decision, not the newest number's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitBrain {
    pub parent: TimelineId,
    pub child: TimelineId,
    /// Where `child` branched off `parent`.
    pub switchpoint: Lsn,
    /// The newest segment archived on `parent` past the branch point.
    pub parent_newest: WalSegmentName,
    pub parent_newest_time: DateTime<Utc>,
    /// The newest segment archived on `child`.
    pub child_newest: WalSegmentName,
}

impl SplitBrain {
    /// One line naming both timelines and the choice.
    pub fn describe(&self) -> String {
        format!(
            "split brain: timelines {p} and {c} both received WAL after timeline {c} branched off {p} at LSN {lsn} \
             (timeline {p} up to {pn}, archived {pt}, after timeline {c} began archiving; timeline {c} up to {cn}); \
             choose one with --timeline {p} or --timeline {c}, and stop the server that is not the primary",
            p = self.parent.0,
            c = self.child.0,
            lsn = self.switchpoint,
            pn = self.parent_newest,
            pt = crate::timeparse::format_utc(self.parent_newest_time),
            cn = self.child_newest,
        )
    }
}

impl Repository {
    /// The split brains the archive shows now: one listing, and its history files.
    pub async fn split_brains(&self) -> anyhow::Result<Vec<SplitBrain>> {
        let Some(info) = self.info().await? else {
            return Ok(Vec::new());
        };
        let size = info.segment_size()?;
        let listing = self.list_wal().await?;
        let names: Vec<WalFileName> = listing.iter().map(|(n, _)| *n).collect();
        let timelines = Timelines::load(self, &names).await?;
        Ok(split_brains(&timelines, &listing, size))
    }
}

/// The split brains the archive shows (see [`SplitBrain`]), from its listing with object
/// times. A child timeline and its parent are in split brain when the parent has a segment past
/// the one holding the switch point (it kept writing after the branch) that was archived
/// after the child's first segment (so both were writing at the same time). An old primary
/// that wrote a little after a failover and stopped before the new primary archived anything
/// is not one: the newest timeline is then the only one still moving.
pub fn split_brains(
    timelines: &Timelines,
    listing: &[(WalFileName, ObjectInfo)],
    size: WalSegmentSize,
) -> Vec<SplitBrain> {
    let segments = || {
        listing.iter().filter_map(|(n, i)| match n {
            WalFileName::Segment(s) if s.fits(size) => Some((*s, *i)),
            _ => None,
        })
    };
    let mut out = Vec::new();
    for (child, history) in &timelines.histories {
        let branch = history.branch_point();
        let switch_segno = branch.switchpoint.0 / u64::from(size.bytes());
        let child_segs: Vec<(WalSegmentName, ObjectInfo)> =
            segments().filter(|(s, _)| s.timeline == *child).collect();
        let Some(child_first) = child_segs.iter().map(|(_, i)| i.last_modified).min() else {
            continue;
        };
        let child_newest = child_segs
            .iter()
            .map(|(s, _)| *s)
            .max_by_key(|s| s.segno(size))
            .expect("not empty");
        let parent_past = segments()
            .filter(|(s, _)| s.timeline == branch.parent && s.segno(size) > switch_segno)
            .max_by_key(|(s, i)| (i.last_modified, s.segno(size)));
        if let Some((parent_newest, info)) = parent_past {
            if info.last_modified > child_first {
                out.push(SplitBrain {
                    parent: branch.parent,
                    child: *child,
                    switchpoint: branch.switchpoint,
                    parent_newest,
                    parent_newest_time: info.last_modified,
                    child_newest,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_brain_needs_both_branches_writing_at_once() {
        let size = WalSegmentSize::DEFAULT;
        let h2 = TimelineHistory::parse(TimelineId(2), "1\t0/5000100\tx\n").unwrap();
        let t = Timelines::from_histories([h2], vec![TimelineId(1), TimelineId(2)]);
        let at = |name: &str, secs: i64| {
            (
                name.parse::<WalFileName>().unwrap(),
                ObjectInfo {
                    size: 1,
                    last_modified: DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap(),
                },
            )
        };
        // Before the branch, the switch segment on both timelines, then timeline 2 alone.
        let mut listing = vec![
            at("000000010000000000000004", 0),
            at("000000010000000000000005", 10),
            at("00000002.history", 5),
            at("000000020000000000000005", 20),
            at("000000020000000000000006", 30),
        ];
        assert!(split_brains(&t, &listing, size).is_empty());
        // The old primary wrote past the branch and stopped before timeline 2 archived: no.
        listing.push(at("000000010000000000000006", 15));
        assert!(split_brains(&t, &listing, size).is_empty());
        // It keeps writing after timeline 2 began archiving: split brain, both named.
        listing.push(at("000000010000000000000007", 40));
        let found = split_brains(&t, &listing, size);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].parent, found[0].child),
            (TimelineId(1), TimelineId(2))
        );
        assert_eq!(
            found[0].parent_newest.to_string(),
            "000000010000000000000007"
        );
        assert_eq!(
            found[0].child_newest.to_string(),
            "000000020000000000000006"
        );
        let text = found[0].describe();
        assert!(
            text.contains("--timeline 1") && text.contains("--timeline 2"),
            "{text}"
        );
    }

    #[test]
    fn latest_follows_history_files() {
        let none = Timelines::default();
        assert_eq!(none.latest(), TimelineId(1));
        assert_eq!(none.path(TimelineId(1)).unwrap().target(), TimelineId(1));
        assert!(none.path(TimelineId(2)).is_err());

        let h2 = TimelineHistory::parse(TimelineId(2), "1\t0/A000000\tx\n").unwrap();
        let t = Timelines::from_histories([h2], vec![TimelineId(1), TimelineId(2), TimelineId(3)]);
        // Segments of timeline 3 without its history file: PostgreSQL cannot find it either.
        assert_eq!(t.latest(), TimelineId(2));
        assert_eq!(t.all(), vec![TimelineId(1), TimelineId(2), TimelineId(3)]);
        assert!(t
            .path(TimelineId(3))
            .unwrap_err()
            .to_string()
            .contains("00000003.history"));
        assert_eq!(t.path(TimelineId(2)).unwrap().spans().len(), 2);
    }
}
