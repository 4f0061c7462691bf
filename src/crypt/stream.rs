//! Streaming encryption and decryption of stored objects, in bounded memory: age encrypts in
//! 64 KiB chunks, each authenticated, so neither side ever holds a whole object.
//!
//! A decryption failure is an [`ObjectError`] naming the object. The readers implement `Read`
//! (and `AsyncRead`), so it travels inside an `io::Error`; [`ObjectError::from_io`] gets it
//! back. Errors of the underlying reader (the store) pass through unchanged.

use std::fmt;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::io::{AsyncRead, AsyncWrite};

use super::keyring::SecretKeyring;
use super::keys::Recipient;

/// Why an object cannot be decrypted.
#[derive(Debug)]
pub enum ObjectErrorKind {
    /// Not an age file, or its header is damaged.
    NotEncrypted,
    /// Encrypted to a key the keyring does not hold.
    NoMatchingKey,
    /// Authentication failed: the object was altered, damaged or cut short.
    Damaged,
    /// The object ends before its last encrypted chunk.
    Truncated,
    /// The underlying reader failed while the header was read.
    Read(io::Error),
}

/// An object that cannot be decrypted, by name. Carries no key material.
#[derive(Debug)]
pub struct ObjectError {
    pub object: String,
    pub kind: ObjectErrorKind,
}

impl std::error::Error for ObjectError {}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let object = &self.object;
        match &self.kind {
            ObjectErrorKind::NotEncrypted => write!(
                f,
                "{object}: not an encrypted object (no valid age header): written to an \
                 unencrypted repository, or damaged"
            ),
            ObjectErrorKind::NoMatchingKey => write!(
                f,
                "{object}: encrypted to a key that is not in the repository keyring (an object of \
                 another repository, or of a dropped key generation)"
            ),
            ObjectErrorKind::Damaged => write!(
                f,
                "{object}: decryption failed: the object was altered, damaged or cut short \
                 (authentication failed)"
            ),
            ObjectErrorKind::Truncated => {
                write!(f, "{object}: the encrypted object is truncated")
            }
            ObjectErrorKind::Read(e) => write!(f, "{object}: read failed: {e}"),
        }
    }
}

impl ObjectError {
    /// The decryption failure inside an `io::Error` returned by one of our readers, if that
    /// is what it is (and not an error of the underlying store).
    pub fn from_io(e: &io::Error) -> Option<&ObjectError> {
        e.get_ref()?.downcast_ref::<ObjectError>()
    }

    fn new(object: &str, kind: ObjectErrorKind) -> Self {
        ObjectError {
            object: object.to_string(),
            kind,
        }
    }

    fn from_header(object: &str, e: age::DecryptError) -> Self {
        let kind = match e {
            age::DecryptError::NoMatchingKeys => ObjectErrorKind::NoMatchingKey,
            age::DecryptError::Io(e) => match Upstream::unwrap(e) {
                Ok(upstream) => ObjectErrorKind::Read(upstream),
                // A header cut short, or not text: not an age file we can read.
                Err(_) => ObjectErrorKind::NotEncrypted,
            },
            age::DecryptError::InvalidMac | age::DecryptError::DecryptionFailed => {
                ObjectErrorKind::Damaged
            }
            _ => ObjectErrorKind::NotEncrypted,
        };
        ObjectError::new(object, kind)
    }

    /// Map an error of age's stream reader: the store's own errors pass through.
    fn from_stream(object: &str, e: io::Error) -> io::Error {
        match Upstream::unwrap(e) {
            Ok(upstream) => upstream,
            Err(e) => {
                let kind = if e.kind() == io::ErrorKind::UnexpectedEof {
                    ObjectErrorKind::Truncated
                } else {
                    ObjectErrorKind::Damaged
                };
                io::Error::new(io::ErrorKind::InvalidData, ObjectError::new(object, kind))
            }
        }
    }
}

/// Marks the underlying reader's errors, so that they can be told from age's own and handed
/// back unchanged. Keeps the error kind (age retries `Interrupted`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Upstream(io::Error);

impl Upstream {
    fn wrap(e: io::Error) -> io::Error {
        io::Error::new(e.kind(), Upstream(e))
    }

    /// `Ok(original)` for a marked error, `Err(e)` for any other.
    fn unwrap(e: io::Error) -> Result<io::Error, io::Error> {
        if e.get_ref().is_some_and(|inner| inner.is::<Upstream>()) {
            let inner = e.into_inner().expect("checked above");
            Ok(inner.downcast::<Upstream>().expect("checked above").0)
        } else {
            Err(e)
        }
    }
}

/// The underlying reader, its errors marked.
struct Marked<R>(R);

impl<R: Read> Read for Marked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(Upstream::wrap)
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Marked<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0)
            .poll_read(cx, buf)
            .map_err(Upstream::wrap)
    }
}

fn encryptor(to: &Recipient) -> age::Encryptor {
    age::Encryptor::with_recipients(std::iter::once(to.key() as &dyn age::Recipient))
        .expect("one X25519 recipient always works")
}

/// The stanza type of a [`ContentTag`].
const TAG_STANZA: &str = "synapse-content";

/// A public note in an object's age header: a stanza `-> synapse-content ARG…` that wraps no
/// key (age implementations skip stanzas of types they do not know, as they skip age's own
/// "grease"). It lets a writer that holds no secret key tell an identical copy of an object
/// from different content (`wal-push` re-pushing a segment): the WAL object's plaintext
/// SHA-256 and size. It is covered by the header MAC, so readers with a key authenticate it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentTag(pub Vec<String>);

impl age::Recipient for ContentTag {
    fn wrap_file_key(
        &self,
        _file_key: &age_core::format::FileKey,
    ) -> Result<
        (
            Vec<age_core::format::Stanza>,
            std::collections::HashSet<String>,
        ),
        age::EncryptError,
    > {
        let stanza = age_core::format::Stanza {
            tag: TAG_STANZA.to_string(),
            args: self.0.clone(),
            body: Vec::new(),
        };
        Ok((vec![stanza], Default::default()))
    }
}

impl ContentTag {
    /// The tag in the header at the start of an age file (`None`: none, or not an age file).
    pub fn read(head: &[u8]) -> Option<ContentTag> {
        let prefix = format!("-> {TAG_STANZA} ");
        head.split(|&b| b == b'\n')
            .take_while(|line| !line.starts_with(b"---"))
            .find_map(|line| {
                let line = std::str::from_utf8(line).ok()?;
                let args = line.strip_prefix(&prefix)?;
                Some(ContentTag(args.split(' ').map(str::to_string).collect()))
            })
    }
}

fn tagged_encryptor(to: &Recipient, tag: &ContentTag) -> age::Encryptor {
    age::Encryptor::with_recipients(
        [to.key() as &dyn age::Recipient, tag as &dyn age::Recipient].into_iter(),
    )
    .expect("an X25519 recipient and a tag always combine")
}

/// Encrypts everything written to it to one recipient (the current key generation's) and
/// writes the age file to `W`. Call [`finish`](Self::finish): without it the object is
/// truncated and will not decrypt.
pub struct EncryptingWriter<W: Write>(age::stream::StreamWriter<W>);

impl<W: Write> EncryptingWriter<W> {
    /// Write the age header to `out` and start the encrypted stream.
    pub fn new(to: &Recipient, out: W) -> io::Result<Self> {
        encryptor(to).wrap_output(out).map(EncryptingWriter)
    }

    /// As [`EncryptingWriter::new`], with a public [`ContentTag`] in the header.
    pub fn tagged(to: &Recipient, tag: &ContentTag, out: W) -> io::Result<Self> {
        tagged_encryptor(to, tag)
            .wrap_output(out)
            .map(EncryptingWriter)
    }

    /// Write the last chunk; returns the underlying writer (not flushed).
    pub fn finish(self) -> io::Result<W> {
        self.0.finish()
    }
}

impl<W: Write> Write for EncryptingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Decrypts an age object read from `R` with every generation of the keyring.
pub struct DecryptingReader<R: Read> {
    inner: age::stream::StreamReader<Marked<R>>,
    object: String,
}

impl<R: Read> DecryptingReader<R> {
    /// Read the object's header from `input` and find its key. `object` names it in errors.
    pub fn new(input: R, keys: &SecretKeyring, object: &str) -> Result<Self, ObjectError> {
        let inner = age::Decryptor::new(Marked(input))
            .and_then(|d| d.decrypt(keys.identities()))
            .map_err(|e| ObjectError::from_header(object, e))?;
        Ok(DecryptingReader {
            inner,
            object: object.to_string(),
        })
    }
}

impl<R: Read> Read for DecryptingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| ObjectError::from_stream(&self.object, e))
    }
}

/// A small object encrypted whole (a manifest, a WAL file the caller already holds).
pub fn encrypt_bytes(to: &Recipient, plain: &[u8]) -> Vec<u8> {
    let mut w = EncryptingWriter::new(to, Vec::with_capacity(plain.len() + 256))
        .expect("writing to a Vec cannot fail");
    w.write_all(plain).expect("writing to a Vec cannot fail");
    w.finish().expect("writing to a Vec cannot fail")
}

/// A small object decrypted whole.
pub fn decrypt_bytes(
    keys: &SecretKeyring,
    object_bytes: &[u8],
    object: &str,
) -> Result<Vec<u8>, ObjectError> {
    let mut r = DecryptingReader::new(object_bytes, keys, object)?;
    let mut out = Vec::with_capacity(object_bytes.len());
    r.read_to_end(&mut out).map_err(|e| {
        let kind = match e.into_inner().map(|i| i.downcast::<ObjectError>()) {
            Some(Ok(err)) => return *err,
            Some(Err(other)) => ObjectErrorKind::Read(io::Error::other(other)),
            None => ObjectErrorKind::Damaged,
        };
        ObjectError::new(object, kind)
    })?;
    Ok(out)
}

/// The async encrypting writer (futures `AsyncWrite`): close it to write the last chunk.
pub type AsyncEncryptingWriter<W> = age::stream::StreamWriter<W>;

/// An async encrypting writer around `out`. `poll_close` (`.close().await`) writes the last
/// chunk and closes `out`; without it the object is truncated and will not decrypt.
pub async fn encrypt_async<W: AsyncWrite + Unpin>(
    to: &Recipient,
    out: W,
) -> io::Result<AsyncEncryptingWriter<W>> {
    encryptor(to).wrap_async_output(out).await
}

/// The async decrypting reader (futures `AsyncRead`), errors as [`DecryptingReader`]'s.
pub struct AsyncDecryptingReader<R: AsyncRead + Unpin> {
    inner: age::stream::StreamReader<Marked<R>>,
    object: String,
}

/// Read the object's header from `input` and find its key. `object` names it in errors.
pub async fn decrypt_async<R: AsyncRead + Unpin>(
    input: R,
    keys: &SecretKeyring,
    object: &str,
) -> Result<AsyncDecryptingReader<R>, ObjectError> {
    let inner = age::Decryptor::new_async(Marked(input))
        .await
        .and_then(|d| d.decrypt_async(keys.identities()))
        .map_err(|e| ObjectError::from_header(object, e))?;
    Ok(AsyncDecryptingReader {
        inner,
        object: object.to_string(),
    })
}

impl<R: AsyncRead + Unpin> AsyncRead for AsyncDecryptingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        Pin::new(&mut this.inner)
            .poll_read(cx, buf)
            .map_err(|e| ObjectError::from_stream(&this.object, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::keyring::tests::operator;
    use crate::crypt::{init, open, KeyringUpdate, OperatorIdentity};
    use futures::{AsyncReadExt, AsyncWriteExt, TryStreamExt};

    fn repo() -> (KeyringUpdate, SecretKeyring, OperatorIdentity) {
        let (alice, a) = operator("alice.key");
        let up = init(&[a], chrono::Utc::now()).unwrap();
        let secret = open(&up.sealed, &alice).unwrap();
        (up, secret, alice)
    }

    /// Pseudo-random bytes (gzip output looks random), several age chunks long.
    fn data(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn encrypt(up: &KeyringUpdate, plain: &[u8]) -> Vec<u8> {
        let mut w = EncryptingWriter::new(up.public.current_recipient(), Vec::new()).unwrap();
        // Odd write sizes, across chunk boundaries.
        for piece in plain.chunks(10_007) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    fn decrypt(secret: &SecretKeyring, object: &[u8]) -> io::Result<Vec<u8>> {
        let mut r = DecryptingReader::new(object, secret, "core/wal/X")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn object_error(e: &io::Error) -> &ObjectError {
        ObjectError::from_io(e).unwrap_or_else(|| panic!("not an ObjectError: {e}"))
    }

    #[test]
    fn round_trip_in_chunks() {
        let (up, secret, _) = repo();
        for len in [0, 1, 65_536, 65_537, 300_000] {
            let plain = data(len);
            let object = encrypt(&up, &plain);
            assert!(object.starts_with(b"age-encryption.org/v1\n"));
            assert_eq!(decrypt(&secret, &object).unwrap(), plain, "len {len}");
            assert_eq!(decrypt_bytes(&secret, &object, "o").unwrap(), plain);
        }
        assert_eq!(
            decrypt_bytes(
                &secret,
                &encrypt_bytes(up.public.current_recipient(), b"x"),
                "o"
            )
            .unwrap(),
            b"x"
        );
    }

    #[test]
    fn the_wrong_keyring_is_refused_by_name() {
        let (up, _, _) = repo();
        let (_, other, _) = repo();
        let object = encrypt(&up, b"rows");
        let err = decrypt_bytes(&other, &object, "core/backups/B/data.0.tar.gz").unwrap_err();
        assert!(matches!(err.kind, ObjectErrorKind::NoMatchingKey));
        assert!(err
            .to_string()
            .starts_with("core/backups/B/data.0.tar.gz: encrypted to a key"));
        let err = decrypt_bytes(&other, b"\x1f\x8b plain gzip", "core/wal/Y").unwrap_err();
        assert!(matches!(err.kind, ObjectErrorKind::NotEncrypted), "{err}");
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let (up, secret, _) = repo();
        let plain = data(150_000);
        let object = encrypt(&up, &plain);
        // The header, the MAC, the nonce, the first chunk, the last chunk, the last tag byte.
        let header_end = object.windows(4).position(|w| w == b"\n---").unwrap();
        for at in [
            10,
            header_end + 6,
            header_end + 60,
            header_end + 200,
            object.len() - 20_000,
            object.len() - 1,
        ] {
            let mut bad = object.clone();
            bad[at] ^= 0x01;
            match decrypt_bytes(&secret, &bad, "core/wal/X") {
                Ok(_) => panic!("flipped byte {at} went unnoticed"),
                Err(e) => assert!(e.to_string().starts_with("core/wal/X: "), "{e}"),
            }
            // Through the streaming reader the error is an io::Error carrying the object.
            if let Ok(mut r) = DecryptingReader::new(&bad[..], &secret, "core/wal/X") {
                let e = r.read_to_end(&mut Vec::new()).unwrap_err();
                assert!(
                    matches!(object_error(&e).kind, ObjectErrorKind::Damaged),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn truncation_is_refused() {
        let (up, secret, _) = repo();
        let plain = data(200_000);
        let object = encrypt(&up, &plain);
        let header_end = object.windows(4).position(|w| w == b"\n---").unwrap();
        // "\n--- " + 43 base64 MAC characters + "\n", then the 16-byte nonce.
        let payload = object.len() - (header_end + 49 + 16);
        // Mid-chunk, at a chunk boundary (65536 + 16 bytes per full chunk), just before the end.
        for cut in [
            object.len() - 1,
            object.len() - 1000,
            object.len() - (payload - 2 * 65_552),
            object.len() - (payload - 65_552),
            header_end + 10,
        ] {
            let err = decrypt_bytes(&secret, &object[..cut], "core/wal/X").unwrap_err();
            assert!(
                err.to_string().starts_with("core/wal/X: "),
                "cut {cut}: {err}"
            );
        }
        let at_boundary = &object[..object.len() - (payload - 65_552)];
        let mut r = DecryptingReader::new(at_boundary, &secret, "core/wal/X").unwrap();
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                object_error(&e).kind,
                ObjectErrorKind::Truncated | ObjectErrorKind::Damaged
            ),
            "{e}"
        );
    }

    #[test]
    fn errors_of_the_store_pass_through() {
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "S3 went away",
                    ));
                }
                let n = buf.len().min(self.0.len()).min(1000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let (up, secret, _) = repo();
        let object = encrypt(&up, &data(100_000));
        let mut r = DecryptingReader::new(Failing(&object[..70_000]), &secret, "o").unwrap();
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(e.to_string(), "S3 went away");
        assert!(ObjectError::from_io(&e).is_none());

        let Err(e) = DecryptingReader::new(Failing(&object[..20]), &secret, "o") else {
            panic!("a header cut by the store must fail");
        };
        assert!(
            matches!(e.kind, ObjectErrorKind::Read(ref inner) if inner.to_string() == "S3 went away"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn async_round_trip_over_a_chunk_stream() {
        let (up, secret, _) = repo();
        let plain = data(200_000);
        let mut object = Vec::new();
        let mut w = encrypt_async(up.public.current_recipient(), &mut object)
            .await
            .unwrap();
        AsyncWriteExt::write_all(&mut w, &plain).await.unwrap();
        w.close().await.unwrap();
        drop(w);
        assert_eq!(decrypt(&secret, &object).unwrap(), plain);

        // As the store delivers objects: a stream of `Bytes` chunks.
        let chunks: Vec<io::Result<bytes::Bytes>> = object
            .chunks(7_000)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let input = futures::stream::iter(chunks).into_async_read();
        let mut r = decrypt_async(input, &secret, "core/wal/X").await.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, plain);

        let mut bad = object.clone();
        let at = bad.len() - 5;
        bad[at] ^= 4;
        let mut r = decrypt_async(&bad[..], &secret, "core/wal/X")
            .await
            .unwrap();
        let e = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(object_error(&e).object, "core/wal/X");
    }
}
