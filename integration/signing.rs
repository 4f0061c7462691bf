//! Issue 13 item 4: a signed repository. Writers hold an Ed25519 signing key outside the store
//! (`signing_key_file`), readers its public half (`verify_key`); what a bucket writer forges —
//! a manifest with a recomputed SHA-256, a WAL header with edited commit times, an object
//! without a signature — is refused on every read path, naming the object.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use synapse_backup::repo::manifest::{to_checked_json, BackupManifest};

use crate::harness::{
    self, archiving_cluster_with, backup, code, create_status, give_to_postgres, set_marker,
    stderr, PgCluster, RepoTarget, RestoredServer, Scratch, TestConfig, BIN,
};

/// A key pair made by `signing-key generate`: the private key file (0600, the postgres
/// user's, as `wal-push` runs as postgres) and the printed verify key.
fn signing_key(scratch: &Scratch) -> (PathBuf, String) {
    use std::os::unix::fs::PermissionsExt;
    let key = scratch.path().join("signing.key");
    let out = Command::new(BIN)
        .args(["signing-key", "generate", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "signing-key generate: {}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let verify_key = stdout
        .split('"')
        .find(|s| s.starts_with("ed25519:"))
        .unwrap_or_else(|| panic!("no verify key printed: {stdout}"))
        .to_string();
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file must be 0600");
    let secret = std::fs::read_to_string(&key).unwrap();
    assert!(
        !stdout.contains(secret.trim()) && !stderr(&out).contains(secret.trim()),
        "the private key must not be printed"
    );
    give_to_postgres(&key);
    (key, verify_key)
}

/// A writing cluster whose `[repository]` signs with a fresh key; returns the verify key too.
fn signed_cluster(scratch: &Scratch, target: &RepoTarget) -> (PgCluster, TestConfig, String) {
    let (key, verify_key) = signing_key(scratch);
    let (pg, cfg) = archiving_cluster_with(
        scratch,
        target,
        "",
        &format!("signing_key_file = \"{}\"\n", key.display()),
    );
    (pg, cfg, verify_key)
}

/// A config in its own directory reading the same repository with `repository_conf`.
pub(crate) fn reader(
    scratch: &Scratch,
    tag: &str,
    target: &RepoTarget,
    pg: &PgCluster,
    conf: &str,
) -> TestConfig {
    TestConfig::write(
        &scratch.subdir(tag),
        target,
        "core",
        &pg.pgdata,
        &pg.connection(),
        conf,
    )
}

pub(crate) fn restore(cfg: &TestConfig, pgdata: &Path, args: &[&str]) -> Output {
    let mut all = vec!["restore", "--pgdata", pgdata.to_str().unwrap()];
    all.extend_from_slice(args);
    cfg.run(&all)
}

/// Archive, back up and restore with signing on: a reader with only the verify key lists and
/// restores; a reader without it is told plainly what to configure.
async fn signed_round_trip(scratch: &Scratch, target: RepoTarget) {
    let (mut pg, cfg, verify_key) = signed_cluster(scratch, &target);
    create_status(&pg, "backup");
    let id = backup(&cfg);
    set_marker(&pg, "latest");
    pg.archive_everything();

    let verifier = reader(
        scratch,
        "verifier",
        &target,
        &pg,
        &format!("verify_key = \"{verify_key}\"\n"),
    );
    let out = verifier.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "list with the verify key: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));

    let keyless = reader(scratch, "keyless", &target, &pg, "");
    let out = keyless.run(&["list"]);
    assert_eq!(code(&out), 2, "list without verify_key: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("signed") && err.contains("verify_key"),
        "{err}"
    );
    assert!(
        err.contains(&verify_key),
        "the error names the key to configure: {err}"
    );

    // Another key pair's verify key: every object is refused.
    let (_, other_key) = signing_key(&Scratch::new("sign-other"));
    let wrong = reader(
        scratch,
        "wrong",
        &target,
        &pg,
        &format!("verify_key = \"{other_key}\"\n"),
    );
    let out = wrong.run(&["list"]);
    assert_ne!(code(&out), 0, "list with another key: {}", stderr(&out));
    assert!(stderr(&out).contains("repository.json"), "{}", stderr(&out));

    pg.stop();
    let pgdata = scratch.path().join("restored/pgdata");
    let guard = RestoredServer::new(&pgdata);
    let out = restore(
        &verifier,
        &pgdata,
        &["--latest", "--target-action", "pause", "--start"],
    );
    assert_eq!(code(&out), 0, "signed restore: {}", stderr(&out));
    assert_eq!(pg.psql("select message from status"), "latest");
    guard.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_repository_round_trip_local() {
    if harness::skip("signed_repository_round_trip_local") {
        return;
    }
    let scratch = Scratch::new("sign-local");
    let repo = scratch.subdir("repo");
    signed_round_trip(&scratch, RepoTarget::Local(repo)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_repository_round_trip_s3() {
    if harness::skip("signed_repository_round_trip_s3") {
        return;
    }
    let scratch = Scratch::new("sign-s3");
    let target = harness::shared_s3(&scratch, "sign");
    signed_round_trip(&scratch, target).await;
}

/// The gzip comment (the header) and the content of a stored WAL object.
fn wal_parts(path: &Path) -> (serde_json::Value, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let mut gz = flate2::read::GzDecoder::new(&bytes[..]);
    let mut content = Vec::new();
    gz.read_to_end(&mut content).unwrap();
    let comment = gz.header().unwrap().comment().unwrap().to_vec();
    (serde_json::from_slice(&comment).unwrap(), content)
}

/// Write a WAL object as a bucket writer would: the content, gzip'd, with `header` as comment.
fn write_wal(path: &Path, header: &serde_json::Value, content: &[u8]) {
    let mut out = Vec::new();
    let mut gz = flate2::GzBuilder::new()
        .comment(serde_json::to_vec(header).unwrap())
        .write(&mut out, flate2::Compression::default());
    gz.write_all(content).unwrap();
    gz.finish().unwrap();
    std::fs::write(path, out).unwrap();
}

/// The newest archived segment whose header records a commit time.
fn segment_with_commits(core: &Path) -> (String, PathBuf) {
    let mut found = Vec::new();
    for dir in std::fs::read_dir(core.join("wal")).unwrap().flatten() {
        if !dir.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.len() == 27 && wal_parts(&f.path()).0.get("last_commit").is_some() {
                found.push((name.trim_end_matches(".gz").to_string(), f.path()));
            }
        }
    }
    found.sort();
    found.pop().expect("an archived segment with a commit")
}

fn assert_refused(out: &Output, what: &str, object: &str) {
    let err = stderr(out);
    assert_ne!(code(out), 0, "{what} must refuse: {err}");
    assert!(
        err.contains(object),
        "{what}: the error must name {object}: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_unsigned_objects_are_refused() {
    if harness::skip("forged_and_unsigned_objects_are_refused") {
        return;
    }
    let scratch = Scratch::new("sign-forge");
    let repo = scratch.subdir("repo");
    let (mut pg, cfg, _) = signed_cluster(&scratch, &RepoTarget::Local(repo.clone()));
    create_status(&pg, "backup");
    let id = backup(&cfg);
    set_marker(&pg, "after");
    pg.archive_everything();
    pg.stop();
    let core = repo.join("core");
    let out = cfg.run(&["list"]);
    assert_eq!(
        code(&out),
        0,
        "list of the genuine repository: {}",
        stderr(&out)
    );

    // 1. A forged manifest: edited, its SHA-256 recomputed as src/repo/manifest.rs does.
    let manifest_path = core.join(format!("backups/{id}/manifest.json"));
    let manifest_name = format!("core/backups/{id}/manifest.json");
    let genuine = std::fs::read(&manifest_path).unwrap();
    let mut m: BackupManifest = serde_json::from_slice(&genuine).unwrap();
    m.backup_from = "standby".into();
    let forged = to_checked_json(&m);
    let target = scratch.path().join("forged/pgdata");
    for (case, bytes) in [
        ("unsigned", forged.clone()),
        (
            "with the genuine signature",
            with_signature_of(&forged, &genuine),
        ),
    ] {
        std::fs::write(&manifest_path, &bytes).unwrap();
        // `list` skips a backup whose manifest fails its signature, and says so (issue 13
        // item 6: one damaged manifest never blocks the others).
        let out = cfg.run(&["list"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{id} DAMAGED")) || text.contains("DAMAGED (skipped)"),
            "list ({case} manifest) must mark the backup damaged: {text}"
        );
        assert!(
            text.contains(&manifest_name),
            "list ({case} manifest) must name {manifest_name}: {text}"
        );
        let out = restore(&cfg, &target, &["--backup", &id, "--latest"]);
        assert_refused(
            &out,
            &format!("restore --backup ({case} manifest)"),
            &manifest_name,
        );
        assert!(
            !target.join("PG_VERSION").exists(),
            "nothing restored from a forged manifest"
        );
    }
    std::fs::write(&manifest_path, &genuine).unwrap();

    // 2. A WAL object whose commit time was moved to 2027 in its header.
    let (segment, wal_path) = segment_with_commits(&core);
    let wal_name = format!("{segment}.gz");
    let genuine_wal = std::fs::read(&wal_path).unwrap();
    let (header, content) = wal_parts(&wal_path);
    let mut edited = header.clone();
    edited["last_commit"] = "2027-06-01T00:00:00+00:00".into();
    write_wal(&wal_path, &edited, &content);
    let dest = scratch.path().join("fetched");
    let out = cfg.run(&["wal-fetch", &segment, dest.to_str().unwrap()]);
    assert_refused(&out, "wal-fetch (edited commit time)", &wal_name);
    assert!(!dest.exists());
    let out = cfg.run(&["list"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("2027"),
        "list shows the forged time"
    );
    assert_refused(&out, "list (edited commit time)", &wal_name);
    let out = restore(&cfg, &target, &["--to", "2027-05-01T00:00:00Z"]);
    assert_refused(&out, "restore --to (edited commit time)", &wal_name);
    assert!(!target.join("PG_VERSION").exists());

    // 3. An unsigned object (what a writer without the key, or an older version, stores).
    let mut unsigned = header.clone();
    unsigned.as_object_mut().unwrap().remove("signature");
    write_wal(&wal_path, &unsigned, &content);
    let out = cfg.run(&["wal-fetch", &segment, dest.to_str().unwrap()]);
    assert_refused(&out, "wal-fetch (unsigned object)", &wal_name);
    assert!(stderr(&out).contains("not signed"), "{}", stderr(&out));

    // The genuine objects back: everything reads again.
    std::fs::write(&wal_path, &genuine_wal).unwrap();
    let out = cfg.run(&["wal-fetch", &segment, dest.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    let out = cfg.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// `forged` (an unsigned manifest) carrying the last field of `genuine` (its signature).
fn with_signature_of(forged: &[u8], genuine: &[u8]) -> Vec<u8> {
    let genuine = String::from_utf8_lossy(genuine);
    let at = genuine
        .rfind(",\n  \"signature\"")
        .expect("the genuine manifest is signed");
    let forged = String::from_utf8_lossy(forged);
    let body = forged.trim_end().strip_suffix('}').unwrap().trim_end();
    format!("{body}{}", &genuine[at..]).into_bytes()
}
