//! The repository keyring: its public half (in `repository.json`) and its sealed secret half
//! (one stored age file), and the key operations as pure functions over them.

use std::fmt;
use std::io::{Read, Write};

use age::secrecy::ExposeSecret;
use age::x25519;
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use super::keys::{parse_identities, OperatorIdentity, Recipient, SecretText};

/// The first line of the keyring's plaintext.
const HEADER: &str =
    "# synapse-backup repository keyring: an age identity file, one key per generation.\n\
# Decrypt an object by hand: age -d -i THIS_FILE OBJECT | gunzip | tar -x\n";
/// Comment naming the generation of the key on the next line.
const GENERATION_COMMENT: &str = "# generation ";

/// A repository key generation: 1 for the key made by `init`, one more for each `rotate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(pub u32);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One generation as `repository.json` lists it: no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationInfo {
    pub generation: Generation,
    /// The generation's age recipient: objects are encrypted to it.
    pub public_key: Recipient,
    pub created: DateTime<Utc>,
}

/// The public half of the keyring, stored in the plaintext `repository.json`: all that
/// `wal-push` and `backup` need. Validated when parsed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawPublicKeyring")]
pub struct PublicKeyring {
    /// Operators who can open the keyring.
    recipients: Vec<Recipient>,
    /// The generations in the keyring, oldest first.
    generations: Vec<GenerationInfo>,
    /// The generation new objects are encrypted to.
    current: Generation,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublicKeyring {
    recipients: Vec<Recipient>,
    generations: Vec<GenerationInfo>,
    current: Generation,
}

impl TryFrom<RawPublicKeyring> for PublicKeyring {
    type Error = KeyringError;

    fn try_from(raw: RawPublicKeyring) -> Result<Self, Self::Error> {
        let bad = |why: String| Err(KeyringError::InvalidPublic(why));
        if raw.recipients.is_empty() {
            return bad("it lists no operator recipient".into());
        }
        if let Some(r) = first_duplicate(&raw.recipients) {
            return bad(format!("recipient {r} is listed twice"));
        }
        if !raw
            .generations
            .windows(2)
            .all(|w| w[0].generation < w[1].generation)
        {
            return bad("its key generations are not in increasing order".into());
        }
        if !raw.generations.iter().any(|g| g.generation == raw.current) {
            return bad(format!(
                "the current key generation {} is not among its generations",
                raw.current
            ));
        }
        Ok(PublicKeyring {
            recipients: raw.recipients,
            generations: raw.generations,
            current: raw.current,
        })
    }
}

impl PublicKeyring {
    /// The operators who can open the keyring.
    pub fn recipients(&self) -> &[Recipient] {
        &self.recipients
    }

    /// The key generations, oldest first.
    pub fn generations(&self) -> &[GenerationInfo] {
        &self.generations
    }

    /// The generation new objects are encrypted to.
    pub fn current(&self) -> &GenerationInfo {
        self.generations
            .iter()
            .find(|g| g.generation == self.current)
            .expect("validated: the current generation is listed")
    }

    /// The recipient every new object is encrypted to.
    pub fn current_recipient(&self) -> &Recipient {
        &self.current().public_key
    }
}

/// The opened keyring: every generation's secret key. `Debug` lists generations only.
#[derive(Clone)]
pub struct SecretKeyring {
    keys: Vec<SecretGeneration>,
}

#[derive(Clone)]
struct SecretGeneration {
    generation: Generation,
    created: DateTime<Utc>,
    key: x25519::Identity,
}

impl fmt::Debug for SecretKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKeyring")
            .field("generations", &self.generations())
            .field("keys", &format_args!("[redacted]"))
            .finish()
    }
}

impl SecretKeyring {
    /// The generations whose secret keys this keyring holds.
    pub fn generations(&self) -> Vec<Generation> {
        self.keys.iter().map(|k| k.generation).collect()
    }

    /// The identities of every generation, for decrypting objects.
    pub(super) fn identities(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.keys.iter().map(|k| &k.key as &dyn age::Identity)
    }

    /// Check that this keyring holds the secret key of every generation `public` lists.
    pub fn covers(&self, public: &PublicKeyring) -> Result<(), KeyringError> {
        for info in &public.generations {
            self.secret_of(info)?;
        }
        Ok(())
    }

    fn secret_of(&self, info: &GenerationInfo) -> Result<&SecretGeneration, KeyringError> {
        let found = self
            .keys
            .iter()
            .find(|k| k.generation == info.generation)
            .ok_or(KeyringError::MissingGeneration(info.generation))?;
        if Recipient::from_key(found.key.to_public()) != info.public_key {
            return Err(KeyringError::WrongGeneration(info.generation));
        }
        Ok(found)
    }

    /// The keyring reduced to the generations `public` lists, in its order.
    fn restricted_to(&self, public: &PublicKeyring) -> Result<SecretKeyring, KeyringError> {
        let keys = public
            .generations
            .iter()
            .map(|info| self.secret_of(info).cloned())
            .collect::<Result<_, _>>()?;
        Ok(SecretKeyring { keys })
    }

    /// The identity-file text: the keyring's plaintext, and what `export` prints.
    fn to_text(&self) -> SecretText {
        let mut text = String::from(HEADER);
        for k in &self.keys {
            text.push_str(&format!(
                "{GENERATION_COMMENT}{}, created {}, public key {}\n",
                k.generation,
                k.created.to_rfc3339_opts(SecondsFormat::Secs, true),
                k.key.to_public()
            ));
            text.push_str(k.key.to_string().expose_secret());
            text.push('\n');
        }
        SecretText::new(text)
    }

    fn from_text(text: &str) -> Result<SecretKeyring, KeyringError> {
        let malformed = |why: String| KeyringError::Malformed(why);
        let mut keys: Vec<SecretGeneration> = Vec::new();
        let mut pending: Option<(Generation, DateTime<Utc>)> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix(GENERATION_COMMENT) {
                pending = Some(parse_generation_comment(rest).ok_or_else(|| {
                    malformed(format!("line {} is not a generation comment", n + 1))
                })?);
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = parse_identities(line)
                .ok()
                .and_then(|mut k| k.pop())
                .ok_or_else(|| malformed(format!("line {} is not an age identity", n + 1)))?;
            let (generation, created) = pending.take().ok_or_else(|| {
                malformed(format!(
                    "the key on line {} has no generation comment",
                    n + 1
                ))
            })?;
            if keys.iter().any(|k| k.generation == generation) {
                return Err(malformed(format!("generation {generation} appears twice")));
            }
            keys.push(SecretGeneration {
                generation,
                created,
                key,
            });
        }
        if keys.is_empty() {
            return Err(malformed("it holds no key".into()));
        }
        Ok(SecretKeyring { keys })
    }
}

/// `N, created TIME[, …]` after `# generation `.
fn parse_generation_comment(rest: &str) -> Option<(Generation, DateTime<Utc>)> {
    let mut fields = rest.split(", ");
    let generation = Generation(fields.next()?.parse().ok()?);
    let created = DateTime::parse_from_rfc3339(fields.next()?.strip_prefix("created ")?).ok()?;
    Some((generation, created.with_timezone(&Utc)))
}

fn first_duplicate(recipients: &[Recipient]) -> Option<&Recipient> {
    recipients
        .iter()
        .enumerate()
        .find(|(i, r)| recipients[..*i].contains(r))
        .map(|(_, r)| r)
}

/// The result of a key operation. Store `sealed` (the keyring object) FIRST and `public` (in
/// `repository.json`) second: a crash in between leaves the old state valid (module doc).
#[derive(Clone)]
pub struct KeyringUpdate {
    pub public: PublicKeyring,
    /// The keyring object: an age file to the operator recipients (ciphertext, not secret).
    pub sealed: Vec<u8>,
}

impl fmt::Debug for KeyringUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyringUpdate")
            .field("public", &self.public)
            .field("sealed", &format_args!("{} bytes", self.sealed.len()))
            .finish()
    }
}

/// Why a key operation, or opening the keyring, failed. No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(
        "the identity in {} cannot open the repository keyring: it is not one of its {recipients} recipients",
        file.display()
    )]
    NotARecipient {
        file: std::path::PathBuf,
        recipients: usize,
    },
    #[error("the repository keyring is damaged: {0}")]
    Damaged(String),
    #[error("the repository keyring is malformed: {0}")]
    Malformed(String),
    #[error("the repository's public key list (repository.json) is invalid: {0}")]
    InvalidPublic(String),
    #[error(
        "key generation {0} is listed in repository.json but missing from the keyring; \
         was a `key expire` interrupted? retry it"
    )]
    MissingGeneration(Generation),
    #[error(
        "the keyring's key for generation {0} does not match the public key repository.json \
         lists for it: keyring and repository.json belong to different repositories"
    )]
    WrongGeneration(Generation),
    #[error("a repository keyring needs at least one operator recipient")]
    NoRecipients,
    #[error("recipient {0} is already an operator of this repository")]
    AlreadyRecipient(Recipient),
    #[error("recipient {0} is not an operator of this repository")]
    UnknownRecipient(Recipient),
    #[error(
        "refusing to remove {0}: it is the keyring's last recipient, and nobody could read the \
         repository any more; add another recipient first"
    )]
    LastRecipient(Recipient),
    #[error("key generation {0} is not in the keyring")]
    UnknownGeneration(Generation),
    #[error("refusing to drop key generation {0}: it is the current one, new objects use it")]
    CurrentGeneration(Generation),
}

/// Seal `secret` to `recipients`: the keyring object's bytes.
fn seal(recipients: &[Recipient], secret: &SecretKeyring) -> Vec<u8> {
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r.key() as &dyn age::Recipient))
            .expect("X25519 recipients (at least one) always combine");
    let text = secret.to_text();
    let mut out = Vec::new();
    let mut w = encryptor
        .wrap_output(&mut out)
        .expect("writing to a Vec cannot fail");
    w.write_all(text.expose().as_bytes())
        .and_then(|()| w.finish().map(drop))
        .expect("writing to a Vec cannot fail");
    out
}

fn update(public: PublicKeyring, secret: &SecretKeyring) -> KeyringUpdate {
    let sealed = seal(&public.recipients, secret);
    KeyringUpdate { public, sealed }
}

fn new_generation(
    generation: Generation,
    now: DateTime<Utc>,
) -> (GenerationInfo, SecretGeneration) {
    let key = x25519::Identity::generate();
    let created = now.trunc_subsecs(0);
    (
        GenerationInfo {
            generation,
            public_key: Recipient::from_key(key.to_public()),
            created,
        },
        SecretGeneration {
            generation,
            created,
            key,
        },
    )
}

/// Create the keyring of a new repository: generation 1, sealed to `recipients`.
pub fn init(recipients: &[Recipient], now: DateTime<Utc>) -> Result<KeyringUpdate, KeyringError> {
    if recipients.is_empty() {
        return Err(KeyringError::NoRecipients);
    }
    if let Some(r) = first_duplicate(recipients) {
        return Err(KeyringError::AlreadyRecipient(r.clone()));
    }
    let (info, secret) = new_generation(Generation(1), now);
    let public = PublicKeyring {
        recipients: recipients.to_vec(),
        current: info.generation,
        generations: vec![info],
    };
    Ok(update(public, &SecretKeyring { keys: vec![secret] }))
}

/// Count the X25519 recipient stanzas in an age header, for the error message. (Not every
/// `-> ` line: age adds a random "grease" stanza to keep parsers honest.)
fn count_stanzas(sealed: &[u8]) -> usize {
    sealed
        .split(|&b| b == b'\n')
        .take_while(|line| !line.starts_with(b"---"))
        .filter(|line| line.starts_with(b"-> X25519 "))
        .count()
}

/// Open the sealed keyring with an operator's identity.
pub fn open(sealed: &[u8], identity: &OperatorIdentity) -> Result<SecretKeyring, KeyringError> {
    let decryptor = age::Decryptor::new_buffered(sealed)
        .map_err(|e| KeyringError::Damaged(format!("it is not a readable age file ({e})")))?;
    let mut reader = decryptor
        .decrypt(identity.keys().iter().map(|k| k as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => KeyringError::NotARecipient {
                file: identity.file().to_path_buf(),
                recipients: count_stanzas(sealed),
            },
            other => KeyringError::Damaged(other.to_string()),
        })?;
    let mut plain = Vec::new();
    reader
        .read_to_end(&mut plain)
        .map_err(|e| KeyringError::Damaged(format!("authentication failed ({e})")))?;
    let text = SecretText::new(
        String::from_utf8(plain).map_err(|_| KeyringError::Malformed("it is not text".into()))?,
    );
    SecretKeyring::from_text(text.expose())
}

/// Make `recipient` an operator: re-seal the keyring to one more recipient.
pub fn add_recipient(
    public: &PublicKeyring,
    secret: &SecretKeyring,
    recipient: &Recipient,
) -> Result<KeyringUpdate, KeyringError> {
    if public.recipients.contains(recipient) {
        return Err(KeyringError::AlreadyRecipient(recipient.clone()));
    }
    let secret = secret.restricted_to(public)?;
    let mut public = public.clone();
    public.recipients.push(recipient.clone());
    Ok(update(public, &secret))
}

/// Remove an operator: re-seal the keyring without `recipient`. Refuses the last one.
pub fn remove_recipient(
    public: &PublicKeyring,
    secret: &SecretKeyring,
    recipient: &Recipient,
) -> Result<KeyringUpdate, KeyringError> {
    if !public.recipients.contains(recipient) {
        return Err(KeyringError::UnknownRecipient(recipient.clone()));
    }
    if public.recipients.len() == 1 {
        return Err(KeyringError::LastRecipient(recipient.clone()));
    }
    let secret = secret.restricted_to(public)?;
    let mut public = public.clone();
    public.recipients.retain(|r| r != recipient);
    Ok(update(public, &secret))
}

/// A new key generation for objects written from now on; older generations stay.
pub fn rotate(
    public: &PublicKeyring,
    secret: &SecretKeyring,
    now: DateTime<Utc>,
) -> Result<KeyringUpdate, KeyringError> {
    let mut secret = secret.restricted_to(public)?;
    let last = public
        .generations
        .iter()
        .map(|g| g.generation)
        .max()
        .expect("validated: the current generation is listed");
    let (info, key) = new_generation(Generation(last.0 + 1), now);
    let mut public = public.clone();
    public.current = info.generation;
    public.generations.push(info);
    secret.keys.push(key);
    Ok(update(public, &secret))
}

/// Drop generations that no kept object uses any more (the caller knows which). Never the
/// current one.
pub fn drop_generations(
    public: &PublicKeyring,
    secret: &SecretKeyring,
    unused: &[Generation],
) -> Result<KeyringUpdate, KeyringError> {
    for &g in unused {
        if g == public.current {
            return Err(KeyringError::CurrentGeneration(g));
        }
        if !public.generations.iter().any(|i| i.generation == g) {
            return Err(KeyringError::UnknownGeneration(g));
        }
    }
    let mut public = public.clone();
    public
        .generations
        .retain(|i| !unused.contains(&i.generation));
    // After the public part: a dropped generation may already be gone from the keyring (an
    // interrupted earlier attempt), and that is fine.
    let secret = secret.restricted_to(&public)?;
    Ok(update(public, &secret))
}

/// The keyring as an age identity file, for `age -d -i FILE OBJECT` by hand.
pub fn export(secret: &SecretKeyring) -> SecretText {
    secret.to_text()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;

    pub(crate) fn operator(file: &str) -> (OperatorIdentity, Recipient) {
        let key = x25519::Identity::generate();
        let id = OperatorIdentity::from_text(file, key.to_string().expose_secret()).unwrap();
        let r = id.recipients().remove(0);
        (id, r)
    }

    fn t(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, day, 12, 0, 0).unwrap()
    }

    #[test]
    fn init_then_open_gives_generation_one() {
        let (alice, a) = operator("alice.key");
        let (bob, b) = operator("bob.key");
        let up = init(&[a.clone(), b], t(1)).unwrap();
        assert_eq!(up.public.current().generation, Generation(1));
        assert_eq!(up.public.current().created, t(1));
        for who in [&alice, &bob] {
            let secret = open(&up.sealed, who).unwrap();
            assert_eq!(secret.generations(), vec![Generation(1)]);
            secret.covers(&up.public).unwrap();
        }
        // The public half survives repository.json.
        let json = serde_json::to_string_pretty(&up.public).unwrap();
        assert_eq!(
            serde_json::from_str::<PublicKeyring>(&json).unwrap(),
            up.public
        );
        assert!(matches!(init(&[], t(1)), Err(KeyringError::NoRecipients)));
        assert!(matches!(
            init(&[a.clone(), a], t(1)),
            Err(KeyringError::AlreadyRecipient(_))
        ));
    }

    #[test]
    fn a_stranger_cannot_open_the_keyring() {
        let (_, a) = operator("alice.key");
        let (_, b) = operator("bob.key");
        let (mallory, _) = operator("/etc/synapse-backup/mallory.key");
        let up = init(&[a, b], t(1)).unwrap();
        let err = open(&up.sealed, &mallory).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the identity in /etc/synapse-backup/mallory.key cannot open the repository keyring: \
             it is not one of its 2 recipients"
        );
        let mut damaged = up.sealed.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let (alice, _) = operator("x");
        assert!(open(&damaged, &alice).is_err());
    }

    #[test]
    fn invalid_public_parts_are_refused_at_parse() {
        let (_, a) = operator("alice.key");
        let up = init(std::slice::from_ref(&a), t(1)).unwrap();
        let mut v = serde_json::to_value(&up.public).unwrap();
        v["current"] = 7.into();
        let err = serde_json::from_value::<PublicKeyring>(v)
            .unwrap_err()
            .to_string();
        assert!(err.contains("current key generation 7"), "{err}");
        let mut v = serde_json::to_value(&up.public).unwrap();
        v["recipients"] = serde_json::json!([]);
        assert!(serde_json::from_value::<PublicKeyring>(v).is_err());
    }

    #[test]
    fn recipients_are_added_and_removed_and_the_removed_one_is_locked_out() {
        let (alice, a) = operator("alice.key");
        let (bob, b) = operator("bob.key");
        let up = init(std::slice::from_ref(&a), t(1)).unwrap();
        let secret = open(&up.sealed, &alice).unwrap();
        assert!(matches!(
            remove_recipient(&up.public, &secret, &a),
            Err(KeyringError::LastRecipient(_))
        ));
        assert!(matches!(
            remove_recipient(&up.public, &secret, &b),
            Err(KeyringError::UnknownRecipient(_))
        ));
        let up = add_recipient(&up.public, &secret, &b).unwrap();
        assert!(matches!(
            add_recipient(&up.public, &secret, &b),
            Err(KeyringError::AlreadyRecipient(_))
        ));
        assert_eq!(up.public.recipients(), [a.clone(), b.clone()]);
        open(&up.sealed, &bob).unwrap();
        // Alice's key still opens the old sealed keyring, not the new one.
        let removed = remove_recipient(&up.public, &open(&up.sealed, &bob).unwrap(), &a).unwrap();
        assert_eq!(removed.public.recipients(), [b]);
        open(&up.sealed, &alice).unwrap();
        assert!(matches!(
            open(&removed.sealed, &alice),
            Err(KeyringError::NotARecipient { recipients: 1, .. })
        ));
        // The repository keys did not change: no data object needs rewriting.
        assert_eq!(removed.public.generations(), up.public.generations());
        open(&removed.sealed, &bob)
            .unwrap()
            .covers(&removed.public)
            .unwrap();
    }

    #[test]
    fn rotation_adds_a_current_generation_and_keeps_the_old_ones() {
        let (alice, a) = operator("alice.key");
        let g1 = init(&[a], t(1)).unwrap();
        let s1 = open(&g1.sealed, &alice).unwrap();
        let g2 = rotate(&g1.public, &s1, t(2)).unwrap();
        assert_eq!(g2.public.current().generation, Generation(2));
        assert_eq!(g2.public.generations()[0], g1.public.generations()[0]);
        assert_ne!(g2.public.current_recipient(), g1.public.current_recipient());
        let s2 = open(&g2.sealed, &alice).unwrap();
        assert_eq!(s2.generations(), vec![Generation(1), Generation(2)]);
        s2.covers(&g2.public).unwrap();

        // Objects of both generations decrypt with the rotated keyring.
        let old = crate::crypt::encrypt_bytes(g1.public.current_recipient(), b"generation one");
        let new = crate::crypt::encrypt_bytes(g2.public.current_recipient(), b"generation two");
        assert_eq!(
            crate::crypt::decrypt_bytes(&s2, &old, "old").unwrap(),
            b"generation one"
        );
        assert_eq!(
            crate::crypt::decrypt_bytes(&s2, &new, "new").unwrap(),
            b"generation two"
        );
        // The keyring of before the rotation cannot read the new generation's objects.
        assert!(crate::crypt::decrypt_bytes(&s1, &new, "new").is_err());

        // A crash after storing the keyring but before repository.json: the old public part
        // still works with the new keyring, and a retried rotation replaces the orphan.
        s2.covers(&g1.public).unwrap();
        let retried = rotate(&g1.public, &s2, t(3)).unwrap();
        assert_eq!(retried.public.current().generation, Generation(2));
        assert_eq!(retried.public.current().created, t(3));
        open(&retried.sealed, &alice)
            .unwrap()
            .covers(&retried.public)
            .unwrap();
    }

    #[test]
    fn only_unused_old_generations_are_dropped() {
        let (alice, a) = operator("alice.key");
        let g1 = init(&[a], t(1)).unwrap();
        let g2 = rotate(&g1.public, &open(&g1.sealed, &alice).unwrap(), t(2)).unwrap();
        let s2 = open(&g2.sealed, &alice).unwrap();
        assert!(matches!(
            drop_generations(&g2.public, &s2, &[Generation(2)]),
            Err(KeyringError::CurrentGeneration(Generation(2)))
        ));
        assert!(matches!(
            drop_generations(&g2.public, &s2, &[Generation(9)]),
            Err(KeyringError::UnknownGeneration(Generation(9)))
        ));
        let dropped = drop_generations(&g2.public, &s2, &[Generation(1)]).unwrap();
        assert_eq!(dropped.public.generations().len(), 1);
        let s3 = open(&dropped.sealed, &alice).unwrap();
        assert_eq!(s3.generations(), vec![Generation(2)]);
        // An interrupted drop (keyring stored, repository.json not) is retried cleanly, while
        // other operations point at the missing generation.
        assert!(matches!(
            s3.covers(&g2.public),
            Err(KeyringError::MissingGeneration(Generation(1)))
        ));
        drop_generations(&g2.public, &s3, &[Generation(1)]).unwrap();
    }

    #[test]
    fn a_keyring_of_another_repository_is_refused() {
        let (alice, a) = operator("alice.key");
        let one = init(std::slice::from_ref(&a), t(1)).unwrap();
        let other = init(&[a], t(1)).unwrap();
        let secret = open(&other.sealed, &alice).unwrap();
        assert!(matches!(
            secret.covers(&one.public),
            Err(KeyringError::WrongGeneration(Generation(1)))
        ));
        assert!(rotate(&one.public, &secret, t(2)).is_err());
    }

    #[test]
    fn export_is_an_age_identity_file_and_debug_is_redacted() {
        let (alice, a) = operator("alice.key");
        let g1 = init(&[a], t(1)).unwrap();
        let g2 = rotate(&g1.public, &open(&g1.sealed, &alice).unwrap(), t(2)).unwrap();
        let secret = open(&g2.sealed, &alice).unwrap();
        let text = export(&secret);
        assert!(text
            .expose()
            .contains("# generation 1, created 2026-03-01T12:00:00Z"));
        let ids = age::IdentityFile::from_buffer(text.expose().as_bytes())
            .unwrap()
            .into_identities()
            .unwrap();
        assert_eq!(ids.len(), 2);
        let object = crate::crypt::encrypt_bytes(g1.public.current_recipient(), b"by hand");
        let mut plain = Vec::new();
        age::Decryptor::new_buffered(&object[..])
            .unwrap()
            .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, b"by hand");
        // The exported text is also what the keyring object holds.
        assert_eq!(
            SecretKeyring::from_text(text.expose())
                .unwrap()
                .generations(),
            secret.generations()
        );

        let keys: Vec<String> = text
            .expose()
            .lines()
            .filter(|l| l.starts_with("AGE-SECRET-KEY-"))
            .map(String::from)
            .collect();
        assert_eq!(keys.len(), 2);
        let debug = format!("{secret:?} {text:?} {alice:?} {g2:?}");
        assert!(debug.contains("[redacted]"), "{debug}");
        for k in &keys {
            assert!(!debug.contains(k.as_str()));
            assert!(!debug.to_uppercase().contains(k.as_str()));
        }
    }

    #[test]
    fn malformed_keyring_text_is_refused_without_echo() {
        let key = x25519::Identity::generate().to_string();
        let k = key.expose_secret();
        for text in [
            format!("{k}\n"),
            format!("# generation x, created now\n{k}\n"),
            format!("# generation 1, created 2026-03-01T12:00:00Z\n{k}\n# generation 1, created 2026-03-01T12:00:00Z\n{k}\n"),
            "# generation 1, created 2026-03-01T12:00:00Z\nAGE-SECRET-KEY-1NOPE\n".to_string(),
            "# empty\n".to_string(),
        ] {
            let err = SecretKeyring::from_text(&text).unwrap_err();
            assert!(matches!(err, KeyringError::Malformed(_)), "{err}");
            assert!(!err.to_string().contains(k));
        }
    }
}
