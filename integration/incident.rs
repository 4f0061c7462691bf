//! Issue 16, the incident moment: the event index that `wal-push` writes, `events`, and
//! restores to just before an event (`--before-xid`, `--before-event`, `--to-restore-point`),
//! on a real PostgreSQL 15 cluster archiving through the real binary.

use std::time::Duration;

use crate::harness::{
    self, archiving_cluster, backup, code, stderr, PgCluster, RepoTarget, Scratch, TestConfig,
};
// Restores as the restore tests run them; a copy stopped just before a DROP is promoted (not
// paused): paused, its startup process still holds the dropping transaction's lock on the
// table. Copies do not archive, so every restore reads the same timeline.
use crate::restore::{restore, restore_started};

fn events(cfg: &TestConfig, args: &[&str]) -> String {
    let mut all = vec!["events"];
    all.extend_from_slice(args);
    let out = cfg.run(&all);
    assert_eq!(code(&out), 0, "events {args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rows(pg: &PgCluster, sql: &str) -> Vec<String> {
    let out = pg.psql(sql);
    out.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_and_restore_before_a_drop() {
    if harness::skip("events_and_restore_before_a_drop") {
        return;
    }
    let scratch = Scratch::new("incident");
    let repo = scratch.subdir("repo");
    let (mut pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo), "");

    // An event before any catalog snapshot: 12,000 rows deleted from a table that is renamed
    // before the first snapshot. Its relfilenode is the same under the new name, and the
    // snapshot taken later must not lend it that name.
    pg.psql(
        "create table early_name(v int); insert into early_name select generate_series(1, 12000)",
    );
    pg.psql("delete from early_name");
    pg.psql("alter table early_name rename to renamed_later");

    pg.psql("create table orders(note text); insert into orders values ('old-1'), ('old-2')");
    pg.psql("create table audit(v int); insert into audit select generate_series(1, 100)");
    pg.psql("create table later(v int)");
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    backup(&cfg); // takes the catalog snapshot

    pg.psql("select pg_create_restore_point('before-deploy')");
    pg.psql("insert into orders values ('after-restore-point')");
    pg.pgbench(&["-c", "1", "-t", "100", "-n"]);
    pg.psql("insert into orders values ('marker')");
    std::thread::sleep(Duration::from_millis(50));
    let drop_xid = pg.psql("begin; select txid_current(); drop table orders; commit;");
    let drop_xid: u32 = drop_xid.trim().parse().expect("an xid");
    let truncate_xid = pg.psql("begin; select txid_current(); truncate audit; commit;");
    let truncate_xid: u32 = truncate_xid.trim().parse().expect("an xid");
    std::thread::sleep(Duration::from_millis(20));
    let after_accident = pg.now_rfc3339();
    std::thread::sleep(Duration::from_millis(20));
    pg.psql("insert into later select generate_series(1, 10)");
    pg.pgbench(&["-c", "1", "-t", "100", "-n"]);
    pg.archive_everything();
    pg.stop();

    // The timeline, oldest first, named from the snapshot.
    let text = events(&cfg, &[]);
    eprintln!("--- events:\n{text}");
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_string()
    };
    let drop = line(&format!("xid {drop_xid} DROP"));
    assert!(
        drop.contains("DROP TABLE public.orders (postgres)"),
        "{drop}"
    );
    let truncate = line(&format!("xid {truncate_xid} TRUNCATE"));
    assert!(truncate.contains("public.audit"), "{truncate}");
    let rp = line("RESTORE POINT 'before-deploy'");
    let early = line("DELETE 12000 rows");
    assert!(early.contains("(name unknown)"), "{early}");
    assert!(
        !early.contains("renamed_later") && !early.contains("early_name"),
        "{early}"
    );
    let pos = |l: &str| text.find(l).unwrap();
    assert!(pos(&early) < pos(&rp) && pos(&rp) < pos(&drop) && pos(&drop) < pos(&truncate));
    assert!(text.contains("(UTC; UTC is UTC+00:00)"), "{text}");
    // --table and --json.
    let only = events(&cfg, &["--table", "public.orders"]);
    assert!(
        only.contains("DROP TABLE public.orders") && !only.contains("audit"),
        "{only}"
    );
    let json: serde_json::Value = serde_json::from_str(&events(&cfg, &["--json"])).unwrap();
    let drop_json = json
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "drop" && e["xid"] == drop_xid)
        .expect("the drop in --json")
        .clone();
    let drop_lsn = drop_json["lsn"].as_str().unwrap().to_string();

    // Refused before anything is written: an unknown restore point or xid (exit 3).
    let nowhere = scratch.path().join("refused/pgdata");
    let out = restore(&cfg, &nowhere, &["--to-restore-point", "no-such-point"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("'before-deploy'"), "{}", stderr(&out));
    let out = restore(&cfg, &nowhere, &["--before-xid", "3"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(!nowhere.exists());

    // --to after the drop warns and names it (restored, not started).
    let out = restore(
        &cfg,
        &scratch.path().join("to/pgdata"),
        &["--to", &after_accident],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: the target is after this event")
            && stderr(&out).contains("DROP TABLE public.orders"),
        "{}",
        stderr(&out)
    );

    // The restore point: the state at that point (paused: no lock is held there).
    let (server, _) = restore_started(
        &cfg,
        &scratch.path().join("rp/pgdata"),
        &[
            "--to-restore-point",
            "before-deploy",
            "--target-action",
            "pause",
        ],
    );
    assert_eq!(
        rows(&pg, "select note from orders order by note"),
        ["old-1", "old-2"]
    );
    server.stop();

    // Just before the drop: the table with the marker row, nothing after it.
    let (server, _) = restore_started(
        &cfg,
        &scratch.path().join("xid/pgdata"),
        &["--before-xid", &drop_xid.to_string(), "--timeline", "1"],
    );
    assert_eq!(
        rows(&pg, "select note from orders order by note"),
        ["after-restore-point", "marker", "old-1", "old-2"]
    );
    assert_eq!(pg.psql("select count(*) from audit"), "100");
    assert_eq!(pg.psql("select count(*) from later"), "0");
    server.stop();

    // The same via the event's LSN.
    let (server, _) = restore_started(
        &cfg,
        &scratch.path().join("lsn/pgdata"),
        &["--before-event", &drop_lsn, "--timeline", "1"],
    );
    assert_eq!(
        rows(&pg, "select note from orders order by note"),
        ["after-restore-point", "marker", "old-1", "old-2"]
    );
    assert_eq!(pg.psql("select count(*) from later"), "0");
    server.stop();
}

/// `reindex` on a repository written without the event index (segments pushed with
/// `SYNAPSE_WAL_EVENTS=off`, as before issue 16) builds the index `wal-push` built.
#[tokio::test(flavor = "multi_thread")]
async fn reindex_builds_the_index_wal_push_built() {
    if harness::skip("reindex_builds_the_index_wal_push_built") {
        return;
    }
    let scratch = Scratch::new("reindex");
    let (mut pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(scratch.subdir("repo")), "");
    pg.psql("select pg_create_restore_point('before')");
    pg.psql("create table big(v int); insert into big select generate_series(1, 12000)");
    pg.psql("delete from big");
    pg.psql("create table t(v int); insert into t values (1)");
    pg.psql("truncate t");
    pg.psql("drop table t");
    pg.archive_everything();
    pg.stop();
    let with_events = harness::repository(&cfg);
    let built = with_events.all_events().await.unwrap();
    assert!(built.len() >= 4, "{built:?}");

    // The same segments, pushed into a second repository without events.
    let old_dir = scratch.subdir("old");
    let old = TestConfig::write(
        &old_dir,
        &RepoTarget::Local(scratch.subdir("old-repo")),
        "core",
        &pg.pgdata,
        &pg.connection(),
        "",
    );
    let spool = scratch.subdir("segments");
    for (name, _) in with_events.list_wal().await.unwrap() {
        let Some((content, _)) = with_events.get_wal(&name).await.unwrap() else {
            continue;
        };
        let path = spool.join(name.to_string());
        std::fs::write(&path, content).unwrap();
        let out = old
            .command(&["wal-push", path.to_str().unwrap()])
            .env("SYNAPSE_WAL_EVENTS", "off")
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "wal-push {name}: {}", stderr(&out));
    }
    let without = harness::repository(&old);
    assert!(without.all_events().await.unwrap().is_empty());

    let out = old.run(&["reindex"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(without.all_events().await.unwrap(), built);
    // Run again: nothing left to index, the same index.
    let out = old.run(&["reindex"]);
    assert!(
        stderr(&out).contains("stored 0 event index"),
        "{}",
        stderr(&out)
    );
    assert_eq!(without.all_events().await.unwrap(), built);
}
