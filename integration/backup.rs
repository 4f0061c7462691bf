//! Base backups of real PostgreSQL 15 clusters.

use std::io::Read;
use std::time::Duration;

use synapse_backup::codec::Sha256;

use crate::harness::{
    self, archiving_cluster, backup, code, repository, stderr, BackgroundLoad, PgCluster,
    RepoTarget, Scratch, TestConfig,
};

#[tokio::test(flavor = "multi_thread")]
async fn backup_under_load_is_complete_and_listed() {
    if harness::skip("backup_under_load_is_complete_and_listed") {
        return;
    }
    let scratch = Scratch::new("backup-load");
    let repo_dir = scratch.subdir("repo");
    let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir), "");
    pg.pgbench(&["-i", "-s", "5", "-q"]);
    // pgbench writes while the backup runs.
    let load = BackgroundLoad::start(&pg, 30);
    let id = backup(&cfg);
    load.stop();

    let repo = repository(&cfg);
    let m = repo
        .get_manifest(&id.parse().unwrap())
        .await
        .unwrap()
        .expect("manifest stored");
    assert!(m.files.iter().any(|f| f.path == "global/pg_control"));
    assert!(m.files.iter().any(|f| f.path == "backup_label"));
    assert!(m.files.iter().any(|f| f.path.starts_with("base/")));
    assert!(!m
        .files
        .iter()
        .any(|f| f.path.starts_with("pg_wal/") || f.path == "postmaster.pid"));
    assert!(m
        .directories
        .iter()
        .any(|d| d.path == "pg_wal/archive_status"));
    assert!(m.stop_lsn > m.start_lsn);
    assert!(m.backup_label.starts_with("START WAL LOCATION"));
    assert!(m.page_problems.is_empty(), "{:?}", m.page_problems);
    // Every part's hash matches the manifest, and every file's content hash too.
    let mut seen = 0;
    for (i, part) in m.parts.iter().enumerate() {
        let bytes = repo.get_part(&m.id, &part.key).await.unwrap().unwrap();
        assert_eq!(bytes.len() as u64, part.size);
        assert_eq!(Sha256::of(&bytes), part.sha256, "part {}", part.key);
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            let f = m
                .files
                .iter()
                .find(|f| f.path == path)
                .unwrap_or_else(|| panic!("{path} not in manifest"));
            assert_eq!(f.part, i);
            assert_eq!(Sha256::of(&data), f.sha256, "{path}");
            seen += 1;
        }
    }
    assert_eq!(seen, m.files.len());

    // list and list --json show it.
    let out = cfg.run(&["list"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
    let out = cfg.run(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json is JSON");
    assert_eq!(v["backups"][0]["id"], id.as_str());
    assert!(v["backups"][0]["stored_bytes"].as_u64().unwrap() > 0);
    // The recoverable window starts at the backup's end.
    assert_eq!(v["window"]["start_lsn"], v["backups"][0]["stop_lsn"]);
    assert!(v["window"]["wal_end_lsn"].is_string());
}

/// Backups started within one second get distinct ids (`…Z`, `…Z-2`, …): a retry loop or an
/// operator's script never hits "already exists".
#[tokio::test(flavor = "multi_thread")]
async fn back_to_back_backups_all_succeed_and_are_listed() {
    if harness::skip("back_to_back_backups_all_succeed_and_are_listed") {
        return;
    }
    let scratch = Scratch::new("backup-burst");
    let repo_dir = scratch.subdir("repo");
    let (_pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir), "");
    let ids: Vec<String> = (0..3).map(|_| backup(&cfg)).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3, "ids must differ: {ids:?}");

    let repo = repository(&cfg);
    let listed: Vec<String> = (repo.list_backups().await.unwrap().iter())
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(listed, ids, "listed oldest first, in the order taken");
    let out = cfg.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "list: {}", stderr(&out));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let json_ids: Vec<&str> = (listing["backups"].as_array().unwrap().iter())
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(json_ids, ids);
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_backup_is_not_listed_and_next_one_succeeds() {
    if harness::skip("killed_backup_is_not_listed_and_next_one_succeeds") {
        return;
    }
    let scratch = Scratch::new("backup-kill");
    let repo_dir = scratch.subdir("repo");
    let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir), "");
    pg.pgbench(&["-i", "-s", "10", "-q"]);
    // Slow the copy down (one worker, max compression) so the kill lands mid-copy.
    let slow = TestConfig::write(
        scratch.path(),
        &RepoTarget::Local(scratch.path().join("repo")),
        "core",
        &pg.pgdata,
        &pg.connection(),
        "[backup]\nparallelism = 1\ncompress_level = 9\nlock_ttl_seconds = 5\n",
    );
    let mut child = slow.command(&["backup"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "backup finished before it could be killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let repo = repository(&cfg);
    assert!(
        repo.list_backups().await.unwrap().is_empty(),
        "a killed backup must not be listed"
    );
    // PostgreSQL aborted the backup when the session died; the lock expires after its TTL.
    std::thread::sleep(Duration::from_secs(6));
    let out = slow.run(&["backup"]);
    assert_eq!(code(&out), 0, "next backup: {}", stderr(&out));
    assert_eq!(repo.list_backups().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_archiving_fails_the_backup() {
    if harness::skip("broken_archiving_fails_the_backup") {
        return;
    }
    let scratch = Scratch::new("backup-noarch");
    let repo_dir = scratch.subdir("repo");
    let mut pg = PgCluster::init(
        scratch.path(),
        "archive_mode = on\narchive_command = '/bin/false'\n",
    );
    pg.start();
    let cfg = TestConfig::write(
        scratch.path(),
        &RepoTarget::Local(repo_dir),
        "core",
        &pg.pgdata,
        &pg.connection(),
        "[backup]\narchive_wait_seconds = 3\n",
    );
    let out = cfg.run(&["backup"]);
    assert_ne!(code(&out), 0);
    let err = stderr(&out);
    assert!(
        err.contains("archiving") && err.contains("pg_stat_archiver"),
        "{err}"
    );
    assert!(repository(&cfg).list_backups().await.unwrap().is_empty());
    let out = cfg.run(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backups"].as_array().unwrap().len(), 0);
}

#[test]
fn wrong_pgdata_is_refused_before_copying() {
    if harness::skip("wrong_pgdata_is_refused_before_copying") {
        return;
    }
    let scratch = Scratch::new("backup-wrongdir");
    let mut pg = PgCluster::init(&scratch.subdir("a"), "");
    pg.start();
    let other = PgCluster::init(&scratch.subdir("b"), "");
    let repo_dir = scratch.subdir("repo");
    let cfg = TestConfig::write(
        scratch.path(),
        &RepoTarget::Local(repo_dir.clone()),
        "core",
        &other.pgdata,
        &pg.connection(),
        "",
    );
    let out = cfg.run(&["backup"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing to copy"),
        "{}",
        stderr(&out)
    );
    assert!(
        !repo_dir.join("core").join("backups").exists(),
        "nothing may be copied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupt_page_is_reported_with_relation_and_block() {
    if harness::skip("corrupt_page_is_reported_with_relation_and_block") {
        return;
    }
    let scratch = Scratch::new("backup-corrupt");
    let repo_dir = scratch.subdir("repo");
    let (mut pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir), "");
    pg.psql(
        "create table victim as select g, repeat('x', 100) pad from generate_series(1, 5000) g",
    );
    pg.psql("checkpoint");
    let rel = pg.psql("select pg_relation_filepath('victim')");
    pg.stop();
    // Flip a byte in the tuple data of block 2 (not the header), as a disk would.
    let path = pg.pgdata.join(&rel);
    let mut data = std::fs::read(&path).unwrap();
    data[2 * 8192 + 4000] ^= 0xFF;
    std::fs::write(&path, &data).unwrap();
    pg.start();
    let out = cfg.run(&["backup"]);
    assert_eq!(
        code(&out),
        0,
        "the backup continues past a bad page: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains(&rel) && err.contains("block"),
        "warning must name relation and block: {err}"
    );
    let m = repository(&cfg)
        .list_backups()
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(m.page_problems.len(), 1, "{:?}", m.page_problems);
    assert_eq!(m.page_problems[0].path, rel);
    assert_eq!(m.page_problems[0].block, 2);
}
