//! The report of a verification: one type, [`VerifyReport`](crate::repo::reports::VerifyReport),
//! stored and read back through the repository (`repo::reports`); here only how `verify`
//! words it.

use chrono::{DateTime, Utc};

use crate::format;
pub use crate::repo::reports::report_time;
pub use crate::repo::reports::{
    CheckResult, MeasuredSpeeds, RecoveryMeasured, TargetReport, VerifyReport as Report,
};

pub const REPORT_FORMAT: u32 = 1;

/// The recovery time a verification measured — its `restore` check (download, check, write)
/// plus its `recovery` check (start, replay, promote) — when both passed; and the data-loss
/// exposure when it started (`started_at` minus the last archived commit).
pub fn measure(
    checks: &[CheckResult],
    started_at: DateTime<Utc>,
    last_commit: Option<DateTime<Utc>>,
) -> Option<RecoveryMeasured> {
    let took = |name: &str| {
        checks
            .iter()
            .find(|c| c.name == name && c.ok)
            .map(|c| c.duration_seconds)
    };
    let (restore, replay) = (took("restore")?, took("recovery")?);
    let round = |s: f64| (s * 1000.0).round() / 1000.0;
    Some(RecoveryMeasured {
        restore_seconds: restore,
        replay_seconds: replay,
        rto_seconds: round(restore + replay),
        last_archived_commit: last_commit,
        rpo_seconds: last_commit
            .map(|c| round(((started_at - c).num_milliseconds() as f64 / 1000.0).max(0.0))),
    })
}

impl Report {
    pub fn failure_message(&self) -> String {
        format!(
            "backup {} failed verification: {}",
            self.backup_id,
            self.error.as_deref().unwrap_or("no checks ran")
        )
    }

    /// The speeds `restore` predicts with, when the restore and the recovery passed: the
    /// backup's stored bytes over the restore's time, and the segments over the replay's wall
    /// time. Staging (fetching the WAL from the repository) starts when the restore ends and
    /// runs beside the recovery, whose restore_command waits for each staged file, as a
    /// restore's `wal-fetch` with prefetch does: the replay took the longer of the two, not
    /// their sum (the sum predicted 2.6x the actual restore in the restore_plan test).
    pub fn measure_speeds(
        &mut self,
        stored_bytes: u64,
        segments: usize,
        segment_bytes: u64,
    ) -> Option<MeasuredSpeeds> {
        let took = |name: &str| {
            self.checks
                .iter()
                .find(|c| c.name == name && c.ok)
                .map(|c| c.duration_seconds.max(0.001))
        };
        let (restore, recovery) = (took("restore")?, took("recovery")?);
        let recovery = recovery.max(took("stage_wal").unwrap_or(0.0));
        let speeds = MeasuredSpeeds {
            download_bytes_per_second: stored_bytes as f64 / restore,
            replay_segments_per_second: segments as f64 / recovery,
            replay_bytes_per_second: (segments as u64 * segment_bytes) as f64 / recovery,
        };
        self.speeds = Some(speeds);
        Some(speeds)
    }

    /// The human-readable summary `verify` prints on stdout.
    pub fn render(&self) -> String {
        let mut out = format!(
            "backup {}: {} ({}, target {}, {:.1}s)\n",
            self.backup_id,
            if self.ok { "verified" } else { "FAILED" },
            self.runtime,
            self.target.description,
            self.duration_seconds
        );
        if let Some(m) = &self.measured {
            out.push_str(&format!(
                "  measured RTO {:.1}s (restore {:.1}s + replay {:.1}s); data-loss exposure {}\n",
                m.rto_seconds,
                m.restore_seconds,
                m.replay_seconds,
                m.rpo_seconds
                    .map_or("unknown (no archived commit)".into(), |s| format!(
                        "{s:.1}s"
                    ))
            ));
        }
        for c in &self.checks {
            out.push_str(&format!(
                "  {:<4} {:<28} {:>7.1}s  {}\n",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.duration_seconds,
                format::truncate(&c.detail.replace('\n', " / "), 160)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::BackupId;
    use crate::repo::reports::LastVerification;
    use crate::repo::Repository;
    use chrono::{DateTime, Utc};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn report_names() {
        assert_eq!(
            report_time(t("2024-01-02T03:04:05.678Z")),
            "20240102T030405Z"
        );
    }

    fn sample_report() -> Report {
        Report {
            format_version: REPORT_FORMAT,
            cluster: "core".into(),
            backup_id: "20240101T020000Z".into(),
            time: String::new(),
            started_at: t("2024-01-02T00:00:00Z"),
            finished_at: t("2024-01-02T00:01:00Z"),
            duration_seconds: 60.0,
            ok: false,
            error: Some("amcheck: corrupt".into()),
            runtime: "namespace".into(),
            target: TargetReport {
                kind: "time".into(),
                time: Some(t("2024-01-01T05:00:00Z")),
                description: "2024-01-01 05:00:00 UTC".into(),
                wal_from: "a".into(),
                wal_through: "b".into(),
                segments_staged: 2,
                missing: vec![],
            },
            recovered_to: None,
            checks: vec![],
            measured: None,
            speeds: None,
        }
    }

    #[tokio::test]
    async fn reports_are_stored_per_verification_and_listed() {
        let repo = Repository::in_memory("core");
        let id: BackupId = "20240101T020000Z".parse().unwrap();
        assert_eq!(repo.last_verification(&id).await.unwrap(), None);
        let mut report = sample_report();
        repo.put_report(&mut report).await.unwrap();
        report.ok = true;
        repo.put_report(&mut report).await.unwrap();
        assert_eq!(report.time, "20240102T000001Z");
        assert!(repo
            .report_names(&id)
            .await
            .unwrap()
            .contains(&"20240102T000000Z".to_string()));
        let last = repo.last_verification(&id).await.unwrap().unwrap();
        assert_eq!(
            last,
            LastVerification {
                time: "20240102T000001Z".into(),
                ok: true,
                target: "2024-01-01 05:00:00 UTC".into()
            }
        );
        assert!(report.render().contains("verified"));
        // Old reports (no speeds) still read; speeds come from the passed checks.
        let mut old = serde_json::to_value(&report).unwrap();
        old.as_object_mut().unwrap().remove("speeds");
        let old: Report = serde_json::from_value(old).unwrap();
        assert_eq!(old.speeds, None);
        assert_eq!(report.measure_speeds(1 << 20, 10, 16 << 20), None);
        for (name, secs) in [("restore", 2.0), ("recovery", 5.0)] {
            report.checks.push(CheckResult {
                name: name.into(),
                ok: true,
                duration_seconds: secs,
                detail: String::new(),
            });
        }
        let s = report.measure_speeds(1 << 20, 10, 16 << 20).unwrap();
        assert_eq!(s.download_bytes_per_second, 524288.0);
        assert_eq!(s.replay_segments_per_second, 2.0);
        assert_eq!(s.replay_bytes_per_second, 2.0 * 16.0 * 1048576.0);
        assert_eq!(report.speeds, Some(s));
        // Fetching the WAL (staging) runs beside the recovery: the replay took the longer.
        report.checks.push(check("stage_wal", true, 4.0));
        let s = report.measure_speeds(1 << 20, 10, 16 << 20).unwrap();
        assert_eq!(s.replay_segments_per_second, 2.0);
        report.checks.retain(|c| c.name != "stage_wal");
        report.checks.push(check("stage_wal", true, 10.0));
        let s = report.measure_speeds(1 << 20, 10, 16 << 20).unwrap();
        assert_eq!(s.replay_segments_per_second, 1.0);
        assert!(report.failure_message().contains("20240101T020000Z"));
    }

    fn check(name: &str, ok: bool, secs: f64) -> CheckResult {
        CheckResult {
            name: name.into(),
            ok,
            duration_seconds: secs,
            detail: String::new(),
        }
    }

    #[test]
    fn rto_is_restore_plus_replay_and_rpo_the_age_of_the_last_commit() {
        let checks = [
            check("restore", true, 12.5),
            check("stage_wal", true, 3.0),
            check("pg_verifybackup", true, 1.0),
            check("recovery", true, 7.25),
            check("amcheck", true, 30.0),
        ];
        let started = t("2024-01-02T00:00:00Z");
        let m = measure(&checks, started, Some(t("2024-01-01T23:59:20.5Z"))).unwrap();
        assert_eq!(m.restore_seconds, 12.5);
        assert_eq!(m.replay_seconds, 7.25);
        assert_eq!(m.rto_seconds, 19.75);
        assert_eq!(m.rpo_seconds, Some(39.5));
        assert_eq!(measure(&checks, started, None).unwrap().rpo_seconds, None);
        // A failed restore or recovery measures nothing.
        let failed = [check("restore", true, 1.0), check("recovery", false, 2.0)];
        assert_eq!(measure(&failed, started, None), None);
        assert_eq!(measure(&checks[..1], started, None), None);
        // Reports written before the field existed still read.
        let mut json = serde_json::to_value(sample_report()).unwrap();
        json.as_object_mut().unwrap().remove("measured");
        let old: Report = serde_json::from_value(json).unwrap();
        assert_eq!(old.measured, None);
    }
}
