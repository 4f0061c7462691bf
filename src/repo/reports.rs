//! Verification reports, `backups/<id>/verify/<time>.json`: one type, written by `verify`,
//! read by `list` (the newest per backup) and by the agent's metrics (the newest of all).

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout;
use super::manifest::BackupId;
use super::Repository;
use crate::storage::Put;

/// One check of a verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    pub duration_seconds: f64,
    pub detail: String,
}

/// What a verification recovered to, and the WAL it staged for that.
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
pub struct VerifyReport {
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
    /// The restore and replay times measured, and the data-loss exposure then (issue 16:
    /// RTO and RPO as measured facts). `null` when the restore or the recovery failed, and in
    /// reports written before it existed.
    #[serde(default)]
    pub measured: Option<RecoveryMeasured>,
    /// The speeds measured, for `restore`'s prediction; absent in reports written before
    /// they were measured.
    #[serde(default)]
    pub speeds: Option<MeasuredSpeeds>,
}

/// What a verification measured that predicts a restore's duration (issue 16): the restore
/// (download, check, extract) of the backup's stored bytes, and the recovery (start, replay
/// of the staged WAL, promotion).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeasuredSpeeds {
    /// Stored (compressed) backup bytes downloaded and extracted per second.
    pub download_bytes_per_second: f64,
    /// WAL segments replayed per second.
    pub replay_segments_per_second: f64,
    /// WAL bytes (uncompressed segments) replayed per second.
    pub replay_bytes_per_second: f64,
}

/// What a verification measured: its restore and recovery are a real restore's, so their
/// durations are this backup's recovery time (RTO) on this host and store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryMeasured {
    /// Download, check and write the backup (its whole chain for an incremental).
    pub restore_seconds: f64,
    /// Start the server, replay the WAL to the target (waiting for its download) and promote.
    pub replay_seconds: f64,
    /// `restore_seconds + replay_seconds`: the measured recovery time.
    pub rto_seconds: f64,
    /// The last commit in the archive when the verification started (`null`: none found).
    pub last_archived_commit: Option<DateTime<Utc>>,
    /// The data-loss exposure then: the verification's start minus that commit.
    pub rpo_seconds: Option<f64>,
}

/// A report's name: `YYYYMMDDTHHMMSSZ`, like a backup id.
pub fn report_time(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// The newest verification of a backup, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastVerification {
    /// `YYYYMMDDTHHMMSSZ`.
    pub time: String,
    pub ok: bool,
    /// What it recovered to.
    pub target: String,
}

impl From<&VerifyReport> for LastVerification {
    fn from(r: &VerifyReport) -> Self {
        LastVerification {
            time: r.time.clone(),
            ok: r.ok,
            target: r.target.description.clone(),
        }
    }
}

/// A stored report, as found by a listing (see [`super::inventory`]); compare two to see
/// whether a newer one appeared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRef {
    pub(super) key: String,
}

impl Repository {
    /// Store a verification report under its `time`, set from `started_at`; a report
    /// already stored for the same second moves to the next second.
    pub async fn put_report(&self, report: &mut VerifyReport) -> anyhow::Result<()> {
        let id: BackupId = report.backup_id.parse()?;
        let mut at = report.started_at;
        for _ in 0..60 {
            report.time = report_time(at);
            let key = layout::verify_report_key(&id, &report.time);
            let body = Bytes::from(self.signing.seal(
                &self.object_name(&key),
                serde_json::to_vec_pretty(&*report).expect("report serializes"),
            )?);
            match self
                .storage
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

    /// The names (times) of a backup's reports, oldest first.
    pub async fn report_names(&self, id: &BackupId) -> anyhow::Result<Vec<String>> {
        Ok(self
            .storage
            .list(&layout::verify_dir(id))
            .await?
            .iter()
            .filter_map(|e| match layout::parse_backup_key(&e.key)? {
                layout::BackupKey::Report { name, .. } => Some(name.to_string()),
                _ => None,
            })
            .collect())
    }

    /// The newest report stored for backup `id`, if any.
    pub async fn latest_report(&self, id: &BackupId) -> anyhow::Result<Option<VerifyReport>> {
        let Some(newest) = self.report_names(id).await?.into_iter().max() else {
            return Ok(None);
        };
        let r = ReportRef {
            key: layout::verify_report_key(id, &newest),
        };
        self.get_report(&r).await?.transpose()
    }

    /// The newest report of backup `id` as `list` shows it.
    pub async fn last_verification(
        &self,
        id: &BackupId,
    ) -> anyhow::Result<Option<LastVerification>> {
        Ok(self.latest_report(id).await?.as_ref().map(Into::into))
    }

    /// Read a report: `None` when it is gone; the inner error when it cannot be parsed (the
    /// outer one when the store cannot be read).
    pub async fn get_report(
        &self,
        r: &ReportRef,
    ) -> anyhow::Result<Option<anyhow::Result<VerifyReport>>> {
        let Some(bytes) = self.storage.get_or_damaged(&r.key).await? else {
            return Ok(None);
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => return Ok(Some(Err(e))),
        };
        let name = self.object_name(&r.key);
        let checked = self.check_signature(&name, &bytes).await;
        Ok(Some(checked.and_then(|()| {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{name}: unreadable verification report"))
        })))
    }
}
