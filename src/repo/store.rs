//! The store as `Repository` sees it: [`Storage`] with the repository's encryption applied in
//! this one place. Every data object (WAL, history files, backup parts, manifests, reports,
//! event indexes, catalog snapshots, conflict copies) goes through the methods here, which
//! encrypt on the way in and decrypt (authenticated, naming the object) on the way out when
//! the repository is encrypted. What holds no data stays plaintext and is reached through
//! [`Store::plain`] only: `repository.json` (public keys, identity), the sealed keyring (an
//! age file already), the lock, the archiver position and the store probe.

use std::io::Read;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::PutPayload;

use super::cipher::{self, Drain, Mode, ObjectCipher};
use super::layout;
use super::signing::Signing;
use super::RepositoryInfo;
use crate::crypt::{ContentTag, EncryptingWriter, EncryptionConfig, PublicKeyring, SecretKeyring};
use crate::storage::{Entry, ObjectWriter, Put, Storage};

#[derive(Clone, Debug)]
pub(super) struct Store {
    storage: Storage,
    cluster: String,
    signing: Signing,
    cipher: ObjectCipher,
}

impl Store {
    pub(super) fn new(
        storage: Storage,
        cluster: &str,
        signing: Signing,
        encryption: Option<EncryptionConfig>,
    ) -> Self {
        Store {
            storage,
            cluster: cluster.to_string(),
            signing,
            cipher: ObjectCipher::new(encryption, cluster),
        }
    }

    /// The store without encryption, for the objects that hold no data (module doc).
    pub(super) fn plain(&self) -> &Storage {
        &self.storage
    }

    pub(super) fn encryption_config(&self) -> Option<&EncryptionConfig> {
        self.cipher.config()
    }

    fn object_name(&self, key: &str) -> String {
        format!("{}/{key}", self.cluster)
    }

    /// `repository.json`, its signature checked and its encryption compared with the
    /// configuration (a disagreement is refused, exit 2).
    pub(super) async fn info(&self) -> anyhow::Result<Option<RepositoryInfo>> {
        let Some(bytes) = self.storage.get(layout::REPOSITORY_INFO).await? else {
            return Ok(None);
        };
        let name = self.object_name(layout::REPOSITORY_INFO);
        let info: RepositoryInfo =
            serde_json::from_slice(&bytes).with_context(|| format!("{name}: unreadable"))?;
        self.signing
            .check_recorded(&name, info.verify_key.as_deref())?;
        self.signing.check(&name, &bytes)?;
        self.cipher.learn(info.encryption.as_ref())?;
        Ok(Some(info))
    }

    /// Whether the repository is encrypted (reads `repository.json` once per process).
    pub(super) async fn mode(&self) -> anyhow::Result<Mode> {
        if let Some(mode) = self.cipher.known_mode() {
            return Ok(mode);
        }
        match self.info().await? {
            Some(_) => Ok(self
                .cipher
                .known_mode()
                .expect("learnt from repository.json")),
            None => self.cipher.mode_without_record(),
        }
    }

    /// Whether this process can read the repository's data objects: it is not encrypted, or
    /// an operator identity is configured.
    pub(super) async fn readable(&self) -> anyhow::Result<bool> {
        Ok(match self.mode().await? {
            Mode::Plain => true,
            Mode::Encrypted(_) => self
                .cipher
                .config()
                .is_some_and(|c| c.identity_file.is_some()),
        })
    }

    /// The mode of a repository without `repository.json` (an error when encryption is
    /// configured: such a repository starts with `key init`).
    pub(super) fn mode_without_record(&self) -> anyhow::Result<Mode> {
        self.cipher.mode_without_record()
    }

    /// The opened keyring of an encrypted repository (opened once per process).
    pub(super) async fn secret(
        &self,
        public: &PublicKeyring,
    ) -> anyhow::Result<Arc<SecretKeyring>> {
        self.cipher
            .secret(public, || self.storage.get(layout::KEYRING))
            .await
    }

    /// The operator identity configured (for key commands), or an error naming the setting.
    pub(super) fn identity(&self) -> anyhow::Result<crate::crypt::OperatorIdentity> {
        self.cipher.identity()
    }

    async fn keys(&self) -> anyhow::Result<Option<Arc<SecretKeyring>>> {
        match self.mode().await? {
            Mode::Plain => Ok(None),
            Mode::Encrypted(public) => self.secret(&public).await.map(Some),
        }
    }

    async fn seal(&self, data: PutPayload, tag: Option<ContentTag>) -> anyhow::Result<PutPayload> {
        Ok(match self.mode().await? {
            Mode::Plain => data,
            Mode::Encrypted(public) => {
                cipher::encrypt_payload(public.current_recipient(), tag, data).await
            }
        })
    }

    async fn open(&self, key: &str, bytes: Bytes) -> anyhow::Result<Bytes> {
        match self.keys().await? {
            None => Ok(bytes),
            Some(keys) => cipher::decrypt_whole(keys, bytes, self.object_name(key)).await,
        }
    }

    pub(super) async fn put_if_absent(
        &self,
        key: &str,
        data: impl Into<PutPayload>,
    ) -> anyhow::Result<Put> {
        self.put_if_absent_tagged(key, data, None).await
    }

    /// As [`Store::put_if_absent`]; an encrypted object carries `tag` in its header (see
    /// [`ContentTag`]).
    pub(super) async fn put_if_absent_tagged(
        &self,
        key: &str,
        data: impl Into<PutPayload>,
        tag: Option<ContentTag>,
    ) -> anyhow::Result<Put> {
        let data = self.seal(data.into(), tag).await?;
        self.storage.put_if_absent(key, data).await
    }

    /// `chunks` as they will be stored (encrypted, with `tag`, in an encrypted repository), for
    /// a caller that may store the same bytes under a second key: each plaintext chunk is
    /// dropped as soon as it is encrypted, so a WAL object is never held twice.
    pub(super) async fn seal_tagged(
        &self,
        chunks: Vec<Bytes>,
        tag: Option<ContentTag>,
    ) -> anyhow::Result<Sealed> {
        Ok(Sealed(match self.mode().await? {
            Mode::Plain => chunks.into_iter().collect(),
            Mode::Encrypted(public) => {
                cipher::encrypt_chunks(public.current_recipient(), tag, chunks).await
            }
        }))
    }

    /// Store bytes from [`Store::seal_tagged`] unless something is there already.
    pub(super) async fn put_sealed_if_absent(
        &self,
        key: &str,
        sealed: &Sealed,
    ) -> anyhow::Result<Put> {
        self.storage.put_if_absent(key, sealed.0.clone()).await
    }

    /// The public content tag of a stored encrypted object (read without any key).
    pub(super) async fn stored_tag(&self, key: &str) -> anyhow::Result<Option<ContentTag>> {
        Ok(self
            .storage
            .get_head_bytes(key, 4096)
            .await?
            .and_then(|head| ContentTag::read(&head)))
    }

    pub(super) async fn put(&self, key: &str, data: Bytes) -> anyhow::Result<()> {
        let sealed = self.seal(data.into(), None).await?;
        self.storage.put(key, sealed).await
    }

    pub(super) async fn get(&self, key: &str) -> anyhow::Result<Option<Bytes>> {
        let Some(bytes) = self.storage.get(key).await? else {
            return Ok(None);
        };
        if bytes.is_empty() {
            // Empty is damage either way; the caller names it.
            return Ok(Some(bytes));
        }
        self.open(key, bytes).await.map(Some)
    }

    /// As [`Store::get`], with an object that does not decrypt (damaged, altered, of
    /// another repository) as the inner error: the caller reports it as damage of that
    /// object. The outer error is the store's, or a missing or wrong identity.
    pub(super) async fn get_or_damaged(
        &self,
        key: &str,
    ) -> anyhow::Result<Option<anyhow::Result<Bytes>>> {
        let Some(bytes) = self.storage.get(key).await? else {
            return Ok(None);
        };
        match self.keys().await? {
            Some(keys) if !bytes.is_empty() => Ok(Some(
                cipher::decrypt_whole(keys, bytes, self.object_name(key)).await,
            )),
            _ => Ok(Some(Ok(bytes))),
        }
    }

    /// The first `len` plaintext bytes of an object (or all of it, if shorter).
    pub(super) async fn get_head_bytes(
        &self,
        key: &str,
        len: u64,
    ) -> anyhow::Result<Option<Bytes>> {
        let Some(keys) = self.keys().await? else {
            return self.storage.get_head_bytes(key, len).await;
        };
        let Some(head) = self
            .storage
            .get_head_bytes(key, len + cipher::HEAD_OVERHEAD)
            .await?
        else {
            return Ok(None);
        };
        if head.is_empty() {
            return Ok(Some(head));
        }
        let name = self.object_name(key);
        cipher::decrypt_head(&keys, &head, len, &name).map(Some)
    }

    /// Whether an object is there (a 1-byte read; nothing is decrypted).
    pub(super) async fn exists(&self, key: &str) -> anyhow::Result<bool> {
        Ok(self.storage.get_head_bytes(key, 1).await?.is_some())
    }

    pub(super) async fn get_stream(
        &self,
        key: &str,
    ) -> anyhow::Result<Option<BoxStream<'static, anyhow::Result<Bytes>>>> {
        let Some(stream) = self.storage.get_stream(key).await? else {
            return Ok(None);
        };
        match self.keys().await? {
            None => Ok(Some(stream)),
            Some(keys) => cipher::decrypt_stream(stream, keys, self.object_name(key))
                .await
                .map(Some),
        }
    }

    /// A local object's file as a plaintext reader (decrypting when the repository is
    /// encrypted); `None` for a remote store.
    pub(super) async fn local_reader(
        &self,
        key: &str,
    ) -> anyhow::Result<Option<std::io::Result<Box<dyn Read + Send>>>> {
        let Some(path) = self.storage.local_file(key) else {
            return Ok(None);
        };
        let keys = self.keys().await?;
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => return Ok(Some(Err(e))),
        };
        Ok(Some(Ok(match keys {
            None => Box::new(file),
            Some(keys) => Box::new(crate::crypt::DecryptingReader::new(
                std::io::BufReader::with_capacity(1 << 20, file),
                &keys,
                &self.object_name(key),
            )?),
        })))
    }

    /// A streaming upload, encrypted as it is written when the repository is encrypted.
    pub(super) async fn writer(&self, key: &str) -> anyhow::Result<StoreWriter> {
        let encrypt = match self.mode().await? {
            Mode::Plain => None,
            Mode::Encrypted(public) => {
                let drain = Drain::default();
                let w = EncryptingWriter::new(public.current_recipient(), drain.clone())
                    .context("start encryption")?;
                Some((w, drain))
            }
        };
        Ok(StoreWriter {
            inner: self.storage.writer(key).await?,
            encrypt,
        })
    }

    pub(super) async fn list(&self, prefix: &str) -> anyhow::Result<Vec<Entry>> {
        self.storage.list(prefix).await
    }

    pub(super) async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.storage.delete(key).await
    }

    pub(super) async fn delete_many(&self, keys: Vec<String>) -> anyhow::Result<()> {
        self.storage.delete_many(keys).await
    }
}

/// An object as stored: encrypted in an encrypted repository (see [`Store::seal_tagged`]).
pub(super) struct Sealed(PutPayload);

/// A streaming upload; the age stream's last chunk is written by `finish`.
pub(super) struct StoreWriter {
    inner: ObjectWriter,
    encrypt: Option<(EncryptingWriter<Drain>, Drain)>,
}

impl StoreWriter {
    pub(super) async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match &mut self.encrypt {
            None => self.inner.write(data).await,
            Some((w, drain)) => {
                std::io::Write::write_all(w, data).context("encrypt")?;
                let out = drain.take();
                if out.is_empty() {
                    return Ok(());
                }
                self.inner.write(&out).await
            }
        }
    }

    pub(super) async fn finish(mut self) -> anyhow::Result<()> {
        if let Some((w, drain)) = self.encrypt.take() {
            w.finish().context("encrypt")?;
            let out = drain.take();
            if !out.is_empty() {
                self.inner.write(&out).await?;
            }
        }
        self.inner.finish().await
    }

    pub(super) async fn abort(self) {
        self.inner.abort().await
    }
}
