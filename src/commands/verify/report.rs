//! The report: what a verification found, stored at `backups/<id>/verify/<time>.json`, and the
//! newest one read back for `list`.

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::format;
use crate::repo::layout;
use crate::repo::manifest::BackupId;
use crate::repo::Repository;
use crate::storage::Put;

pub const REPORT_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    pub duration_seconds: f64,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// `time` (`recovery_target_time`) or `end` (the staged WAL ends with the target).
    pub kind: String,
    pub time: Option<DateTime<Utc>>,
    pub description: String,
    pub wal_from: String,
    pub wal_through: String,
    pub segments_staged: usize,
    pub missing: Vec<String>,
}

/// `backups/<id>/verify/<time>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format_version: u32,
    pub cluster: String,
    pub backup_id: String,
    /// `YYYYMMDDTHHMMSSZ`, the report's name.
    pub time: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub ok: bool,
    /// The first failing check, `name: detail`.
    pub error: Option<String>,
    pub runtime: String,
    pub target: TargetReport,
    /// The last commit the scratch instance replayed.
    pub recovered_to: Option<DateTime<Utc>>,
    pub checks: Vec<CheckResult>,
}

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

/// `YYYYMMDDTHHMMSSZ`, like a backup id.
pub(super) fn report_time(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// Store the report; a report already stored for the same second moves to the next second.
pub(super) async fn store_report(repo: &Repository, report: &mut Report) -> anyhow::Result<()> {
    let id: BackupId = report.backup_id.parse()?;
    let mut at = report.started_at;
    for _ in 0..60 {
        report.time = report_time(at);
        let key = layout::verify_report_key(&id, &report.time);
        let body = Bytes::from(serde_json::to_vec_pretty(&*report).expect("report serializes"));
        match repo
            .storage()
            .put_if_absent(&key, body)
            .await
            .context("store the verification report")?
        {
            Put::Stored => return Ok(()),
            Put::AlreadyExists => at += chrono::Duration::seconds(1),
        }
    }
    anyhow::bail!("cannot store the verification report of backup {id}: every name is taken")
}

/// The newest verification of a backup, for `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastVerification {
    /// `YYYYMMDDTHHMMSSZ`.
    pub time: String,
    pub ok: bool,
    /// What it recovered to.
    pub target: String,
}

/// The newest report stored for backup `id`, if any.
pub async fn last_verification(
    repo: &Repository,
    id: &BackupId,
) -> anyhow::Result<Option<LastVerification>> {
    let prefix = format!("{}/verify", layout::backup_dir(id));
    let newest = repo
        .storage()
        .list(&prefix)
        .await?
        .into_iter()
        .filter(|e| e.key.ends_with(".json"))
        .map(|e| e.key)
        .max();
    let Some(key) = newest else {
        return Ok(None);
    };
    let Some(bytes) = repo.storage().get(&key).await? else {
        return Ok(None);
    };
    #[derive(Deserialize)]
    struct Summary {
        time: String,
        ok: bool,
        target: Option<TargetSummary>,
    }
    #[derive(Deserialize)]
    struct TargetSummary {
        description: String,
    }
    let s: Summary = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}/{key}: unreadable verification report", repo.cluster()))?;
    Ok(Some(LastVerification {
        time: s.time,
        ok: s.ok,
        target: s.target.map(|t| t.description).unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;

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
        let repo = Repository::new(&Storage::in_memory(), "core");
        let id: BackupId = "20240101T020000Z".parse().unwrap();
        assert_eq!(last_verification(&repo, &id).await.unwrap(), None);
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
        store_report(&repo, &mut report).await.unwrap();
        report.ok = true;
        store_report(&repo, &mut report).await.unwrap();
        assert_eq!(report.time, "20240102T000001Z");
        assert!(repo
            .storage()
            .get("backups/20240101T020000Z/verify/20240102T000000Z.json")
            .await
            .unwrap()
            .is_some());
        let last = last_verification(&repo, &id).await.unwrap().unwrap();
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
