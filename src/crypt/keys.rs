//! Operator recipients and identity files: parsed at the edge, secrets never printed.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::{ExposeSecret, SecretString};
use age::x25519;
use serde::{Deserialize, Serialize};

/// An identity file larger than this is not an identity file.
const IDENTITY_FILE_LIMIT: u64 = 1 << 20;

/// The `[repository.encryption]` table of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Operators who can open the keyring; used by `key init`.
    #[serde(default)]
    pub recipients: Vec<Recipient>,
    /// An operator identity file, only where reading is needed (restore host, verify).
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
}

/// An age X25519 recipient (`age1…`): an operator's, or a repository key generation's, public
/// key. Validated when parsed, so a configuration with a bad one is refused at load.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Recipient(x25519::Recipient);

impl Recipient {
    pub(super) fn from_key(key: x25519::Recipient) -> Self {
        Recipient(key)
    }

    pub(super) fn key(&self) -> &x25519::Recipient {
        &self.0
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A recipient that does not parse. Never echoes a secret key pasted by mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    #[error(
        "an encryption recipient is an age SECRET key (AGE-SECRET-KEY-1…); list the operators' \
         public keys (age1…, printed by `age-keygen -y KEYFILE`) and keep secret keys out of the \
         configuration"
    )]
    SecretKey,
    #[error(
        "encryption recipient {text:?} is not an age X25519 public key (expected age1…, as \
         printed by `age-keygen -y KEYFILE`): {reason}"
    )]
    Invalid { text: String, reason: &'static str },
}

impl FromStr for Recipient {
    type Err = RecipientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
            return Err(RecipientError::SecretKey);
        }
        text.parse::<x25519::Recipient>()
            .map(Recipient)
            .map_err(|reason| RecipientError::Invalid {
                text: text.to_string(),
                reason,
            })
    }
}

impl Serialize for Recipient {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Recipient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Text that holds key material (an exported identity file). `Debug` prints `[redacted]`;
/// the text is zeroed when dropped.
pub struct SecretText(SecretString);

impl SecretText {
    pub(super) fn new(text: String) -> Self {
        SecretText(SecretString::from(text))
    }

    /// The secret text, for writing it where the operator asked (never into a log).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An operator's identities, read from an identity file. `Debug` names the file only.
#[derive(Clone)]
pub struct OperatorIdentity {
    file: PathBuf,
    keys: Vec<x25519::Identity>,
}

impl fmt::Debug for OperatorIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorIdentity")
            .field("file", &self.file)
            .field("keys", &format_args!("[redacted]"))
            .finish()
    }
}

impl OperatorIdentity {
    /// Identities from identity-file text; `file` names them in messages.
    pub fn from_text(file: impl Into<PathBuf>, text: &str) -> Result<Self, IdentityError> {
        let file = file.into();
        let keys = parse_identities(text).map_err(|line| IdentityError::NotAnIdentity {
            file: file.clone(),
            line,
        })?;
        if keys.is_empty() {
            return Err(IdentityError::Empty { file });
        }
        Ok(OperatorIdentity { file, keys })
    }

    /// The file the identities were read from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The public keys of these identities.
    pub fn recipients(&self) -> Vec<Recipient> {
        self.keys.iter().map(|k| Recipient(k.to_public())).collect()
    }

    pub(super) fn keys(&self) -> &[x25519::Identity] {
        &self.keys
    }
}

/// Parse identity-file text: one `AGE-SECRET-KEY-1…` per line, `#` comments and blank lines
/// skipped. A bad line is reported by its number only (its content may be a key).
pub(super) fn parse_identities(text: &str) -> Result<Vec<x25519::Identity>, usize> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(line.parse::<x25519::Identity>().map_err(|_| n + 1)?);
    }
    Ok(keys)
}

/// An identity file that cannot be used. The messages name the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("read identity file {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "identity file {f} is accessible by group or others (mode {mode:04o}); it holds a secret \
         key: run `chmod 600 {f}`",
        f = file.display()
    )]
    Permissions { file: PathBuf, mode: u32 },
    #[error(
        "identity file {}: line {line} is not an age X25519 identity (AGE-SECRET-KEY-1…, as \
         written by `age-keygen`)",
        file.display()
    )]
    NotAnIdentity { file: PathBuf, line: usize },
    #[error("identity file {} holds no identity (AGE-SECRET-KEY-1… line)", file.display())]
    Empty { file: PathBuf },
    #[error("identity file {} is larger than {IDENTITY_FILE_LIMIT} bytes", file.display())]
    TooLarge { file: PathBuf },
}

/// Read an operator identity file (as written by `age-keygen`). A file that group or others
/// may access is refused, before its content is read.
pub fn load_identity_file(path: &Path) -> Result<OperatorIdentity, IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let read_err = |source| IdentityError::Read {
        file: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    // The mode of the file we opened, not of whatever the path names a moment later.
    let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            file: path.to_path_buf(),
            mode,
        });
    }
    let mut buf = String::new();
    let read = file.take(IDENTITY_FILE_LIMIT + 1).read_to_string(&mut buf);
    // Into the zeroizing wrapper at once, whatever happens next.
    let text = SecretString::from(buf);
    read.map_err(read_err)?;
    if text.expose_secret().len() as u64 > IDENTITY_FILE_LIMIT {
        return Err(IdentityError::TooLarge {
            file: path.to_path_buf(),
        });
    }
    OperatorIdentity::from_text(path, text.expose_secret())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write_key(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn recipients_parse_and_round_trip() {
        let key = x25519::Identity::generate().to_public().to_string();
        let r: Recipient = format!("  {key}\n").parse().unwrap();
        assert_eq!(r.to_string(), key);
        assert_eq!(format!("{r:?}"), key);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Recipient>(&json).unwrap(), r);

        let err = "age1notakey".parse::<Recipient>().unwrap_err().to_string();
        assert!(
            err.contains("\"age1notakey\" is not an age X25519 public key"),
            "{err}"
        );
        assert!(err.contains("age-keygen -y"), "{err}");
    }

    #[test]
    fn a_secret_key_given_as_recipient_is_refused_without_echo() {
        let secret = x25519::Identity::generate().to_string();
        let text = secret.expose_secret();
        let err = text.parse::<Recipient>().unwrap_err();
        assert_eq!(err, RecipientError::SecretKey);
        assert!(!err.to_string().contains(text));
        assert!(!format!("{err:?}").contains(text));
    }

    #[test]
    fn config_table_validates_recipients() {
        let key = x25519::Identity::generate().to_public().to_string();
        let cfg: EncryptionConfig = toml::from_str(&format!(
            "recipients = [\"{key}\"]\nidentity_file = \"/etc/synapse-backup/operator.key\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.recipients.len(), 1);
        let err = toml::from_str::<EncryptionConfig>("recipients = [\"age1xyz\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"age1xyz\" is not an age X25519 public key"),
            "{err}"
        );
    }

    #[test]
    fn identity_files_are_read_only_when_private() {
        let dir = tempfile::tempdir().unwrap();
        let id = x25519::Identity::generate();
        let secret = id.to_string();
        let text = format!(
            "# created: 2026-01-01T00:00:00Z\n# public key: {}\n{}\n",
            id.to_public(),
            secret.expose_secret()
        );
        let good = write_key(dir.path(), "ok.key", &text, 0o600);
        let loaded = load_identity_file(&good).unwrap();
        assert_eq!(loaded.recipients(), vec![Recipient(id.to_public())]);
        let debug = format!("{loaded:?}");
        assert!(debug.contains("[redacted]") && !debug.contains(secret.expose_secret()));

        let open = write_key(dir.path(), "open.key", &text, 0o644);
        let err = load_identity_file(&open).unwrap_err().to_string();
        assert!(err.contains("mode 0644"), "{err}");
        assert!(
            err.contains(&format!("chmod 600 {}", open.display())),
            "{err}"
        );
        assert!(!err.contains(secret.expose_secret()));

        let garbage = format!(
            "{}\nnot a key {}\n",
            secret.expose_secret(),
            secret.expose_secret()
        );
        let bad = write_key(dir.path(), "bad.key", &garbage, 0o600);
        let err = load_identity_file(&bad).unwrap_err();
        assert!(
            matches!(err, IdentityError::NotAnIdentity { line: 2, .. }),
            "{err}"
        );
        assert!(!format!("{err} {err:?}").contains(secret.expose_secret()));

        let empty = write_key(dir.path(), "empty.key", "# nothing\n", 0o400);
        assert!(matches!(
            load_identity_file(&empty).unwrap_err(),
            IdentityError::Empty { .. }
        ));
        let missing = load_identity_file(&dir.path().join("missing.key")).unwrap_err();
        assert!(missing.to_string().contains("missing.key"), "{missing}");
    }

    #[test]
    fn secret_text_debug_is_redacted() {
        let s = SecretText::new("AGE-SECRET-KEY-1XYZ".into());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(s.expose(), "AGE-SECRET-KEY-1XYZ");
    }
}
