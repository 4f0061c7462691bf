//! The repository's encryption keys in the store (issue 14): the sealed keyring object and
//! the public part in `repository.json`, written in that order so that a crash in between
//! leaves the old state valid (see `crypt`'s module doc). Used by `key` and `check`.

use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{layout, Repository, RepositoryInfo};
use crate::crypt::{self, Generation, KeyringUpdate, PublicKeyring, Recipient, SecretKeyring};
use crate::error::Failure;
use crate::storage::Put;

/// How long after a generation's successor was announced a writer may still use it (a
/// process that read `repository.json` before the rotation: a long backup, the agent).
const GENERATION_GRACE: chrono::Duration = chrono::Duration::days(1);

/// The keys of an encrypted repository, opened with an operator identity.
pub struct OpenedKeys {
    pub info: RepositoryInfo,
    pub public: PublicKeyring,
    pub secret: SecretKeyring,
}

impl Repository {
    /// The public keyring when the repository is encrypted; `None` when it is not (or has no
    /// `repository.json` yet). Refuses a configuration that disagrees with the repository.
    pub async fn encryption(&self) -> anyhow::Result<Option<PublicKeyring>> {
        Ok(self.info().await?.and_then(|i| i.encryption))
    }

    /// Whether encryption is configured (`[repository.encryption]`).
    pub fn encryption_configured(&self) -> bool {
        self.storage.encryption_config().is_some()
    }

    /// The configured operator recipients (`[repository.encryption] recipients`), when
    /// encryption is configured.
    pub fn encryption_recipients(&self) -> Option<Vec<Recipient>> {
        self.storage
            .encryption_config()
            .map(|c| c.recipients.clone())
    }

    /// Whether an operator identity is configured (`identity_file`).
    pub fn identity_configured(&self) -> bool {
        self.storage
            .encryption_config()
            .is_some_and(|c| c.identity_file.is_some())
    }

    /// Create the keys of a new repository for the cluster `ours` describes, sealed to
    /// `recipients`: the keyring object first, then `repository.json` (create-only). Refused
    /// when the repository already has a `repository.json`.
    pub async fn init_keys(
        &self,
        ours: &RepositoryInfo,
        recipients: &[Recipient],
        now: DateTime<Utc>,
    ) -> anyhow::Result<PublicKeyring> {
        let name = self.object_name(layout::REPOSITORY_INFO);
        if let Some(bytes) = self.storage.plain().get(layout::REPOSITORY_INFO).await? {
            let existing: RepositoryInfo =
                serde_json::from_slice(&bytes).with_context(|| format!("{name}: unreadable"))?;
            return Err(match existing.encryption {
                Some(_) => Failure::Conflict(format!(
                    "the repository of cluster {:?} already has its keys ({name}); `key list` shows them",
                    self.cluster
                )),
                None => Failure::Usage(format!(
                    "the repository of cluster {:?} already holds unencrypted objects ({name} has no \
                     keys); a repository is encrypted from its first write: use a new repository location",
                    self.cluster
                )),
            }
            .into());
        }
        let update = crypt::init(recipients, now).map_err(|e| Failure::Usage(e.to_string()))?;
        // No repository.json: nothing was written with a key yet, so a keyring left by an
        // interrupted `key init` may be replaced.
        self.storage
            .plain()
            .put(layout::KEYRING, Bytes::from(update.sealed))
            .await
            .context("store the repository keyring")?;
        let mut record = ours.clone();
        record.encryption = Some(update.public.clone());
        match self.create_record(record).await?.0 {
            Put::Stored => Ok(update.public),
            Put::AlreadyExists => Err(Failure::Conflict(format!(
                "{name} was written by another process during `key init`; run `key list`"
            ))
            .into()),
        }
    }

    /// Open the keyring with the operator identity in `identity_file` (default: the
    /// configured `identity_file`).
    pub async fn open_keys(&self, identity_file: Option<&Path>) -> anyhow::Result<OpenedKeys> {
        let info = self.info().await?.ok_or_else(|| {
            Failure::NotFound(format!(
                "the repository of cluster {:?} has no repository.json yet; `key init` creates its keys",
                self.cluster
            ))
        })?;
        let public = info.encryption.clone().ok_or_else(|| {
            Failure::Usage(format!(
                "the repository of cluster {:?} is not encrypted",
                self.cluster
            ))
        })?;
        let identity = match identity_file {
            Some(path) => crypt::load_identity_file(path)
                .map_err(|e| Failure::Identity(format!("{e}; the keyring cannot be opened")))?,
            None => self.storage.identity()?,
        };
        let sealed = self
            .storage
            .plain()
            .get(layout::KEYRING)
            .await?
            .with_context(|| format!("{} is missing", self.object_name(layout::KEYRING)))?;
        let secret = crypt::open(&sealed, &identity).map_err(|e| match e {
            crypt::KeyringError::NotARecipient { .. } => Failure::Identity(e.to_string()),
            other => Failure::Usage(other.to_string()),
        })?;
        secret
            .covers(&public)
            .map_err(|e| Failure::Usage(e.to_string()))?;
        Ok(OpenedKeys {
            info,
            public,
            secret,
        })
    }

    /// Check that the configured identity opens the keyring (for `check`).
    pub async fn check_identity(&self) -> anyhow::Result<()> {
        self.open_keys(None).await.map(drop)
    }

    /// Store the result of a key operation: the keyring object FIRST (atomically replaced),
    /// then `repository.json` with the new public part. A crash in between leaves a state
    /// that readers and writers accept (the keyring may hold more than `repository.json`
    /// announces, never less).
    pub async fn store_keys(
        &self,
        mut info: RepositoryInfo,
        update: KeyringUpdate,
    ) -> anyhow::Result<PublicKeyring> {
        self.storage
            .plain()
            .put(layout::KEYRING, Bytes::from(update.sealed))
            .await
            .context("store the repository keyring")?;
        info.encryption = Some(update.public.clone());
        let name = self.object_name(layout::REPOSITORY_INFO);
        let body = self
            .signing
            .seal(&name, serde_json::to_vec_pretty(&info).expect("serializes"))?;
        self.storage
            .plain()
            .put(layout::REPOSITORY_INFO, Bytes::from(body))
            .await
            .context("store repository.json with the new public keys")?;
        self.info().await?;
        Ok(update.public)
    }

    /// Drop the key generations no stored data object can use any more (see
    /// [`Repository::unused_generations`], with a day's grace) from the keyring of an
    /// encrypted repository; reads the keyring with the configured identity. Returns them.
    pub async fn drop_unused_generations(&self) -> anyhow::Result<Vec<Generation>> {
        let Some(public) = self.encryption().await? else {
            return Ok(Vec::new());
        };
        let oldest = self
            .storage
            .list("")
            .await?
            .iter()
            .filter(|e| layout::holds_data(&e.key))
            .map(|e| e.last_modified)
            .min();
        let unused = Self::unused_generations(&public, oldest, GENERATION_GRACE);
        if unused.is_empty() {
            return Ok(unused);
        }
        let keys = self.open_keys(None).await?;
        let up = crypt::drop_generations(&keys.public, &keys.secret, &unused)
            .map_err(|e| Failure::Usage(e.to_string()))?;
        self.store_keys(keys.info, up).await?;
        Ok(unused)
    }

    /// The key generations no stored object can use any more: every generation but the
    /// current one whose successor was created before `oldest_kept` by more than `grace`
    /// (objects are encrypted to the generation current when they are written, so an object
    /// written after generation G+1 was announced, plus the time a running writer may still
    /// hold the older public key, does not use G).
    pub fn unused_generations(
        public: &PublicKeyring,
        oldest_kept: Option<DateTime<Utc>>,
        grace: chrono::Duration,
    ) -> Vec<Generation> {
        let gens = public.generations();
        let current = public.current().generation;
        gens.windows(2)
            .filter(|w| w[0].generation != current)
            .filter(|w| oldest_kept.is_none_or(|t| w[1].created + grace <= t))
            .map(|w| w[0].generation)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::OperatorIdentity;
    use crate::pg::SystemId;
    use crate::repo::signing::Signing;
    use crate::storage::Storage;

    fn operator(dir: &Path, name: &str) -> (std::path::PathBuf, Recipient) {
        use std::os::unix::fs::PermissionsExt;
        let key = age::x25519::Identity::generate();
        let text = age::secrecy::ExposeSecret::expose_secret(&key.to_string()).to_string();
        let path = dir.join(name);
        std::fs::write(&path, format!("{text}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let id = OperatorIdentity::from_text(&path, &text).unwrap();
        (path, id.recipients()[0].clone())
    }

    fn info() -> RepositoryInfo {
        RepositoryInfo::new(SystemId(7), 15, 16 << 20)
    }

    #[tokio::test]
    async fn an_encrypted_repository_stores_ciphertext_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let (alice_key, alice) = operator(dir.path(), "alice.key");
        let (bob_key, bob) = operator(dir.path(), "bob.key");
        let storage = Storage::in_memory();
        let config = |identity: Option<&Path>| crypt::EncryptionConfig {
            recipients: vec![alice.clone()],
            identity_file: identity.map(Path::to_path_buf),
        };
        let open = |identity: Option<&Path>| {
            Repository::with_encryption(
                &storage,
                "core",
                Signing::default(),
                Some(config(identity)),
            )
        };
        let writer = open(None);
        // Nothing is written before `key init`.
        let err = writer.ensure_identity(&info()).await.unwrap_err();
        assert!(format!("{err:#}").contains("key init"), "{err:#}");
        writer
            .init_keys(&info(), std::slice::from_ref(&alice), Utc::now())
            .await
            .unwrap();
        writer.ensure_identity(&info()).await.unwrap();

        let m = crate::repo::manifest::tests::sample();
        writer.put_manifest(&m).await.unwrap();
        let raw = storage
            .scoped("core")
            .get(&layout::manifest_key(&m.id))
            .await
            .unwrap()
            .unwrap();
        assert!(raw.starts_with(b"age-encryption.org/v1"));
        // A writer cannot read; a reader with the operator identity can.
        let err = writer.get_manifest(&m.id).await.unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::exit::USAGE);
        assert!(format!("{err:#}").contains("identity_file"), "{err:#}");
        let reader = open(Some(&alice_key));
        assert_eq!(
            crate::repo::manifest::tests::as_written(reader.get_manifest(&m.id).await.unwrap()),
            Some(m.clone())
        );
        let stranger = open(Some(&bob_key));
        let err = stranger.get_manifest(&m.id).await.unwrap_err();
        assert!(format!("{err:#}").contains("bob.key"), "{err:#}");

        // Rotation and operator change: old objects stay readable, new ones use the new key.
        let keys = reader.open_keys(None).await.unwrap();
        let up = crypt::add_recipient(&keys.public, &keys.secret, &bob).unwrap();
        reader.store_keys(keys.info, up).await.unwrap();
        let keys = reader.open_keys(Some(&bob_key)).await.unwrap();
        let up = crypt::remove_recipient(&keys.public, &keys.secret, &alice).unwrap();
        reader.store_keys(keys.info, up).await.unwrap();
        let keys = reader.open_keys(Some(&bob_key)).await.unwrap();
        let up = crypt::rotate(&keys.public, &keys.secret, Utc::now()).unwrap();
        let public = reader.store_keys(keys.info, up).await.unwrap();
        assert_eq!(public.current().generation, Generation(2));
        let mut m2 = m.clone();
        m2.id = m.id.next();
        open(None).put_manifest(&m2).await.unwrap();
        let bob_reader = open(Some(&bob_key));
        let as_written = crate::repo::manifest::tests::as_written;
        assert_eq!(
            as_written(bob_reader.get_manifest(&m.id).await.unwrap()),
            Some(m)
        );
        assert_eq!(
            as_written(bob_reader.get_manifest(&m2.id).await.unwrap()),
            Some(m2.clone())
        );
        assert!(open(Some(&alice_key)).get_manifest(&m2.id).await.is_err());

        // A configuration without encryption is refused, never mixed.
        let plain = Repository::new(&storage, "core", Signing::default());
        let err = plain.info().await.unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::exit::USAGE);
    }

    #[tokio::test]
    async fn a_writer_without_identity_tells_a_re_push_from_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let (_, alice) = operator(dir.path(), "alice.key");
        let storage = Storage::in_memory();
        let writer = Repository::with_encryption(
            &storage,
            "core",
            Signing::default(),
            Some(crypt::EncryptionConfig {
                recipients: vec![alice.clone()],
                identity_file: None,
            }),
        );
        writer
            .init_keys(&info(), &[alice], Utc::now())
            .await
            .unwrap();
        let name: crate::pg::WalFileName = "000000010000000000000003".parse().unwrap();
        let (a, ha) = crate::codec::compress(b"segment a", 1, Default::default());
        let (b, hb) = crate::codec::compress(b"segment b", 1, Default::default());
        let put = |o: Vec<u8>, h| {
            let w = writer.clone();
            async move { w.put_wal(&name, o.into(), &h).await }
        };
        assert_eq!(
            put(a.clone(), ha.clone()).await.unwrap(),
            super::super::Archived::Stored
        );
        assert_eq!(
            put(a, ha).await.unwrap(),
            super::super::Archived::AlreadyArchived
        );
        let err = put(b, hb).await.unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::exit::CONFLICT);
        let stored = storage
            .scoped("core")
            .get(&layout::wal_key(&name))
            .await
            .unwrap()
            .unwrap();
        assert!(stored.starts_with(b"age-encryption.org/v1"));
    }

    #[test]
    fn a_generation_is_unused_once_its_successor_predates_every_kept_object() {
        let t0: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (key, alice) = operator(dir.path(), "a.key");
        let id = crypt::load_identity_file(&key).unwrap();
        let up = crypt::init(&[alice], t0).unwrap();
        let secret = crypt::open(&up.sealed, &id).unwrap();
        let t1 = t0 + chrono::Duration::days(10);
        let up = crypt::rotate(&up.public, &secret, t1).unwrap();
        let grace = chrono::Duration::days(1);
        let unused =
            |t: Option<DateTime<Utc>>| Repository::unused_generations(&up.public, t, grace);
        assert_eq!(unused(Some(t1)), vec![]);
        assert_eq!(unused(Some(t1 + grace)), vec![Generation(1)]);
        assert_eq!(unused(None), vec![Generation(1)]);
    }
}
