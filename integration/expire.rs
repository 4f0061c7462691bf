//! Retention on a real repository: what goes, what stays, and that the window stays
//! recoverable — including after a crash in the middle of deleting.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::harness::{
    self, archiving_cluster, backup, backup_ids, code, create_status, pg_ctl_stop, repository,
    set_marker, stderr, target_time, RepoTarget, Scratch, TestConfig,
};

/// `expire --dry-run --now NOW --json`, which must succeed: the plan, and each backup's id
/// and whether it is kept, oldest first.
pub(crate) fn expire_dry_run(
    cfg: &TestConfig,
    now: &str,
) -> (serde_json::Value, Vec<(String, bool)>) {
    let out = cfg.run(&["expire", "--dry-run", "--now", now, "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keep = plan["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["keep"].as_bool().unwrap(),
            )
        })
        .collect();
    (plan, keep)
}

#[tokio::test(flavor = "multi_thread")]
async fn expire_a_month_later_keeps_the_window_recoverable() {
    if harness::skip("expire_a_month_later_keeps_the_window_recoverable") {
        return;
    }
    let scratch = Scratch::new("expire");
    let repo_dir = scratch.subdir("repo");
    let (mut pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir.clone()), "");
    create_status(&pg, "a");
    let a = backup(&cfg);
    set_marker(&pg, "after-a");
    let in_a_only = target_time(&pg, Duration::from_millis(1100));
    pg.switch_wal();
    let b = backup(&cfg);
    set_marker(&pg, "b");
    let target = target_time(&pg, Duration::from_millis(1100));
    set_marker(&pg, "after-b");
    pg.switch_wal();
    let c = backup(&cfg);
    set_marker(&pg, "c");
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(60));
    assert!(a < b && b < c);

    let repo = repository(&cfg);
    let manifests = repo.list_backups().await.unwrap();
    let b_manifest = manifests.iter().find(|m| m.id.as_str() == b).unwrap();
    let b_start_segno = b_manifest.start_lsn.0 >> 24;
    // A month after B finished (30-day window): A goes, B anchors the window, C stays.
    let now: DateTime<Utc> =
        b_manifest.stop_time + chrono::Duration::days(30) + chrono::Duration::seconds(1);
    let now_arg = now.to_rfc3339();

    let (_, keep) = expire_dry_run(&cfg, &now_arg);
    assert_eq!(
        keep,
        [(a.clone(), false), (b.clone(), true), (c.clone(), true)]
    );
    assert_eq!(
        repo.list_backups().await.unwrap().len(),
        3,
        "--dry-run removes nothing"
    );

    let out = cfg.run(&["expire", "--apply-now", "--now", &now_arg]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 removed"),
        "summary line: {}",
        stderr(&out)
    );
    let ids = backup_ids(&repo).await;
    assert_eq!(ids, [b.clone(), c.clone()]);
    let left: Vec<_> = (repo.backup_dirs().await.unwrap().into_iter())
        .filter(|d| d.name == a)
        .collect();
    assert!(left.is_empty(), "A's objects must be gone: {left:?}");
    harness::assert_no_wal_below(&repo, b_start_segno, "the horizon").await;

    // A time inside the new window restores; one before it is refused with the window.
    pg.stop();
    let restored = scratch.path().join("restored");
    let out = cfg.run(&[
        "restore",
        "--to",
        &target,
        "--pgdata",
        restored.to_str().unwrap(),
        "--start",
    ]);
    assert_eq!(code(&out), 0, "PITR inside the window: {}", stderr(&out));
    let message = pg.psql("select message from status");
    pg_ctl_stop(&restored, "immediate");
    assert_eq!(message, "b");
    let refused = scratch.path().join("refused");
    let out = cfg.run(&[
        "restore",
        "--to",
        &in_a_only,
        "--pgdata",
        refused.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("window") || stderr(&out).contains("earliest"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expire_killed_mid_delete_leaves_a_consistent_repository() {
    if harness::skip("expire_killed_mid_delete_leaves_a_consistent_repository") {
        return;
    }
    let scratch = Scratch::new("expire-kill");
    let repo_dir = scratch.subdir("repo");
    let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir.clone()), "");
    // A short lock TTL, so the killed run's lock expires quickly.
    cfg.append("\n[backup]\nlock_ttl_seconds = 3\n");
    pg.psql("create table t as select 1 x");
    let _a = backup(&cfg);
    pg.switch_wal();
    let b = backup(&cfg);
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(60));
    // Many old WAL objects (other timelines, below the horizon) so deletion takes a while.
    let mut made = 0;
    for tli in 2..6000u32 {
        let dir = repo_dir.join(format!("core/wal/{tli:08X}00000000"));
        std::fs::create_dir_all(&dir).unwrap();
        for seg in 0..2u32 {
            std::fs::write(dir.join(format!("{tli:08X}00000000{seg:08X}.gz")), b"x").unwrap();
            made += 1;
        }
    }
    harness::give_to_postgres(&repo_dir);
    let repo = repository(&cfg);
    let m_b = repo
        .get_manifest(&b.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let now = (m_b.stop_time + chrono::Duration::days(31)).to_rfc3339();
    let mut child = cfg
        .command(&["expire", "--apply-now", "--now", &now])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let _ = child.kill();
    let _ = child.wait();
    let left_after_kill = repo.list_wal().await.unwrap().len();
    // Whatever was listed is whole: every part of every listed backup exists.
    for m in repo.list_backups().await.unwrap() {
        for p in &m.parts {
            assert!(
                repo_dir
                    .join("core")
                    .join(repo.part_location(&m.id, &p.key))
                    .exists(),
                "backup {} is listed but its part {} is gone",
                m.id,
                p.key
            );
        }
    }
    // The lock of the killed run expires; a second run completes the job.
    std::thread::sleep(Duration::from_millis(200));
    let mut out = cfg.run(&["expire", "--apply-now", "--now", &now]);
    for _ in 0..30 {
        if code(&out) == 0 {
            break;
        }
        assert!(stderr(&out).contains("lock"), "{}", stderr(&out));
        std::thread::sleep(Duration::from_secs(2));
        out = cfg.run(&["expire", "--apply-now", "--now", &now]);
    }
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ids = backup_ids(&repo).await;
    assert_eq!(ids, [b]);
    let wal = repo.list_wal().await.unwrap();
    assert!(
        wal.iter().all(|(n, _)| n.timeline().0 == 1),
        "old timelines' WAL must be gone"
    );
    eprintln!("made {made} old WAL objects; {left_after_kill} WAL objects left after the kill");
}
