//! What the repository holds, from one listing: counts and bytes per kind (for the agent's
//! metrics), the backups with a manifest, the archived WAL names, the newest verification.

use chrono::{DateTime, Utc};

use super::layout::{self, BackupKey};
use super::manifest::BackupId;
use super::reports::ReportRef;
use super::{ObjectInfo, Repository};
use crate::pg::WalFileName;

#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// When `repository.json` was written (the first archived WAL or backup).
    pub created: Option<DateTime<Utc>>,
    /// Every object under `backups/`: parts, manifests, reports (and leftovers).
    pub backups_bytes: u64,
    /// Backups with a manifest, in listing order.
    pub backup_ids: Vec<BackupId>,
    /// The newest verification report of any backup (by its time).
    pub newest_report: Option<ReportRef>,
    pub wal_bytes: u64,
    /// Archived WAL file names, in listing order.
    pub wal_names: Vec<WalFileName>,
    /// Size and time of each of `wal_names`, in the same order.
    pub wal_infos: Vec<ObjectInfo>,
    /// WAL files refused for conflicting content.
    pub wal_conflicts: u64,
}

impl Repository {
    /// List the whole repository once and sort what is there by kind.
    pub async fn inventory(&self) -> anyhow::Result<Inventory> {
        let mut inv = Inventory::default();
        let mut newest_report: Option<(&str, &str)> = None;
        let entries = self.storage.list("").await?;
        let conflicts_prefix = format!("{}/", layout::CONFLICTS_DIR);
        let wal_prefix = format!("{}/", layout::WAL_DIR);
        for e in &entries {
            if e.key == layout::REPOSITORY_INFO {
                inv.created = Some(e.last_modified);
            } else if let Some(parsed) = layout::parse_backup_key(&e.key) {
                inv.backups_bytes += e.size;
                match parsed {
                    BackupKey::Manifest { dir } => {
                        if let Ok(id) = dir.parse::<BackupId>() {
                            inv.backup_ids.push(id);
                        }
                    }
                    BackupKey::Report { name, .. }
                        if newest_report.is_none_or(|(n, _)| name > n) =>
                    {
                        newest_report = Some((name, e.key.as_str()));
                    }
                    _ => {}
                }
            } else if e.key.starts_with(&conflicts_prefix) {
                inv.wal_conflicts += 1;
            } else if e.key.starts_with(&wal_prefix) {
                inv.wal_bytes += e.size;
                if let Some(name) = layout::wal_name_from_key(&e.key) {
                    inv.wal_names.push(name);
                    inv.wal_infos.push(e.into());
                }
            }
        }
        inv.newest_report = newest_report.map(|(_, key)| ReportRef {
            key: key.to_string(),
        });
        Ok(inv)
    }
}
