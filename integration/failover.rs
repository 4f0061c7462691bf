//! Failover: a real primary and a streaming standby (both archiving into one repository, the
//! standby with `archive_mode = always`), the standby promoted while the old primary keeps
//! writing (split brain). The archive must hold timeline 1, `00000002.history` and timeline 2;
//! restores follow the history to the right branch and never use the old primary's WAL after
//! the branch point; a second server promoted onto the same timeline number is refused and
//! reported.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::replica::{promote, start_standby, wait_replayed};
use crate::harness::{
    self, add_marker, archiving_cluster, backup, code, pg_ctl_stop, stderr, target_time, PgCluster,
    RepoTarget, Scratch, TestConfig, BIN,
};

/// An `archive_command` that archives only from the two nodes' data directories: restored
/// copies (which keep the primary's postgresql.conf) must not archive a timeline of their own
/// into the repository the test keeps reading (pg-reference §0 item 8).
fn nodes_only_archive_command(cfg: &TestConfig, nodes: &[&Path]) -> String {
    let dirs: Vec<String> = nodes
        .iter()
        .map(|p| {
            let parent = std::fs::canonicalize(p.parent().unwrap()).unwrap();
            parent.join(p.file_name().unwrap()).display().to_string()
        })
        .collect();
    format!(
        "archive_command = 'case \"$(pwd -P)\" in {}) exec {BIN} --config {} wal-push %p;; *) exit 0;; esac'\n",
        dirs.join("|"),
        cfg.path.display()
    )
}

/// Restore into `dir/name` with `--start` (paused at the target, so the copy never archives a
/// timeline of its own into the repository), read the markers through the original primary's
/// socket (the copy keeps its postgresql.conf), stop it. Returns (markers, restore's stderr).
fn restore_markers(
    cfg: &TestConfig,
    dir: &Path,
    name: &str,
    socket_of: &PgCluster,
    args: &[&str],
) -> (Vec<String>, String) {
    let pgdata = dir.join(name);
    let mut all = vec!["restore", "--pgdata", pgdata.to_str().unwrap()];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--target-action", "pause", "--start"]);
    let out = cfg.run(&all);
    let err = stderr(&out);
    eprintln!("--- restore {args:?}:\n{err}");
    let stop = || pg_ctl_stop(&pgdata, "immediate");
    if code(&out) != 0 {
        stop();
        panic!("restore {args:?} failed: {err}");
    }
    let markers = socket_of.psql("select string_agg(marker, ',' order by marker) from status");
    stop();
    (markers.split(',').map(str::to_string).collect(), err)
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_timelines_split_brain_and_conflicts() {
    if harness::skip("failover_timelines_split_brain_and_conflicts") {
        return;
    }
    let scratch = Scratch::new("failover");
    let repo_dir = scratch.subdir("repo");
    let b_dir = scratch.subdir("b");
    let (mut a, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir), "");
    let archive_command = nodes_only_archive_command(&cfg, &[&a.pgdata, &b_dir.join("pgdata")]);
    harness::append_conf(&a.pgdata, &archive_command);
    a.psql("select pg_reload_conf()");
    a.psql("create table status(marker text)");
    add_marker(&a, "tl1-base");
    a.pgbench(&["-i", "-s", "1", "-q"]);
    let early = backup(&cfg);

    let mut b = start_standby(
        &b_dir,
        &a,
        &format!("archive_mode = always\n{archive_command}"),
    );
    add_marker(&a, "tl1-a");
    let t1 = target_time(&a, Duration::from_millis(50));
    add_marker(&a, "tl1-b");
    a.pgbench(&["-c", "1", "-t", "300", "-n"]);
    a.archive_everything();
    // Promote in the middle of a segment: the switch segment then exists on both timelines
    // (the old primary's full copy on 1, the new primary's on 2), and only 2's may be used.
    add_marker(&a, "tl1-c");
    wait_replayed(&a, &b);

    // Failover: the standby becomes the primary of timeline 2.
    promote(&b);
    assert_eq!(
        b.psql("select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
        "00000002"
    );

    // Split brain: the old primary does not know and keeps writing on timeline 1, and its
    // agent even takes a backup there.
    add_marker(&a, "split-brain");
    a.pgbench(&["-c", "1", "-t", "300", "-n"]);
    let stray = backup(&cfg);
    a.archive_everything();

    // The new primary writes on timeline 2.
    add_marker(&b, "tl2-a");
    let t2 = target_time(&b, Duration::from_millis(50));
    add_marker(&b, "tl2-b");
    b.pgbench(&["-c", "1", "-t", "300", "-n"]);
    add_marker(&b, "tl2-latest");
    b.archive_everything();

    // The archive: timeline 1, the history file, timeline 2; both nodes archived timeline 1's
    // segments (archive_mode = always) without a single conflict.
    let repo = harness::repository(&cfg);
    let listed: Vec<String> = repo
        .list_wal()
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert!(listed.iter().any(|n| n == "00000002.history"), "{listed:?}");
    assert!(listed
        .iter()
        .any(|n| n.starts_with("00000001") && n.len() == 24));
    assert!(listed
        .iter()
        .any(|n| n.starts_with("00000002") && n.len() == 24));
    assert!(repo.list_conflicts().await.unwrap().is_empty());

    // `list` shows both timelines and where timeline 2 branched off.
    let out = cfg.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tls = listing["timelines"].as_array().unwrap();
    assert_eq!(tls.len(), 2, "{listing}");
    assert_eq!(tls[1]["timeline"], 2);
    assert_eq!(tls[1]["parent"], 1);
    assert!(tls[1]["switch_lsn"].is_string());
    assert!(tls[0]["window"]["end_time"].is_string() && tls[1]["window"]["end_time"].is_string());
    let human = cfg.run(&["list"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("branched from 1 at LSN"), "{text}");

    // Restores read the copies through the old primary's socket: stop both nodes.
    a.stop();
    b.stop();

    // A target before the promotion: timeline 1's data.
    let (m, _) = restore_markers(&cfg, scratch.path(), "r1", &a, &["--to", &t1]);
    assert_eq!(m, ["tl1-a", "tl1-base"]);
    // After it: timeline 2's data, never the old primary's writes after the branch point.
    let (m, err) = restore_markers(&cfg, scratch.path(), "r2", &a, &["--to", &t2]);
    assert_eq!(m, ["tl1-a", "tl1-b", "tl1-base", "tl1-c", "tl2-a"]);
    assert!(err.contains("timeline: 2"), "{err}");
    assert!(err.contains("lie off timeline 2's history"), "{err}");
    let (m, _) = restore_markers(&cfg, scratch.path(), "r3", &a, &["--latest"]);
    assert_eq!(
        m,
        [
            "tl1-a",
            "tl1-b",
            "tl1-base",
            "tl1-c",
            "tl2-a",
            "tl2-b",
            "tl2-latest"
        ]
    );
    // Recovery on timeline 2 never read a timeline-1 segment at or past the branch point (the
    // restores above all log into the same file, beside their data directories).
    let switch: u64 = {
        let lsn = tls[1]["switch_lsn"].as_str().unwrap();
        let (hi, lo) = lsn.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32 | u64::from_str_radix(lo, 16).unwrap()) >> 24
    };
    let log = std::fs::read_dir(scratch.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("restore-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    let restored: Vec<&str> = log
        .split("restored log file \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|name| name.len() == 24)
        .collect();
    assert!(
        restored.iter().any(|n| n.starts_with("00000002")),
        "{restored:?}"
    );
    for name in &restored {
        let segno = u64::from_str_radix(&name[16..], 16).unwrap();
        assert!(
            !(name.starts_with("00000001") && segno >= switch),
            "timeline 2's recovery read the old primary's {name}"
        );
    }

    // Along timeline 1 on request: the old primary's branch.
    let (m, _) = restore_markers(
        &cfg,
        scratch.path(),
        "r4",
        &a,
        &["--latest", "--timeline", "1", "--backup", &early],
    );
    assert!(m.contains(&"split-brain".to_string()), "{m:?}");
    assert!(!m.iter().any(|x| x.starts_with("tl2")), "{m:?}");

    // The old primary's backup after the branch point cannot reach timeline 2: refused before
    // any download, with the reason.
    let refused_dir = scratch.path().join("r5");
    let out = cfg.run(&[
        "restore",
        "--pgdata",
        refused_dir.to_str().unwrap(),
        "--latest",
        "--backup",
        &stray,
    ]);
    let err = stderr(&out);
    assert_eq!(code(&out), 3, "{err}");
    assert!(err.contains("cannot reach timeline 2"), "{err}");
    assert!(err.contains("was left for timeline 2 at LSN"), "{err}");
    assert!(
        !refused_dir.exists(),
        "nothing may be written for a refused restore"
    );
    // And the default choice skips it.
    let (m, _) = restore_markers(&cfg, scratch.path(), "r6", &a, &["--latest"]);
    assert!(!m.contains(&"split-brain".to_string()), "{m:?}");

    // A second split brain: the old primary is promoted onto "timeline 2" too (it never saw the
    // archive's history file). Its 00000002.history differs: refused, kept, reported.
    std::fs::write(a.pgdata.join("standby.signal"), "").unwrap();
    harness::give_to_postgres(&a.pgdata.join("standby.signal"));
    a.start();
    promote(&a);
    let start = Instant::now();
    while repo.list_conflicts().await.unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the conflicting 00000002.history was not reported; archiver: {}",
            a.psql("select * from pg_stat_archiver")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let conflicts = repo.list_conflicts().await.unwrap();
    assert!(
        conflicts.iter().any(|k| k.contains("00000002.history")),
        "{conflicts:?}"
    );
    // PostgreSQL sees the refusal as a failed archive_command (and keeps the file).
    let start = Instant::now();
    while a.psql("select failed_count from pg_stat_archiver") == "0" {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the refusal never failed archiving"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = cfg
        .command(&["check"])
        .env("SYNAPSE_CHECK_TIMEOUT_SECONDS", "2")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_ne!(code(&out), 0, "{text}");
    assert!(text.contains("FAIL  archive conflicts"), "{text}");
    assert!(text.contains("00000002.history"), "{text}");
    a.stop();
    // The archive's history file is still the new primary's.
    let (m, _) = restore_markers(&cfg, scratch.path(), "r7", &a, &["--latest"]);
    assert!(m.contains(&"tl2-latest".to_string()), "{m:?}");
}
