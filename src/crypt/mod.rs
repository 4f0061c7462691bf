//! Encryption at rest with envelope keys (issue 14), in the standard [age] format.
//!
//! # The envelope
//!
//! A repository has its own X25519 key pairs, one per key *generation*. Every stored object is a
//! standard age file encrypted to the **current generation's public key**, so the hosts that
//! only write (`wal-push` on a database host, `backup`) hold nothing but public keys: a stolen
//! `archive_command` configuration, or a compromised database host, cannot decrypt the archive.
//!
//! The repository's secret keys live in ONE stored object, the *keyring*: an age file encrypted
//! to every **operator recipient** (`age1…`), whose plaintext is an age identity file with one
//! `AGE-SECRET-KEY-1…` line per generation. Reading (restore, wal-fetch, verify) needs an
//! operator identity file to open it. Because both layers are plain age, the by-hand path needs
//! only the stock CLI:
//!
//! ```text
//! age -d -i operator.key keyring.age > repo.key
//! age -d -i repo.key OBJECT | gunzip | tar -x
//! ```
//!
//! The public half ([`PublicKeyring`]: operator recipients, generations with their public keys
//! and creation times, the current generation) lives in the plaintext `repository.json`.
//!
//! # Rotation rewrites no data
//!
//! - Adding or removing an operator re-seals the small keyring object to the new recipient
//!   list; the repository keys, and so every data object, stay as they are.
//! - `rotate` adds a generation and makes it current: objects written from then on use it, and
//!   older objects stay readable because the keyring keeps every older generation (age tries
//!   all of them). A generation leaves the keyring only through [`drop_generations`], once the
//!   caller knows that no kept object uses it, and never the current one.
//!
//! # Which object is written first
//!
//! Every key operation here is a pure function returning a [`KeyringUpdate`]: the new public
//! part and the new sealed keyring. The caller stores **the keyring object first and the public
//! part (`repository.json`) second**. A crash in between leaves the old state valid:
//!
//! - after `rotate`, the keyring already holds the new generation but `repository.json` still
//!   names the old one as current, so writers keep using a key the keyring has. (The reverse
//!   order could announce a public key whose secret was never stored: every object written to
//!   it would be lost.) Retrying the rotation replaces the unannounced generation;
//! - after `add`/`remove` of a recipient, the keyring is already sealed to the new list, and
//!   `repository.json` merely lists the old one until the operation is retried;
//! - after `drop_generations`, only generations that no object uses are missing.
//!
//! Operations compare the opened keyring with the public part ([`SecretKeyring::covers`]) and
//! rebuild the keyring from the public part's generations, so an unannounced generation left
//! by a crash is simply not carried over.
//!
//! # Secrets
//!
//! Identity files are read with restrictive permissions only ([`load_identity_file`]), and key
//! material is never in an error message or `Debug` output: the types that hold it print
//! `[redacted]`.
//!
//! [age]: https://age-encryption.org/v1

mod keyring;
mod keys;
mod stream;

pub use keyring::{
    add_recipient, drop_generations, export, init, open, remove_recipient, rotate, Generation,
    GenerationInfo, KeyringError, KeyringUpdate, PublicKeyring, SecretKeyring,
};
pub use keys::{
    load_identity_file, EncryptionConfig, IdentityError, OperatorIdentity, Recipient,
    RecipientError, SecretText,
};
pub use stream::{
    decrypt_async, decrypt_bytes, encrypt_async, encrypt_bytes, AsyncDecryptingReader,
    AsyncEncryptingWriter, ContentTag, DecryptingReader, EncryptingWriter, ObjectError,
    ObjectErrorKind,
};

#[cfg(test)]
mod bench;
