//! Pure retention decisions: which backups to keep, and the WAL horizon below which nothing
//! is needed. No I/O; `now` is passed in. Backups are ordered by time only — names can sort
//! differently and timelines reset, so LSNs are never compared across backups to order them.

use chrono::{DateTime, Duration, Utc};

use crate::pg::Lsn;
use crate::repo::manifest::BackupId;

/// What the policy needs to know about a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFacts {
    pub id: BackupId,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub start_lsn: Lsn,
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
/// and the newest backup that had finished by the window's edge (the anchor), so that every
/// moment inside the window stays recoverable. Everything newer than the anchor is kept.
/// WAL is kept from the lowest start LSN of any kept backup.
pub fn plan_retention(
    backups: &[BackupFacts],
    now: DateTime<Utc>,
    retention: Duration,
) -> RetentionPlan {
    let mut sorted: Vec<&BackupFacts> = backups.iter().collect();
    sorted.sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.id.cmp(&b.id)));
    let edge = now - retention;
    // The anchor: the newest backup whose stop time is at or before the edge.
    let anchor = sorted.iter().rposition(|b| b.stop_time <= edge);
    let newest = sorted.len().checked_sub(1);
    let decisions: Vec<Decision> = sorted
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let (keep, reason) = if b.start_time >= edge {
                (true, "started within the retention window")
            } else if Some(i) == newest {
                (true, "newest backup (always kept)")
            } else if Some(i) == anchor {
                (true, "newest backup finished by the window's edge: keeps the whole window recoverable")
            } else if anchor.is_some_and(|a| i > a) {
                (true, "newer than the window's anchor backup")
            } else if anchor.is_none() {
                (true, "no backup finished by the window's edge yet")
            } else {
                (false, "older than the window's anchor backup")
            };
            Decision { id: b.id.clone(), keep, reason }
        })
        .collect();
    let kept: Vec<&&BackupFacts> = sorted
        .iter()
        .zip(&decisions)
        .filter(|(_, d)| d.keep)
        .map(|(b, _)| b)
        .collect();
    let wal_horizon = kept.iter().map(|b| b.start_lsn).min();
    let window_start = kept.iter().map(|b| b.stop_time).min();
    RetentionPlan {
        decisions,
        wal_horizon,
        window_start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        format!("{s}Z").parse().unwrap()
    }

    /// A backup that starts at `start` and takes 10 minutes; LSNs grow with time unless given.
    fn b(start: &str, lsn: u64) -> BackupFacts {
        let start_time = t(start);
        BackupFacts {
            id: BackupId::from_time(start_time),
            start_time,
            stop_time: start_time + Duration::minutes(10),
            start_lsn: Lsn(lsn),
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

    #[test]
    fn all_backups_inside_the_window_are_kept() {
        let backups = [b("2024-01-20T02:00:00", 1), b("2024-01-21T02:00:00", 2)];
        let plan = plan_retention(&backups, t("2024-01-22T00:00:00"), Duration::days(DAYS30));
        assert_eq!(kept(&plan).len(), 2);
        assert_eq!(plan.wal_horizon, Some(Lsn(1)));
    }
}
