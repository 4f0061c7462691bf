//! Base backups with a streaming standby in the picture: taken on the standby and restored,
//! following the primary through a multi-host connection string, and refusing to copy the
//! data directory of a server other than the connected one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::replica::{multi_host_connection, start_standby, wait_replayed};
use crate::harness::{
    self, archiving_cluster, backup_id, backup_output, code, create_status, repository, run_ok,
    stderr, PgCluster, RepoTarget, RestoredServer, Scratch, TestConfig, PG_BIN,
};

/// A primary archiving into a local repository and a streaming standby of it. Fields drop in
/// order: the servers stop before their directories go.
struct Nodes {
    standby: PgCluster,
    primary: PgCluster,
    repo: PathBuf,
    scratch: Scratch,
}

impl Nodes {
    fn start(tag: &str) -> Nodes {
        let scratch = Scratch::new(tag);
        let repo = scratch.subdir("repo");
        let (primary, _) = archiving_cluster(&scratch, &RepoTarget::Local(repo.clone()), "");
        let standby = start_standby(&scratch.path().join("standby"), &primary, "");
        Nodes {
            standby,
            primary,
            repo,
            scratch,
        }
    }

    /// (Re)write the config of cluster "core" in `cfg/` (not the archiving cluster's config
    /// file, which `archive_command` reads), with `backup_from` set unless `None`.
    fn config(
        &self,
        pgdata: &Path,
        connection: &str,
        backup_from: Option<&str>,
        extra: &str,
    ) -> TestConfig {
        let cfg = TestConfig::write(
            &self.scratch.subdir("cfg"),
            &RepoTarget::Local(self.repo.clone()),
            "core",
            pgdata,
            connection,
            extra,
        );
        if let Some(from) = backup_from {
            cfg.append(&format!("backup_from = \"{from}\"\n"));
        }
        cfg
    }

    /// `host=<primary>,<standby> …`.
    fn both(&self) -> String {
        multi_host_connection(&[&self.primary, &self.standby])
    }
}

fn at(pg: &PgCluster) -> String {
    format!("{} port {}", pg.socket_dir.display(), pg.port)
}

#[tokio::test(flavor = "multi_thread")]
async fn standby_backup_restores_and_recovers() {
    if harness::skip("standby_backup_restores_and_recovers") {
        return;
    }
    let mut nodes = Nodes::start("standby-backup");
    let primary = &nodes.primary;
    create_status(primary, "backup");
    primary.pgbench(&["-i", "-s", "5", "-q"]);
    let cfg = nodes.config(
        &nodes.standby.pgdata,
        &nodes.both(),
        Some("standby"),
        "[backup]\narchive_wait_seconds = 120\n",
    );
    // pgbench writes on the primary while the standby is backed up.
    let out = std::thread::scope(|s| {
        s.spawn(|| primary.pgbench(&["-n", "-c", "2", "-T", "15"]));
        std::thread::sleep(Duration::from_secs(2));
        backup_output(&cfg)
    });
    let id = backup_id(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("backing up the standby at {}", at(&nodes.standby))),
        "{err}"
    );
    let m = repository(&cfg)
        .get_manifest(&id.parse().unwrap())
        .await
        .unwrap()
        .expect("manifest stored");
    assert_eq!(m.backup_from, "standby");
    assert!(m.backup_label.contains("BACKUP FROM: standby"), "{m:?}");
    assert!(m.stop_lsn > m.start_lsn);
    assert!(m.files.iter().any(|f| f.path == "global/pg_control"));

    // Written on the primary after the backup, archived: a restore must bring it back.
    primary.psql("update status set message = 'after the standby backup'");
    primary.psql("create table marker as select g from generate_series(1, 1000) g");
    wait_replayed(primary, &nodes.standby);
    primary.archive_everything();
    // `verify` proves it in an isolated scratch instance: restore, recovery, pg_verifybackup,
    // pg_amcheck.
    let out = cfg.run(&["verify", "--backup", &id]);
    assert_eq!(code(&out), 0, "verify: {}", stderr(&out));
    nodes.standby.stop();
    nodes.primary.stop();

    // The restored directory passes pg_verifybackup before it is started.
    let checked = nodes.scratch.path().join("checked/pgdata");
    let out = cfg.run(&["restore", "--pgdata", checked.to_str().unwrap(), "--latest"]);
    assert_eq!(code(&out), 0, "restore: {}", stderr(&out));
    run_ok(
        Command::new(format!("{PG_BIN}/pg_verifybackup"))
            .arg("-n")
            .arg(&checked),
    );

    // Recovered to the end of the archive and promoted. The copy keeps the primary's
    // postgresql.conf (pg_basebackup copied it to the standby), so it listens on the
    // primary's socket and port: `primary.psql` reaches it.
    let restored = nodes.scratch.path().join("restored/pgdata");
    let _guard = RestoredServer::new(&restored);
    let pgdata = restored.to_str().unwrap();
    let out = cfg.run(&["restore", "--pgdata", pgdata, "--latest", "--start"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "restore --latest --start: {err}");
    assert!(err.contains(&format!("backup: {id}")), "{err}");
    let restored_server = &nodes.primary;
    let sql = |q: &str| restored_server.psql(q);
    assert_eq!(sql("select current_setting('data_directory')"), pgdata);
    assert_eq!(sql("select pg_is_in_recovery()"), "f");
    assert_eq!(
        sql("select message from status"),
        "after the standby backup"
    );
    assert_eq!(sql("select count(*) from marker"), "1000");
    assert_eq!(sql("select count(*) from pgbench_accounts"), "500000");
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_from_primary_follows_the_primary() {
    if harness::skip("backup_from_primary_follows_the_primary") {
        return;
    }
    let mut nodes = Nodes::start("standby-follow");
    // The standby is listed first; the default backup_from needs a read-write session.
    let standby_first = multi_host_connection(&[&nodes.standby, &nodes.primary]);
    let pgdata = nodes.primary.pgdata.clone();
    let cfg = nodes.config(&pgdata, &standby_first, None, "");
    let first = backup_id(&backup_output(&cfg));
    let repo = repository(&cfg);
    let m = repo.get_manifest(&first.parse().unwrap()).await.unwrap();
    let m = m.expect("manifest stored");
    assert_eq!(m.backup_from, "primary");
    assert!(m.backup_label.contains("BACKUP FROM: primary"));

    // prefer-standby with no standby up falls back to the primary.
    nodes.standby.stop();
    std::thread::sleep(Duration::from_millis(1100)); // backup ids are per second
    let cfg = nodes.config(&pgdata, &standby_first, Some("prefer-standby"), "");
    let out = backup_output(&cfg);
    let second = backup_id(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("backing up the primary at {}", at(&nodes.primary))),
        "{err}"
    );
    assert_ne!(first, second);
    let m = repo.get_manifest(&second.parse().unwrap()).await.unwrap();
    assert_eq!(m.expect("manifest stored").backup_from, "primary");

    // backup_from = "standby" with no standby up: an error naming every host tried.
    let cfg = nodes.config(&pgdata, &standby_first, Some("standby"), "");
    let out = backup_output(&cfg);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    for want in [
        "backup_from = \"standby\" needs a standby".to_string(),
        format!("{}: error connecting to server", at(&nodes.standby)),
        format!(
            "{}: read-write (a primary), not a standby",
            at(&nodes.primary)
        ),
    ] {
        assert!(err.contains(&want), "want {want:?} in {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_node_is_refused_before_copying() {
    if harness::skip("wrong_node_is_refused_before_copying") {
        return;
    }
    let mut nodes = Nodes::start("standby-wrong");
    let both = nodes.both();
    let (primary_dir, standby_dir) = (nodes.primary.pgdata.clone(), nodes.standby.pgdata.clone());
    let refused = |cfg: &TestConfig, wants: &[&str]| {
        let out = backup_output(cfg);
        let err = stderr(&out);
        assert_eq!(code(&out), 4, "{err}");
        for w in wants {
            assert!(err.contains(w), "want {w:?} in {err}");
        }
        assert!(
            !nodes.repo.join("core").join("backups").exists(),
            "nothing may be copied"
        );
    };

    // The primary answers, but pgdata is the standby's.
    let to_primary = format!("connected to the primary at {}", at(&nodes.primary));
    refused(
        &nodes.config(&standby_dir, &both, Some("primary"), ""),
        &[
            &to_primary,
            "belongs to another server",
            "pgdata's server is a standby, the connected one a primary",
            "refusing to copy",
            "backup_from",
        ],
    );
    // The standby answers, but pgdata is the primary's.
    let to_standby = format!("connected to a standby at {}", at(&nodes.standby));
    refused(
        &nodes.config(&primary_dir, &both, Some("standby"), ""),
        &[&to_standby, "belongs to another server"],
    );
    // No server runs on pgdata.
    nodes.standby.stop();
    refused(
        &nodes.config(&standby_dir, &both, Some("primary"), ""),
        &["has no running PostgreSQL server", "refusing to copy"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn standby_backup_without_a_primary_fails_and_says_so() {
    if harness::skip("standby_backup_without_a_primary_fails_and_says_so") {
        return;
    }
    let mut nodes = Nodes::start("standby-noprimary");
    nodes.primary.psql("create table t as select 1");
    wait_replayed(&nodes.primary, &nodes.standby);
    nodes.primary.stop();
    let cfg = nodes.config(
        &nodes.standby.pgdata,
        &nodes.both(),
        Some("standby"),
        "[backup]\narchive_wait_seconds = 6\n",
    );
    let out = backup_output(&cfg);
    let err = stderr(&out);
    eprintln!("--- backup on a standby without a primary:\n{err}");
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains("cannot switch WAL") && err.contains("no primary was reachable"),
        "{err}"
    );
    assert!(repository(&cfg).list_backups().await.unwrap().is_empty());
}
