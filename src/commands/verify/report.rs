//! The report of a verification: one type, [`VerifyReport`](crate::repo::reports::VerifyReport),
//! stored and read back through the repository (`repo::reports`); here only how `verify`
//! words it.

use crate::format;
pub use crate::repo::reports::report_time;
pub use crate::repo::reports::{CheckResult, MeasuredSpeeds, TargetReport, VerifyReport as Report};

pub const REPORT_FORMAT: u32 = 1;

impl Report {
    pub fn failure_message(&self) -> String {
        format!(
            "backup {} failed verification: {}",
            self.backup_id,
            self.error.as_deref().unwrap_or("no checks ran")
        )
    }

    /// The speeds `restore` predicts with, when the restore and the recovery passed: the
    /// backup's stored bytes over the restore's time, the staged segments over the recovery's
    /// (from the instance's start to its promotion, so a prediction includes the start).
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

    #[tokio::test]
    async fn reports_are_stored_per_verification_and_listed() {
        let repo = Repository::in_memory("core");
        let id: BackupId = "20240101T020000Z".parse().unwrap();
        assert_eq!(repo.last_verification(&id).await.unwrap(), None);
        let mut report = Report {
            format_version: REPORT_FORMAT,
            cluster: "core".into(),
            backup_id: id.to_string(),
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
            speeds: None,
        };
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
        assert!(report.failure_message().contains("20240101T020000Z"));
    }
}
