//! `verify` against real PostgreSQL 15 clusters, with both runtimes: the `namespace` runtime
//! (this machine's binaries in Linux namespaces) and the `docker` runtime (an image built
//! `FROM scratch` out of the installed PostgreSQL by `integration/docker-image.sh`).
//!
//! Docker parts are skipped, with a printed message, only where `docker info` fails.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    self, archiving_cluster, backup, code, create_status, set_marker, stderr, target_time,
    BackgroundLoad, PgCluster, RepoTarget, Scratch, TestConfig, PG_BIN,
};

const IMAGE: &str = "synapse-verify-pg15:test";

/// Append `[verify]` settings (and probes for the cluster) to the test config.
pub(crate) fn add_verify_config(
    cfg: &TestConfig,
    scratch_base: &Path,
    probes: &[(&str, &str, &str)],
) {
    let mut text = String::new();
    for (name, sql, expect) in probes {
        text.push_str(&format!(
            "\n[[cluster.verify_probe]]\nname = {}\nsql = {}\nexpect = {}\n",
            toml_str(name),
            toml_str(sql),
            toml_str(expect)
        ));
    }
    text.push_str(&format!(
        "\n[verify]\nscratch_dir = \"{}\"\ndocker_image = \"{IMAGE}\"\ntimeout_seconds = 600\nmemory_mb = 1024\n",
        scratch_base.display()
    ));
    cfg.append(&text);
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// `verify ARGS --json`: output, and the report(s) parsed from stdout.
pub(crate) fn verify(
    cfg: &TestConfig,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Output, Option<Value>) {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let started = Instant::now();
    let out = cfg
        .command(&all)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    eprintln!(
        "--- verify {args:?}: exit {} in {:.1}s\n{}",
        code(&out),
        started.elapsed().as_secs_f64(),
        stderr(&out)
    );
    let report = serde_json::from_slice(&out.stdout).ok();
    (out, report)
}

pub(crate) fn checks(report: &Value) -> Vec<(String, bool, f64, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["ok"].as_bool().unwrap(),
                c["duration_seconds"].as_f64().unwrap(),
                c["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub(crate) fn check<'a>(
    list: &'a [(String, bool, f64, String)],
    name: &str,
) -> &'a (String, bool, f64, String) {
    list.iter()
        .find(|c| c.0 == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {list:?}"))
}

/// Print each check's duration (benchmark information, not asserted).
fn print_durations(label: &str, report: &Value) {
    eprintln!(
        "DURATIONS {label}: total {:.1}s",
        report["duration_seconds"].as_f64().unwrap()
    );
    for (name, ok, secs, _) in checks(report) {
        eprintln!(
            "  {name:<40} {secs:>7.2}s {}",
            if ok { "ok" } else { "FAILED" }
        );
    }
}

/// Whether the docker runtime can be tested here; builds the test image once.
pub(crate) fn docker_ready(test: &str) -> bool {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    match info {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIPPED docker part of {test}: docker info failed: {}",
                stderr(&o)
            );
            return false;
        }
        Err(e) => {
            eprintln!("SKIPPED docker part of {test}: no docker client: {e}");
            return false;
        }
    }
    // One build at a time: tests run in parallel.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = BUILD.lock().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/docker-image.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(IMAGE)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    true
}

/// The scratch base is empty again (no directory left behind).
pub(crate) fn assert_scratch_clean(base: &Path) {
    let left: Vec<String> = std::fs::read_dir(base)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", base.display());
}

/// Every file under the repository's `wal/`, for before/after comparisons.
fn wal_listing(repo: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo.join("core/wal"), repo, &mut out);
    out.sort();
    out
}

/// A cluster with a `status` table, a pgbench database, a backup, and later commits archived.
pub(crate) struct Fixture {
    pub(crate) scratch: Scratch,
    pub(crate) repo: PathBuf,
    pub(crate) pg: PgCluster,
    pub(crate) cfg: TestConfig,
    pub(crate) id: String,
    pub(crate) base: PathBuf,
}

impl Fixture {
    /// A cluster archiving into a local repository, with a `status` table; `before` runs
    /// before the backup and `after` after it, then the latest commit is archived. The
    /// `[verify]` settings are the caller's (`base` is the scratch base to name).
    pub(crate) fn build(
        tag: &str,
        before: impl FnOnce(&PgCluster),
        after: impl FnOnce(&PgCluster),
    ) -> Fixture {
        let scratch = Scratch::new(tag);
        let repo = scratch.subdir("repo");
        let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo.clone()), "");
        let base = scratch.path().join("verify-scratch");
        create_status(&pg, "backup");
        before(&pg);
        let id = backup(&cfg);
        after(&pg);
        set_marker(&pg, "latest");
        pg.archive_everything();
        Fixture {
            scratch,
            repo,
            pg,
            cfg,
            id,
            base,
        }
    }
}

fn fixture(tag: &str, probes: &[(&str, &str, &str)]) -> Fixture {
    let f = Fixture::build(
        tag,
        |pg| pg.pgbench(&["-i", "-s", "2", "-q"]),
        |pg| {
            for i in 0..3 {
                set_marker(pg, &format!("after {i}"));
                pg.pgbench(&["-c", "1", "-t", "100", "-n"]);
                pg.switch_wal();
            }
        },
    );
    add_verify_config(&f.cfg, &f.base, probes);
    f
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_a_backup_taken_under_load_with_both_runtimes() {
    if harness::skip("verify_a_backup_taken_under_load_with_both_runtimes") {
        return;
    }
    let scratch = Scratch::new("verify-load");
    let repo = scratch.subdir("repo");
    let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo.clone()), "");
    let base = scratch.path().join("verify-scratch");
    add_verify_config(
        &cfg,
        &base,
        &[
            ("status has its row", "select count(*) from status", "1"),
            (
                "pgbench accounts",
                "select count(*) from pgbench_accounts",
                "500000",
            ),
        ],
    );
    create_status(&pg, "backup");
    pg.pgbench(&["-i", "-s", "5", "-q"]);
    // pgbench writes while the backup runs.
    let load = BackgroundLoad::start(&pg, 25);
    let id = backup(&cfg);
    load.wait();
    // A moment to recover to by time: 'target', then a later commit.
    set_marker(&pg, "target");
    let target = target_time(&pg, Duration::from_millis(50));
    set_marker(&pg, "latest");
    pg.pgbench(&["-c", "1", "-t", "50", "-n"]);
    pg.archive_everything();

    // A scratch directory left by a verifier that was killed is removed by the next run.
    let stale = base.join("synapse-verify-2147483600-0");
    std::fs::create_dir_all(stale.join("data")).unwrap();

    // Namespace runtime, default target: the newest commit in the archive.
    let (out, report) = verify(&cfg, &["--runtime", "namespace"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = report.expect("a JSON report on stdout");
    assert!(
        !stale.exists(),
        "the stale scratch directory was not removed"
    );
    assert_eq!(report["backup_id"], id.as_str());
    assert_eq!(report["ok"], true);
    assert_eq!(report["target"]["kind"], "end");
    let list = checks(&report);
    for name in [
        "restore",
        "stage_wal",
        "pg_verifybackup",
        "recovery",
        "connect",
        "amcheck",
        "probe \"status has its row\"",
        "probe \"pgbench accounts\"",
    ] {
        let c = check(&list, name);
        assert!(c.1, "{name} failed: {}", c.3);
    }
    assert!(check(&list, "pg_verifybackup")
        .3
        .contains("successfully verified"));
    assert!(
        check(&list, "recovery").3.contains("= the target"),
        "{:?}",
        check(&list, "recovery")
    );
    assert!(check(&list, "amcheck").3.contains("postgres"));
    assert_eq!(report["recovered_to"], report["target"]["time"]);
    print_durations("namespace", &report);
    assert_scratch_clean(&base);

    // The report is stored next to the backup, and `list` shows it.
    let stored = repo.join("core/backups").join(&id).join("verify");
    assert_eq!(std::fs::read_dir(&stored).unwrap().count(), 1);
    let out = cfg.run(&["list", "--json"]);
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = &listing["backups"][0]["last_verification"];
    assert_eq!(last["ok"], true, "{listing}");
    assert!(last["time"].as_str().unwrap().ends_with('Z'));
    let out = cfg.run(&["list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok 20"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // To a time: recovery stops before the first commit after it.
    let (out, report) = verify(
        &cfg,
        &["--runtime", "namespace", "--backup", &id, "--to", &target],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = report.unwrap();
    assert_eq!(report["target"]["kind"], "time");
    let recovery = check(&checks(&report), "recovery").3.clone();
    assert!(
        recovery.contains("recovery stopping before commit"),
        "{recovery}"
    );
    print_durations("namespace --to", &report);

    // Docker runtime.
    if docker_ready("verify_a_backup_taken_under_load_with_both_runtimes") {
        let (out, report) = verify(&cfg, &["--runtime", "docker"], &[]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let report = report.unwrap();
        assert!(report["runtime"].as_str().unwrap().contains(IMAGE));
        let list = checks(&report);
        for name in [
            "restore",
            "stage_wal",
            "pg_verifybackup",
            "recovery",
            "connect",
            "amcheck",
        ] {
            let c = check(&list, name);
            assert!(c.1, "docker: {name} failed: {}", c.3);
        }
        print_durations("docker", &report);
        assert_scratch_clean(&base);
        assert_eq!(std::fs::read_dir(&stored).unwrap().count(), 3);
    }

    // --all-unverified: only the backup without a report.
    set_marker(&pg, "second");
    let second = backup(&cfg);
    set_marker(&pg, "after second");
    pg.archive_everything();
    let (out, reports) = verify(&cfg, &["--all-unverified"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let reports = reports.unwrap();
    let reports = reports
        .as_array()
        .expect("a JSON array for --all-unverified");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["backup_id"], second.as_str());
    assert_eq!(reports[0]["ok"], true);
    let (out, reports) = verify(&cfg, &["--all-unverified"], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(reports.unwrap().as_array().unwrap().len(), 0);
    assert!(stderr(&out).contains("has a verification report"));

    // The older backup's default target is now its last commit before the second backup's
    // end; a later commit is archived, so recovery stops at that time.
    let (out, report) = verify(&cfg, &["--backup", &id], &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = report.unwrap();
    assert_eq!(report["target"]["kind"], "time", "{report}");
    let recovery = check(&checks(&report), "recovery").3.clone();
    assert!(
        recovery.contains("recovery stopping before commit"),
        "{recovery}"
    );
    drop(pg);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_a_corrupted_part() {
    if harness::skip("verify_names_a_corrupted_part") {
        return;
    }
    let f = fixture("verify-part", &[]);
    let part = f
        .repo
        .join("core/backups")
        .join(&f.id)
        .join("data-00.tar.gz");
    let mut bytes = std::fs::read(&part).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5A;
    std::fs::write(&part, bytes).unwrap();

    let (out, report) = verify(&f.cfg, &[], &[]);
    let err = stderr(&out);
    assert_eq!(code(&out), 5, "{err}");
    assert!(
        err.contains("failed verification: restore:")
            && err.contains(&format!("backups/{}/data-00.tar.gz: corrupt part", f.id)),
        "{err}"
    );
    let report = report.unwrap();
    assert_eq!(report["ok"], false);
    assert!(report["error"].as_str().unwrap().contains("data-00.tar.gz"));
    assert_scratch_clean(&f.base);
    let out = f.cfg.run(&["list", "--json"]);
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listing["backups"][0]["last_verification"]["ok"], false);
    drop(f.scratch);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_fails_when_a_wal_segment_is_missing() {
    if harness::skip("verify_fails_when_a_wal_segment_is_missing") {
        return;
    }
    let f = fixture("verify-gap", &[]);
    let m = harness::repository(&f.cfg)
        .get_manifest(&f.id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    // A segment after the backup's end, before the newest commit.
    let stop_seg = m.stop_lsn.0.saturating_sub(1) / (16 << 20);
    let gap_segno = stop_seg + 2;
    let gap = format!(
        "{:08X}{:08X}{:08X}",
        m.timeline.0,
        gap_segno / 256,
        gap_segno % 256
    );
    let object = f
        .repo
        .join("core/wal")
        .join(&gap[..16])
        .join(format!("{gap}.gz"));
    assert!(object.exists(), "{} is not archived", object.display());
    std::fs::remove_file(&object).unwrap();

    let (out, report) = verify(&f.cfg, &["--backup", &f.id], &[]);
    let err = stderr(&out);
    assert_eq!(code(&out), 5, "{err}");
    assert!(err.contains("recovery could not reach the target"), "{err}");
    assert!(err.contains(&format!("{gap} is missing")), "{err}");
    let report = report.unwrap();
    assert_eq!(report["target"]["missing"][0], gap.as_str());
    assert_scratch_clean(&f.base);
    drop(f.pg);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_names_the_failing_probe() {
    if harness::skip("verify_names_the_failing_probe") {
        return;
    }
    let f = fixture(
        "verify-probe",
        &[
            ("status is latest", "select message from status", "latest"),
            (
                "has no orders",
                "select count(*) from pgbench_accounts",
                "0",
            ),
        ],
    );
    let (out, report) = verify(&f.cfg, &[], &[]);
    let err = stderr(&out);
    assert_eq!(code(&out), 5, "{err}");
    assert!(
        err.contains("probe \"has no orders\"")
            && err.contains("returned \"200000\", expected \"0\""),
        "{err}"
    );
    let report = report.unwrap();
    let list = checks(&report);
    assert!(check(&list, "probe \"status is latest\"").1);
    assert!(check(&list, "amcheck").1);
    assert_scratch_clean(&f.base);

    // Restore and recovery passed, so the recovery time was measured (issue 16 item 6), and
    // `list` shows it as the cluster's last measured RTO.
    let m = &report["measured"];
    let (restore, replay) = (
        m["restore_seconds"].as_f64().unwrap(),
        m["replay_seconds"].as_f64().unwrap(),
    );
    assert_eq!(restore, check(&list, "restore").2);
    assert_eq!(replay, check(&list, "recovery").2);
    let rto = m["rto_seconds"].as_f64().unwrap();
    assert!((rto - restore - replay).abs() < 0.01 && rto > 0.0, "{m}");
    assert!(m["rpo_seconds"].as_f64().unwrap() >= 0.0, "{m}");
    assert!(m["last_archived_commit"].is_string(), "{m}");
    let out = f.cfg.run(&["list", "--json"]);
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listing["last_measured_rto"]["rto_seconds"],
        m["rto_seconds"]
    );
    assert_eq!(
        listing["last_measured_rto"]["backup_id"],
        report["backup_id"]
    );
    let out = f.cfg.run(&["list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("last measured RTO: "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(f.pg);
}

/// A TCP listener on every address that counts the connections it gets.
fn listener() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            let mut b = [0u8; 64];
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
            let _ = s.read(&mut b);
        }
    });
    (port, count)
}

/// This machine's first non-loopback IPv4 address, if any.
fn host_ip() -> Option<String> {
    let out = Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| a.contains('.') && !a.starts_with("127."))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_isolates_the_scratch_instance() {
    if harness::skip("verify_isolates_the_scratch_instance") {
        return;
    }
    let (port, connections) = listener();
    let mut hosts = vec!["127.0.0.1".to_string()];
    hosts.extend(host_ip());
    // The listener works from here.
    drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(connections.swap(0, Ordering::SeqCst), 1);

    let marker_file = format!("/var/tmp/synapse-it-escape-{}", std::process::id());
    let tries: Vec<String> = hosts
        .iter()
        .map(|h| {
            format!(
                "{PG_BIN}/psql \"host={h} port={port} connect_timeout=3 user=x dbname=x sslmode=disable\" -c \"select 1\" 2>&1"
            )
        })
        .collect();
    // COPY … FROM PROGRAM runs a shell command as the server's OS user, inside the instance.
    let csv = r"with (format csv, delimiter E'\x01', quote E'\x02')";
    // Each attempt must have run and failed ("connection to server at … failed: Network is
    // unreachable" in a network namespace, "Connection refused" on docker's own loopback).
    let network = format!(
        "create temp table net(line text); copy net from program '{}; echo done' {csv}; \
         select count(*) from net where line ~ 'connection to server at .* failed'",
        tries.join("; ")
    );
    let attempts = hosts.len().to_string();
    let environment = format!(
        "create temp table env(line text); copy env from program 'env' {csv}; \
         select coalesce(string_agg(line, ' '), 'none') from env where line ~ '(AWS_|SYNAPSE|secret-marker)'"
    );
    let scratch = Scratch::new("verify-iso");
    let creds = harness::write_creds(&scratch, "secret-marker-file", "secret-marker-file-2");
    let credentials = format!(
        "create temp table creds(line text); copy creds from program 'cat {} 2>&1; echo end' {csv}; \
         select count(*) from creds where line like '%secret-marker%'",
        creds.display()
    );
    let escape = format!(
        "create temp table esc(line text); copy esc from program 'touch {marker_file} 2>&1; echo end' {csv}; \
         select 'tried'"
    );
    let repo = scratch.subdir("repo");
    let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo.clone()), "");
    // The store credentials file is configured (unused by a file:// repository, but present).
    let text = std::fs::read_to_string(&cfg.path).unwrap().replacen(
        "[repository]\n",
        &format!("[repository]\ncredentials_file = \"{}\"\n", creds.display()),
        1,
    );
    std::fs::write(&cfg.path, text).unwrap();
    let base = scratch.path().join("verify-scratch");
    add_verify_config(
        &cfg,
        &base,
        &[
            ("network is unreachable", &network, &attempts),
            ("no credentials in the environment", &environment, "none"),
            ("credentials file is hidden", &credentials, "0"),
            ("only scratch is writable", &escape, "tried"),
        ],
    );
    create_status(&pg, "x");
    backup(&cfg);
    set_marker(&pg, "y");
    pg.archive_everything();

    let mut runtimes = vec!["namespace"];
    if docker_ready("verify_isolates_the_scratch_instance") {
        runtimes.push("docker");
    }
    let secrets = [
        ("AWS_ACCESS_KEY_ID", "secret-marker"),
        ("AWS_SECRET_ACCESS_KEY", "secret-marker-2"),
        ("SYNAPSE_TEST_SECRET", "secret-marker-3"),
    ];
    for runtime in runtimes {
        let before = wal_listing(&repo);
        let (out, report) = verify(&cfg, &["--runtime", runtime], &secrets);
        assert_eq!(code(&out), 0, "{runtime}: {}", stderr(&out));
        let list = checks(&report.unwrap());
        for (name, ok, _, detail) in &list {
            assert!(ok, "{runtime}: {name}: {detail}");
        }
        // (a) The listener got nothing from inside.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            0,
            "{runtime}: the scratch instance reached a TCP listener on {hosts:?}"
        );
        // (b) is the probes above; (c) the archive received nothing: same WAL, no history.
        let after = wal_listing(&repo);
        assert_eq!(before, after, "{runtime}: the archive changed");
        assert!(!after.iter().any(|f| f.contains(".history")), "{after:?}");
        // Nothing was written outside the scratch directory.
        assert!(
            !Path::new(&marker_file).exists(),
            "{runtime}: wrote {marker_file}"
        );
        assert_scratch_clean(&base);
    }
    let _ = std::fs::remove_file(&marker_file);
    drop(pg);
}

/// The pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains(needle) && pid != std::process::id()).then_some(pid)
        })
        .collect()
}

/// Wait until a scratch instance under `base` is up (its log has lines); its directory.
fn wait_for_instance(base: &Path, child: &mut std::process::Child, runtime: &str) -> PathBuf {
    let started = Instant::now();
    loop {
        let found = std::fs::read_dir(base).ok().and_then(|d| {
            d.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                std::fs::read_to_string(p.join("server.log")).is_ok_and(|l| l.contains("LOG:"))
            })
        });
        if let Some(d) = found {
            return d;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{runtime}: verify ended before its instance was seen"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{runtime}: no instance started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn container_exists(name: &str) -> bool {
    let ps = Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .any(|l| l.trim() == name)
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_cleans_up_after_a_killed_run() {
    if harness::skip("verify_cleans_up_after_a_killed_run") {
        return;
    }
    let f = fixture("verify-kill", &[]);
    let mut runtimes = vec!["namespace"];
    if docker_ready("verify_cleans_up_after_a_killed_run") {
        runtimes.push("docker");
    }

    // SIGTERM (how the agent stops a verify child): the verifier stops the instance and
    // removes its scratch directory itself, and stores no report.
    for runtime in &runtimes {
        let mut child = f
            .cfg
            .command(&["verify", "--runtime", runtime])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let dir = wait_for_instance(&f.base, &mut child, runtime);
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), 1, "{runtime}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("interrupted by SIGTERM"),
            "{}",
            stderr(&out)
        );
        assert!(
            !dir.exists(),
            "{runtime}: {} left after SIGTERM",
            dir.display()
        );
        assert_eq!(
            processes_mentioning(&format!("{}/", dir.display())),
            Vec::<u32>::new(),
            "{runtime}: instance left running after SIGTERM"
        );
        if *runtime == "docker" {
            assert!(
                !container_exists(&name),
                "container {name} left after SIGTERM"
            );
        }
    }
    assert!(!f
        .repo
        .join("core/backups")
        .join(&f.id)
        .join("verify")
        .exists());

    // SIGKILL: nothing runs in the verifier any more. The namespace instance dies with it
    // (parent-death signals); what is left (the directory, a container) is removed by the
    // next run.
    for runtime in runtimes {
        let mut child = f
            .cfg
            .command(&["verify", "--runtime", runtime])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let dir = wait_for_instance(&f.base, &mut child, runtime);
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .unwrap();
        let _ = child.wait();
        let needle = format!("{}/", dir.display());
        if runtime == "namespace" {
            let t = Instant::now();
            while !processes_mentioning(&needle).is_empty() && t.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(
                processes_mentioning(&needle),
                Vec::<u32>::new(),
                "instance outlived its verifier"
            );
        }
        assert!(dir.exists());
        let (out, _) = verify(&f.cfg, &["--runtime", runtime], &[]);
        assert_eq!(code(&out), 0, "{runtime}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("left by an earlier run"),
            "{}",
            stderr(&out)
        );
        assert!(
            !dir.exists(),
            "{runtime}: {} was not removed",
            dir.display()
        );
        if runtime == "docker" {
            assert!(!container_exists(&name), "container {name} left");
        }
        assert_scratch_clean(&f.base);
    }
    drop(f.pg);
}
