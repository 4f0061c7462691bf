//! Issue 14: an encrypted repository. Database hosts hold only public keys (`[repository.encryption]
//! recipients`), readers an operator identity (`identity_file`); every stored data object is an
//! age file. A marker written to a table is in no stored object's bytes (while the same scan
//! finds it in a plain repository), reads without or with the wrong identity are refused,
//! damage names the object, rotation rewrites no data object, and the README's by-hand path
//! with the stock `age` CLI restores a directory PostgreSQL starts from.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use synapse_backup::config::Config;
use synapse_backup::storage::Storage;

use crate::harness::{
    self, archiving_cluster_with, backup, code, create_status, give_to_postgres, set_marker,
    stderr, PgCluster, RepoTarget, RestoredServer, Scratch, TestConfig,
};
use crate::signing::{reader, restore};
use crate::verify::{add_verify_config, verify};

/// A string no stored object of an encrypted repository may contain, in any form we can read.
const MARKER: &str = "SYNAPSE-ENCRYPTION-MARKER-7f3a9c";

/// A new operator key by `age-keygen` (0600, the postgres user's): its file and recipient.
fn operator(scratch: &Scratch, name: &str) -> (PathBuf, String) {
    let path = scratch.path().join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("age-keygen is installed (apt-get install age)");
    assert!(out.status.success(), "age-keygen: {}", stderr(&out));
    let public = Command::new("age-keygen")
        .arg("-y")
        .arg(&path)
        .output()
        .unwrap();
    give_to_postgres(&path);
    (
        path,
        String::from_utf8(public.stdout).unwrap().trim().to_string(),
    )
}

fn encryption(recipients: &[&str], identity: Option<&Path>) -> String {
    let list: Vec<String> = recipients.iter().map(|r| format!("\"{r}\"")).collect();
    let mut text = format!(
        "\n[repository.encryption]\nrecipients = [{}]\n",
        list.join(", ")
    );
    if let Some(id) = identity {
        text.push_str(&format!("identity_file = \"{}\"\n", id.display()));
    }
    text
}

fn run_ok(cfg: &TestConfig, args: &[&str]) -> String {
    let out = cfg.run(args);
    assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A writing cluster (public keys only) whose repository `key init` created.
fn encrypted_cluster(
    scratch: &Scratch,
    target: &RepoTarget,
    recipient: &str,
) -> (PgCluster, TestConfig) {
    let (pg, cfg) = archiving_cluster_with(scratch, target, "", &encryption(&[recipient], None));
    let listed = run_ok(&cfg, &["key", "init"]);
    assert!(
        listed.contains("encryption: on, 1 recipient, key generation 1")
            && listed.contains(recipient),
        "{listed}"
    );
    (pg, cfg)
}

/// The table holding the marker, inserted and archived.
fn write_marker(pg: &PgCluster) {
    pg.psql(&format!(
        "create table secret(v text); insert into secret select '{MARKER}' || g from generate_series(1, 200) g"
    ));
}

/// Every stored object: key, size and last-modified time (ETag-like identity of a version).
async fn listing(cfg: &TestConfig) -> BTreeMap<String, (u64, String)> {
    let config = Config::load(Some(&cfg.path)).unwrap();
    let storage = Storage::open(&config.repository).unwrap();
    storage
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, (e.size, e.last_modified.to_rfc3339())))
        .collect()
}

/// The objects whose bytes, or gunzipped bytes, contain the marker (GET of every object).
async fn objects_with_marker(cfg: &TestConfig) -> Vec<String> {
    let config = Config::load(Some(&cfg.path)).unwrap();
    let storage = Storage::open(&config.repository).unwrap();
    let mut found = Vec::new();
    let entries = storage.list("").await.unwrap();
    assert!(
        entries.iter().any(|e| e.key.contains("/wal/")),
        "the scan must see the objects: {entries:?}"
    );
    for e in entries {
        let bytes = storage.get(&e.key).await.unwrap().unwrap_or_default();
        let mut plain = Vec::new();
        let _ = flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut plain);
        let has = |b: &[u8]| b.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
        if has(&bytes) || has(&plain) {
            found.push(e.key);
        }
    }
    found
}

/// Archive, back up, restore, verify on an encrypted repository; the marker is nowhere in the
/// store, while the same scan finds it in a plain repository fed the same WAL.
async fn encrypted_round_trip(scratch: &Scratch, target: RepoTarget, plain_target: RepoTarget) {
    let (op, recipient) = operator(scratch, "operator.key");
    let (mut pg, cfg) = encrypted_cluster(scratch, &target, &recipient);
    create_status(&pg, "backup");
    write_marker(&pg);
    let id = backup(&cfg);
    set_marker(&pg, "latest");
    pg.archive_everything();
    let check = run_ok(&cfg, &["key", "list"]);
    assert!(check.contains("generations:"), "{check}");

    let scan = objects_with_marker(&cfg).await;
    assert!(scan.is_empty(), "the marker is readable in {scan:?}");

    // The control: the same WAL pushed to a plain repository is found by the same scan.
    let plain = reader(scratch, "plain", &plain_target, &pg, "");
    let last = pg.psql("select last_archived_wal from pg_stat_archiver");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(pg.pgdata.join("pg_wal"))
        .unwrap()
        .flatten()
        .map(|f| f.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.len() == 24 && name <= last
        })
        .collect();
    segments.sort();
    for path in segments {
        run_ok(&plain, &["wal-push", path.to_str().unwrap()]);
    }
    let scan = objects_with_marker(&plain).await;
    assert!(
        !scan.is_empty(),
        "the scan finds nothing even in a plain repository"
    );

    let operator_cfg = reader(
        scratch,
        "operator",
        &target,
        &pg,
        &encryption(&[&recipient], Some(&op)),
    );
    let check = operator_cfg.run(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("encryption: on, 1 recipient, key generation 1"),
        "{text}"
    );
    assert!(run_ok(&operator_cfg, &["list"]).contains(&id));

    // Verify: the scratch instance gets decrypted, verified WAL only.
    add_verify_config(&operator_cfg, &scratch.subdir("verify"), &[]);
    let (out, _) = verify(&operator_cfg, &["--runtime", "namespace"], &[]);
    assert_eq!(code(&out), 0, "verify: {}", stderr(&out));

    pg.stop();
    let pgdata = scratch.path().join("restored/pgdata");
    let guard = RestoredServer::new(&pgdata);
    let out = restore(
        &operator_cfg,
        &pgdata,
        &["--latest", "--target-action", "pause", "--start"],
    );
    assert_eq!(code(&out), 0, "encrypted restore: {}", stderr(&out));
    assert_eq!(pg.psql("select message from status"), "latest");
    assert_eq!(
        pg.psql(&format!(
            "select count(*) from secret where v like '{MARKER}%'"
        )),
        "200"
    );
    guard.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_repository_round_trip_local() {
    if harness::skip("encrypted_repository_round_trip_local") {
        return;
    }
    let scratch = Scratch::new("enc-local");
    let repo = scratch.subdir("repo");
    let plain = scratch.subdir("plain-repo");
    encrypted_round_trip(&scratch, RepoTarget::Local(repo), RepoTarget::Local(plain)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_repository_round_trip_s3() {
    if harness::skip("encrypted_repository_round_trip_s3") {
        return;
    }
    let scratch = Scratch::new("enc-s3");
    let target = harness::shared_s3(&scratch, "enc");
    let plain = harness::shared_s3(&scratch, "enc-plain");
    encrypted_round_trip(&scratch, target, plain).await;
}

/// Flip one byte in the middle of a stored object.
fn flip(path: &Path) -> Vec<u8> {
    let genuine = std::fs::read(path).unwrap();
    let mut bytes = genuine.clone();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
    genuine
}

fn assert_names(out: &Output, what: &str, object: &str) {
    let err = stderr(out);
    assert_ne!(code(out), 0, "{what} must fail: {err}");
    assert!(
        err.contains(object),
        "{what}: the error must name {object}: {err}"
    );
}

/// The newest archived segment object under `core/wal/`.
fn newest_segment(core: &Path) -> (String, PathBuf) {
    let mut found = Vec::new();
    for dir in std::fs::read_dir(core.join("wal")).unwrap().flatten() {
        if dir.path().is_dir() {
            for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.len() == 27 {
                    found.push((name.trim_end_matches(".gz").to_string(), f.path()));
                }
            }
        }
    }
    found.sort();
    found.pop().expect("an archived segment")
}

/// Without an identity: exit 2 naming it; a wrong identity: refused, nothing written; one
/// flipped byte in a WAL object, a part, a manifest: an error naming the object.
#[tokio::test(flavor = "multi_thread")]
async fn encrypted_reads_need_the_right_identity_and_intact_objects() {
    if harness::skip("encrypted_reads_need_the_right_identity_and_intact_objects") {
        return;
    }
    let scratch = Scratch::new("enc-refuse");
    let repo = scratch.subdir("repo");
    let target = RepoTarget::Local(repo.clone());
    let (op, recipient) = operator(&scratch, "operator.key");
    let (stranger, _) = operator(&scratch, "stranger.key");
    let (mut pg, cfg) = encrypted_cluster(&scratch, &target, &recipient);
    create_status(&pg, "backup");
    let id = backup(&cfg);
    set_marker(&pg, "latest");
    pg.archive_everything();
    pg.stop();
    let core = repo.join("core");
    let (segment, wal_path) = newest_segment(&core);
    let dest = scratch.path().join("fetched");
    let pgdata = scratch.path().join("restored/pgdata");

    // The writer's config has no identity.
    let out = restore(&cfg, &pgdata, &["--latest"]);
    assert_eq!(code(&out), 2, "restore without identity: {}", stderr(&out));
    assert!(stderr(&out).contains("identity_file"), "{}", stderr(&out));
    let out = cfg.run(&["wal-fetch", &segment, dest.to_str().unwrap()]);
    assert_eq!(
        code(&out),
        2,
        "wal-fetch without identity: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("identity_file"), "{}", stderr(&out));
    assert!(!dest.exists() && !pgdata.exists());

    // Another operator's identity.
    let wrong = reader(
        &scratch,
        "wrong",
        &target,
        &pg,
        &encryption(&[&recipient], Some(&stranger)),
    );
    let out = restore(&wrong, &pgdata, &["--latest"]);
    assert_names(&out, "restore with a wrong identity", "stranger.key");
    assert!(!pgdata.join("PG_VERSION").exists(), "nothing restored");
    let check = wrong.run(&["check"]);
    assert_ne!(code(&check), 0, "check with a wrong identity must fail");

    let good = reader(
        &scratch,
        "good",
        &target,
        &pg,
        &encryption(&[&recipient], Some(&op)),
    );
    // A flipped byte in a WAL object: wal-fetch exits above 125, naming it.
    let genuine = flip(&wal_path);
    let out = good.run(&["wal-fetch", &segment, dest.to_str().unwrap()]);
    assert!(
        code(&out) > 125,
        "wal-fetch of a damaged object: {}",
        stderr(&out)
    );
    assert_names(&out, "wal-fetch (flipped byte)", &format!("{segment}.gz"));
    assert!(!dest.exists());
    std::fs::write(&wal_path, genuine).unwrap();
    run_ok(&good, &["wal-fetch", &segment, dest.to_str().unwrap()]);

    // A flipped byte in a part.
    let part = core.join(format!("backups/{id}/data-00.tar.gz"));
    let genuine = flip(&part);
    let out = restore(&good, &pgdata, &["--latest"]);
    assert_names(&out, "restore (flipped byte in a part)", "data-00.tar.gz");
    std::fs::write(&part, genuine).unwrap();
    let _ = std::fs::remove_dir_all(&pgdata);

    // A flipped byte in the manifest: the backup is damaged, named.
    let manifest = core.join(format!("backups/{id}/manifest.json"));
    flip(&manifest);
    let out = restore(&good, &pgdata, &["--backup", &id, "--latest"]);
    assert_names(
        &out,
        "restore (flipped byte in the manifest)",
        &format!("{id}/manifest.json"),
    );
}

/// Rotation: add operator 2, remove operator 1, rotate; more WAL and a backup; a restore that
/// needs objects of both generations works with operator 2's identity only; no data object
/// was rewritten. Then the README's by-hand path with the stock `age` CLI.
#[tokio::test(flavor = "multi_thread")]
async fn rotation_rewrites_no_data_and_the_age_cli_restores_by_hand() {
    if harness::skip("rotation_rewrites_no_data_and_the_age_cli_restores_by_hand") {
        return;
    }
    let scratch = Scratch::new("enc-rotate");
    let repo = scratch.subdir("repo");
    let target = RepoTarget::Local(repo.clone());
    let (op1, r1) = operator(&scratch, "op1.key");
    let (op2, r2) = operator(&scratch, "op2.key");
    let (mut pg, cfg) = encrypted_cluster(&scratch, &target, &r1);
    create_status(&pg, "gen1");
    let first = backup(&cfg);
    set_marker(&pg, "gen1-wal");
    pg.archive_everything();
    let before = listing(&cfg).await;

    let admin = reader(
        &scratch,
        "admin",
        &target,
        &pg,
        &encryption(&[&r1], Some(&op1)),
    );
    run_ok(&admin, &["key", "add", "--recipient", &r2]);
    let op2_path = op2.to_str().unwrap();
    run_ok(
        &admin,
        &[
            "key",
            "remove",
            "--recipient",
            &r1,
            "--identity-file",
            op2_path,
        ],
    );
    let rotated = run_ok(&admin, &["key", "rotate", "--identity-file", op2_path]);
    assert!(rotated.contains("key generation 2"), "{rotated}");

    set_marker(&pg, "gen2-wal");
    pg.archive_everything();
    let second = backup(&cfg);
    set_marker(&pg, "latest");
    pg.archive_everything();
    let after = listing(&cfg).await;
    // Data objects (the keyring, repository.json, the lock and the archiver position are
    // bookkeeping, rewritten by design).
    let data = |key: &str| {
        ["core/wal/", "core/backups/", "core/catalog/"]
            .iter()
            .any(|p| key.starts_with(p))
    };
    let mut compared = 0;
    for (key, version) in before.iter().filter(|(k, _)| data(k)) {
        assert_eq!(
            after.get(key),
            Some(version),
            "{key} was rewritten or removed"
        );
        compared += 1;
    }
    assert!(compared > 5, "too few data objects compared: {before:?}");
    pg.stop();

    let op1_cfg = reader(
        &scratch,
        "op1",
        &target,
        &pg,
        &encryption(&[&r1], Some(&op1)),
    );
    let pgdata = scratch.path().join("restored/pgdata");
    let out = restore(&op1_cfg, &pgdata, &["--backup", &first, "--latest"]);
    assert_names(
        &out,
        "restore with the removed operator's identity",
        "op1.key",
    );
    assert!(!pgdata.join("PG_VERSION").exists());

    let op2_cfg = reader(
        &scratch,
        "op2",
        &target,
        &pg,
        &encryption(&[&r2], Some(&op2)),
    );
    let listed = run_ok(&op2_cfg, &["list"]);
    assert!(
        listed.contains(&first) && listed.contains(&second),
        "{listed}"
    );
    let guard = RestoredServer::new(&pgdata);
    let out = restore(
        &op2_cfg,
        &pgdata,
        &[
            "--backup",
            &first,
            "--latest",
            "--target-action",
            "pause",
            "--start",
        ],
    );
    assert_eq!(
        code(&out),
        0,
        "restore across generations: {}",
        stderr(&out)
    );
    assert_eq!(pg.psql("select message from status"), "latest");
    guard.stop();

    by_hand(&scratch, &repo.join("core"), &op2, &second);
}

/// The README's "Restoring by hand" for an encrypted repository, as an operator types it.
fn by_hand(scratch: &Scratch, core: &Path, identity: &Path, id: &str) {
    let dir = scratch.subdir("by-hand");
    give_to_postgres(&dir);
    let script = format!(
        r#"set -euo pipefail
REPO={repo}; ID={id}; OPERATOR_KEY={key}
cd {dir}
age -d -i "$OPERATOR_KEY" $REPO/keyring.age > repo.key && chmod 600 repo.key
mkdir -m 700 restored && cd restored
for p in $REPO/backups/$ID/data-*.tar.gz $REPO/backups/$ID/control.tar.gz; do age -d -i ../repo.key "$p" | tar -xz; done
mkdir -p pg_wal/archive_status pg_stat_tmp pg_replslot pg_dynshmem pg_notify pg_serial pg_snapshots pg_subtrans pg_commit_ts pg_twophase pg_tblspc pg_logical/snapshots pg_logical/mappings && touch recovery.signal
echo "restore_command = 'age -d -i $PWD/../repo.key $REPO/wal/\$(echo %f | cut -c1-16)/%f.gz | gunzip > %p'" >> postgresql.auto.conf
chown -R postgres:postgres {dir}
"#,
        repo = core.display(),
        key = identity.display(),
        dir = dir.display(),
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "by hand: {}", stderr(&out));
    let pgdata = dir.join("restored");
    let mut pg = PgCluster::existing(&dir, &pgdata);
    pg.start();
    // Recovery replays the archived WAL to its end and promotes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while pg.psql("select pg_is_in_recovery()") != "f" {
        assert!(std::time::Instant::now() < deadline, "recovery did not end");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(pg.psql("select message from status"), "latest");
    pg.stop();
}
