//! The timelines in the archive: their history files, read once, and the path recovery walks
//! to each of them. A restore on timeline N uses only the segments on N's path; segments an
//! old primary kept writing on its timeline after a failover lie past the branch point and
//! are never counted (pg-reference §1.5).

use std::collections::BTreeMap;

use anyhow::Context;

use super::Repository;
use crate::pg::history::{TimelineHistory, TimelinePath};
use crate::pg::{TimelineId, WalFileName};

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

#[cfg(test)]
mod tests {
    use super::*;

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
