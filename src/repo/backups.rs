//! A backup's objects in the store: its parts (written while the backup runs, read by restore
//! and verify) and its directory as a whole (found, sized and removed by expire). The
//! manifest is in `mod.rs`: a backup exists once it is stored.

use anyhow::{anyhow, Context};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use super::blockmap::BlockMap;
use super::layout::{self, BackupKey};
use super::manifest::{BackupId, BackupManifest, PartEntry};
use super::store::StoreWriter;
use super::Repository;
use crate::codec::Sha256;

/// The last part: backup_label, tablespace_map and global/pg_control, written after the stop call.
pub const CONTROL_PART: &str = layout::CONTROL_PART;

/// A streaming upload of one data part. Nothing is visible until `finish` returns.
pub struct PartWriter {
    inner: StoreWriter,
    name: String,
}

impl PartWriter {
    /// The part's name, as the manifest records it (`data-NN.tar.gz`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queue bytes, waiting while too many chunks are in flight (bounds memory).
    pub async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.inner.write(data).await
    }

    pub async fn finish(self) -> anyhow::Result<()> {
        self.inner.finish().await
    }

    pub async fn abort(self) {
        self.inner.abort().await
    }
}

/// Where a part's bytes come from.
pub enum PartSource {
    /// A local repository: the file itself, read with plain file I/O (the object_store
    /// stream reads local files 8 KiB per blocking task), decrypted as it is read when the
    /// repository is encrypted.
    File(Box<dyn std::io::Read + Send>),
    /// A remote object, as a stream of chunks.
    Stream(BoxStream<'static, anyhow::Result<Bytes>>),
}

/// An opened part.
pub struct PartReader {
    /// The part's key (`backups/<id>/<part>`), for messages.
    pub key: String,
    pub source: PartSource,
}

/// One backup directory in the store (`backups/<name>/`), with or without a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDir {
    pub name: String,
    pub has_manifest: bool,
    pub objects: usize,
    pub bytes: u64,
}

impl BackupDir {
    /// The backup id the directory is named by, if it is one.
    pub fn id(&self) -> Option<BackupId> {
        self.name.parse().ok()
    }
}

impl Repository {
    /// Start writing data part `index` of backup `id`.
    pub async fn part_writer(&self, id: &BackupId, index: usize) -> anyhow::Result<PartWriter> {
        let name = layout::data_part_name(index);
        let inner = self.storage.writer(&layout::part_key(id, &name)).await?;
        Ok(PartWriter { inner, name })
    }

    /// Store a small part whole (the control part).
    pub async fn put_part(&self, id: &BackupId, part: &str, bytes: Bytes) -> anyhow::Result<()> {
        self.storage.put(&layout::part_key(id, part), bytes).await
    }

    /// Store a backup's block map (relative to its parent's, for an incremental); returns the
    /// entry its manifest records.
    pub async fn put_block_map(
        &self,
        id: &BackupId,
        map: &BlockMap,
        parent: Option<&BlockMap>,
    ) -> anyhow::Result<PartEntry> {
        let bytes = map.encode(parent);
        let entry = PartEntry {
            key: layout::BLOCK_MAP.into(),
            size: bytes.len() as u64,
            sha256: Sha256::of(&bytes),
            original_size: 0,
        };
        self.put_part(id, layout::BLOCK_MAP, Bytes::from(bytes))
            .await?;
        Ok(entry)
    }

    /// A backup's block map, checked against its manifest; `None` when the backup has none
    /// (taken before incrementals existed). An incremental's needs its parent's (`parent`).
    pub async fn get_block_map(
        &self,
        m: &BackupManifest,
        parent: Option<&BlockMap>,
    ) -> anyhow::Result<Option<BlockMap>> {
        let Some(entry) = &m.block_map else {
            return Ok(None);
        };
        let key = layout::part_key(&m.id, &entry.key);
        let bytes = self
            .get_part(&m.id, &entry.key)
            .await?
            .ok_or_else(|| anyhow!("{key} is missing; the backup is damaged"))?;
        let got = Sha256::of(&bytes);
        if got != entry.sha256 {
            anyhow::bail!(
                "{key}: corrupt block map: SHA-256 {got} does not match the manifest ({})",
                entry.sha256
            );
        }
        BlockMap::decode(&bytes, &key, parent).map(Some)
    }

    /// A part's bytes whole; `None` when it is not there.
    pub async fn get_part(&self, id: &BackupId, part: &str) -> anyhow::Result<Option<Bytes>> {
        self.storage.get(&layout::part_key(id, part)).await
    }

    /// Open a part for reading: a local file directly, a remote object as a stream. A
    /// missing part is an error that says the backup is damaged.
    pub async fn open_part(&self, id: &BackupId, part: &str) -> anyhow::Result<PartReader> {
        let key = layout::part_key(id, part);
        let missing =
            || anyhow!("{key}: the part is missing from the repository; the backup is damaged");
        if let Some(opened) = self.storage.local_reader(&key).await? {
            let file = match opened {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
                Err(e) => return Err(e).with_context(|| format!("open {key}")),
            };
            return Ok(PartReader {
                key,
                source: PartSource::File(file),
            });
        }
        let Some(stream) = self.storage.get_stream(&key).await? else {
            return Err(missing());
        };
        Ok(PartReader {
            key,
            source: PartSource::Stream(stream),
        })
    }

    /// A part's key (`backups/<id>/<part>`, relative to the cluster's repository), for
    /// messages.
    pub fn part_location(&self, id: &BackupId, part: &str) -> String {
        layout::part_key(id, part)
    }

    /// Every backup directory, with or without a manifest, oldest id first (one listing).
    pub async fn backup_dirs(&self) -> anyhow::Result<Vec<BackupDir>> {
        let mut dirs: std::collections::BTreeMap<String, BackupDir> = Default::default();
        for e in self.storage.list(layout::BACKUPS_DIR).await? {
            let Some(parsed) = layout::parse_backup_key(&e.key) else {
                continue;
            };
            let dir = match parsed {
                BackupKey::Manifest { dir }
                | BackupKey::Report { dir, .. }
                | BackupKey::Other { dir } => dir,
            };
            let d = dirs.entry(dir.to_string()).or_insert_with(|| BackupDir {
                name: dir.to_string(),
                has_manifest: false,
                objects: 0,
                bytes: 0,
            });
            d.has_manifest |= matches!(parsed, BackupKey::Manifest { .. });
            d.objects += 1;
            d.bytes += e.size;
        }
        // By id value (`…Z-2` lists before `…Z/`); names that are no id first.
        let mut dirs: Vec<BackupDir> = dirs.into_values().collect();
        dirs.sort_by_cached_key(|d| (d.id(), d.name.clone()));
        Ok(dirs)
    }

    /// Whether anything is stored under backup `id` (its manifest or any part).
    pub async fn backup_exists(&self, id: &BackupId) -> anyhow::Result<bool> {
        Ok(!self.storage.list(&layout::backup_dir(id)).await?.is_empty())
    }

    /// The id for a backup starting at `start`: the first of that second (`…Z`, then
    /// `…Z-2`, `…Z-3`, …) that nothing is stored under. Call it holding the lock, so that no
    /// other backup is choosing at the same time.
    pub async fn new_backup_id(&self, start: DateTime<Utc>) -> anyhow::Result<BackupId> {
        let mut id = BackupId::from_time(start);
        while self.backup_exists(&id).await? {
            id = id.next();
        }
        Ok(id)
    }

    /// Remove a backup: its manifest first (it stops existing at once), then everything
    /// else under it. A crash in between leaves a leftover that `expire` removes later.
    pub async fn delete_backup(&self, id: &BackupId) -> anyhow::Result<()> {
        self.storage
            .delete(&layout::manifest_key(id))
            .await
            .with_context(|| format!("remove backup {id}"))?;
        self.delete_backup_dir(id.as_str()).await
    }

    /// Remove everything under a backup directory (a leftover, or parts of a backup that
    /// failed before its manifest was stored).
    pub async fn delete_backup_dir(&self, name: &str) -> anyhow::Result<()> {
        let keys = self
            .storage
            .list(&layout::backup_dir_named(name))
            .await?
            .into_iter()
            .map(|e| e.key)
            .collect();
        self.delete_keys(keys).await
    }

    /// The ids of every complete backup (one with a manifest), oldest first (one listing).
    pub async fn backup_ids(&self) -> anyhow::Result<Vec<BackupId>> {
        let mut ids: Vec<BackupId> = self
            .storage
            .list(layout::BACKUPS_DIR)
            .await?
            .iter()
            .filter_map(|e| match layout::parse_backup_key(&e.key)? {
                BackupKey::Manifest { dir } => dir.parse().ok(),
                _ => None,
            })
            .collect();
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backup_directories_are_sized_and_removed_manifest_first() {
        let repo = Repository::in_memory("core");
        let a: BackupId = "20240101T020000Z".parse().unwrap();
        let a2 = a.next();
        repo.put_part(&a, CONTROL_PART, Bytes::from_static(b"ctl"))
            .await
            .unwrap();
        let mut w = repo.part_writer(&a2, 0).await.unwrap();
        assert_eq!(w.name(), "data-00.tar.gz");
        w.write(b"12345").await.unwrap();
        w.finish().await.unwrap();
        let mut m = super::super::manifest::tests::sample();
        m.id = a.clone();
        repo.put_manifest(&m).await.unwrap();

        let dirs = repo.backup_dirs().await.unwrap();
        assert_eq!(
            dirs.iter()
                .map(|d| (d.name.as_str(), d.has_manifest, d.objects))
                .collect::<Vec<_>>(),
            [
                ("20240101T020000Z", true, 2),
                ("20240101T020000Z-2", false, 1)
            ]
        );
        assert_eq!(dirs[1].bytes, 5);
        assert_eq!(repo.backup_ids().await.unwrap(), vec![a.clone()]);
        assert_eq!(dirs[1].id(), Some(a2.clone()));
        assert!(repo.backup_exists(&a2).await.unwrap());
        assert_eq!(
            repo.get_part(&a2, "data-00.tar.gz").await.unwrap().unwrap(),
            Bytes::from_static(b"12345")
        );
        match repo.open_part(&a2, "data-00.tar.gz").await.unwrap().source {
            PartSource::Stream(_) => {}
            PartSource::File(_) => panic!("an in-memory store has no files"),
        }
        let err = repo
            .open_part(&a2, "data-01.tar.gz")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!(
                "{}: the part is missing",
                repo.part_location(&a2, "data-01.tar.gz")
            )),
            "{err}"
        );

        let at = "2024-01-01T02:00:00.9Z".parse().unwrap();
        assert_eq!(
            repo.new_backup_id(at).await.unwrap().as_str(),
            "20240101T020000Z-3"
        );

        repo.delete_backup(&a).await.unwrap();
        repo.delete_backup_dir(a2.as_str()).await.unwrap();
        assert!(repo.backup_dirs().await.unwrap().is_empty());
        assert!(!repo.backup_exists(&a2).await.unwrap());
        assert_eq!(repo.new_backup_id(at).await.unwrap(), a);
    }
}
