//! Pure retention decisions: which backups to keep, and the WAL horizon below which nothing
//! is needed. No I/O; `now` is passed in. Backups are ordered by time only — names can sort
//! differently and timelines reset, so LSNs are never compared across backups to order them.
//!
//! A chain of incremental backups (issue 15) is a unit: a kept incremental keeps every
//! ancestor back to its full, the window's anchor is a backup whose chain can be restored,
//! and the WAL horizon is the start of the oldest kept backup — the full of the oldest kept
//! chain.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};

use crate::pg::Lsn;
use crate::repo::chain;
use crate::repo::manifest::{BackupId, BackupKind, BackupManifest};

/// What the policy needs to know about a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFacts {
    pub id: BackupId,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub start_lsn: Lsn,
    pub kind: BackupKind,
    /// The backup an incremental was taken against (`None` for a full).
    pub parent: Option<BackupId>,
}

impl BackupFacts {
    pub fn of(m: &BackupManifest) -> Self {
        BackupFacts {
            id: m.id.clone(),
            start_time: m.start_time,
            stop_time: m.stop_time,
            start_lsn: m.start_lsn,
            kind: m.kind,
            parent: m.parent.as_ref().map(|p| p.id.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: BackupId,
    pub keep: bool,
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPlan {
    /// One decision per backup, oldest first.
    pub decisions: Vec<Decision>,
    /// WAL below this position is needed by no kept backup (`None`: keep all WAL).
    pub wal_horizon: Option<Lsn>,
    /// The oldest moment still recoverable after the plan is applied.
    pub window_start: Option<DateTime<Utc>>,
}

impl RetentionPlan {
    pub fn kept(&self) -> impl Iterator<Item = &BackupId> {
        self.decisions.iter().filter(|d| d.keep).map(|d| &d.id)
    }
    pub fn removed(&self) -> impl Iterator<Item = &BackupId> {
        self.decisions.iter().filter(|d| !d.keep).map(|d| &d.id)
    }
}

/// Keep every backup that started within the window; the newest backup whatever its age;
/// and the newest restorable backup that had finished by the window's edge (the anchor), so
/// that every moment inside the window stays recoverable. Everything newer than the anchor is
/// kept, and so is every ancestor of a kept incremental (its chain is kept whole). WAL is
/// kept from the lowest start LSN of any kept backup.
pub fn plan_retention(
    backups: &[BackupFacts],
    now: DateTime<Utc>,
    retention: Duration,
) -> RetentionPlan {
    let mut sorted: Vec<&BackupFacts> = backups.iter().collect();
    sorted.sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.id.cmp(&b.id)));
    let restorable = restorable(backups);
    let edge = now - retention;
    // The anchor: the newest restorable backup whose stop time is at or before the edge.
    let anchor = sorted
        .iter()
        .rposition(|b| b.stop_time <= edge && restorable.contains(&b.id));
    let newest = sorted.len().checked_sub(1);
    let mut decisions: Vec<Decision> = sorted
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (keep, reason) = if b.start_time >= edge {
                (true, "started within the retention window")
            } else if Some(i) == newest {
                (true, "newest backup (always kept)")
            } else if Some(i) == anchor {
                (true, "newest restorable backup finished by the window's edge: keeps the whole window recoverable")
            } else if anchor.is_some_and(|a| i > a) {
                (true, "newer than the window's anchor backup")
            } else if anchor.is_none() {
                (true, "no restorable backup finished by the window's edge yet")
            } else {
                (false, "older than the window's anchor backup")
            };
            Decision { id: b.id.clone(), keep, reason }
        })
        .collect();
    keep_chains_whole(&sorted, &mut decisions);
    let kept: Vec<&&BackupFacts> = sorted
        .iter()
        .zip(&decisions)
        .filter(|(_, d)| d.keep)
        .map(|(b, _)| b)
        .collect();
    let wal_horizon = kept.iter().map(|b| b.start_lsn).min();
    let window_start = kept
        .iter()
        .filter(|b| restorable.contains(&b.id))
        .map(|b| b.stop_time)
        .min();
    RetentionPlan {
        decisions,
        wal_horizon,
        window_start,
    }
}

/// The backups whose chain can be followed back to a full among `backups` (a full is its own
/// chain). An incremental whose parent is missing, or a malformed chain, is not restorable.
pub fn restorable(backups: &[BackupFacts]) -> BTreeSet<BackupId> {
    let by_id: BTreeMap<&BackupId, &BackupFacts> = backups.iter().map(|b| (&b.id, b)).collect();
    let link = |id: &BackupId| by_id.get(id).map(|b| (b.kind, b.parent.as_ref()));
    backups
        .iter()
        .filter(|b| chain::walk_len(&b.id, link).is_some())
        .map(|b| b.id.clone())
        .collect()
}

/// Keep every ancestor of a kept backup: a backup a kept incremental depends on is never
/// removed. `sorted` and `decisions` are in the same order.
fn keep_chains_whole(sorted: &[&BackupFacts], decisions: &mut [Decision]) {
    let index: BTreeMap<&BackupId, usize> =
        sorted.iter().enumerate().map(|(i, b)| (&b.id, i)).collect();
    // Newest first: a parent is older than its child, so one pass reaches every ancestor.
    for i in (0..sorted.len()).rev() {
        if !decisions[i].keep {
            continue;
        }
        let parent = sorted[i]
            .parent
            .as_ref()
            .filter(|p| **p < sorted[i].id)
            .and_then(|p| index.get(p));
        if let Some(&p) = parent {
            if !decisions[p].keep {
                decisions[p].keep = true;
                decisions[p].reason =
                    "an ancestor of a kept incremental backup: its chain is kept whole";
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        format!("{s}Z").parse().unwrap()
    }

    /// A full backup that starts at `start` and takes 10 minutes.
    fn b(start: &str, lsn: u64) -> BackupFacts {
        let start_time = t(start);
        BackupFacts {
            id: BackupId::from_time(start_time),
            start_time,
            stop_time: start_time + Duration::minutes(10),
            start_lsn: Lsn(lsn),
            kind: BackupKind::Full,
            parent: None,
        }
    }

    /// An incremental backup on `parent`.
    fn incr(start: &str, lsn: u64, parent: &BackupFacts) -> BackupFacts {
        BackupFacts {
            kind: BackupKind::Incr,
            parent: Some(parent.id.clone()),
            ..b(start, lsn)
        }
    }

    fn kept(plan: &RetentionPlan) -> Vec<String> {
        plan.kept().map(|i| i.to_string()).collect()
    }

    const DAYS30: i64 = 30;

    #[test]
    fn empty_repository_keeps_nothing_and_all_wal() {
        let plan = plan_retention(&[], t("2024-02-01T00:00:00"), Duration::days(DAYS30));
        assert!(plan.decisions.is_empty());
        assert_eq!(plan.wal_horizon, None);
    }

    #[test]
    fn only_old_backups_keep_the_newest() {
        let backups = [b("2023-01-01T02:00:00", 100), b("2023-01-02T02:00:00", 200)];
        let plan = plan_retention(&backups, t("2024-02-01T00:00:00"), Duration::days(DAYS30));
        assert_eq!(kept(&plan), ["20230102T020000Z"]);
        assert_eq!(plan.wal_horizon, Some(Lsn(200)));
    }

    #[test]
    fn anchor_at_the_edge_keeps_the_window_recoverable() {
        // Nightly backups for 40 days; now is 2024-02-10 03:00; edge is 2024-01-11 03:00.
        let backups: Vec<BackupFacts> = (1..=40)
            .map(|d| b(&format!("2024-01-{:02}T02:00:00", d.min(31)), d))
            .collect::<Vec<_>>();
        let backups: Vec<BackupFacts> = backups.into_iter().take(31).collect();
        let plan = plan_retention(&backups, t("2024-02-10T03:00:00"), Duration::days(DAYS30));
        let k = kept(&plan);
        // 2024-01-11 02:00 finished 02:10, before the 03:00 edge: it is the anchor.
        assert_eq!(k.first().unwrap(), "20240111T020000Z");
        assert_eq!(k.len(), 21);
        assert_eq!(plan.wal_horizon, Some(Lsn(11)));
        assert_eq!(plan.window_start, Some(t("2024-01-11T02:10:00")));
    }

    #[test]
    fn clock_at_the_edge_plus_minus_one_second() {
        let backups = [
            b("2024-01-01T00:00:00", 1),
            b("2024-01-02T00:00:00", 2),
            b("2024-01-03T00:00:00", 3),
        ];
        let window = Duration::days(DAYS30);
        // Edge exactly at the second backup's stop time: it is the anchor, the first goes.
        let at = t("2024-02-01T00:10:00");
        assert_eq!(
            kept(&plan_retention(&backups, at, window)),
            ["20240102T000000Z", "20240103T000000Z"]
        );
        // One second earlier: the second backup had not finished by the edge; the first is the anchor.
        let before = at - Duration::seconds(1);
        assert_eq!(kept(&plan_retention(&backups, before, window)).len(), 3);
        // One second later: same as at the edge.
        let after = at + Duration::seconds(1);
        assert_eq!(
            kept(&plan_retention(&backups, after, window)),
            ["20240102T000000Z", "20240103T000000Z"]
        );
        // A backup that starts exactly on the edge is within the window.
        let on_edge = t("2024-01-03T00:00:00") + window;
        let plan = plan_retention(&backups, on_edge, window);
        assert!(
            plan.decisions
                .iter()
                .find(|d| d.id.as_str() == "20240103T000000Z")
                .unwrap()
                .keep
        );
    }

    #[test]
    fn gap_longer_than_the_window_keeps_the_last_old_backup() {
        // The agent was down for two months: only one recent backup.
        let backups = [
            b("2023-10-01T02:00:00", 10),
            b("2023-10-02T02:00:00", 20),
            b("2024-01-30T02:00:00", 90),
        ];
        let plan = plan_retention(&backups, t("2024-02-01T00:00:00"), Duration::days(DAYS30));
        // 2023-10-02 is the newest backup finished by the edge (2024-01-02): it keeps the window.
        assert_eq!(kept(&plan), ["20231002T020000Z", "20240130T020000Z"]);
        assert_eq!(plan.wal_horizon, Some(Lsn(20)));
    }

    #[test]
    fn timelines_that_reset_do_not_confuse_the_horizon() {
        // After a PITR to an old point, newer backups on the new timeline have LOWER LSNs.
        let backups = [
            b("2024-01-01T02:00:00", 500),
            b("2024-01-20T02:00:00", 900),
            b("2024-01-25T02:00:00", 300),
        ];
        let plan = plan_retention(&backups, t("2024-02-10T00:00:00"), Duration::days(DAYS30));
        assert_eq!(kept(&plan).len(), 3);
        assert_eq!(
            plan.wal_horizon,
            Some(Lsn(300)),
            "the horizon is the lowest LSN of any kept backup"
        );
        // Ordered by time, not by id or LSN.
        let ids: Vec<String> = plan.decisions.iter().map(|d| d.id.to_string()).collect();
        assert_eq!(
            ids,
            ["20240101T020000Z", "20240120T020000Z", "20240125T020000Z"]
        );
    }

    /// Nights from `first` for `nights` days at 02:00: a full on Sundays (and the first
    /// night), else an incremental on the night before.
    fn nights(first: &str, nights: i64) -> Vec<BackupFacts> {
        let first = t(&format!("{first}T02:00:00"));
        let mut out: Vec<BackupFacts> = Vec::new();
        for n in 0..nights {
            let at = first + Duration::days(n);
            let start = at.format("%Y-%m-%dT%H:%M:%S").to_string();
            let lsn = 1000 + n as u64 * 10;
            let sunday = at.format("%a").to_string() == "Sun";
            let next = match out.last() {
                Some(prev) if !sunday => incr(&start, lsn, prev),
                _ => b(&start, lsn),
            };
            out.push(next);
        }
        out
    }

    /// What must hold for any plan: no kept backup lacks an ancestor, the removed backups
    /// are all older than the kept ones, the horizon is the start of the oldest kept backup
    /// (a full), and the window reaches back to the edge when a restorable backup had
    /// finished by then.
    fn assert_chain_invariants(all: &[BackupFacts], plan: &RetentionPlan, edge: DateTime<Utc>) {
        let kept: BTreeSet<&BackupId> = plan.kept().collect();
        for f in all.iter().filter(|f| kept.contains(&f.id)) {
            if let Some(p) = &f.parent {
                assert!(
                    kept.contains(p),
                    "{} is kept but its parent {p} is not",
                    f.id
                );
            }
        }
        let oldest_kept = all
            .iter()
            .filter(|f| kept.contains(&f.id))
            .min_by_key(|f| f.start_time);
        if let Some(oldest) = oldest_kept {
            assert_eq!(
                oldest.kind,
                BackupKind::Full,
                "the oldest kept backup is a full"
            );
            assert_eq!(plan.wal_horizon, Some(oldest.start_lsn));
            for r in plan.removed() {
                let removed = all.iter().find(|f| &f.id == r).unwrap();
                assert!(removed.start_time < oldest.start_time);
            }
        }
        if all.iter().any(|f| f.stop_time <= edge) {
            assert!(
                plan.window_start.is_some_and(|w| w <= edge),
                "window reaches the edge"
            );
        }
    }

    #[test]
    fn a_month_of_nights_with_weekly_fulls_keeps_the_anchor_chain_whole() {
        // 2024-01-01 (Monday) to 2024-02-10: fulls on 01-01 and every Sunday (01-07, 01-14, …).
        let all = nights("2024-01-01", 41);
        let now = t("2024-02-10T12:00:00");
        let plan = plan_retention(&all, now, Duration::days(DAYS30));
        // The edge is 2024-01-11 12:00: the anchor is Thursday 01-11's incremental, whose
        // chain goes back to Sunday 01-07's full: that whole chain stays.
        let k = kept(&plan);
        assert_eq!(k.first().unwrap(), "20240107T020000Z");
        assert_eq!(k.len(), 35, "01-07 through 02-10");
        let removed: Vec<String> = plan.removed().map(|i| i.to_string()).collect();
        assert_eq!(removed.len(), 6, "01-01 through 01-06: {removed:?}");
        let reason = |id: &str| {
            plan.decisions
                .iter()
                .find(|d| d.id.as_str() == id)
                .unwrap()
                .reason
        };
        assert!(
            reason("20240111T020000Z").contains("anchor")
                || reason("20240111T020000Z").contains("edge")
        );
        assert!(reason("20240107T020000Z").contains("chain is kept whole"));
        assert!(reason("20240109T020000Z").contains("chain is kept whole"));
        // WAL from the anchor chain's full on; the window starts at that full's end.
        assert_eq!(plan.wal_horizon, Some(Lsn(1060)));
        assert_eq!(plan.window_start, Some(t("2024-01-07T02:10:00")));
        assert_chain_invariants(&all, &plan, now - Duration::days(DAYS30));

        // Every hour of the month, the same invariants.
        let mut at = t("2024-01-01T00:00:00");
        while at < t("2024-02-12T00:00:00") {
            let upto: Vec<BackupFacts> =
                all.iter().filter(|f| f.start_time <= at).cloned().collect();
            let plan = plan_retention(&upto, at, Duration::days(DAYS30));
            assert_chain_invariants(&upto, &plan, at - Duration::days(DAYS30));
            at += Duration::hours(1);
        }
    }

    #[test]
    fn a_broken_chain_cannot_anchor_the_window() {
        // 01-01 full, 01-02 incr on it, 01-03 incr on a backup that is gone.
        let full = b("2024-01-01T02:00:00", 10);
        let on_full = incr("2024-01-02T02:00:00", 20, &full);
        let gone = b("2023-12-31T02:00:00", 5);
        let orphan = incr("2024-01-03T02:00:00", 30, &gone);
        let newer = b("2024-02-20T02:00:00", 90);
        let all = [full, on_full, orphan, newer];
        let plan = plan_retention(&all, t("2024-02-25T00:00:00"), Duration::days(DAYS30));
        // The edge is 01-26: the orphan is the newest backup finished by then, but it cannot
        // be restored, so the anchor is 01-02 (kept with its full); the orphan is newer.
        assert_eq!(
            kept(&plan),
            [
                "20240101T020000Z",
                "20240102T020000Z",
                "20240103T020000Z",
                "20240220T020000Z"
            ]
        );
        assert_eq!(plan.window_start, Some(t("2024-01-01T02:10:00")));
        let r = restorable(&all);
        assert!(!r.contains(&"20240103T020000Z".parse::<BackupId>().unwrap()));
        assert!(r.contains(&"20240102T020000Z".parse::<BackupId>().unwrap()));
        // With only the orphan finished by the edge, everything is kept.
        let plan = plan_retention(&all[2..], t("2024-02-25T00:00:00"), Duration::days(DAYS30));
        assert_eq!(kept(&plan).len(), 2);
        assert!(plan.decisions[0].reason.contains("no restorable backup"));
    }

    #[test]
    fn all_backups_inside_the_window_are_kept() {
        let backups = [b("2024-01-20T02:00:00", 1), b("2024-01-21T02:00:00", 2)];
        let plan = plan_retention(&backups, t("2024-01-22T00:00:00"), Duration::days(DAYS30));
        assert_eq!(kept(&plan).len(), 2);
        assert_eq!(plan.wal_horizon, Some(Lsn(1)));
    }
}
