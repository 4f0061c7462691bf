//! The repository: one cluster's WAL archive and backups in the store, and its identity.

mod backups;
pub mod blockfile;
pub mod blockmap;
pub mod chain;
mod cipher;
mod events;
pub mod inventory;
mod keys;
mod layout;
pub mod lock;
pub mod manifest;
pub mod reports;
pub mod signing;
mod store;
pub mod timelines;
pub mod window;

use anyhow::Context;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use crate::codec::{self, ObjectHeader};
use crate::config::RepositoryConfig;
use crate::crypt::{EncryptionConfig, PublicKeyring};
use crate::error::Failure;
use crate::pg::{SystemId, WalFileName, WalSegmentName, WalSegmentSize};
pub use crate::storage::Access;
use crate::storage::{Put, Storage};
use manifest::{BackupId, BackupManifest};
use signing::Signing;
use store::Store;

pub use backups::{BackupDir, PartReader, PartSource, PartWriter, CONTROL_PART};
pub use keys::OpenedKeys;

/// `repository.json`: which cluster this repository belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryInfo {
    pub format_version: u32,
    pub system_identifier: SystemId,
    pub pg_version: u32,
    pub wal_segment_size: u32,
    /// The key everything in the repository is signed by (`ed25519:…`); absent when the
    /// repository is not signed. Set by the first write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_key: Option<String>,
    /// The public half of the keyring (operator recipients, key generations, the current
    /// one) when the repository is encrypted; absent when it is not. Set by `key init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<PublicKeyring>,
}

impl RepositoryInfo {
    /// The record for a cluster, in this program's repository format.
    pub fn new(system_identifier: SystemId, pg_version: u32, wal_segment_size: u32) -> Self {
        RepositoryInfo {
            format_version: layout::FORMAT_VERSION,
            system_identifier,
            pg_version,
            wal_segment_size,
            verify_key: None,
            encryption: None,
        }
    }

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

/// A compressed WAL object (its header first), as built by `codec`, ready to store.
#[derive(Debug, Clone, Default)]
pub struct WalObject(Vec<Bytes>);

impl From<Vec<u8>> for WalObject {
    fn from(v: Vec<u8>) -> Self {
        WalObject(vec![v.into()])
    }
}

impl From<Bytes> for WalObject {
    fn from(b: Bytes) -> Self {
        WalObject(vec![b])
    }
}

impl FromIterator<Bytes> for WalObject {
    fn from_iter<I: IntoIterator<Item = Bytes>>(iter: I) -> Self {
        WalObject(iter.into_iter().collect())
    }
}

/// What a WAL segment's object header records besides its checksum: the first and last
/// commit times in the segment (the recoverable window's end is read from these).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalCommits {
    pub first_commit: Option<DateTime<Utc>>,
    pub last_commit: Option<DateTime<Utc>>,
}

impl WalCommits {
    const FIRST: &'static str = "first_commit";
    const LAST: &'static str = "last_commit";

    /// The header's `extra` fields for these times.
    pub fn to_extra(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut extra = serde_json::Map::new();
        if let Some(t) = self.first_commit {
            extra.insert(Self::FIRST.into(), t.to_rfc3339().into());
        }
        if let Some(t) = self.last_commit {
            extra.insert(Self::LAST.into(), t.to_rfc3339().into());
        }
        extra
    }

    /// The times recorded in a header (an unreadable time counts as absent).
    pub fn of(header: &ObjectHeader) -> Self {
        let time = |key: &str| {
            header
                .extra
                .get(key)
                .and_then(|v| v.as_str())
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        WalCommits {
            first_commit: time(Self::FIRST),
            last_commit: time(Self::LAST),
        }
    }
}

/// Size and time of one stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

impl From<&crate::storage::Entry> for ObjectInfo {
    fn from(e: &crate::storage::Entry) -> Self {
        ObjectInfo {
            size: e.size,
            last_modified: e.last_modified,
        }
    }
}

/// A backup whose manifest is stored but cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedBackup {
    pub id: BackupId,
    /// Why, naming the manifest.
    pub error: String,
}

impl DamagedBackup {
    /// Why a command that chose this backup cannot use it.
    pub fn message(&self) -> String {
        format!("backup {} cannot be used: {}", self.id, self.error)
    }

    /// The error for `restore` when this backup was chosen (exit 3).
    pub fn refuse(&self) -> anyhow::Error {
        Failure::NotFound(self.message()).into()
    }
}

/// The backups of a repository: those that read, and those whose manifest is damaged.
#[derive(Debug, Clone, Default)]
pub struct Backups {
    pub intact: Vec<BackupManifest>,
    pub damaged: Vec<DamagedBackup>,
}

impl Backups {
    /// The damaged backup `id`, if it is one.
    pub fn damaged(&self, id: &BackupId) -> Option<&DamagedBackup> {
        self.damaged.iter().find(|d| &d.id == id)
    }
}

/// Keys per bulk delete request.
const DELETE_BATCH: usize = 1000;

#[derive(Clone, Debug)]
pub struct Repository {
    /// The store, with the repository's encryption applied (see `store`).
    storage: Store,
    cluster: String,
    /// What is signed with, and what every object read must be signed by.
    signing: Signing,
}

impl Repository {
    /// Open the store `cfg` names and scope it to one cluster's repository (a missing local
    /// root is created, 0700), with the signing key or verify key `cfg` names.
    pub fn open(cfg: &RepositoryConfig, cluster: &str) -> anyhow::Result<Self> {
        Self::open_with(cfg, cluster, Access::Create)
    }

    /// As [`Repository::open`]; with [`Access::Existing`] (read-only commands) a missing local
    /// root is an error naming the URL instead.
    pub fn open_with(
        cfg: &RepositoryConfig,
        cluster: &str,
        access: Access,
    ) -> anyhow::Result<Self> {
        let signing = Signing::from_config(cfg)?;
        Ok(Self::with_encryption(
            &Storage::open_with(cfg, access)?,
            cluster,
            signing,
            cfg.encryption.clone(),
        ))
    }

    #[cfg(test)]
    fn new(storage: &Storage, cluster: &str, signing: Signing) -> Self {
        Self::with_encryption(storage, cluster, signing, None)
    }

    fn with_encryption(
        storage: &Storage,
        cluster: &str,
        signing: Signing,
        encryption: Option<EncryptionConfig>,
    ) -> Self {
        Repository {
            storage: Store::new(
                storage.scoped(cluster),
                cluster,
                signing.clone(),
                encryption,
            ),
            cluster: cluster.to_string(),
            signing,
        }
    }

    /// A repository in memory, for unit tests.
    #[cfg(test)]
    pub fn in_memory(cluster: &str) -> Self {
        Self::new(&Storage::in_memory(), cluster, Signing::default())
    }

    /// `key` as errors name it and signatures bind it: `<cluster>/<key>`.
    fn object_name(&self, key: &str) -> String {
        format!("{}/{key}", self.cluster)
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// `repository.json`, checked (signature, and encryption against the configuration).
    pub async fn info(&self) -> anyhow::Result<Option<RepositoryInfo>> {
        self.storage.info().await
    }

    /// Check that this repository belongs to the cluster described by `ours`; the first
    /// write records it. A mismatch is a `SystemIdMismatch` (exit 4): a re-initdb'd cluster or a config
    /// pointing at another cluster's repository.
    pub async fn ensure_identity(&self, ours: &RepositoryInfo) -> anyhow::Result<RepositoryInfo> {
        let existing = match self.info().await? {
            Some(info) => info,
            None => {
                // An encrypted repository starts with `key init`: never with plaintext.
                self.storage.mode_without_record()?;
                match self.create_record(ours.clone()).await? {
                    (Put::Stored, record) => return Ok(record),
                    (Put::AlreadyExists, _) => {
                        self.info().await?.context("repository.json vanished")?
                    }
                }
            }
        };
        if existing.system_identifier != ours.system_identifier {
            return Err(Failure::SystemIdMismatch(format!(
                "repository for cluster {:?} belongs to database system {}, but this WAL/cluster has system identifier {}; \
                 refusing to mix clusters (was the cluster re-initialized, or does the config point at another cluster's repository?)",
                self.cluster, existing.system_identifier, ours.system_identifier
            ))
            .into());
        }
        if existing.pg_version != ours.pg_version
            || existing.wal_segment_size != ours.wal_segment_size
        {
            return Err(Failure::SystemIdMismatch(format!(
                "repository for cluster {:?} holds PostgreSQL {} with {}-byte WAL segments, but this is PostgreSQL {} with {}-byte segments",
                self.cluster, existing.pg_version, existing.wal_segment_size, ours.pg_version, ours.wal_segment_size
            ))
            .into());
        }
        Ok(existing)
    }

    /// Store `record` (with this repository's verify key) as `repository.json` unless one is
    /// there: the repository's first write.
    /// Returns the record as stored.
    async fn create_record(
        &self,
        mut record: RepositoryInfo,
    ) -> anyhow::Result<(Put, RepositoryInfo)> {
        record.verify_key = self.signing.verify_key().map(|k| k.to_string());
        let body = self.signing.seal(
            &self.object_name(layout::REPOSITORY_INFO),
            serde_json::to_vec_pretty(&record).expect("serializes"),
        )?;
        let put = self
            .storage
            .plain()
            .put_if_absent(layout::REPOSITORY_INFO, Bytes::from(body))
            .await?;
        Ok((put, record))
    }

    /// Archive a WAL file (already compressed with its header). An identical copy already
    /// there is success; different content is a `WalConflict` (exit 4) and the stored copy is untouched.
    pub async fn put_wal(
        &self,
        name: &WalFileName,
        object: WalObject,
        header: &ObjectHeader,
    ) -> anyhow::Result<Archived> {
        let key = layout::wal_key(name);
        let object = self.sign_wal(&key, object, header)?;
        let object = self
            .storage
            .seal_tagged(object, Some(wal_tag(header)))
            .await?;
        match self.storage.put_sealed_if_absent(&key, &object).await? {
            Put::Stored => Ok(Archived::Stored),
            Put::AlreadyExists => {
                let stored = self.stored_wal_digest(name, &key).await?;
                if stored == (header.sha256.to_string(), header.size) {
                    Ok(Archived::AlreadyArchived)
                } else {
                    // Keep the refused content as evidence (and for whoever must recover the
                    // losing side's writes); `check` and the agent's metrics report it.
                    let evidence = layout::conflict_key(name, &header.sha256);
                    let kept = match self.storage.put_sealed_if_absent(&evidence, &object).await {
                        Ok(_) => format!("the refused copy is kept as {}/{evidence}", self.cluster),
                        Err(e) => format!("keeping the refused copy failed too: {e:#}"),
                    };
                    Err(Failure::WalConflict(format!(
                        "{name} is already archived with different content (stored SHA-256 {}, this file {}); \
                         refusing to overwrite; {kept}. Two servers may be archiving into one repository (split brain?) — \
                         check which is the primary and stop the other",
                        stored.0, header.sha256
                    ))
                    .into())
                }
            }
        }
    }

    /// The SHA-256 and size of an archived WAL file's content: from its verified header
    /// where this process can read the repository, else (a writer of an encrypted
    /// repository, which holds no secret key) from the public content tag of its age header.
    async fn stored_wal_digest(
        &self,
        name: &WalFileName,
        key: &str,
    ) -> anyhow::Result<(String, u64)> {
        let damaged = || {
            format!("{name} is already archived, but the stored copy is damaged or not validly signed; it was NOT replaced — inspect {key}")
        };
        if !self.storage.readable().await? {
            let tag = self.storage.stored_tag(key).await?;
            return match tag.as_ref().map(|t| t.0.as_slice()) {
                Some([sha, size]) => Ok((sha.clone(), size.parse().with_context(damaged)?)),
                _ => Err(anyhow::anyhow!(
                    "{}/{key}: no content tag in its header",
                    self.cluster
                ))
                .with_context(damaged),
            };
        }
        let existing = self
            .storage
            .get(key)
            .await?
            .with_context(|| format!("{key} existed a moment ago but is gone"))?;
        let stored = match self.check_wal(key, &existing).await {
            Ok(()) => codec::decompress_verified(&existing, key),
            Err(e) => Err(e),
        };
        let (_, stored) = stored.with_context(damaged)?;
        Ok((stored.sha256.to_string(), stored.size))
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
        self.refuse_empty(&key, &object)?;
        self.check_wal(&key, &object).await?;
        let key2 = self.object_name(&key);
        tokio::task::spawn_blocking(move || codec::decompress_verified(&object, &key2))
            .await
            .expect("decompress task does not panic")
            .map(|(content, header)| Some((content, unsigned(header))))
    }

    /// Sign a WAL object's header: the same object with the signed header in its gzip comment.
    fn sign_wal(
        &self,
        key: &str,
        object: WalObject,
        header: &ObjectHeader,
    ) -> anyhow::Result<Vec<Bytes>> {
        let mut chunks = object.0;
        let comment = serde_json::to_vec(header).expect("header serializes");
        let sealed = self.signing.seal(&self.object_name(key), comment.clone())?;
        if sealed != comment {
            let first = chunks.first().cloned().unwrap_or_default();
            let (new_header, end) = codec::replace_comment(&first, &sealed)
                .with_context(|| format!("sign {}", self.object_name(key)))?;
            chunks[0] = first.slice(end..);
            chunks.insert(0, Bytes::from(new_header));
        }
        Ok(chunks)
    }

    /// Check the signature of a WAL object's header (its first bytes suffice).
    async fn check_wal(&self, key: &str, object: &[u8]) -> anyhow::Result<()> {
        let name = self.object_name(key);
        self.check_signature(&name, &codec::read_comment(object, &name)?)
            .await
    }

    /// Check an object's signature. When it fails, a mismatch between the configuration and
    /// `repository.json` is the clearer error (no verify key for a signed repository, another
    /// key), so that is reported when there is one.
    async fn check_signature(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let checked = self.signing.check(name, bytes);
        if checked.is_err() {
            self.info().await?;
        }
        checked
    }

    /// Every archived WAL file name, sorted by key.
    pub async fn list_wal(&self) -> anyhow::Result<Vec<(WalFileName, ObjectInfo)>> {
        Ok(self
            .storage
            .list(layout::wal_prefix())
            .await?
            .iter()
            .filter_map(|e| layout::wal_name_from_key(&e.key).map(|n| (n, e.into())))
            .collect())
    }

    /// Delete archived WAL files (in batches).
    pub async fn delete_wal(&self, names: &[WalFileName]) -> anyhow::Result<()> {
        self.delete_keys(names.iter().map(layout::wal_key).collect())
            .await
    }

    /// Delete keys in bulk requests of at most `DELETE_BATCH`.
    async fn delete_keys(&self, keys: Vec<String>) -> anyhow::Result<()> {
        for chunk in keys.chunks(DELETE_BATCH) {
            self.storage.delete_many(chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// Store a backup's manifest: the moment the backup starts to exist.
    pub async fn put_manifest(&self, m: &BackupManifest) -> anyhow::Result<()> {
        let key = layout::manifest_key(&m.id);
        let body = self
            .signing
            .seal(&self.object_name(&key), manifest::to_checked_json(m))?;
        match self.storage.put_if_absent(&key, Bytes::from(body)).await? {
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
        let name = self.object_name(&key);
        self.check_signature(&name, &bytes).await?;
        manifest::from_checked_json(&bytes, &name).map(Some)
    }

    /// A backup's manifest: `Some(Err)` when it is stored but unreadable (damaged,
    /// truncated, edited: the error names it). The outer error is the store's.
    pub async fn read_manifest(
        &self,
        id: &BackupId,
    ) -> anyhow::Result<Option<Result<BackupManifest, DamagedBackup>>> {
        let key = layout::manifest_key(id);
        let Some(bytes) = self.storage.get_or_damaged(&key).await? else {
            return Ok(None);
        };
        let name = self.object_name(&key);
        // A forged or unsigned manifest in a signed repository is damaged like a corrupt one
        // (or one that does not decrypt); a configuration that does not match the repository
        // (no verify key for a signed repository, another key) is an error of its own,
        // reported by `info`.
        let read = match bytes.map(|b| (self.signing.check(&name, &b), b)) {
            Ok((Ok(()), bytes)) => manifest::from_checked_json(&bytes, &name),
            Ok((Err(e), _)) => {
                self.info().await?;
                Err(e)
            }
            Err(e) => Err(e),
        };
        Ok(Some(read.map_err(|e| DamagedBackup {
            id: id.clone(),
            error: format!("{e:#}"),
        })))
    }

    /// Every complete backup (one with a manifest), oldest first, and apart those whose
    /// manifest cannot be read: one damaged manifest never hides the others.
    pub async fn backups(&self) -> anyhow::Result<Backups> {
        let mut out = Backups::default();
        for id in self.backup_ids().await? {
            match self.read_manifest(&id).await? {
                Some(Ok(m)) => out.intact.push(m),
                Some(Err(d)) => out.damaged.push(d),
                None => {}
            }
        }
        Ok(out)
    }

    /// Every backup whose manifest reads, oldest first (damaged ones are left out: see
    /// [`Repository::backups`]).
    pub async fn list_backups(&self) -> anyhow::Result<Vec<BackupManifest>> {
        Ok(self.backups().await?.intact)
    }

    /// WAL files refused because different content was archived under their names: the
    /// object names under `conflicts/` (`<WAL name>.<SHA-256>.gz`), oldest name first.
    pub async fn list_conflicts(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .storage
            .list(layout::CONFLICTS_DIR)
            .await?
            .into_iter()
            .map(|e| e.key.rsplit('/').next().unwrap_or(&e.key).to_string())
            .collect())
    }

    /// Where the refused WAL files are kept, for messages: `<cluster>/conflicts`.
    pub fn conflicts_location(&self) -> String {
        format!("{}/{}", self.cluster, layout::CONFLICTS_DIR)
    }

    /// Write, read back, refuse an overwrite, delete: the store semantics WAL archiving
    /// relies on. Fails when the store ignores create-only puts.
    pub async fn probe_store(&self) -> anyhow::Result<()> {
        let key = layout::probe_key(&format!(
            "probe-{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        let s = self.storage.plain();
        if s.put_if_absent(&key, Bytes::from_static(b"one")).await? != Put::Stored {
            anyhow::bail!("a fresh probe key already existed");
        }
        let second = s.put_if_absent(&key, Bytes::from_static(b"two")).await;
        let back = s.get(&key).await?;
        s.delete(&key).await?;
        s.remove_empty_dir(&key);
        if second? != Put::AlreadyExists || back.as_deref() != Some(b"one".as_slice()) {
            anyhow::bail!(
                "the store ignores create-only puts (If-None-Match): an archived WAL file could be silently overwritten; use a store that supports conditional writes"
            );
        }
        Ok(())
    }

    /// The checksum header of an archived WAL file, read from its first bytes only.
    pub async fn wal_header(&self, name: &WalFileName) -> anyhow::Result<Option<ObjectHeader>> {
        let key = layout::wal_key(name);
        let Some(head) = self.storage.get_head_bytes(&key, 1024).await? else {
            return Ok(None);
        };
        self.refuse_empty(&key, &head)?;
        self.check_wal(&key, &head).await?;
        codec::read_header(&head, &key).map(|h| Some(unsigned(h)))
    }

    /// Record `seg` as the archiver's position if it is newer than the one recorded (by
    /// name: timeline first, then position). Parallel writers may leave an older one, which
    /// only ever makes the check weaker, never wrong.
    pub async fn record_pushed(&self, seg: &WalSegmentName) -> anyhow::Result<()> {
        if let Some(old) = self.pushed_position().await? {
            if old.to_string() >= seg.to_string() {
                return Ok(());
            }
        }
        let body = serde_json::json!({ "newest_pushed": seg.to_string() });
        self.storage
            .plain()
            .put(layout::ARCHIVER_POSITION, Bytes::from(body.to_string()))
            .await
    }

    /// The newest segment `wal-push` recorded archiving (`None`: never recorded, or
    /// unreadable — the position only adds a check, so damage to it is not an error).
    pub async fn pushed_position(&self) -> anyhow::Result<Option<WalSegmentName>> {
        let Some(bytes) = self.storage.plain().get(layout::ARCHIVER_POSITION).await? else {
            return Ok(None);
        };
        let value: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        Ok(value
            .as_ref()
            .and_then(|v| v["newest_pushed"].as_str())
            .and_then(|s| s.parse().ok()))
    }

    /// Whether an archived WAL file is there and (where this process can read the repository)
    /// its header reads and is validly signed. A writer of an encrypted repository holds no
    /// secret key, so there it is a presence check only.
    pub async fn wal_stored(&self, name: &WalFileName) -> anyhow::Result<bool> {
        if self.storage.readable().await? {
            Ok(self.wal_header(name).await?.is_some())
        } else {
            self.has_wal(name).await
        }
    }

    /// Whether an archived WAL file is there (a 1-byte read).
    pub async fn has_wal(&self, name: &WalFileName) -> anyhow::Result<bool> {
        let key = layout::wal_key(name);
        self.storage.exists(&key).await
    }

    /// An empty object is damage (a truncated upload, a full disk): say so, naming it.
    fn refuse_empty(&self, key: &str, bytes: &[u8]) -> anyhow::Result<()> {
        if bytes.is_empty() {
            anyhow::bail!(
                "{}/{key}: the object is empty (0 bytes); it is damaged",
                self.cluster
            );
        }
        Ok(())
    }
}

/// The public tag of a WAL object in an encrypted repository: its content's SHA-256 and size.
fn wal_tag(header: &ObjectHeader) -> crate::crypt::ContentTag {
    crate::crypt::ContentTag(vec![header.sha256.to_string(), header.size.to_string()])
}

/// A header as read, without its signature field (checked already).
fn unsigned(mut header: ObjectHeader) -> ObjectHeader {
    header.extra.remove("signature");
    header
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
            verify_key: None,
            encryption: None,
        }
    }

    #[tokio::test]
    async fn identity_is_written_once_and_checked() {
        let repo = Repository::in_memory("core");
        repo.ensure_identity(&info(1)).await.unwrap();
        repo.ensure_identity(&info(1)).await.unwrap();
        let err = repo.ensure_identity(&info(2)).await.unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::exit::CONFLICT);
        assert!(matches!(
            crate::error::failure(&err),
            Some(Failure::SystemIdMismatch(_))
        ));
    }

    #[test]
    fn commit_times_round_trip_through_the_header() {
        let commits = WalCommits {
            first_commit: Some("2024-01-01T10:00:00Z".parse().unwrap()),
            last_commit: Some("2024-01-01T12:00:00.123456Z".parse().unwrap()),
        };
        let extra = commits.to_extra();
        assert_eq!(
            extra.keys().collect::<Vec<_>>(),
            ["first_commit", "last_commit"]
        );
        let (_, header) = codec::compress(b"x", 1, extra);
        assert_eq!(WalCommits::of(&header), commits);
        let (_, none) = codec::compress(b"x", 1, WalCommits::default().to_extra());
        assert_eq!(WalCommits::of(&none), WalCommits::default());
    }

    #[tokio::test]
    async fn a_signed_repository_signs_what_it_writes_and_refuses_the_rest() {
        let storage = Storage::in_memory();
        let writer = Repository::new(&storage, "core", Signing::with_seed([3; 32]));
        let key = writer.signing.verify_key().unwrap();
        let reader = Repository::new(&storage, "core", Signing::verifying(key));
        let keyless = Repository::new(&storage, "core", Signing::default());
        let stranger = Repository::new(&storage, "core", Signing::with_seed([4; 32]));

        let stored = writer.ensure_identity(&info(1)).await.unwrap();
        assert_eq!(stored.verify_key, Some(key.to_string()));
        assert_eq!(reader.info().await.unwrap(), Some(stored));
        let err = keyless.info().await.unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::exit::USAGE);
        assert!(format!("{err:#}").contains(&key.to_string()), "{err:#}");
        assert!(stranger.info().await.is_err());
        assert!(keyless.ensure_identity(&info(1)).await.is_err());

        let name: WalFileName = "000000010000000000000003".parse().unwrap();
        let commits = WalCommits {
            first_commit: Some("2024-01-01T10:00:00Z".parse().unwrap()),
            last_commit: Some("2024-01-01T12:00:00Z".parse().unwrap()),
        };
        let (object, header) = codec::compress(b"segment", 1, commits.to_extra());
        writer
            .put_wal(&name, object.clone().into(), &header)
            .await
            .unwrap();
        let (content, got) = reader.get_wal(&name).await.unwrap().unwrap();
        assert_eq!((content.as_slice(), &got), (&b"segment"[..], &header));
        assert_eq!(
            reader.wal_header(&name).await.unwrap(),
            Some(header.clone())
        );
        // Idempotent: the same content again is already archived.
        assert_eq!(
            writer
                .put_wal(&name, object.clone().into(), &header)
                .await
                .unwrap(),
            Archived::AlreadyArchived
        );
        // The genuine object under another name (a bucket writer's swap) is refused.
        let other: WalFileName = "000000010000000000000004".parse().unwrap();
        let genuine = storage
            .scoped("core")
            .get(&layout::wal_key(&name))
            .await
            .unwrap()
            .unwrap();
        storage
            .scoped("core")
            .put(&layout::wal_key(&other), genuine)
            .await
            .unwrap();
        let err = format!("{:#}", reader.get_wal(&other).await.unwrap_err());
        assert!(
            err.contains("000000010000000000000004.gz") && err.contains("wrong signature"),
            "{err}"
        );
        // An unsigned object (a writer without the key).
        let unsigned_name: WalFileName = "000000010000000000000005".parse().unwrap();
        keyless_put(&storage, &unsigned_name, object).await;
        let err = format!("{:#}", reader.wal_header(&unsigned_name).await.unwrap_err());
        assert!(err.contains("not signed"), "{err}");

        let m = manifest::tests::sample();
        assert!(
            reader.put_manifest(&m).await.is_err(),
            "a reader cannot write"
        );
        writer.put_manifest(&m).await.unwrap();
        assert_eq!(
            manifest::tests::as_written(reader.get_manifest(&m.id).await.unwrap()),
            Some(m.clone())
        );
        assert!(stranger.get_manifest(&m.id).await.is_err());
    }

    async fn keyless_put(storage: &Storage, name: &WalFileName, object: Vec<u8>) {
        storage
            .scoped("core")
            .put(&layout::wal_key(name), Bytes::from(object))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn wal_put_is_idempotent_and_never_overwrites() {
        let repo = Repository::in_memory("core");
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
