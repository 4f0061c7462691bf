//! The repository as a shell user and a damaged bucket leave it (issue 13 items 5–7, F16,
//! F18): private modes whatever the umask, read-only commands that create nothing, one
//! damaged manifest that blocks nothing else, WAL gaps that end the window and are named,
//! empty objects that are called empty.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use synapse_backup::agent::facts::RepoReader;

use crate::harness::{
    self, archiving_cluster, as_postgres, backup_id, code, create_status, repository, set_marker,
    stderr, RepoTarget, Scratch, TestConfig, BIN,
};

/// Run the binary as the postgres user from a shell whose umask is 022.
fn run_umask_022(cfg: &TestConfig, args: &[&str]) -> Output {
    as_postgres("sh")
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(BIN)
        .arg("--config")
        .arg(&cfg.path)
        .args(args)
        .current_dir(cfg.path.parent().unwrap())
        .stdin(Stdio::null())
        .output()
        .expect("run")
}

/// Every path under `root` (itself included) whose mode is not 0700 (directories) or 0600
/// (files), with its mode.
fn loose_modes(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            out.push(format!("{} {mode:o}", p.display()));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// The file holding archived WAL file `name` in the local repository at `repo_dir`.
fn wal_object(repo_dir: &Path, name: &str) -> PathBuf {
    repo_dir
        .join("core/wal")
        .join(&name[..16])
        .join(format!("{name}.gz"))
}

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        out.push(p.strip_prefix(root).unwrap().to_path_buf());
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn repository_is_private_whatever_the_umask_and_check_leaves_nothing() {
    if harness::skip("repository_is_private_whatever_the_umask_and_check_leaves_nothing") {
        return;
    }
    let scratch = Scratch::new("umask");
    // Not created beforehand: the first wal-push (umask 022) creates it.
    let repo_dir = scratch.path().join("repo");
    let cfg_path = scratch.path().join("synapse-core.toml");
    let archive = format!(
        "archive_command = 'umask 022; {BIN} --config {} wal-push %p'\n",
        cfg_path.display()
    );
    let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir.clone()), &archive);
    let verify_base = scratch.path().join("verify-scratch");
    cfg.append(&format!(
        "\n[verify]\nscratch_dir = \"{}\"\ntimeout_seconds = 600\nmemory_mb = 1024\n",
        verify_base.display()
    ));
    create_status(&pg, "a");
    let id = backup_id(&run_umask_022(&cfg, &["backup"]));
    set_marker(&pg, "after");
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(60));
    for args in [
        &["list"][..],
        &["verify", "--backup", &id, "--runtime", "namespace"],
    ] {
        let out = run_umask_022(&cfg, args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
    }
    let loose = loose_modes(&repo_dir);
    assert!(
        loose.is_empty(),
        "with umask 022, everything in the repository must be 0700/0600:\n{}",
        loose.join("\n")
    );

    // check archives one more segment (its archiving test); nothing else may appear.
    let not_wal = |t: Vec<PathBuf>| -> Vec<PathBuf> {
        t.into_iter()
            .filter(|p| !p.starts_with("core/wal"))
            .collect()
    };
    let before = not_wal(tree(&repo_dir));
    let out = run_umask_022(&cfg, &["check"]);
    assert_eq!(
        code(&out),
        0,
        "check: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        not_wal(tree(&repo_dir)),
        before,
        "check must leave nothing behind"
    );
    let loose = loose_modes(&repo_dir);
    assert!(loose.is_empty(), "after check: {}", loose.join("\n"));
}

#[test]
fn read_only_commands_do_not_create_a_repository() {
    if harness::skip("read_only_commands_do_not_create_a_repository") {
        return;
    }
    let scratch = Scratch::new("norepo");
    let missing = scratch.path().join("no-such-repo");
    let cfg = TestConfig::write(
        scratch.path(),
        &RepoTarget::Local(missing.clone()),
        "core",
        &scratch.path().join("pgdata"),
        "host=/nonexistent",
        "",
    );
    for args in [
        &["list"][..],
        &["restore", "--pgdata", "/nonexistent/x", "--latest"],
        &["wal-fetch", "000000010000000000000001", "/nonexistent/y"],
    ] {
        let out = run_umask_022(&cfg, args);
        let err = stderr(&out);
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
        assert_ne!(code(&out), 0, "{args:?} succeeded on a missing repository");
        assert!(
            err.contains("no repository at") && err.contains(&missing.display().to_string()),
            "{args:?}: {err}"
        );
    }
}

/// A cluster archiving into a local repository, with `n` backups, a segment switched
/// between each; the scratch, cluster, config, repository directory and backup ids.
fn with_backups(
    tag: &str,
    n: usize,
) -> (
    Scratch,
    harness::PgCluster,
    TestConfig,
    PathBuf,
    Vec<String>,
) {
    let scratch = Scratch::new(tag);
    let repo_dir = scratch.subdir("repo");
    let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir.clone()), "");
    create_status(&pg, "start");
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(harness::backup(&cfg));
        set_marker(&pg, &format!("after {i}"));
        pg.switch_wal();
    }
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(60));
    (scratch, pg, cfg, repo_dir, ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_damaged_manifest_blocks_nothing_else() {
    if harness::skip("one_damaged_manifest_blocks_nothing_else") {
        return;
    }
    let (scratch, _pg, cfg, repo_dir, ids) = with_backups("damaged", 3);
    let damaged = &ids[0];
    let manifest = repo_dir
        .join("core/backups")
        .join(damaged)
        .join("manifest.json");
    let mut bytes = std::fs::read(&manifest).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&manifest, bytes).unwrap();

    let out = cfg.run(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), 0, "list: {}", stderr(&out));
    let line = text
        .lines()
        .find(|l| l.contains(damaged.as_str()))
        .unwrap_or_default();
    assert!(
        line.contains("DAMAGED"),
        "list marks the damaged backup:\n{text}"
    );
    for id in &ids[1..] {
        assert!(text.contains(id.as_str()), "{id} listed:\n{text}");
    }
    let out = cfg.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "list --json: {}", stderr(&out));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing["backups"].as_array().unwrap().len(), 2);
    assert_eq!(listing["damaged_backups"][0]["id"], damaged.as_str());
    assert!(listing["damaged_backups"][0]["error"]
        .as_str()
        .unwrap()
        .contains("manifest.json"));

    let target = scratch.path().join("restored");
    let out = cfg.run(&[
        "restore",
        "--pgdata",
        target.to_str().unwrap(),
        "--backup",
        &ids[2],
        "--latest",
    ]);
    assert_eq!(
        code(&out),
        0,
        "restore of an intact backup: {}",
        stderr(&out)
    );
    let target2 = scratch.path().join("restored-damaged");
    let out = cfg.run(&[
        "restore",
        "--pgdata",
        target2.to_str().unwrap(),
        "--backup",
        damaged,
        "--latest",
    ]);
    assert_ne!(code(&out), 0, "restore of the damaged backup must fail");
    assert!(
        stderr(&out).contains(damaged.as_str()) && stderr(&out).contains("manifest"),
        "{}",
        stderr(&out)
    );

    let out = cfg.run(&["expire", "--dry-run", "--json"]);
    assert_eq!(code(&out), 0, "expire --dry-run: {}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["wal_objects_removed"], 0, "{plan:#}");
    assert!(
        plan["backups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["id"] != damaged.as_str()),
        "the damaged backup takes no part in the plan: {plan:#}"
    );
    assert!(
        plan["leftovers_removed"].as_array().unwrap().is_empty(),
        "{plan:#}"
    );
    assert_eq!(plan["damaged_backups"][0]["id"], damaged.as_str());

    let read = RepoReader::default().read(&repository(&cfg)).await.unwrap();
    assert_eq!(read.facts.damaged_backups, 1);
    assert_eq!(read.facts.backups, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wal_gap_ends_the_window_and_is_named() {
    if harness::skip("a_wal_gap_ends_the_window_and_is_named") {
        return;
    }
    let (_scratch, pg, cfg, repo_dir, _ids) = with_backups("gap", 1);
    for i in 0..3 {
        set_marker(&pg, &format!("later {i}"));
        pg.switch_wal();
    }
    let last = pg.switch_wal();
    pg.wait_archived(&last, Duration::from_secs(60));
    let repo = repository(&cfg);
    let wal = repo.list_wal().await.unwrap();
    let segments: Vec<String> = wal
        .iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| n.len() == 24)
        .collect();
    assert!(segments.len() >= 5, "{segments:?}");
    // A segment after the backup's end, with newer WAL archived after it.
    let gone = segments[segments.len() - 3].clone();
    let object = wal_object(&repo_dir, &gone);
    let kept = std::fs::read(&object).unwrap();
    std::fs::remove_file(&object).unwrap();

    let out = cfg.run(&["list", "--json"]);
    assert_eq!(code(&out), 0, "list: {}", stderr(&out));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listing["window"]["missing_wal"],
        gone.as_str(),
        "{listing:#}"
    );
    let end = listing["window"]["wal_end_lsn"]
        .as_str()
        .unwrap()
        .to_string();
    let human = String::from_utf8_lossy(&cfg.run(&["list"]).stdout).into_owned();
    assert!(human.contains(&gone), "list names the gap:\n{human}");
    // The window ends where the missing segment begins.
    let seg_no = u64::from_str_radix(&gone[16..], 16).unwrap()
        + (u64::from_str_radix(&gone[8..16], 16).unwrap() << 8);
    let (hi, lo) = end.split_once('/').unwrap();
    let end_lsn =
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    assert_eq!(end_lsn, seg_no << 24, "window end {end} vs gap at {gone}");

    let out = cfg.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_ne!(code(&out), 0, "check passes with a gap:\n{text}");
    assert!(text.contains(&gone), "check names the gap:\n{text}");

    let read = RepoReader::default().read(&repo).await.unwrap();
    assert_eq!(read.facts.wal_gap, Some(gone.clone()));

    // The gap repaired, the newest segment deleted: the archiver position wal-push records
    // names it.
    std::fs::write(&object, kept).unwrap();
    assert_eq!(
        RepoReader::default()
            .read(&repo)
            .await
            .unwrap()
            .facts
            .wal_gap,
        None
    );
    let newest = segments.last().unwrap().clone();
    let object = wal_object(&repo_dir, &newest);
    std::fs::remove_file(&object).unwrap();
    let out = cfg.run(&["list"]);
    let human = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        human.contains(&newest),
        "list names the missing newest segment:\n{human}"
    );
    let read = RepoReader::default().read(&repo).await.unwrap();
    assert_eq!(read.facts.wal_gap, Some(newest.clone()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_wal_object_is_named_and_called_empty() {
    if harness::skip("an_empty_wal_object_is_named_and_called_empty") {
        return;
    }
    let (scratch, _pg, cfg, repo_dir, _ids) = with_backups("empty", 1);
    let repo = repository(&cfg);
    let wal = repo.list_wal().await.unwrap();
    let newest = wal
        .iter()
        .map(|(n, _)| n.to_string())
        .rfind(|n| n.len() == 24)
        .unwrap();
    let object = wal_object(&repo_dir, &newest);
    std::fs::write(&object, b"").unwrap();
    let dest = scratch.path().join("fetched");
    for args in [
        &["list"][..],
        &["wal-fetch", &newest, dest.to_str().unwrap()],
    ] {
        let out = cfg.run(args);
        let err = stderr(&out);
        assert_ne!(code(&out), 0, "{args:?}");
        assert!(
            err.contains(&format!("{newest}.gz")) && err.contains("empty"),
            "{args:?}: {err}"
        );
    }
}
