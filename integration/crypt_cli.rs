//! The encryption format against the real `age` CLI (Debian package `age`): the by-hand path
//! of issue 14 works with stock tools only.
//!
//! - our sealed keyring opens with `age -d -i operator.key` (operator keys from `age-keygen`);
//! - the identity file it holds decrypts, with `age -d -i repo.key OBJECT | gunzip | tar -x`,
//!   an object our writer encrypted;
//! - an object `age -r <repository public key>` encrypted decrypts with our reader;
//! - after a rotation the CLI reads objects of both generations, and after removing an
//!   operator the CLI refuses his identity on the new keyring.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use synapse_backup::crypt::{self, DecryptingReader, EncryptingWriter, Recipient};

const AGE: &str = "/usr/bin/age";
const AGE_KEYGEN: &str = "/usr/bin/age-keygen";

/// `true` (after printing why) when integration tests are switched off; fails, naming the
/// package, when `age` is missing.
fn skip(test: &str) -> bool {
    if std::env::var("SYNAPSE_SKIP_INTEGRATION").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: SYNAPSE_SKIP_INTEGRATION=1");
        return true;
    }
    for tool in [AGE, AGE_KEYGEN] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is not installed: apt-get install age (or set SYNAPSE_SKIP_INTEGRATION=1)"
        );
    }
    false
}

/// Run a bash script in `dir` (with `pipefail`), as an operator would type it.
fn sh(dir: &Path, script: &str) -> Output {
    Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n{script}")])
        .current_dir(dir)
        .output()
        .expect("run bash")
}

fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A new operator key by `age-keygen`: its public key and its identity, read as the
/// configuration would read it.
fn operator(dir: &Path, name: &str) -> (Recipient, crypt::OperatorIdentity) {
    ok(
        sh(dir, &format!("age-keygen -o {name} 2>/dev/null")),
        "age-keygen",
    );
    let public = ok(sh(dir, &format!("age-keygen -y {name}")), "age-keygen -y");
    let recipient: Recipient = String::from_utf8(public).unwrap().parse().unwrap();
    let identity = crypt::load_identity_file(&dir.join(name)).unwrap();
    assert_eq!(identity.recipients(), vec![recipient.clone()]);
    (recipient, identity)
}

/// A gzip'd tar holding `files`, encrypted by our writer, as a backup part would be.
fn encrypted_part(path: &Path, to: &Recipient, files: &[(&str, &[u8])]) {
    let out = std::fs::File::create(path).unwrap();
    let enc = EncryptingWriter::new(to, out).unwrap();
    let gz = flate2::write::GzEncoder::new(enc, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, name, *content).unwrap();
    }
    let gz = tar.into_inner().unwrap();
    let enc = gz.finish().unwrap();
    enc.finish().unwrap().sync_all().unwrap();
}

fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn keyring_and_objects_interoperate_with_the_age_cli() {
    if skip("keyring_and_objects_interoperate_with_the_age_cli") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (r1, op1) = operator(dir, "operator1.key");
    let (r2, op2) = operator(dir, "operator2.key");

    // Generation 1, sealed to both operators.
    let g1 = crypt::init(&[r1.clone(), r2.clone()], chrono::Utc::now()).unwrap();
    write_private(&dir.join("keyring.age"), &g1.sealed);

    // The README's hand path: the keyring opens with the stock CLI ...
    ok(
        sh(
            dir,
            "age -d -i operator1.key keyring.age > repo.key && chmod 600 repo.key",
        ),
        "age -d keyring",
    );
    let repo_key = std::fs::read_to_string(dir.join("repo.key")).unwrap();
    assert!(
        repo_key.contains("# generation 1, created "),
        "{}",
        repo_key.lines().next().unwrap_or("")
    );
    assert_eq!(repo_key.matches("AGE-SECRET-KEY-1").count(), 1);

    // ... and what it holds decrypts an object we encrypted, straight into tar.
    let relation = (0..200_000u32)
        .flat_map(|i| i.to_le_bytes())
        .collect::<Vec<u8>>();
    encrypted_part(
        &dir.join("data.0.tar.gz"),
        g1.public.current_recipient(),
        &[("PG_VERSION", b"15\n"), ("base/5/16384", &relation)],
    );
    std::fs::create_dir(dir.join("restored")).unwrap();
    ok(
        sh(
            dir,
            "age -d -i repo.key data.0.tar.gz | gunzip | tar -x -C restored",
        ),
        "age -d | gunzip | tar -x",
    );
    assert_eq!(
        std::fs::read(dir.join("restored/PG_VERSION")).unwrap(),
        b"15\n"
    );
    assert_eq!(
        std::fs::read(dir.join("restored/base/5/16384")).unwrap(),
        relation
    );

    // An object the CLI encrypted to the repository's public key decrypts with our reader.
    let wal: Vec<u8> = (0..16u32 << 16).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("segment"), &wal).unwrap();
    ok(
        sh(
            dir,
            &format!(
                "age -r {} -o segment.age segment",
                g1.public.current_recipient()
            ),
        ),
        "age -r",
    );
    let secret1 = crypt::open(&g1.sealed, &op1).unwrap();
    let file = std::fs::File::open(dir.join("segment.age")).unwrap();
    let mut plain = Vec::new();
    DecryptingReader::new(file, &secret1, "core/wal/segment")
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, wal);

    // A byte flipped in the CLI's object: refused by our reader, naming the object.
    let mut bad = std::fs::read(dir.join("segment.age")).unwrap();
    let at = bad.len() / 2;
    bad[at] ^= 0x20;
    let err = crypt::decrypt_bytes(&secret1, &bad, "core/wal/segment").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("core/wal/segment: decryption failed"),
        "{err}"
    );

    // Rotation: generation 2 is current; the CLI reads objects of both generations with the
    // identity file of the rotated keyring. No object was rewritten.
    let g2 = crypt::rotate(
        &g1.public,
        &crypt::open(&g1.sealed, &op2).unwrap(),
        chrono::Utc::now(),
    )
    .unwrap();
    write_private(&dir.join("keyring.age"), &g2.sealed);
    let mut enc = EncryptingWriter::new(g2.public.current_recipient(), Vec::new()).unwrap();
    enc.write_all(b"written after the rotation").unwrap();
    std::fs::write(dir.join("manifest.json.age"), enc.finish().unwrap()).unwrap();
    ok(
        sh(
            dir,
            "age -d -i operator2.key keyring.age > repo2.key && chmod 600 repo2.key",
        ),
        "age -d rotated keyring",
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("repo2.key"))
            .unwrap()
            .matches("AGE-SECRET-KEY-1")
            .count(),
        2
    );
    assert_eq!(
        ok(
            sh(dir, "age -d -i repo2.key manifest.json.age"),
            "age -d gen 2"
        ),
        b"written after the rotation"
    );
    assert_eq!(
        ok(sh(dir, "age -d -i repo2.key segment.age"), "age -d gen 1"),
        wal
    );
    // `export` prints the same identity file the keyring holds.
    let exported = crypt::export(&crypt::open(&g2.sealed, &op1).unwrap());
    write_private(&dir.join("exported.key"), exported.expose().as_bytes());
    assert_eq!(
        ok(
            sh(dir, "age -d -i exported.key manifest.json.age"),
            "age -d exported"
        ),
        b"written after the rotation"
    );

    // Removing operator 1: the new keyring no longer opens with his identity, by our code or
    // by the CLI; operator 2 still reads everything.
    let g3 =
        crypt::remove_recipient(&g2.public, &crypt::open(&g2.sealed, &op2).unwrap(), &r1).unwrap();
    write_private(&dir.join("keyring.age"), &g3.sealed);
    let refused = sh(dir, "age -d -i operator1.key keyring.age > /dev/null");
    assert!(
        !refused.status.success(),
        "the removed operator still opens the keyring"
    );
    let err = crypt::open(&g3.sealed, &op1).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "the identity in {} cannot open the repository keyring: it is not one of its 1 recipients",
            dir.join("operator1.key").display()
        )
    );
    let secret3 = crypt::open(&g3.sealed, &op2).unwrap();
    secret3.covers(&g3.public).unwrap();
    assert_eq!(
        crypt::decrypt_bytes(
            &secret3,
            &std::fs::read(dir.join("segment.age")).unwrap(),
            "s"
        )
        .unwrap(),
        wal
    );
}
