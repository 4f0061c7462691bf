//! Issue 13 items 2 and 3: a restore writes only where the operator said (tablespaces, `--force`),
//! applies PostgreSQL's modes whatever a manifest says, and a restored copy does not archive
//! into the repository unless it replaces the primary (`--as-primary`); when two timelines
//! both keep receiving WAL, `list`, `check` and `restore` say so.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use synapse_backup::repo::manifest::{from_checked_json, to_checked_json};

use crate::harness::{
    self, add_marker, append_conf, archiving_cluster, backup, code, create_status,
    create_tablespace, give_to_postgres, stderr, PgCluster, RepoTarget, RestoredServer, Scratch,
    TestConfig,
};
use crate::restore::restore;

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn precious(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("precious.txt"), "keep me").unwrap();
    dir.to_path_buf()
}

/// The backup's manifest in a local repository, edited in place with its checksum recomputed
/// the way the tool writes it (a bucket writer can do this).
fn forge_manifest(repo_dir: &Path, id: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = repo_dir.join("core/backups").join(id).join("manifest.json");
    let bytes = std::fs::read(&path).unwrap();
    let m = from_checked_json(&bytes, "manifest").unwrap();
    let mut v = serde_json::to_value(&m).unwrap();
    edit(&mut v);
    let m = serde_json::from_value(v).unwrap();
    std::fs::write(&path, to_checked_json(&m)).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_writes_tablespaces_only_where_told() {
    if harness::skip("restore_writes_tablespaces_only_where_told") {
        return;
    }
    let scratch = Scratch::new("restore-ts-safety");
    let repo_dir = scratch.subdir("repo");
    let (mut pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir.clone()), "");
    create_status(&pg, "backup");
    let ts_original = scratch.subdir("ts-original");
    let oid = create_tablespace(&pg, &ts_original);
    let id = backup(&cfg);
    pg.archive_everything();
    pg.stop();
    // Another host: the original tablespace path does not exist there.
    std::fs::rename(&ts_original, scratch.path().join("ts-moved")).unwrap();

    // No map: refused before anything is written, naming the tablespace and its location.
    let r1 = scratch.path().join("r1/pgdata");
    let out = restore(&cfg, &r1, &["--latest"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 2, "{err}");
    assert!(
        err.contains(&format!("{oid} ({})", ts_original.display())),
        "{err}"
    );
    assert!(err.contains("--tablespace-map"), "{err}");
    assert!(!ts_original.exists(), "the manifest's location was written");
    assert!(!r1.exists());

    // The original path is in use on this host: refused even with --force (with or without
    // --tablespaces-at-original-location), and nothing in it is touched.
    precious(&ts_original);
    for extra in [&[][..], &["--tablespaces-at-original-location"][..]] {
        let mut args = vec!["--latest", "--force"];
        args.extend_from_slice(extra);
        let out = restore(&cfg, &r1, &args);
        let err = stderr(&out);
        assert_eq!(code(&out), 2, "{err}");
        assert!(err.contains(&ts_original.display().to_string()), "{err}");
        assert_eq!(names_in(&ts_original), ["precious.txt"]);
        assert!(!r1.exists());
    }

    // --force with a map into a non-empty directory: --force does not clear it either.
    let mapped_busy = precious(&scratch.path().join("mapped-busy"));
    let target = precious(&scratch.path().join("r2/pgdata"));
    let map_busy = format!("--tablespace-map={oid}={}", mapped_busy.display());
    let out = restore(&cfg, &target, &["--latest", "--force", &map_busy]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(names_in(&mapped_busy), ["precious.txt"]);
    assert_eq!(names_in(&target), ["precious.txt"]);

    // A map to an empty place and --force on the named target: the target is replaced, the
    // tablespace is written only into the mapped directory, the plan names both first.
    let mapped = scratch.path().join("mapped");
    let map = format!("--tablespace-map={oid}={}", mapped.display());
    let out = restore(&cfg, &target, &["--latest", "--force", &map]);
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    let plan_target = format!("will write: {} (the data directory", target.display());
    let plan_ts = format!("will write: {} (tablespace {oid}", mapped.display());
    assert!(
        err.contains(&plan_target) && err.contains(&plan_ts),
        "{err}"
    );
    let written = err.find("restored backup").unwrap();
    assert!(err.find(&plan_ts).unwrap() < written, "{err}");
    assert_eq!(err.matches("will write: ").count(), 2, "{err}");
    assert!(!target.join("precious.txt").exists());
    assert_eq!(
        std::fs::read_link(target.join("pg_tblspc").join(&oid)).unwrap(),
        mapped
    );
    assert!(names_in(&mapped).iter().any(|n| n.starts_with("PG_15_")));
    assert_eq!(names_in(&ts_original), ["precious.txt"]);
    assert_eq!(names_in(&mapped_busy), ["precious.txt"]);

    // Inside the target: an in-place tablespace that PostgreSQL starts with.
    let r3 = scratch.path().join("r3/pgdata");
    let out = restore(&cfg, &r3, &["--latest", "--tablespaces-in-target"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 0, "{err}");
    let in_place = r3.join("pg_tblspc").join(&oid);
    assert!(err.contains(&format!("will write: {} (tablespace", in_place.display())));
    assert!(std::fs::symlink_metadata(&in_place).unwrap().is_dir());
    assert!(!r3.join("tablespace_map").exists());
    let auto = std::fs::read_to_string(r3.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("allow_in_place_tablespaces = on"), "{auto}");
    let out = restore(
        &cfg,
        &scratch.path().join("r4/pgdata"),
        &["--latest", "--tablespaces-in-target", "--start"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r4 = RestoredServer::new(&scratch.path().join("r4/pgdata"));
    assert_eq!(pg.psql("select v from in_ts"), "in tablespace");
    r4.stop();

    // F15: modes from a forged manifest are masked to what PostgreSQL uses.
    forge_manifest(&repo_dir, &id, |m| {
        for f in m["files"].as_array_mut().unwrap() {
            if f["path"] == "PG_VERSION" {
                f["mode"] = serde_json::json!(0o6777);
            }
        }
        for d in m["directories"].as_array_mut().unwrap() {
            if d["path"] == "base" {
                d["mode"] = serde_json::json!(0o777);
            }
        }
    });
    let r5 = scratch.path().join("r5/pgdata");
    let map5 = format!(
        "--tablespace-map={oid}={}",
        scratch.path().join("r5/ts").display()
    );
    let out = restore(&cfg, &r5, &["--latest", &map5]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(format!("{:o}", mode(&r5.join("PG_VERSION"))), "640");
    assert_eq!(format!("{:o}", mode(&r5.join("base"))), "750");
    assert_eq!(format!("{:o}", mode(&r5)), "700");
}

/// The repository's WAL names on `timeline`, and its history files.
async fn archived_on(cfg: &TestConfig, timeline: &str) -> Vec<String> {
    harness::repository(cfg)
        .list_wal()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| n.starts_with(timeline))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn restored_copy_does_not_archive_and_split_brain_is_caught() {
    if harness::skip("restored_copy_does_not_archive_and_split_brain_is_caught") {
        return;
    }
    let scratch = Scratch::new("restore-archiving");
    let repo_dir = scratch.subdir("repo");
    let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir.clone()), "");
    // Copies restored from this cluster's backups listen elsewhere (production keeps its port
    // and socket from its command line), so production keeps running beside them.
    let copy_dir = scratch.subdir("copy");
    let mut copy = PgCluster::existing(&copy_dir, &copy_dir.join("none"));
    copy.port += 20000;
    let copy_port = copy.port;
    append_conf(
        &pg.pgdata,
        &format!(
            "port = {copy_port}\nunix_socket_directories = '{}'\n",
            copy.socket_dir.display()
        ),
    );
    let copy_cfg_dir = scratch.subdir("copy-cfg");
    give_to_postgres(&copy_cfg_dir);
    let copy_cfg = TestConfig::write(
        &copy_cfg_dir,
        &RepoTarget::Local(repo_dir.clone()),
        "core",
        &pg.pgdata,
        &copy.connection(),
        "",
    );
    create_status(&pg, "backup");
    backup(&cfg);
    add_marker(&pg, "before-copy");
    pg.archive_everything();

    // A copy restored and started by `restore --start` while production runs: promoted, it
    // writes, and the repository never sees its timeline.
    let c1 = scratch.path().join("c1/pgdata");
    let out = restore(&copy_cfg, &c1, &["--latest", "--start"]);
    let err = stderr(&out);
    let c1_server = RestoredServer::new(&c1);
    assert_eq!(code(&out), 0, "{err}");
    assert!(
        err.contains("ALTER SYSTEM SET archive_mode = on"),
        "the line to turn archiving on is printed: {err}"
    );
    let auto = std::fs::read_to_string(c1.join("postgresql.auto.conf")).unwrap();
    assert!(auto.trim_end().ends_with("archive_mode = 'off'"), "{auto}");
    assert_eq!(copy.psql("show archive_mode"), "off");
    assert_eq!(copy.psql("select pg_is_in_recovery()"), "f");
    copy.psql("insert into status values ('copy')");
    copy.psql("select pg_switch_wal()");
    add_marker(&pg, "production-1");
    pg.archive_everything();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        archived_on(&cfg, "00000002").await,
        Vec::<String>::new(),
        "the restored copy archived into the repository"
    );
    c1_server.stop();
    let out = cfg.run(&["list"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("split brain"));

    // --as-primary keeps archiving: promoted, it pushes timeline 2.
    let c2 = scratch.path().join("c2/pgdata");
    let out = restore(&copy_cfg, &c2, &["--latest", "--start", "--as-primary"]);
    let c2_server = RestoredServer::new(&c2);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let auto = std::fs::read_to_string(c2.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("archive_mode"), "{auto}");
    assert_eq!(copy.psql("show archive_mode"), "on");
    copy.psql("insert into status values ('as-primary')");
    copy.archive_everything();
    assert!(archived_on(&cfg, "00000002.history").await.len() == 1);
    assert!(archived_on(&cfg, "00000002").await.len() >= 2);

    // Production never stopped: both timelines receive WAL after the branch point.
    std::thread::sleep(Duration::from_millis(1100));
    for i in 0..2 {
        add_marker(&pg, &format!("production-after-{i}"));
        pg.archive_everything();
    }
    copy.psql("insert into status values ('as-primary-2')");
    copy.archive_everything();
    c2_server.stop();

    let out = cfg.run(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        text.contains("WARNING split brain: timelines 1 and 2"),
        "{text}"
    );
    let out = cfg.run(&["list", "--json"]);
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing["split_brains"][0]["parent"], 1, "{listing}");
    assert_eq!(listing["split_brains"][0]["child"], 2, "{listing}");

    let out = cfg
        .command(&["check"])
        .env("SYNAPSE_CHECK_TIMEOUT_SECONDS", "20")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_ne!(code(&out), 0, "{text}");
    assert!(
        text.contains("FAIL  timelines: split brain: timelines 1 and 2"),
        "{text}"
    );
    assert!(text.contains("--timeline 1 or --timeline 2"), "{text}");

    let r = scratch.path().join("r/pgdata");
    let out = restore(&cfg, &r, &["--latest"]);
    let err = stderr(&out);
    assert_eq!(code(&out), 3, "{err}");
    assert!(err.contains("timelines 1 and 2"), "{err}");
    assert!(err.contains("--timeline 1 or --timeline 2"), "{err}");
    assert!(!r.exists());
    // Told which one: production's timeline restores.
    let out = restore(&cfg, &r, &["--latest", "--timeline", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    drop(pg);
}
