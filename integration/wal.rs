//! WAL archiving against real PostgreSQL 15 clusters, on local and S3 storage.

use std::path::{Path, PathBuf};
use std::time::Duration;

use synapse_backup::pg::{WalFileName, WalSegmentName};
use synapse_backup::repo::Repository;

use crate::harness::{
    self, archiving_cluster, code, repository, stderr, PgCluster, PrivateS3, RepoTarget, Scratch,
    TestConfig, BIN, PG_BIN,
};

/// Archived segment names on timeline 1, sorted.
async fn archived_segments(repo: &Repository) -> Vec<String> {
    let mut names: Vec<String> = repo
        .list_wal()
        .await
        .expect("list wal")
        .into_iter()
        .filter_map(|(n, _)| match n {
            WalFileName::Segment(s) => Some(s.to_string()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

/// Every segment from the first to `last` is present: no gap.
fn assert_continuous(names: &[String], last: &str) {
    let size = synapse_backup::pg::WalSegmentSize::DEFAULT;
    let first: WalSegmentName = names.first().expect("some segments").parse().unwrap();
    let last: WalSegmentName = last.parse().unwrap();
    let mut want = first;
    let mut expected = Vec::new();
    while want.segno(size) <= last.segno(size) {
        expected.push(want.to_string());
        want = want.next(size);
    }
    let got: Vec<&String> = names
        .iter()
        .filter(|n| n.as_str() <= expected.last().unwrap().as_str())
        .collect();
    assert_eq!(
        got,
        expected.iter().collect::<Vec<_>>(),
        "archive has a gap"
    );
}

fn make_load(pg: &PgCluster) -> String {
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let mut last = pg.switch_wal();
    pg.pgbench(&["-c", "2", "-t", "300", "-n"]);
    for i in 0..3 {
        pg.psql(&format!(
            "create table if not exists t(x int); insert into t select generate_series(1, {})",
            10_000 * (i + 1)
        ));
        last = pg.switch_wal();
    }
    last
}

async fn archive_and_fetch(scratch: &Scratch, target: RepoTarget) {
    let (pg, cfg) = archiving_cluster(scratch, &target, "");
    let last = make_load(&pg);
    pg.wait_archived(&last, Duration::from_secs(120));
    let repo = repository(&cfg);
    let names = archived_segments(&repo).await;
    assert!(names.len() >= 5, "expected several segments, got {names:?}");
    assert_continuous(&names, &last);

    // wal-fetch returns byte-identical files.
    let fetched = scratch.subdir("fetched");
    let mut compared = 0;
    for name in names.iter().filter(|n| n.as_str() <= last.as_str()) {
        let dest = fetched.join(name);
        let out = cfg.run(&["wal-fetch", name, dest.to_str().unwrap()]);
        assert_eq!(code(&out), 0, "wal-fetch {name}: {}", stderr(&out));
        let original = pg.pgdata.join("pg_wal").join(name);
        if original.exists() {
            assert!(
                std::fs::read(&dest).unwrap() == std::fs::read(&original).unwrap(),
                "{name} differs from the original"
            );
            compared += 1;
        }
    }
    assert!(
        compared >= names.len() - 1,
        "compared only {compared} of {}",
        names.len()
    );
    // The fetched WAL decodes as one continuous stream.
    let out = std::process::Command::new(format!("{PG_BIN}/pg_waldump"))
        .arg("-q")
        .arg("-p")
        .arg(&fetched)
        .arg(&names[0])
        .arg(&last)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_waldump over the fetched WAL: {}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_archive_and_fetch_local() {
    if harness::skip("wal_archive_and_fetch_local") {
        return;
    }
    let scratch = Scratch::new("wal-local");
    let repo = scratch.subdir("repo");
    archive_and_fetch(&scratch, RepoTarget::Local(repo)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_archive_and_fetch_s3() {
    if harness::skip("wal_archive_and_fetch_s3") {
        return;
    }
    let scratch = Scratch::new("wal-s3");
    let target = harness::shared_s3(&scratch, "wal");
    archive_and_fetch(&scratch, target).await;
}

fn local_object(repo_dir: &Path, name: &str) -> PathBuf {
    repo_dir
        .join("core")
        .join("wal")
        .join(&name[..16])
        .join(format!("{name}.gz"))
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_push_is_idempotent_and_refuses_conflicts() {
    if harness::skip("wal_push_is_idempotent_and_refuses_conflicts") {
        return;
    }
    let scratch = Scratch::new("wal-conflict");
    let repo_dir = scratch.subdir("repo");
    let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir.clone()), "");
    pg.psql("create table t as select generate_series(1, 1000) x");
    let seg = pg.switch_wal();
    pg.wait_archived(&seg, Duration::from_secs(60));
    let stored = local_object(&repo_dir, &seg);
    let stored_before = std::fs::read(&stored).expect("archived object");

    // A copy of the segment in a directory of our own (PostgreSQL's pg_wal is not ours to touch).
    let fake = scratch.subdir("fake/pg_wal");
    let copy = fake.join(&seg);
    std::fs::copy(pg.pgdata.join("pg_wal").join(&seg), &copy).unwrap();

    let out = cfg.run(&["wal-push", copy.to_str().unwrap()]);
    assert_eq!(
        code(&out),
        0,
        "identical re-push must succeed: {}",
        stderr(&out)
    );

    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[100_000] ^= 0xFF;
    std::fs::write(&copy, &bytes).unwrap();
    let out = cfg.run(&["wal-push", copy.to_str().unwrap()]);
    assert_eq!(
        code(&out),
        4,
        "conflicting push must be refused: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("different content"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        stored_before,
        "archived object was changed"
    );

    // A segment of another cluster (another system identifier) is refused before upload.
    let other = scratch.subdir("other");
    let other_pg = PgCluster::init(&other, "");
    let other_seg = std::fs::read_dir(other_pg.pgdata.join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().into_string().unwrap())
        .find(|n| n.len() == 24)
        .unwrap();
    let foreign = scratch
        .subdir("foreign/pg_wal")
        .join("00000001000000000000007F");
    let mut data = std::fs::read(other_pg.pgdata.join("pg_wal").join(&other_seg)).unwrap();
    // Make the name match the page address so that only the system identifier differs.
    data[8..16].copy_from_slice(&(0x7Fu64 << 24).to_le_bytes());
    std::fs::write(&foreign, &data).unwrap();
    let out = cfg.run(&["wal-push", foreign.to_str().unwrap()]);
    assert_eq!(
        code(&out),
        4,
        "foreign segment must be refused: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("system identifier"),
        "{}",
        stderr(&out)
    );
    assert!(
        !local_object(&repo_dir, "00000001000000000000007F").exists(),
        "foreign segment was uploaded"
    );

    // Missing file in the archive: exit 1, DEST not written.
    let dest = scratch.subdir("restore").join("RECOVERYXLOG");
    let out = cfg.run(&[
        "wal-fetch",
        "0000000100000000000000FE",
        dest.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(!dest.exists());

    // Corrupted stored object: wal-fetch fails naming it (fatal to recovery), DEST not written.
    let mut obj = std::fs::read(&stored).unwrap();
    let mid = obj.len() / 2;
    obj[mid] ^= 0x55;
    std::fs::write(&stored, &obj).unwrap();
    let out = cfg.run(&["wal-fetch", &seg, dest.to_str().unwrap()]);
    assert!(
        code(&out) > 125,
        "corruption must stop recovery: {} {}",
        code(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(&format!("{seg}.gz")),
        "error must name the object: {}",
        stderr(&out)
    );
    assert!(!dest.exists(), "DEST written from a corrupt object");
}

/// The archiver position names the newest segment stored, also when that segment was pushed
/// ahead by an earlier call and its own call returned at its marker (before the fix, the
/// position stayed at the file of the call that did the work, so `list` could not name a
/// deleted newest segment).
#[tokio::test(flavor = "multi_thread")]
async fn a_segment_pushed_ahead_is_the_archiver_position() {
    if harness::skip("a_segment_pushed_ahead_is_the_archiver_position") {
        return;
    }
    let scratch = Scratch::new("wal-ahead");
    let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(scratch.subdir("repo")), "");
    let mut names = Vec::new();
    for i in 0..3 {
        pg.psql(&format!(
            "create table t{i} as select generate_series(1, 1000) x"
        ));
        names.push(pg.switch_wal());
    }
    pg.wait_archived(names.last().unwrap(), Duration::from_secs(60));
    // The three segments in a pg_wal of our own, each waiting to be archived, pushed into a
    // second repository as PostgreSQL would: the first call stores all three (itself and
    // two ahead).
    let fake = scratch.subdir("fake/pg_wal");
    std::fs::create_dir_all(fake.join("archive_status")).unwrap();
    for name in &names {
        let out = cfg.run(&["wal-fetch", name, fake.join(name).to_str().unwrap()]);
        assert_eq!(code(&out), 0, "wal-fetch {name}: {}", stderr(&out));
        std::fs::write(
            fake.join("archive_status").join(format!("{name}.ready")),
            b"",
        )
        .unwrap();
    }
    let second_repo = scratch.subdir("second-repo");
    let second = TestConfig::write(
        &scratch.subdir("second"),
        &RepoTarget::Local(second_repo.clone()),
        "core",
        &pg.pgdata,
        &pg.connection(),
        "[archive]\npush_parallelism = 3\n",
    );
    for (i, name) in names.iter().enumerate() {
        let out = second.run(&["-v", "wal-push", fake.join(name).to_str().unwrap()]);
        assert_eq!(code(&out), 0, "wal-push {name}: {}", stderr(&out));
        // As PostgreSQL does once archive_command succeeded.
        let status = fake.join("archive_status");
        std::fs::rename(
            status.join(format!("{name}.ready")),
            status.join(format!("{name}.done")),
        )
        .unwrap();
        if i > 0 {
            assert!(
                stderr(&out).contains("already stored by look-ahead"),
                "{name} was not pushed ahead: {}",
                stderr(&out)
            );
        }
    }
    let newest = names.last().unwrap();
    let repo = repository(&second);
    assert_eq!(
        repo.pushed_position().await.unwrap().map(|s| s.to_string()),
        Some(newest.clone())
    );
    // So the newest segment, deleted, is named.
    std::fs::remove_file(local_object(&second_repo, newest)).unwrap();
    let out = second.run(&["list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(newest.as_str()),
        "list does not name the deleted newest segment {newest}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_survives_a_store_outage() {
    if harness::skip("wal_survives_a_store_outage") {
        return;
    }
    let scratch = Scratch::new("wal-outage");
    let mut s3 = PrivateS3::start(&scratch, 9610);
    let target = s3.target(&scratch, "outage");
    let (pg, cfg) = archiving_cluster(&scratch, &target, "");
    pg.psql("create table t as select generate_series(1, 1000) x");
    let first = pg.switch_wal();
    pg.wait_archived(&first, Duration::from_secs(60));

    s3.stop();
    // Direct calls while the store is down.
    let fake = scratch.subdir("fake/pg_wal");
    let copy = fake.join(&first);
    std::fs::copy(pg.pgdata.join("pg_wal").join(&first), &copy).unwrap();
    let out = cfg.run(&["wal-push", copy.to_str().unwrap()]);
    assert!(
        (1..=125).contains(&code(&out)),
        "wal-push must fail with 1..125 so PostgreSQL retries: {} {}",
        code(&out),
        stderr(&out)
    );
    let dest = scratch.subdir("restore").join("RECOVERYXLOG");
    let out = cfg.run(&["wal-fetch", &first, dest.to_str().unwrap()]);
    assert!(
        code(&out) > 125,
        "wal-fetch must stop recovery when the store is down: {} {}",
        code(&out),
        stderr(&out)
    );
    assert!(!dest.exists());

    // PostgreSQL keeps the segments and retries.
    let mut last = first.clone();
    for i in 0..3 {
        pg.psql(&format!(
            "insert into t select generate_series(1, {})",
            1000 * (i + 1)
        ));
        last = pg.switch_wal();
    }
    let start = std::time::Instant::now();
    while pg.psql("select failed_count from pg_stat_archiver") == "0" {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "archiver never reported a failure"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    s3.restart();
    // Wake the archiver (it otherwise retries on its 60 s poll).
    pg.psql("insert into t values (0)");
    let newest = pg.switch_wal();
    pg.wait_archived(&newest, Duration::from_secs(120));
    assert!(newest > last);
    let names = archived_segments(&repository(&cfg)).await;
    assert_continuous(&names, &newest);
}

#[test]
fn bad_inputs_give_one_line_errors() {
    if harness::skip("bad_inputs_give_one_line_errors") {
        return;
    }
    let scratch = Scratch::new("bad-input");
    let repo = scratch.subdir("repo");
    let pgdata = scratch.path().join("pgdata");
    let cfg = TestConfig::write(
        scratch.path(),
        &RepoTarget::Local(repo),
        "core",
        &pgdata,
        "host=/tmp",
        "",
    );
    let wal = scratch.subdir("pg_wal");
    std::fs::write(wal.join("not-a-wal-file"), b"hello").unwrap();
    // A truncated segment: the first 1 MiB of a real one.
    let other = scratch.subdir("c");
    let pg = PgCluster::init(&other, "");
    let seg = std::fs::read_dir(pg.pgdata.join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().len() == 24)
        .unwrap();
    let data = std::fs::read(seg.path()).unwrap();
    std::fs::write(wal.join("000000010000000000000001"), &data[..1 << 20]).unwrap();

    let p = |n: &str| wal.join(n).to_string_lossy().into_owned();
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["wal-push".into(), p("000000010000000000000055")],
            1,
            "000000010000000000000055",
        ),
        (
            vec!["wal-push".into(), p("not-a-wal-file")],
            2,
            "not a WAL file name",
        ),
        (
            vec!["wal-push".into(), p("000000010000000000000001")],
            1,
            "truncated",
        ),
        (
            vec![
                "--cluster".into(),
                "nope".into(),
                "wal-push".into(),
                p("000000010000000000000001"),
            ],
            2,
            "unknown cluster",
        ),
        (
            vec!["wal-fetch".into(), "RECOVERYXLOG".into(), p("x")],
            255,
            "not a WAL file name",
        ),
    ];
    for (args, want, text) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cfg.run(&args);
        let err = stderr(&out);
        assert_eq!(code(&out), want, "{args:?}: {err}");
        assert!(err.contains(text), "{args:?}: want {text:?} in {err:?}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: error must be one line: {err:?}"
        );
    }
    let out = std::process::Command::new(BIN)
        .args(["--config", "/nonexistent/synapse.toml", "wal-push", "x"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("/nonexistent/synapse.toml"));
    assert_eq!(stderr(&out).trim_end().lines().count(), 1);
}

#[test]
fn check_passes_on_a_working_setup_and_fails_on_broken_archiving() {
    if harness::skip("check_passes_on_a_working_setup_and_fails_on_broken_archiving") {
        return;
    }
    let scratch = Scratch::new("check");
    let repo_dir = scratch.subdir("repo");
    let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir), "");
    pg.psql("create table t as select 1 x");
    let out = cfg.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
    assert!(
        text.contains("all checks passed") && text.contains("reached the repository"),
        "{text}"
    );
    // Point archive_command somewhere that fails: check says so.
    pg.psql("alter system set archive_command = '/bin/false'");
    pg.psql("select pg_reload_conf()");
    pg.psql("insert into t values (2)");
    let out = cfg
        .command(&["check"])
        .env("SYNAPSE_CHECK_TIMEOUT_SECONDS", "5")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_ne!(code(&out), 0, "{text}");
    assert!(
        text.contains("FAIL  archiving") && text.contains("archive_command"),
        "{text}"
    );
}
