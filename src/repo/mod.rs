//! The repository: one cluster's WAL archive and backups in the store, and its identity.

pub mod layout;
pub mod lock;
pub mod manifest;
pub mod timelines;
pub mod window;

use anyhow::Context;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec::{self, ObjectHeader};
use crate::error::Failure;
use crate::pg::{SystemId, WalFileName, WalSegmentSize};
use crate::storage::{Put, Storage};
use manifest::{BackupId, BackupManifest};

/// `repository.json`: which cluster this repository belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryInfo {
    pub format_version: u32,
    pub system_identifier: SystemId,
    pub pg_version: u32,
    pub wal_segment_size: u32,
}

impl RepositoryInfo {
    pub fn segment_size(&self) -> anyhow::Result<WalSegmentSize> {
        WalSegmentSize::new(self.wal_segment_size).with_context(|| {
            format!(
                "repository.json: invalid wal_segment_size {}",
                self.wal_segment_size
            )
        })
    }
}

/// Result of archiving one WAL file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archived {
    Stored,
    /// The same content was already there.
    AlreadyArchived,
}

#[derive(Clone, Debug)]
pub struct Repository {
    storage: Storage,
    cluster: String,
}

impl Repository {
    pub fn new(storage: &Storage, cluster: &str) -> Self {
        Repository {
            storage: storage.scoped(cluster),
            cluster: cluster.to_string(),
        }
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub async fn info(&self) -> anyhow::Result<Option<RepositoryInfo>> {
        let Some(bytes) = self.storage.get(layout::REPOSITORY_INFO).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{}/{}: unreadable", self.cluster, layout::REPOSITORY_INFO))
    }

    /// Check that this repository belongs to the cluster described by `ours`; the first
    /// write records it. A mismatch is a `Conflict`: a re-initdb'd cluster or a config
    /// pointing at another cluster's repository.
    pub async fn ensure_identity(&self, ours: &RepositoryInfo) -> anyhow::Result<RepositoryInfo> {
        let existing = match self.info().await? {
            Some(info) => info,
            None => {
                let body = Bytes::from(serde_json::to_vec_pretty(ours).expect("serializes"));
                match self
                    .storage
                    .put_if_absent(layout::REPOSITORY_INFO, body)
                    .await?
                {
                    Put::Stored => return Ok(ours.clone()),
                    Put::AlreadyExists => self.info().await?.context("repository.json vanished")?,
                }
            }
        };
        if existing.system_identifier != ours.system_identifier {
            return Err(Failure::Conflict(format!(
                "repository for cluster {:?} belongs to database system {}, but this WAL/cluster has system identifier {}; \
                 refusing to mix clusters (was the cluster re-initialized, or does the config point at another cluster's repository?)",
                self.cluster, existing.system_identifier, ours.system_identifier
            ))
            .into());
        }
        if existing.pg_version != ours.pg_version
            || existing.wal_segment_size != ours.wal_segment_size
        {
            return Err(Failure::Conflict(format!(
                "repository for cluster {:?} holds PostgreSQL {} with {}-byte WAL segments, but this is PostgreSQL {} with {}-byte segments",
                self.cluster, existing.pg_version, existing.wal_segment_size, ours.pg_version, ours.wal_segment_size
            ))
            .into());
        }
        Ok(existing)
    }

    /// Archive a WAL file (already compressed with its header). An identical copy already
    /// there is success; different content is a `Conflict` and the stored copy is untouched.
    pub async fn put_wal(
        &self,
        name: &WalFileName,
        object: object_store::PutPayload,
        header: &ObjectHeader,
    ) -> anyhow::Result<Archived> {
        let key = layout::wal_key(name);
        match self.storage.put_if_absent(&key, object.clone()).await? {
            Put::Stored => Ok(Archived::Stored),
            Put::AlreadyExists => {
                let existing = self
                    .storage
                    .get(&key)
                    .await?
                    .with_context(|| format!("{key} existed a moment ago but is gone"))?;
                let (_, stored) = codec::decompress_verified(&existing, &key)
                    .with_context(|| format!("{name} is already archived, but the stored copy is damaged; it was NOT replaced — inspect {key}"))?;
                if stored.sha256 == header.sha256 && stored.size == header.size {
                    Ok(Archived::AlreadyArchived)
                } else {
                    // Keep the refused content as evidence (and for whoever must recover the
                    // losing side's writes); `check` and the agent's metrics report it.
                    let evidence = layout::conflict_key(name, &header.sha256);
                    let kept = match self.storage.put_if_absent(&evidence, object).await {
                        Ok(_) => format!("the refused copy is kept as {}/{evidence}", self.cluster),
                        Err(e) => format!("keeping the refused copy failed too: {e:#}"),
                    };
                    Err(Failure::Conflict(format!(
                        "{name} is already archived with different content (stored SHA-256 {}, this file {}); \
                         refusing to overwrite; {kept}. Two servers may be archiving into one repository (split brain?) — \
                         check which is the primary and stop the other",
                        stored.sha256, header.sha256
                    ))
                    .into())
                }
            }
        }
    }

    /// Fetch and verify a WAL file; `None` when it is not in the archive.
    pub async fn get_wal(
        &self,
        name: &WalFileName,
    ) -> anyhow::Result<Option<(Vec<u8>, ObjectHeader)>> {
        let key = layout::wal_key(name);
        let Some(object) = self.storage.get(&key).await? else {
            return Ok(None);
        };
        let key2 = format!("{}/{key}", self.cluster);
        tokio::task::spawn_blocking(move || codec::decompress_verified(&object, &key2))
            .await
            .expect("decompress task does not panic")
            .map(Some)
    }

    /// Every archived WAL file name, sorted by key.
    pub async fn list_wal(&self) -> anyhow::Result<Vec<(WalFileName, crate::storage::Entry)>> {
        Ok(self
            .storage
            .list(layout::wal_prefix())
            .await?
            .into_iter()
            .filter_map(|e| layout::wal_name_from_key(&e.key).map(|n| (n, e)))
            .collect())
    }

    /// Store a backup's manifest: the moment the backup starts to exist.
    pub async fn put_manifest(&self, m: &BackupManifest) -> anyhow::Result<()> {
        let key = layout::manifest_key(&m.id);
        match self
            .storage
            .put_if_absent(&key, Bytes::from(manifest::to_checked_json(m)))
            .await?
        {
            Put::Stored => Ok(()),
            Put::AlreadyExists => {
                anyhow::bail!("{key} already exists; refusing to replace a backup's manifest")
            }
        }
    }

    /// A backup's manifest, verified; `None` when the backup does not exist.
    pub async fn get_manifest(&self, id: &BackupId) -> anyhow::Result<Option<BackupManifest>> {
        let key = layout::manifest_key(id);
        let Some(bytes) = self.storage.get(&key).await? else {
            return Ok(None);
        };
        manifest::from_checked_json(&bytes, &format!("{}/{key}", self.cluster)).map(Some)
    }

    /// Every complete backup (one with a manifest), oldest first.
    pub async fn list_backups(&self) -> anyhow::Result<Vec<BackupManifest>> {
        let mut ids: Vec<BackupId> = self
            .storage
            .list(layout::BACKUPS_DIR)
            .await?
            .into_iter()
            .filter_map(|e| {
                let rest = e.key.strip_prefix(layout::BACKUPS_DIR)?.strip_prefix('/')?;
                let (id, file) = rest.split_once('/')?;
                (file == "manifest.json").then(|| id.parse().ok()).flatten()
            })
            .collect();
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(m) = self.get_manifest(&id).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// WAL files refused because different content was archived under their names: the
    /// keys under `conflicts/`, oldest name first.
    pub async fn list_conflicts(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .storage
            .list(layout::CONFLICTS_DIR)
            .await?
            .into_iter()
            .map(|e| e.key)
            .collect())
    }

    /// The checksum header of an archived WAL file, read from its first bytes only.
    pub async fn wal_header(&self, name: &WalFileName) -> anyhow::Result<Option<ObjectHeader>> {
        let key = layout::wal_key(name);
        let Some(head) = self.storage.get_head_bytes(&key, 1024).await? else {
            return Ok(None);
        };
        codec::read_header(&head, &key).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(sysid: u64) -> RepositoryInfo {
        RepositoryInfo {
            format_version: 1,
            system_identifier: SystemId(sysid),
            pg_version: 15,
            wal_segment_size: 16 << 20,
        }
    }

    #[tokio::test]
    async fn identity_is_written_once_and_checked() {
        let repo = Repository::new(&Storage::in_memory(), "core");
        repo.ensure_identity(&info(1)).await.unwrap();
        repo.ensure_identity(&info(1)).await.unwrap();
        let err = repo.ensure_identity(&info(2)).await.unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::exit::CONFLICT);
    }

    #[tokio::test]
    async fn wal_put_is_idempotent_and_never_overwrites() {
        let repo = Repository::new(&Storage::in_memory(), "core");
        let name: WalFileName = "00000002.history".parse().unwrap();
        let (a, ha) = codec::compress(b"1\t0/3000000\tno recovery target\n", 6, Default::default());
        let (b, hb) = codec::compress(b"1\t0/4000000\tother\n", 6, Default::default());
        assert_eq!(
            repo.put_wal(&name, Bytes::from(a.clone()).into(), &ha)
                .await
                .unwrap(),
            Archived::Stored
        );
        assert_eq!(
            repo.put_wal(&name, Bytes::from(a).into(), &ha)
                .await
                .unwrap(),
            Archived::AlreadyArchived
        );
        let err = repo
            .put_wal(&name, Bytes::from(b).into(), &hb)
            .await
            .unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::exit::CONFLICT);
        let (content, _) = repo.get_wal(&name).await.unwrap().unwrap();
        assert_eq!(content, b"1\t0/3000000\tno recovery target\n");
        assert!(repo
            .get_wal(&"00000003.history".parse().unwrap())
            .await
            .unwrap()
            .is_none());
    }
}
