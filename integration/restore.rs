//! Point-in-time restores of real PostgreSQL 15 clusters, pgBackRest style: a `status` table
//! holds a marker row, the tests restore to the moment it said 'target' (by time, by LSN) or to
//! the end of the archive, start the restored server with `restore --start`, and read the marker.
//!
//! A restored copy keeps the original's postgresql.conf (same port and socket), so the original
//! is stopped before the first `--start`, and the configured connection reaches the copy. A copy
//! restored with `--as-primary` that promotes archives a new timeline into the repository
//! (pg-reference §0 item 8; by default a copy has `archive_mode = off`, see restore_safety.rs);
//! these tests still pause every restore but the last.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::harness::{
    self, archiving_cluster, backup, code, create_status, create_tablespace, set_marker, stderr,
    PgCluster, RepoTarget, RestoredServer, Scratch, TestConfig, PG_BIN,
};

/// Read times without an offset in New York, not UTC.
fn use_new_york(cfg: &TestConfig) {
    let text = std::fs::read_to_string(&cfg.path).unwrap();
    let text = text.replacen("timezone = \"UTC\"", "timezone = \"America/New_York\"", 1);
    std::fs::write(&cfg.path, text).unwrap();
}

/// `now()` as naive New York time, microseconds: what an on-call engineer in New York types.
fn now_in_new_york(pg: &PgCluster) -> String {
    pg.psql("select to_char(now() at time zone 'America/New_York', 'YYYY-MM-DD HH24:MI:SS.US')")
}

/// `now()` as RFC 3339 with a +02:00 offset (`Etc/GMT-2` is UTC+2).
fn now_plus_two(pg: &PgCluster) -> String {
    pg.psql(
        r#"select to_char(now() at time zone 'Etc/GMT-2', 'YYYY-MM-DD"T"HH24:MI:SS.US"+02:00"')"#,
    )
}

pub(crate) fn restore(cfg: &TestConfig, pgdata: &Path, args: &[&str]) -> Output {
    let mut all = vec!["restore", "--pgdata", pgdata.to_str().unwrap()];
    all.extend_from_slice(args);
    cfg.run(&all)
}

/// `restore … --start`, which must succeed; returns the guard and stderr.
pub(crate) fn restore_started(
    cfg: &TestConfig,
    pgdata: &Path,
    args: &[&str],
) -> (RestoredServer, String) {
    let guard = RestoredServer::new(pgdata);
    let mut all = args.to_vec();
    all.push("--start");
    let out = restore(cfg, pgdata, &all);
    let err = stderr(&out);
    eprintln!("--- restore {args:?}:\n{err}");
    assert_eq!(
        code(&out),
        0,
        "restore {args:?} failed: {err}\nserver log:\n{}",
        server_log(pgdata)
    );
    (guard, err)
}

fn server_log(pgdata: &Path) -> String {
    let Some(dir) = pgdata.parent() else {
        return String::new();
    };
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("restore-"))
        .map(|e| harness::tail(&std::fs::read_to_string(e.path()).unwrap_or_default(), 40))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_owned_by_postgres(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let is_root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if !is_root {
        return;
    }
    let out = std::process::Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    for p in [
        path.to_path_buf(),
        path.join("PG_VERSION"),
        path.join("base"),
        path.join("backup_label"),
    ] {
        assert_eq!(
            std::fs::metadata(&p).unwrap().uid(),
            uid,
            "{} is not owned by postgres",
            p.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_to_time_lsn_and_latest() {
    if harness::skip("restore_to_time_lsn_and_latest") {
        return;
    }
    let scratch = Scratch::new("restore-pitr");
    let repo = scratch.subdir("repo");
    let (mut pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo), "");
    use_new_york(&cfg);
    create_status(&pg, "backup");
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    // A tablespace, which every restore below relocates.
    let oid = create_tablespace(&pg, &scratch.subdir("ts-original"));
    let relocate = |name: &str| {
        format!(
            "--tablespace-map={oid}={}",
            scratch.path().join(name).join("ts").display()
        )
    };
    let id = backup(&cfg);

    set_marker(&pg, "target");
    std::thread::sleep(Duration::from_millis(20));
    let target_time = now_in_new_york(&pg);
    // The insert position: with synchronous_commit = off (the harness's setting) the write
    // position can still be before the commit record of 'target'.
    let target_lsn = pg.psql("select pg_current_wal_insert_lsn()");
    std::thread::sleep(Duration::from_millis(20));
    set_marker(&pg, "after");
    pg.pgbench(&["-c", "1", "-t", "200", "-n"]);
    set_marker(&pg, "latest");
    pg.archive_everything();
    pg.stop();

    // The tablespace's original directory is not empty: restoring into it is refused.
    let checked = scratch.path().join("verify/pgdata");
    let out = restore(&cfg, &checked, &["--latest"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("tablespace {oid}")),
        "{}",
        stderr(&out)
    );
    assert!(!checked.exists());

    // pg_verifybackup accepts the restored directory (tablespace included) before it is started.
    let out = restore(&cfg, &checked, &["--latest", &relocate("verify")]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read_link(checked.join("pg_tblspc").join(&oid)).unwrap(),
        scratch.path().join("verify/ts")
    );
    assert!(
        stderr(&out).contains(&format!("backup: {id}")),
        "{}",
        stderr(&out)
    );
    assert!(!checked.join("SYNAPSE_RESTORE_INCOMPLETE").exists());
    assert_owned_by_postgres(&checked);
    let out = std::process::Command::new(format!("{PG_BIN}/pg_verifybackup"))
        .arg("-n")
        .arg(&checked)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup -n: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );

    // To the LSN (paused at the target: a promoted copy would archive a new timeline).
    let by_lsn = scratch.path().join("lsn/pgdata");
    let (server, _) = restore_started(
        &cfg,
        &by_lsn,
        &[
            "--lsn",
            &target_lsn,
            "--target-action",
            "pause",
            &relocate("lsn"),
        ],
    );
    assert_eq!(pg.psql("select message from status"), "target");
    assert_eq!(pg.psql("select pg_is_in_recovery()"), "t");
    server.stop();

    // To the time, given as naive New York time: the printed UTC instant and the written
    // setting (explicit offset) both say so.
    let by_time = scratch.path().join("time/pgdata");
    let (server, err) = restore_started(
        &cfg,
        &by_time,
        &[
            "--to",
            &target_time,
            "--target-action",
            "pause",
            &relocate("time"),
        ],
    );
    assert!(
        err.contains(&format!("target: {target_time} America/New_York")),
        "{err}"
    );
    let setting = pg.psql("show recovery_target_time");
    assert!(
        setting.ends_with("+00"),
        "recovery_target_time {setting:?} has no explicit offset"
    );
    assert_eq!(pg.psql("select message from status"), "target");
    // The instant printed is the instant written.
    let utc = pg.psql(&format!(
        "select to_char(('{target_time}'::timestamp at time zone 'America/New_York') at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS')"
    ));
    assert!(
        err.contains(&format!("= {utc}")),
        "{err} should show {utc} UTC"
    );
    assert!(setting.starts_with(&utc), "{setting} vs {utc}");
    server.stop();

    // To the end of the archive, promoted: everything is back and the server is writable.
    let latest = scratch.path().join("latest/pgdata");
    let (server, err) = restore_started(&cfg, &latest, &["--latest", &relocate("latest")]);
    assert!(err.contains("promoted"), "{err}");
    assert_eq!(pg.psql("select message from status"), "latest");
    assert_eq!(pg.psql("select v from in_ts"), "in tablespace");
    assert_eq!(
        pg.psql(&format!("select pg_tablespace_location({oid})")),
        scratch.path().join("latest/ts").display().to_string()
    );
    assert_eq!(pg.psql("select pg_is_in_recovery()"), "f");
    pg.psql("insert into status values ('writable')");
    assert_eq!(pg.psql("select count(*) from pgbench_history"), "200");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_picks_the_backup_before_the_target() {
    if harness::skip("restore_picks_the_backup_before_the_target") {
        return;
    }
    let scratch = Scratch::new("restore-two");
    let repo = scratch.subdir("repo");
    let (mut pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo), "");
    create_status(&pg, "start");
    let first = backup(&cfg);
    set_marker(&pg, "one");
    std::thread::sleep(Duration::from_millis(20));
    let t1 = pg.now_rfc3339();
    std::thread::sleep(Duration::from_millis(1100)); // backup ids are per second
    let second = backup(&cfg);
    assert_ne!(first, second);
    set_marker(&pg, "two");
    std::thread::sleep(Duration::from_millis(20));
    let t2 = now_plus_two(&pg);
    std::thread::sleep(Duration::from_millis(20));
    set_marker(&pg, "three");
    pg.archive_everything();
    pg.stop();

    // t1 lies between the backups: the first one serves it.
    let a = scratch.path().join("one/pgdata");
    let (server, err) = restore_started(&cfg, &a, &["--to", &t1, "--target-action", "pause"]);
    assert!(err.contains(&format!("backup: {first}")), "{err}");
    assert_eq!(pg.psql("select message from status"), "one");
    server.stop();

    // t2 is after the second; this time the restore runs as the postgres OS user, and promotes.
    let dir = scratch.subdir("two");
    let b = dir.join("pgdata");
    let guard = RestoredServer::new(&b);
    let out = cfg.run_as_postgres(
        &[
            "restore",
            "--pgdata",
            b.to_str().unwrap(),
            "--to",
            &t2,
            "--start",
        ],
        &dir,
    );
    assert_eq!(code(&out), 0, "{}\n{}", stderr(&out), server_log(&b));
    assert!(
        stderr(&out).contains(&format!("backup: {second}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(pg.psql("select message from status"), "two");
    assert_eq!(pg.psql("select pg_is_in_recovery()"), "f");
    guard.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_refuses_before_downloading() {
    if harness::skip("restore_refuses_before_downloading") {
        return;
    }
    let scratch = Scratch::new("restore-refuse");
    let repo = scratch.subdir("repo");
    let (mut pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo.clone()), "");
    create_status(&pg, "x");
    let before_backup = pg.now_rfc3339();
    std::thread::sleep(Duration::from_millis(20));
    let id = backup(&cfg);
    let mut segments = Vec::new();
    for i in 0..4 {
        set_marker(&pg, &format!("m{i}"));
        segments.push(pg.switch_wal());
    }
    pg.wait_archived(segments.last().unwrap(), Duration::from_secs(120));

    let target = scratch.path().join("refused/pgdata");
    let window_refusal = |args: &[&str], why: &str| {
        let out = restore(&cfg, &target, args);
        let err = stderr(&out);
        assert_eq!(code(&out), 3, "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: want {why:?} in {err}");
        assert!(
            err.contains("recoverable window: from "),
            "{args:?}: no window in {err}"
        );
        assert!(!target.exists(), "{args:?} wrote into the target directory");
    };
    window_refusal(
        &["--to", &before_backup],
        "before the end of the earliest backup",
    );
    window_refusal(&["--to", "2099-01-01 00:00:00+00"], "last archived commit");
    window_refusal(&["--lsn", "FF/0"], "end of the archived WAL");

    // A DST-ambiguous time (in the configured zone) is a usage error naming both instants.
    use_new_york(&cfg);
    let out = restore(&cfg, &target, &["--to", "2024-11-03 01:30"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("2024-11-03 05:30:00 UTC")
            && stderr(&out).contains("2024-11-03 06:30:00 UTC"),
        "{}",
        stderr(&out)
    );
    assert!(!target.exists());

    // A live server in the directory is refused even with --force, and nothing is removed.
    let out = restore(&cfg, &pg.pgdata, &["--latest", "--force"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("is running"), "{}", stderr(&out));
    assert!(pg.pgdata.join("PG_VERSION").exists());
    // A non-empty directory needs --force.
    let full = scratch.subdir("full");
    std::fs::write(full.join("precious"), b"x").unwrap();
    let out = restore(&cfg, &full, &["--latest"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert!(full.join("precious").exists());
    pg.stop();

    // A segment missing in the middle is found from the listing, before any download.
    let gap = &segments[1];
    let object = repo
        .join("core/wal")
        .join(&gap[..16])
        .join(format!("{gap}.gz"));
    let saved = std::fs::read(&object).unwrap();
    std::fs::remove_file(&object).unwrap();
    let out = restore(&cfg, &target, &["--latest"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{gap} is missing")),
        "{}",
        stderr(&out)
    );
    assert!(!target.exists());

    // Listed but unreadable: the pre-check passes, recovery fails (wal-fetch exits 255), and the
    // restore says so instead of trusting pg_ctl (pg-reference §0 item 6).
    std::fs::write(&object, b"not a gzip object").unwrap();
    let failing = scratch.path().join("fails/pgdata");
    let _guard = RestoredServer::new(&failing);
    let out = restore(&cfg, &failing, &["--latest", "--start"]);
    let err = stderr(&out);
    eprintln!("--- restore into a failing recovery:\n{err}");
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("stopped during recovery"), "{err}");
    assert!(
        err.contains(&format!("could not restore file \"{gap}\"")),
        "{err}"
    );
    std::fs::write(&object, saved).unwrap();

    // A corrupted part fails the restore naming the part, and leaves the directory marked.
    let part = repo.join("core/backups").join(&id).join("data-00.tar.gz");
    let mut bytes = std::fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5A;
    std::fs::write(&part, bytes).unwrap();
    let out = restore(&cfg, &target, &["--latest"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains(&format!(
            "backups/{id}/data-00.tar.gz: corrupt part: SHA-256"
        )),
        "{err}"
    );
    assert!(target.join("SYNAPSE_RESTORE_INCOMPLETE").exists());
    assert!(!target.join("global/pg_control").exists());
    // Such a directory cannot be reused by accident.
    let out = restore(&cfg, &target, &["--latest"]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("did not finish"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_from_s3() {
    if harness::skip("restore_from_s3") {
        return;
    }
    let scratch = Scratch::new("restore-s3");
    let target = harness::shared_s3(&scratch, "restore");
    let (mut pg, cfg) = archiving_cluster(&scratch, &target, "");
    create_status(&pg, "backup");
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let id = backup(&cfg);
    set_marker(&pg, "latest");
    pg.archive_everything();
    pg.stop();

    let pgdata = scratch.path().join("restored/pgdata");
    let (server, err) = restore_started(&cfg, &pgdata, &["--latest"]);
    assert!(err.contains(&format!("backup: {id}")), "{err}");
    assert_eq!(pg.psql("select message from status"), "latest");
    assert_eq!(pg.psql("select count(*) from pgbench_accounts"), "200000");
    server.stop();
}
