//! A signed repository (issue 13): what this program writes is signed with an Ed25519 key that
//! lives outside the store, and a reader that knows the public half refuses anything else.
//!
//! # Keys
//!
//! - Writers (database hosts, the agent) hold the private key: `[repository] signing_key_file`,
//!   a 0600 file made by `synapse-backup signing-key generate --out FILE`. Its verify key is
//!   derived from it.
//! - Readers hold only the public half: `[repository] verify_key = "ed25519:…"`.
//!
//! # What is signed, and where the signature lives
//!
//! Every object the tool later trusts is a JSON object: `repository.json`, a backup's
//! `manifest.json` (whose per-part SHA-256 values authenticate the parts), verification
//! reports, and the header of every WAL object (history files included) — the JSON in the gzip
//! comment that holds the content's SHA-256 and size and the segment's commit times. The
//! signature is that object's **last field**, `"signature": "ed25519:…"`, and covers the bytes
//! before it (exactly as stored, so no canonical re-serialization is needed) together with the
//! object's name (`<cluster>/<key>`): a valid object cannot be replayed under another name or in
//! another cluster. Inline rather than a sidecar, so an object and its signature are written in
//! one create-only put, and `gunzip`/`jq` still read every object as before.
//!
//! # The policy
//!
//! A repository is signed or not from its first write: `repository.json` records the verify
//! key. But a bucket writer can edit `repository.json` too, so the **reader's configured key** is
//! what counts: with a key, every object must carry a valid signature by it (an unsigned
//! object, or an unsigned repository, is refused); without one, a repository that says it is
//! signed, or a signed object, is refused with the key to configure.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, Verifier};
use zeroize::Zeroizing;

use crate::config::RepositoryConfig;
use crate::error::usage;

const KEY_PREFIX: &str = "ed25519:";
const SECRET_PREFIX: &str = "ed25519-secret:";
/// Domain separation: these signatures mean "a synapse-backup object of this name".
const CONTEXT: &[u8] = b"synapse-backup signed object v1\0";
/// The signature field, as the compact (WAL header) and pretty (JSON objects) forms spell it.
const FIELD: &str = "\"signature\"";

/// The public half: `ed25519:<base64 of 32 bytes>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifyKey(ed25519_dalek::VerifyingKey);

impl fmt::Display for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{KEY_PREFIX}{}", BASE64.encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for VerifyKey {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let bad = || {
            anyhow::anyhow!("not an Ed25519 verify key: {s:?} (expected ed25519:<base64>, as `signing-key generate` prints)")
        };
        let bytes = BASE64
            .decode(s.trim().strip_prefix(KEY_PREFIX).ok_or_else(bad)?)
            .map_err(|_| bad())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(VerifyKey)
            .map_err(|_| bad())
    }
}

impl<'de> serde::Deserialize<'de> for VerifyKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The repository's signing policy: the key to sign with (writers) and the key every object
/// must be signed by (readers; writers derive it). Never printed: `Debug` shows the verify key.
#[derive(Clone, Default)]
pub struct Signing {
    signer: Option<ed25519_dalek::SigningKey>,
    verifier: Option<VerifyKey>,
}

impl fmt::Debug for Signing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signing")
            .field("signs", &self.signer.is_some())
            .field("verify_key", &self.verifier)
            .finish()
    }
}

impl Signing {
    /// From `[repository]`: loads `signing_key_file` (refused unless 0600) and checks it
    /// against `verify_key` when both are set.
    pub fn from_config(cfg: &RepositoryConfig) -> anyhow::Result<Self> {
        let signer = match &cfg.signing_key_file {
            Some(path) => Some(load_signing_key(path)?),
            None => None,
        };
        let derived = signer.as_ref().map(|k| VerifyKey(k.verifying_key()));
        let verifier = match (derived, cfg.verify_key) {
            (Some(d), Some(v)) if d != v => {
                return Err(usage(format!(
                    "[repository] verify_key {v} is not the public half of signing_key_file ({d})"
                )))
            }
            (d, v) => d.or(v),
        };
        Ok(Signing { signer, verifier })
    }

    /// Signing with `key` (tests).
    #[cfg(test)]
    pub fn with_seed(seed: [u8; 32]) -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        Signing {
            verifier: Some(VerifyKey(key.verifying_key())),
            signer: Some(key),
        }
    }

    /// Reading only, with `key` (tests).
    #[cfg(test)]
    pub fn verifying(key: VerifyKey) -> Self {
        Signing {
            signer: None,
            verifier: Some(key),
        }
    }

    pub fn verify_key(&self) -> Option<VerifyKey> {
        self.verifier
    }

    /// Sign the JSON object `json` stored as `name`: the same object with the signature as its
    /// last field. Unchanged when this repository is not signed; refused when it is (a verify
    /// key is configured) but there is no key to sign with.
    pub fn seal(&self, name: &str, json: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let Some(key) = &self.signer else {
            if let Some(v) = self.verifier {
                return Err(usage(format!(
                    "cannot write {name}: the repository is signed (verify_key {v}) and this host has no \
                     [repository] signing_key_file"
                )));
            }
            return Ok(json);
        };
        let text = std::str::from_utf8(&json).expect("serde_json writes UTF-8");
        let body = text
            .trim_end()
            .strip_suffix('}')
            .expect("a JSON object")
            .trim_end();
        let sig = key.sign(&message(name, body.as_bytes()));
        let sig = format!("{KEY_PREFIX}{}", BASE64.encode(sig.to_bytes()));
        Ok(if text.contains('\n') {
            format!("{body},\n  {FIELD}: \"{sig}\"\n}}\n")
        } else {
            format!("{body},{FIELD}:\"{sig}\"}}")
        }
        .into_bytes())
    }

    /// Check the JSON object `bytes` stored as `name` against the policy (see the module docs).
    /// Errors name the object.
    pub fn check(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let (body, sig) = split_signed(bytes);
        let Some(key) = self.verifier else {
            return match sig {
                None => Ok(()),
                Some(_) => Err(usage(format!(
                    "{name} is signed, but [repository] verify_key is not configured: set it to the \
                     key `signing-key generate` printed for this repository"
                ))),
            };
        };
        let sig = sig.with_context(|| {
            format!("{name}: not signed, but this repository is signed (verify_key {key}); refusing it — it was not written by a holder of the signing key")
        })?;
        let sig = sig
            .strip_prefix(KEY_PREFIX)
            .and_then(|s| BASE64.decode(s).ok())
            .and_then(|b| Signature::from_slice(&b).ok())
            .with_context(|| format!("{name}: unreadable signature; refusing the object"))?;
        key.0
            .verify(&message(name, body), &sig)
            .map_err(|_| anyhow::anyhow!("{name}: wrong signature (not signed by verify_key {key}); refusing the object — it was changed or forged in the store"))
    }

    /// Check `repository.json`'s record of the key against ours (errors name `name`).
    pub fn check_recorded(&self, name: &str, recorded: Option<&str>) -> anyhow::Result<()> {
        match (self.verifier, recorded) {
            (None, None) => Ok(()),
            (None, Some(k)) => Err(usage(format!(
                "{name}: the repository is signed (it records verify_key {k}), but [repository] verify_key \
                 is not configured; set verify_key = \"{k}\" once you have checked that it is your key \
                 (writers set signing_key_file instead)"
            ))),
            (Some(v), None) => Err(usage(format!(
                "{name}: the repository is not signed, but [repository] verify_key {v} is configured; \
                 refusing to read unsigned objects (a repository is signed from its first write: use a new repository location to start signing)"
            ))),
            (Some(v), Some(k)) if k != v.to_string() => anyhow::bail!(
                "{name}: the repository is signed with verify_key {k}, not the configured {v}; refusing it"
            ),
            (Some(_), Some(_)) => Ok(()),
        }
    }
}

/// What is signed: the context, the object's name, and its bytes before the signature field.
fn message(name: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + name.len() + 1 + body.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(name.as_bytes());
    m.push(0);
    m.extend_from_slice(body);
    m
}

/// A JSON object's bytes before its trailing `"signature"` field, and that field's value;
/// the whole object and `None` when it has none.
fn split_signed(bytes: &[u8]) -> (&[u8], Option<&str>) {
    let unsigned = (bytes, None);
    let Ok(text) = std::str::from_utf8(bytes) else {
        return unsigned;
    };
    let Some(at) = text.rfind(FIELD) else {
        return unsigned;
    };
    let tail = text[at + FIELD.len()..].trim_start();
    let Some(value) = tail
        .strip_prefix(':')
        .map(str::trim_start)
        .and_then(|t| t.strip_prefix('"'))
    else {
        return unsigned;
    };
    let Some((sig, rest)) = value.split_once('"') else {
        return unsigned;
    };
    let before = text[..at].trim_end();
    if rest.trim() != "}" || !before.ends_with(',') {
        return unsigned;
    }
    (&bytes[..before.len() - 1], Some(sig))
}

/// Read a private key file: refused unless only its owner can read it. Errors name the file,
/// never its content.
fn load_signing_key(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::File::open(path)
        .map_err(|e| usage(format!("signing_key_file {}: {e}", path.display())))?;
    let mode = file
        .metadata()
        .map_err(|e| usage(format!("signing_key_file {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(usage(format!(
            "signing_key_file {} is accessible to group or others (mode {:o}); run `chmod 600` on it",
            path.display(),
            mode & 0o7777
        )));
    }
    let mut text = Zeroizing::new(String::new());
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(|e| usage(format!("signing_key_file {}: {e}", path.display())))?;
    let bad = || {
        usage(format!(
            "signing_key_file {} is not an Ed25519 signing key (made by `synapse-backup signing-key generate`)",
            path.display()
        ))
    };
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(bad)?;
    let seed = Zeroizing::new(
        BASE64
            .decode(line.strip_prefix(SECRET_PREFIX).ok_or_else(bad)?)
            .map_err(|_| bad())?,
    );
    let seed: &[u8; 32] = seed.as_slice().try_into().map_err(|_| bad())?;
    Ok(ed25519_dalek::SigningKey::from_bytes(seed))
}

/// Make a new key pair: the private key into a new 0600 file `out` (never replacing one), and
/// the verify key returned for the readers' configs.
pub fn generate_key_file(out: &Path) -> anyhow::Result<VerifyKey> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(seed.as_mut_slice()).context("read randomness from the OS")?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let verify = VerifyKey(key.verifying_key());
    let text = Zeroizing::new(format!(
        "# synapse-backup repository signing key: keep it off the store, mode 0600.\n\
         # verify_key = \"{verify}\"\n{SECRET_PREFIX}{}\n",
        BASE64.encode(seed.as_slice())
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| usage(format!("cannot create {}: {e}", out.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", out.display()))?;
    Ok(verify)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_objects_verify_and_forgeries_do_not() {
        let writer = Signing::with_seed([7; 32]);
        let reader = Signing::verifying(writer.verify_key().unwrap());
        for json in [
            b"{\n  \"a\": 1,\n  \"b\": \"x\"\n}".to_vec(),
            b"{\"sha256\":\"00\",\"size\":3}".to_vec(),
        ] {
            let sealed = writer.seal("core/x.json", json.clone()).unwrap();
            reader.check("core/x.json", &sealed).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
            assert!(v["signature"].as_str().unwrap().starts_with("ed25519:"));
            // Bound to the name.
            let err = reader
                .check("core/y.json", &sealed)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("core/y.json") && err.contains("wrong signature"),
                "{err}"
            );
            // Edited.
            let edited = String::from_utf8(sealed.clone())
                .unwrap()
                .replacen("\"a\": 1", "\"a\": 2", 1)
                .replacen("\"size\":3", "\"size\":4", 1);
            assert!(reader.check("core/x.json", edited.as_bytes()).is_err());
            // Unsigned.
            let err = reader.check("core/x.json", &json).unwrap_err().to_string();
            assert!(err.contains("not signed"), "{err}");
            // Another key.
            let other = Signing::verifying(Signing::with_seed([8; 32]).verify_key().unwrap());
            assert!(other.check("core/x.json", &sealed).is_err());
            // A reader without a key refuses signed objects, accepts unsigned ones.
            let keyless = Signing::default();
            assert!(keyless
                .check("core/x.json", &sealed)
                .unwrap_err()
                .to_string()
                .contains("verify_key"));
            keyless.check("core/x.json", &json).unwrap();
            assert_eq!(keyless.seal("n", json.clone()).unwrap(), json);
            // A reader cannot write a signed repository.
            assert!(reader.seal("n", json.clone()).is_err());
        }
    }

    #[test]
    fn nested_signature_fields_are_not_the_signature() {
        let (body, sig) = split_signed(br#"{"a":{"signature":"x"}}"#);
        assert_eq!(sig, None);
        assert_eq!(body.len(), 23);
        assert_eq!(split_signed(br#"{"signature":"x"}"#).1, None);
    }

    #[test]
    fn key_files_round_trip_and_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let verify = generate_key_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(generate_key_file(&path).is_err(), "never replaces a key");
        let key = load_signing_key(&path).unwrap();
        assert_eq!(VerifyKey(key.verifying_key()), verify);
        assert_eq!(verify.to_string().parse::<VerifyKey>().unwrap(), verify);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_signing_key(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        let secret = std::fs::read_to_string(&path).unwrap();
        assert!(!err.contains(secret.lines().last().unwrap()));
        assert!("ed25519:abc".parse::<VerifyKey>().is_err());
    }
}
