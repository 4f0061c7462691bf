//! The report of a verification: one type, [`VerifyReport`](crate::repo::reports::VerifyReport),
//! stored and read back through the repository (`repo::reports`); here only how `verify`
//! words it.

use crate::format;
pub use crate::repo::reports::report_time;
pub use crate::repo::reports::{CheckResult, TargetReport, VerifyReport as Report};

pub const REPORT_FORMAT: u32 = 1;

impl Report {
    pub fn failure_message(&self) -> String {
        format!(
            "backup {} failed verification: {}",
            self.backup_id,
            self.error.as_deref().unwrap_or("no checks ran")
        )
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
        assert!(report.failure_message().contains("20240101T020000Z"));
    }
}
