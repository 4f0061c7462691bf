//! Issue 16 item 5: `restore` prints its plan (backup, bytes, WAL to replay, predicted
//! duration from the speeds `verify` measured), `--dry-run` prints only that and writes
//! nothing, and one progress display follows the restore through the WAL replay.

use std::time::Instant;

use crate::harness::{
    self, archiving_cluster, backup, code, create_status, set_marker, stderr, RepoTarget, Scratch,
};
use crate::restore::{restore, restore_started};
use crate::verify::{add_verify_config, verify};

/// The predicted seconds of a `--dry-run`'s last line ("… would take about 12s (12.3 seconds)").
fn predicted_seconds(err: &str) -> f64 {
    let line = err
        .lines()
        .find(|l| l.starts_with("dry run: "))
        .unwrap_or_else(|| panic!("no dry-run line in:\n{err}"));
    let (_, rest) = line.rsplit_once('(').expect("seconds in parentheses");
    rest.trim_end_matches(" seconds)").parse().expect("seconds")
}

/// Segments the plan replays ("plan: replay 63 WAL segments …").
fn planned_segments(err: &str) -> u64 {
    let line = err
        .lines()
        .find(|l| l.starts_with("plan: replay "))
        .unwrap_or_else(|| panic!("no plan line in:\n{err}"));
    line["plan: replay ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_plan_prediction_and_replay_progress() {
    if harness::skip("dry_run_plan_prediction_and_replay_progress") {
        return;
    }
    let scratch = Scratch::new("restore-plan");
    let repo = scratch.subdir("repo");
    let (mut pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo), "");
    create_status(&pg, "backup");
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    backup(&cfg);
    // The manifest names the catalog snapshot current at the backup.
    let manifests = harness::repository(&cfg).backups().await.unwrap().intact;
    let catalog = manifests[0]
        .catalog_snapshot
        .clone()
        .expect("a catalog snapshot");
    assert!(
        catalog.len() > 17 && catalog.as_bytes()[16] == b'-',
        "not <time>-<hash>: {catalog}"
    );
    // 60 segments of real WAL to replay (about 11 MiB of inserts each, then truncated so
    // that the data directory stays small), as in a real archive: a prediction is about
    // replaying records, not about fetching empty switched segments.
    pg.psql("create table filler(x text)");
    for i in 0..60 {
        pg.psql(&format!(
            "insert into status values ('segment {i}'); \
             insert into filler select repeat('x', 400) from generate_series(1, 25000); \
             truncate filler; select pg_switch_wal()"
        ));
    }
    set_marker(&pg, "latest");
    pg.archive_everything();
    add_verify_config(&cfg, &scratch.path().join("verify-scratch"), &[]);

    // Before any verification: the documented defaults, and it says so. Nothing is written,
    // not even the target directory or its parent.
    let dry = scratch.path().join("dry");
    let out = restore(&cfg, &dry.join("pgdata"), &["--latest", "--dry-run"]);
    let err = stderr(&out);
    eprintln!("--- dry run before verify:\n{err}");
    assert_eq!(code(&out), 0, "{err}");
    assert!(err.contains("default speeds"), "{err}");
    assert!(planned_segments(&err) >= 60, "{err}");
    assert!(!dry.exists(), "--dry-run created {}", dry.display());

    // verify measures the speeds into its report; the next plan uses them.
    let (out, report) = verify(&cfg, &["--runtime", "namespace"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let speeds = &report.expect("a report")["speeds"];
    assert!(
        speeds["replay_segments_per_second"].as_f64().unwrap() > 0.0
            && speeds["download_bytes_per_second"].as_f64().unwrap() > 0.0,
        "{speeds}"
    );
    let target = scratch.path().join("copy/pgdata");
    let out = restore(&cfg, &target, &["--latest", "--dry-run"]);
    let err = stderr(&out);
    eprintln!("--- dry run after verify:\n{err}");
    assert_eq!(code(&out), 0, "{err}");
    assert!(
        err.contains("speeds measured by the verification of backup"),
        "{err}"
    );
    assert!(!target.exists(), "--dry-run created {}", target.display());
    let predicted = predicted_seconds(&err);

    // The real restore, started (the copy uses the original's port), with JSON log lines:
    // the prediction is within 2x of it, and the replay of 60+ segments shows its progress at
    // least 5 times, each a JSON line with its numbers.
    pg.stop();
    let t0 = Instant::now();
    let (server, err) = restore_started(&cfg, &target, &["--latest", "--log-format", "json"]);
    let actual = t0.elapsed().as_secs_f64();
    server.stop();
    eprintln!("PREDICTION predicted {predicted:.1}s, actual {actual:.1}s");
    assert!(
        predicted <= 2.0 * actual && actual <= 2.0 * predicted,
        "predicted {predicted:.1}s, the restore took {actual:.1}s"
    );
    let replay: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["phase"] == "replay")
        .collect();
    assert!(
        replay.len() >= 5,
        "{} replay progress lines:\n{err}",
        replay.len()
    );
    for line in &replay {
        let f = &line["fields"];
        assert!(
            f["message"].as_str().unwrap().contains(" WAL segments (")
                && f["total"].as_u64().unwrap() >= 60
                && f["done"].as_u64().unwrap() <= f["total"].as_u64().unwrap(),
            "{line}"
        );
    }
    assert!(
        replay.iter().any(|l| l["fields"]["eta_seconds"].is_u64()),
        "no ETA in {replay:?}"
    );

    // On a terminal (script(1) gives the restore one): a bar with its counts and ETA through
    // the replay, instead of the log lines.
    let tty_target = scratch.path().join("tty/pgdata");
    let guard = harness::RestoredServer::new(&tty_target);
    let command = format!(
        "{} --config {} restore --pgdata {} --latest --start",
        harness::BIN,
        cfg.path.display(),
        tty_target.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script(1)");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    guard.stop();
    assert_eq!(code(&out), 0, "restore on a terminal:\n{screen}");
    let segments = planned_segments(&screen);
    assert!(
        screen.contains("replay")
            && screen.contains(&format!("/{segments} segments"))
            && screen.contains("ETA"),
        "no replay bar on the terminal:\n{screen}"
    );
    assert!(
        !screen.contains(&format!(" of {segments} WAL segments (")),
        "log lines instead of the bar on a terminal:\n{screen}"
    );
}
