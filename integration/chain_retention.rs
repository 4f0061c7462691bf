//! Retention of chains of incremental backups (issue 15 item 4) on a real repository:
//! simulated nights (full, incr, incr, full, incr, incr) taken quickly, then `expire` a day
//! later with `retention_days = 1` never removes a parent a kept backup needs, and the
//! window it keeps restores — through an incremental whose full the chain-blind policy
//! would have removed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::expire::expire_dry_run;
use crate::harness::{
    self, archiving_cluster_with, backup, backup_ids, backup_incr, code, create_status, repository,
    set_marker, stderr, target_time, RepoTarget, Scratch,
};
use crate::restore::{restore, restore_started};

#[tokio::test(flavor = "multi_thread")]
async fn expire_keeps_chains_whole_and_the_window_restorable() {
    if harness::skip("expire_keeps_chains_whole_and_the_window_restorable") {
        return;
    }
    let scratch = Scratch::new("chain-retention");
    let repo_dir = scratch.subdir("repo");
    let (mut pg, cfg) = archiving_cluster_with(
        &scratch,
        &RepoTarget::Local(repo_dir),
        "",
        "retention_days = 1\n",
    );
    pg.psql("create table t as select g, md5(g::text) v from generate_series(1, 20000) g");
    create_status(&pg, "night0");

    // Six nights: the kinds, and after the fourth night's backup a target inside its chain.
    let kinds = ["full", "incr", "incr", "full", "incr", "incr"];
    let mut ids = Vec::new();
    let mut in_chain = String::new();
    for (night, kind) in kinds.iter().enumerate() {
        set_marker(&pg, &format!("night{night}"));
        pg.psql(&format!(
            "update t set v = 'n{night}' where g % 7 = {night}"
        ));
        ids.push(match *kind {
            "incr" => backup_incr(&cfg),
            _ => backup(&cfg),
        });
        if night == 4 {
            set_marker(&pg, "inside-incr-chain");
            in_chain = target_time(&pg, Duration::from_millis(1100));
            set_marker(&pg, "after-target");
        }
        pg.switch_wal();
    }
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(60));

    // list --json: type, parent and chain length of each backup.
    let out = cfg.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<(String, String, Value, u64)> = listing["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["type"].as_str().unwrap().to_string(),
                b["parent"].clone(),
                b["chain_length"].as_u64().unwrap(),
            )
        })
        .collect();
    let parent = |i: usize| Value::String(ids[i].clone());
    assert_eq!(
        rows,
        [
            (ids[0].clone(), "full".into(), Value::Null, 1),
            (ids[1].clone(), "incr".into(), parent(0), 2),
            (ids[2].clone(), "incr".into(), parent(1), 3),
            (ids[3].clone(), "full".into(), Value::Null, 1),
            (ids[4].clone(), "incr".into(), parent(3), 2),
            (ids[5].clone(), "incr".into(), parent(4), 3),
        ]
    );
    let human = String::from_utf8_lossy(&cfg.run(&["list"]).stdout).to_string();
    eprintln!("--- list:\n{human}");
    assert!(human.contains("TYPE CHAIN PARENT"), "{human}");

    // A day after night 4 ended, its incremental is the window's anchor: its full (night 3)
    // stays although it ended before the edge; nights 0-2 go.
    let repo = repository(&cfg);
    let manifests = repo.list_backups().await.unwrap();
    let night4 = manifests.iter().find(|m| m.id.as_str() == ids[4]).unwrap();
    let night3_start_segno = manifests
        .iter()
        .find(|m| m.id.as_str() == ids[3])
        .unwrap()
        .start_lsn
        .0
        >> 24;
    let now: DateTime<Utc> = night4.stop_time + chrono::Duration::days(1);
    let now_arg = now.to_rfc3339();
    let (plan, decisions) = expire_dry_run(&cfg, &now_arg);
    let keep: Vec<bool> = decisions.iter().map(|d| d.1).collect();
    assert_eq!(keep, [false, false, false, true, true, true], "{plan:#}");
    let reason = plan["backups"][3]["reason"].as_str().unwrap();
    assert!(reason.contains("chain is kept whole"), "{plan:#}");
    assert_eq!(plan["backups"][4]["type"], "incr");
    assert_eq!(plan["backups"][4]["parent"], ids[3].as_str());
    assert_eq!(
        backup_ids(&repo).await.len(),
        6,
        "--dry-run removes nothing"
    );
    let out = cfg.run(&["expire", "--dry-run", "--now", &now_arg]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(&format!("{} (incr on {})", ids[4], ids[3])),
        "{text}"
    );

    let out = cfg.run(&["expire", "--apply-now", "--now", &now_arg]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(backup_ids(&repo).await, ids[3..]);
    harness::assert_no_wal_below(&repo, night3_start_segno, "night 3's start").await;

    // Inside the window: through night 4's incremental on night 3's full; and the window's
    // oldest point, night 3's end. Before it: refused (exit 3).
    pg.stop();
    let restored = scratch.path().join("restored");
    let (server, _) = restore_started(&cfg, &restored, &["--to", &in_chain]);
    assert_eq!(pg.psql("select message from status"), "inside-incr-chain");
    assert_eq!(pg.psql("select count(*) from t where v = 'n4'"), "2857");
    server.stop();
    let oldest = scratch.path().join("oldest");
    let window_start = plan["window_start"].as_str().unwrap().to_string();
    let (server, _) = restore_started(&cfg, &oldest, &["--to", &window_start]);
    assert_eq!(pg.psql("select message from status"), "night3");
    server.stop();
    let before = night4.stop_time - chrono::Duration::hours(1);
    let out = restore(
        &cfg,
        &scratch.path().join("refused"),
        &["--to", &before.to_rfc3339()],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
}
