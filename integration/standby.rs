//! Base backups with a streaming standby in the picture: taken on the standby and restored,
//! following the primary through a multi-host connection string, and refusing to copy the
//! data directory of a server other than the connected one.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::harness::{
    self, archiving_cluster, as_postgres, code, repository, stderr, PgCluster, RepoTarget,
    Scratch, TestConfig, PG_BIN,
};
use crate::replica::{multi_host_connection, start_standby, wait_replayed};

/// A config for cluster "core" in its own directory (not the archiving cluster's config file,
/// which `archive_command` reads), with `backup_from` set.
fn config(
    dir: &Path,
    repo: &Path,
    pgdata: &Path,
    connection: &str,
    backup_from: &str,
    extra: &str,
) -> TestConfig {
    let cfg = TestConfig::write(
        dir,
        &RepoTarget::Local(repo.to_path_buf()),
        "core",
        pgdata,
        connection,
        extra,
    );
    let mut text = std::fs::read_to_string(&cfg.path).unwrap();
    text.push_str(&format!("backup_from = \"{backup_from}\"\n"));
    std::fs::write(&cfg.path, text).unwrap();
    cfg
}

/// `backup` as the postgres OS user, as the agent runs it (a local repository's directories
/// must stay writable for `wal-push`).
fn backup(cfg: &TestConfig) -> std::process::Output {
    cfg.run_as_postgres(&["backup"], cfg.path.parent().unwrap())
}

fn backup_ok(cfg: &TestConfig) -> String {
    let out = backup(cfg);
    assert_eq!(code(&out), 0, "backup failed: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// pgbench writing on `pg` for `seconds`, in the background.
fn write_load(pg: &PgCluster, seconds: u32) -> Child {
    as_postgres(format!("{PG_BIN}/pgbench"))
        .arg("-h")
        .arg(&pg.socket_dir)
        .args(["-p", &pg.port.to_string(), "-U", "postgres", "-n", "-c", "2"])
        .args(["-T", &seconds.to_string(), "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Stops (immediately) the server a `restore --start` left running when the test ends.
struct RestoredServer<'a>(&'a Path);

impl Drop for RestoredServer<'_> {
    fn drop(&mut self) {
        if self.0.join("postmaster.pid").exists() {
            let _ = as_postgres(format!("{PG_BIN}/pg_ctl"))
                .args(["-w", "-m", "immediate", "-D"])
                .arg(self.0)
                .arg("stop")
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn standby_backup_restores_and_recovers() {
    if harness::skip("standby_backup_restores_and_recovers") {
        return;
    }
    let scratch = Scratch::new("standby-backup");
    let repo_dir = scratch.subdir("repo");
    let (mut primary, _) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir.clone()), "");
    primary.psql("create table status(message text); insert into status values ('backup')");
    primary.pgbench(&["-i", "-s", "5", "-q"]);
    let mut standby = start_standby(&scratch.path().join("standby"), &primary, "");
    let cfg = config(
        &scratch.subdir("cfg"),
        &repo_dir,
        &standby.pgdata,
        &multi_host_connection(&[&primary, &standby]),
        "standby",
        "[backup]\narchive_wait_seconds = 120\n",
    );

    let mut load = write_load(&primary, 20);
    std::thread::sleep(Duration::from_secs(2));
    let out = backup(&cfg);
    let _ = load.kill();
    let _ = load.wait();
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "backup on the standby failed: {err}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(err.contains("backing up the standby at"), "{err}");

    let m = repository(&cfg)
        .get_manifest(&id.parse().unwrap())
        .await
        .unwrap()
        .expect("manifest stored");
    assert_eq!(m.backup_from, "standby");
    assert!(m.backup_label.contains("BACKUP FROM: standby"), "{}", m.backup_label);
    assert!(m.stop_lsn > m.start_lsn);
    assert!(m.files.iter().any(|f| f.path == "global/pg_control"));

    // Written on the primary after the backup, archived: a restore must bring it back.
    primary.psql("update status set message = 'after the standby backup'");
    primary.psql("create table marker as select g from generate_series(1, 1000) g");
    wait_replayed(&primary, &standby);
    let seg = primary.switch_wal();
    primary.wait_archived(&seg, Duration::from_secs(120));
    standby.stop();
    primary.stop();

    // The restored directory passes pg_verifybackup before it is started.
    let checked = scratch.path().join("checked/pgdata");
    let out = cfg.run(&["restore", "--pgdata", checked.to_str().unwrap(), "--latest"]);
    assert_eq!(code(&out), 0, "restore: {}", stderr(&out));
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

    // Recovered to the end of the archive and promoted. The copy keeps the primary's
    // postgresql.conf (pg_basebackup copied it to the standby), so it listens on the
    // primary's socket and port: `primary.psql` reaches it.
    let restored = scratch.path().join("restored/pgdata");
    let _guard = RestoredServer(&restored);
    let out = cfg.run(&[
        "restore",
        "--pgdata",
        restored.to_str().unwrap(),
        "--latest",
        "--start",
    ]);
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "restore --latest --start: {err}");
    assert!(err.contains(&format!("backup: {id}")), "{err}");
    assert_eq!(
        primary.psql("select current_setting('data_directory')"),
        restored.display().to_string()
    );
    assert_eq!(primary.psql("select pg_is_in_recovery()"), "f");
    assert_eq!(
        primary.psql("select message from status"),
        "after the standby backup"
    );
    assert_eq!(primary.psql("select count(*) from marker"), "1000");
    assert_eq!(
        primary.psql("select count(*) from pgbench_accounts"),
        "500000"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_from_primary_follows_the_primary() {
    if harness::skip("backup_from_primary_follows_the_primary") {
        return;
    }
    let scratch = Scratch::new("standby-follow");
    let repo_dir = scratch.subdir("repo");
    let (primary, _) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir.clone()), "");
    let mut standby = start_standby(&scratch.path().join("standby"), &primary, "");
    let dir = scratch.subdir("cfg");
    // The standby is listed first; the default backup_from needs a read-write session.
    let standby_first = multi_host_connection(&[&standby, &primary]);
    let cfg = TestConfig::write(
        &dir,
        &RepoTarget::Local(repo_dir.clone()),
        "core",
        &primary.pgdata,
        &standby_first,
        "",
    );
    let first = backup_ok(&cfg);
    let repo = repository(&cfg);
    let m = repo.get_manifest(&first.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(m.backup_from, "primary");
    assert!(m.backup_label.contains("BACKUP FROM: primary"));

    // prefer-standby with no standby up falls back to the primary.
    standby.stop();
    std::thread::sleep(Duration::from_millis(1100)); // backup ids are per second
    let cfg = config(
        &dir,
        &repo_dir,
        &primary.pgdata,
        &standby_first,
        "prefer-standby",
        "",
    );
    let out = backup(&cfg);
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    assert!(err.contains("backing up the primary at"), "{err}");
    let second = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(first, second);
    let m = repo.get_manifest(&second.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(m.backup_from, "primary");

    // backup_from = "standby" with no standby up: an error naming every host tried.
    let cfg = config(&dir, &repo_dir, &primary.pgdata, &standby_first, "standby", "");
    let out = backup(&cfg);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains("backup_from = \"standby\" needs a standby")
            && err.contains(&format!("{} port {}", standby.socket_dir.display(), standby.port))
            && err.contains(&format!("{} port {}: read-write (a primary), not a standby", primary.socket_dir.display(), primary.port)),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_node_is_refused_before_copying() {
    if harness::skip("wrong_node_is_refused_before_copying") {
        return;
    }
    let scratch = Scratch::new("standby-wrong");
    let mut primary = PgCluster::init(&scratch.subdir("primary"), "");
    primary.start();
    let mut standby = start_standby(&scratch.path().join("standby"), &primary, "");
    let repo_dir = scratch.subdir("repo");
    let both = multi_host_connection(&[&primary, &standby]);
    let dir = scratch.subdir("cfg");
    let refused = |cfg: &TestConfig, wants: &[&str]| {
        let out = backup(cfg);
        let err = stderr(&out);
        assert_eq!(code(&out), 4, "{err}");
        for w in wants {
            assert!(err.contains(w), "want {w:?} in {err}");
        }
        assert!(
            !repo_dir.join("core").join("backups").exists(),
            "nothing may be copied"
        );
    };
    let at = |pg: &PgCluster| format!("{} port {}", pg.socket_dir.display(), pg.port);

    // The primary answers, but pgdata is the standby's.
    let cfg = config(&dir, &repo_dir, &standby.pgdata, &both, "primary", "");
    refused(
        &cfg,
        &[
            &format!("connected to the primary at {}", at(&primary)),
            "belongs to another server",
            "pgdata's server is a standby, the connected one a primary",
            "refusing to copy",
            "backup_from",
        ],
    );
    // The standby answers, but pgdata is the primary's.
    let cfg = config(&dir, &repo_dir, &primary.pgdata, &both, "standby", "");
    refused(
        &cfg,
        &[
            &format!("connected to a standby at {}", at(&standby)),
            "belongs to another server",
        ],
    );
    // No server runs on pgdata.
    standby.stop();
    let cfg = config(&dir, &repo_dir, &standby.pgdata, &both, "primary", "");
    refused(&cfg, &["has no running PostgreSQL server", "refusing to copy"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn standby_backup_without_a_primary_fails_and_says_so() {
    if harness::skip("standby_backup_without_a_primary_fails_and_says_so") {
        return;
    }
    let scratch = Scratch::new("standby-noprimary");
    let repo_dir = scratch.subdir("repo");
    let (mut primary, _) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir.clone()), "");
    let standby = start_standby(&scratch.path().join("standby"), &primary, "");
    primary.psql("create table t as select 1");
    wait_replayed(&primary, &standby);
    primary.stop();
    let cfg = config(
        &scratch.subdir("cfg"),
        &repo_dir,
        &standby.pgdata,
        &multi_host_connection(&[&primary, &standby]),
        "standby",
        "[backup]\narchive_wait_seconds = 6\n",
    );
    let out = backup(&cfg);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains("cannot switch WAL") && err.contains("no primary was reachable"),
        "{err}"
    );
    assert!(repository(&cfg).list_backups().await.unwrap().is_empty());
}
