//! Encryption at rest, applied behind the repository door (issue 14): the [`ObjectCipher`]
//! knows whether the repository is encrypted (from `repository.json`, checked against the
//! configuration), encrypts what is written to the current key generation's public key, and
//! opens the keyring (once per process, with the operator identity) to decrypt what is read.
//! [`super::store::Store`] applies it to every object; nothing else calls it.
//!
//! Writers need only the public keyring; readers need `identity_file`. The configuration and
//! the repository must agree: an encrypted repository read or written without
//! `[repository.encryption]`, or the reverse, is refused (exit 2), never mixed.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use futures::io::AsyncReadExt;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::PutPayload;

use crate::crypt::{
    self, ContentTag, EncryptingWriter, EncryptionConfig, KeyringError, PublicKeyring, Recipient,
    SecretKeyring,
};
use crate::error::Failure;

/// Plaintext bytes decrypted from the head of an object: the age header and the first chunk
/// (64 KiB of plaintext, 16 bytes of tag) fit in this much more than the plaintext asked for.
pub(super) const HEAD_OVERHEAD: u64 = 64 * 1024 + 16 + 4096;

/// What the repository is, once `repository.json` has been read.
#[derive(Clone, Debug)]
pub(super) enum Mode {
    Plain,
    Encrypted(PublicKeyring),
}

/// The repository's encryption, shared by clones of one `Repository`.
#[derive(Clone, Debug)]
pub(super) struct ObjectCipher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Option<EncryptionConfig>,
    cluster: String,
    mode: RwLock<Option<Mode>>,
    secret: tokio::sync::OnceCell<Arc<SecretKeyring>>,
}

impl ObjectCipher {
    pub(super) fn new(config: Option<EncryptionConfig>, cluster: &str) -> Self {
        ObjectCipher {
            inner: Arc::new(Inner {
                config,
                cluster: cluster.to_string(),
                mode: RwLock::new(None),
                secret: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// The `[repository.encryption]` table, when configured.
    pub(super) fn config(&self) -> Option<&EncryptionConfig> {
        self.inner.config.as_ref()
    }

    /// Learn what the repository is from its `repository.json` (its `encryption` field) and
    /// refuse a configuration that disagrees with it.
    pub(super) fn learn(&self, recorded: Option<&PublicKeyring>) -> anyhow::Result<()> {
        let cluster = &self.inner.cluster;
        let mode = match (recorded, &self.inner.config) {
            (Some(public), Some(_)) => Mode::Encrypted(public.clone()),
            (None, None) => Mode::Plain,
            (Some(_), None) => {
                return Err(Failure::Usage(format!(
                    "the repository of cluster {cluster:?} is encrypted ({cluster}/repository.json \
                     lists its keys), but the configuration has no [repository.encryption] table; \
                     add it (with identity_file where the repository is read)"
                ))
                .into())
            }
            (None, Some(_)) => {
                return Err(Failure::Usage(format!(
                    "[repository.encryption] is configured, but the repository of cluster \
                     {cluster:?} is not encrypted ({cluster}/repository.json has no keys); a \
                     repository is encrypted or not from its first write: refusing to mix — \
                     remove [repository.encryption] or use a new repository (`key init`)"
                ))
                .into())
            }
        };
        *self
            .inner
            .mode
            .write()
            .expect("mode lock is never poisoned") = Some(mode);
        Ok(())
    }

    /// What the repository is, if `repository.json` was read; otherwise what the
    /// configuration expects of a repository that has no `repository.json` yet (an
    /// encrypted one must be created with `key init` first).
    pub(super) fn known_mode(&self) -> Option<Mode> {
        self.inner
            .mode
            .read()
            .expect("mode lock is never poisoned")
            .clone()
    }

    /// The mode for a repository without `repository.json`.
    pub(super) fn mode_without_record(&self) -> anyhow::Result<Mode> {
        match &self.inner.config {
            None => Ok(Mode::Plain),
            Some(_) => Err(Failure::Usage(format!(
                "[repository.encryption] is configured, but the repository of cluster {:?} has \
                 no keys yet: run `synapse-backup --cluster {0} key init` first (nothing is \
                 written unencrypted)",
                self.inner.cluster
            ))
            .into()),
        }
    }

    /// Open the keyring (once per process) with the configured operator identity.
    pub(super) async fn secret<F, Fut>(
        &self,
        public: &PublicKeyring,
        fetch_keyring: F,
    ) -> anyhow::Result<Arc<SecretKeyring>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<Bytes>>>,
    {
        self.inner
            .secret
            .get_or_try_init(|| async {
                let identity = self.identity()?;
                let sealed = fetch_keyring().await?.ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}/keyring.age is missing: the encrypted repository cannot be read \
                         (restore it from a copy, or re-run `key init` only if nothing was \
                         written yet)",
                        self.inner.cluster
                    )
                })?;
                let secret = tokio::task::spawn_blocking(move || crypt::open(&sealed, &identity))
                    .await
                    .expect("keyring task does not panic")
                    .map_err(keyring_failure)?;
                secret.covers(public).map_err(keyring_failure)?;
                Ok::<_, anyhow::Error>(Arc::new(secret))
            })
            .await
            .cloned()
    }

    /// The operator identity, or a usage error naming what to configure.
    pub(super) fn identity(&self) -> anyhow::Result<crypt::OperatorIdentity> {
        let path = self
            .inner
            .config
            .as_ref()
            .and_then(|c| c.identity_file.as_ref())
            .ok_or_else(|| {
                Failure::Identity(format!(
                    "the repository of cluster {:?} is encrypted and reading it needs an operator \
                     identity: set identity_file in [repository.encryption] \
                     (config key repository.encryption.identity_file)",
                    self.inner.cluster
                ))
            })?;
        crypt::load_identity_file(path).map_err(|e| {
            Failure::Identity(format!(
                "{e} (repository.encryption.identity_file); the encrypted repository cannot be read"
            ))
            .into()
        })
    }
}

/// A keyring that does not open with the identity is the operator's to fix: exit 2; a
/// damaged keyring is a runtime failure.
fn keyring_failure(e: KeyringError) -> anyhow::Error {
    match e {
        KeyringError::NotARecipient { .. } => Failure::Identity(e.to_string()).into(),
        other => anyhow::Error::new(other),
    }
}

/// Objects up to this size are encrypted and decrypted on the calling thread (a few ms of
/// ChaCha20-Poly1305 at most): a blocking-pool thread per WAL object costs more memory (its
/// own allocator arena) than the work it would take off the reactor.
const INLINE_LIMIT: usize = 8 << 20;

/// Encrypt a whole object (already in memory) to `to`, with a public content tag in its
/// header when given; large objects off the reactor.
pub(super) async fn encrypt_payload(
    to: &Recipient,
    tag: Option<ContentTag>,
    plain: PutPayload,
) -> PutPayload {
    encrypt_chunks(to, tag, plain.into_iter().collect()).await
}

/// As [`encrypt_payload`], consuming `chunks`: each plaintext chunk is dropped as soon as it
/// is encrypted, so an object is never held twice whole (wal-push's peak memory).
pub(super) async fn encrypt_chunks(
    to: &Recipient,
    tag: Option<ContentTag>,
    chunks: Vec<Bytes>,
) -> PutPayload {
    let len: usize = chunks.iter().map(|c| c.len()).sum();
    let inline = len <= INLINE_LIMIT;
    let encrypt = move |to: Recipient| {
        let out = crate::codec::ChunkWriter::default();
        let mut w = match &tag {
            None => EncryptingWriter::new(&to, out),
            Some(tag) => EncryptingWriter::tagged(&to, tag, out),
        }
        .expect("writing to memory cannot fail");
        for chunk in chunks {
            w.write_all(&chunk).expect("writing to memory cannot fail");
        }
        let out = w.finish().expect("writing to memory cannot fail");
        out.finish().into_iter().collect::<PutPayload>()
    };
    let to = to.clone();
    if inline {
        return encrypt(to);
    }
    tokio::task::spawn_blocking(move || encrypt(to))
        .await
        .expect("encrypt task does not panic")
}

/// Decrypt a whole object (large ones off the reactor); errors name the object.
pub(super) async fn decrypt_whole(
    keys: Arc<SecretKeyring>,
    bytes: Bytes,
    object: String,
) -> anyhow::Result<Bytes> {
    let inline = bytes.len() <= INLINE_LIMIT;
    let decrypt = move || crypt::decrypt_bytes(&keys, &bytes, &object);
    let plain = if inline {
        decrypt()
    } else {
        tokio::task::spawn_blocking(decrypt)
            .await
            .expect("decrypt task does not panic")
    };
    plain.map(Bytes::from).map_err(Into::into)
}

/// The first `len` plaintext bytes of an object from its first encrypted bytes (at least the
/// header and the first chunk, or the whole object).
pub(super) fn decrypt_head(
    keys: &SecretKeyring,
    head: &[u8],
    len: u64,
    object: &str,
) -> anyhow::Result<Bytes> {
    let mut r = crypt::DecryptingReader::new(head, keys, object)?.take(len);
    let mut out = Vec::with_capacity(len.min(1 << 16) as usize);
    let mut buf = [0u8; 8192];
    while (out.len() as u64) < len {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // The range ends inside the next chunk: what came before is authenticated.
            Err(_) if !out.is_empty() && head.len() as u64 > len => break,
            Err(e) => return Err(object_error(e, object)),
        }
    }
    Ok(Bytes::from(out))
}

/// A decryption error of our readers as an error naming the object.
pub(super) fn object_error(e: std::io::Error, object: &str) -> anyhow::Error {
    match e.into_inner().map(|i| i.downcast::<crypt::ObjectError>()) {
        Some(Ok(err)) => (*err).into(),
        Some(Err(other)) => anyhow::anyhow!("{object}: {other}"),
        None => anyhow::anyhow!("{object}: read failed"),
    }
}

/// Decrypt a stream of stored chunks as it arrives (bounded memory).
pub(super) async fn decrypt_stream(
    stream: BoxStream<'static, anyhow::Result<Bytes>>,
    keys: Arc<SecretKeyring>,
    object: String,
) -> anyhow::Result<BoxStream<'static, anyhow::Result<Bytes>>> {
    let input = stream
        .map_err(|e| std::io::Error::other(format!("{e:#}")))
        .into_async_read();
    let reader = crypt::decrypt_async(input, &keys, &object).await?;
    let out = futures::stream::try_unfold((reader, object), |(mut reader, object)| async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut filled = 0;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Err(object_error(e, &object)),
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        buf.truncate(filled);
        Ok(Some((Bytes::from(buf), (reader, object))))
    });
    Ok(out.boxed())
}

/// Bytes the encrypting writer produced, taken out after each write.
#[derive(Clone, Default)]
pub(super) struct Drain(Arc<Mutex<Vec<u8>>>);

impl Drain {
    pub(super) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().expect("drain lock is never poisoned"))
    }
}

impl Write for Drain {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("drain lock is never poisoned")
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::{init, open, OperatorIdentity};

    fn keys() -> (Recipient, SecretKeyring) {
        let op = age::x25519::Identity::generate();
        let text = age::secrecy::ExposeSecret::expose_secret(&op.to_string()).to_string();
        let id = OperatorIdentity::from_text("op.key", &text).unwrap();
        let up = init(&id.recipients(), chrono::Utc::now()).unwrap();
        let secret = open(&up.sealed, &id).unwrap();
        (up.public.current_recipient().clone(), secret)
    }

    #[tokio::test]
    async fn whole_head_and_streamed_reads_round_trip() {
        let (to, secret) = keys();
        let secret = Arc::new(secret);
        let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let payload: PutPayload = plain.chunks(70_000).map(Bytes::copy_from_slice).collect();
        let tag = ContentTag(vec!["abc".into(), "300000".into()]);
        let sealed: Bytes = encrypt_payload(&to, Some(tag.clone()), payload)
            .await
            .iter()
            .flat_map(|b| b.iter().copied())
            .collect::<Vec<u8>>()
            .into();
        assert!(!sealed.windows(16).any(|w| w == &plain[1000..1016]));
        assert_eq!(ContentTag::read(&sealed[..1024]), Some(tag));
        let whole = decrypt_whole(secret.clone(), sealed.clone(), "o".into())
            .await
            .unwrap();
        assert_eq!(whole.as_ref(), plain.as_slice());
        let head = decrypt_head(
            &secret,
            &sealed[..(1024 + HEAD_OVERHEAD) as usize],
            1024,
            "o",
        )
        .unwrap();
        assert_eq!(head.as_ref(), &plain[..1024]);
        let chunks: Vec<anyhow::Result<Bytes>> = sealed
            .chunks(10_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let s = decrypt_stream(
            futures::stream::iter(chunks).boxed(),
            secret.clone(),
            "o".into(),
        )
        .await
        .unwrap();
        let got: Vec<Bytes> = s.try_collect().await.unwrap();
        assert_eq!(got.concat(), plain);

        let mut bad = sealed.to_vec();
        bad[200_000] ^= 1;
        let err = decrypt_whole(secret, bad.into(), "core/wal/x.gz".into())
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("core/wal/x.gz"), "{err:#}");
    }
}
