//! The agent against three real clusters: scheduled backups and expire, /metrics scraped over
//! HTTP, SIGHUP with a broken config, a second agent on the same config, SIGTERM during a
//! backup; and a verification attempted after each backup.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use synapse_backup::repo::lock::RepoLock;
use synapse_backup::repo::Repository;

use crate::harness::{self, backup_ids, give_to_postgres, tail, PgCluster, Scratch, BIN};

const CLUSTERS: [&str; 3] = ["core", "analytics", "revenue"];

/// Three archiving clusters and one config naming all of them, with `agent` as its
/// `[agent]` section (without `listen`, which is added here).
struct Setup {
    clusters: Vec<PgCluster>,
    config: PathBuf,
    repo_dir: PathBuf,
    port: u16,
    good_config: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `cluster_extra(name)` is appended to that cluster's section.
fn setup(scratch: &Scratch, agent: &str, cluster_extra: &dyn Fn(&str) -> String) -> Setup {
    let repo_dir = scratch.subdir("repo");
    let config = scratch.path().join("synapse.toml");
    let port = free_port();
    let mut clusters = Vec::new();
    let mut cluster_sections = String::new();
    for name in CLUSTERS {
        let dir = scratch.subdir(name);
        let pg = PgCluster::init(&dir, "");
        cluster_sections.push_str(&format!(
            "[[cluster]]\nname = \"{name}\"\npgdata = \"{}\"\nconnection = \"{}\"\n{}\n",
            pg.pgdata.display(),
            pg.connection(),
            cluster_extra(name)
        ));
        clusters.push(pg);
    }
    let good_config = format!(
        "timezone = \"UTC\"\n[repository]\nurl = \"file://{}\"\n[backup]\narchive_wait_seconds = 60\n\
         [agent]\nlisten = \"127.0.0.1:{port}\"\n{agent}\n{cluster_sections}",
        repo_dir.display()
    );
    std::fs::write(&config, &good_config).unwrap();
    give_to_postgres(&config);
    for (pg, name) in clusters.iter_mut().zip(CLUSTERS) {
        harness::append_conf(
            &pg.pgdata,
            &format!(
                "archive_mode = on\narchive_command = '{BIN} --config {} --cluster {name} wal-push %p'\n",
                config.display()
            ),
        );
        pg.start();
        pg.psql("create table t(i int); insert into t select generate_series(1, 1000)");
    }
    Setup {
        clusters,
        config,
        repo_dir,
        port,
        good_config,
    }
}

/// The agent process; killed (by its pid) if the test ends while it still runs.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path, log: PathBuf) -> Agent {
        let child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .arg("agent")
            .env("NO_COLOR", "1")
            // As the systemd unit runs it.
            .env("MALLOC_ARENA_MAX", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig}");
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Wait until `f` holds, checking every 200 ms; panic with the log after `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, mut f: impl FnMut(&mut Self) -> bool) {
        let start = Instant::now();
        loop {
            if f(self) {
                return;
            }
            assert!(
                self.running(),
                "the agent exited while waiting for {what}:\n{}",
                tail(&self.log(), 60)
            );
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; agent log:\n{}",
                tail(&self.log(), 60)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// HTTP GET on 127.0.0.1 with a plain TcpStream: (status code, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

fn metrics(port: u16) -> String {
    match get(port, "/metrics") {
        Some((200, body)) => body,
        other => panic!("GET /metrics: {other:?}"),
    }
}

fn repo(setup: &Setup, cluster: &str) -> Repository {
    harness::repository_of(&setup.config, cluster)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_backs_up_three_clusters_reloads_refuses_a_twin_and_stops_mid_backup() {
    if harness::skip("agent_backs_up_three_clusters_reloads_refuses_a_twin_and_stops_mid_backup") {
        return;
    }
    let scratch = Scratch::new("agent");
    // revenue: weekly-full rhythm with a full_schedule that does not fire during the test (its
    // first backup is a full, the next ones incrementals), and an RPO objective.
    let setup = setup(
        &scratch,
        "backup_schedule = \"*/5 * * * * *\"\nverify_after_backup = false\n",
        &|name| {
            if name == "revenue" {
                "full_schedule = \"0 0 0 1 1 *\"\nrpo_objective = \"1h\"\n".into()
            } else {
                String::new()
            }
        },
    );
    // Enough data in core that its backup takes a moment (SIGTERM lands in one below).
    setup.clusters[0].pgbench(&["-i", "-s", "8", "-q"]);
    let started = unix_now();
    let mut agent = Agent::start(&setup.config, scratch.path().join("agent.log"));
    let port = setup.port;

    agent.wait_for(
        "/healthz",
        Duration::from_secs(30),
        |_| matches!(get(port, "/healthz"), Some((200, ref b)) if b == "ok\n"),
    );

    // Every cluster gets backed up (one after another) and expired; /metrics says so.
    agent.wait_for(
        "a backup of every cluster in /metrics",
        Duration::from_secs(240),
        |_| {
            let m = metrics(port);
            CLUSTERS.iter().all(|c| {
                sample(
                    &m,
                    &format!("synapse_backup_last_success_timestamp_seconds{{cluster=\"{c}\",job_type=\"backup\"}}"),
                )
                .is_some_and(|t| t >= started)
                    && sample(
                        &m,
                        &format!("synapse_backup_job_runs_total{{cluster=\"{c}\",job_type=\"expire\"}}"),
                    )
                    .is_some_and(|n| n >= 1.0)
            })
        },
    );
    // The repository refresher catches up with the window (after the first backup's WAL).
    agent.wait_for(
        "the recoverable window and repository sizes",
        Duration::from_secs(60),
        |_| {
            let m = metrics(port);
            CLUSTERS.iter().all(|c| {
                sample(&m, &format!("synapse_backup_recoverable_window_start_timestamp_seconds{{cluster=\"{c}\"}}")).is_some()
                    && sample(&m, &format!("synapse_backup_repository_bytes{{cluster=\"{c}\",kind=\"wal\"}}")).is_some_and(|b| b > 0.0)
            })
        },
    );
    let m = metrics(port);
    for c in CLUSTERS {
        let listed = repo(&setup, c).list_backups().await.unwrap();
        assert!(!listed.is_empty(), "{c}: no backup listed");
        let want = |name: &str| {
            sample(&m, &format!("{name}{{cluster=\"{c}\"}}"))
                .unwrap_or_else(|| panic!("{name} for {c} missing:\n{m}"))
        };
        assert_eq!(want("synapse_backup_postgres_up"), 1.0);
        assert!(want("synapse_backup_wal_archived_total") >= 1.0);
        assert!(want("synapse_backup_wal_last_archived_timestamp_seconds") >= started - 60.0);
        assert_eq!(want("synapse_backup_wal_archive_failures_total"), 0.0);
        assert!(want("synapse_backup_wal_archive_ready_files") >= 0.0);
        assert!(want("synapse_backup_wal_written_bytes_total") > 0.0);
        assert!(want("synapse_backup_last_backup_stored_bytes") > 0.0);
        assert!(
            want("synapse_backup_last_backup_original_bytes")
                > want("synapse_backup_last_backup_stored_bytes")
        );
        assert!(want("synapse_backup_backups") >= 1.0);
        assert_eq!(
            want("synapse_backup_retention_target_seconds"),
            30.0 * 86400.0
        );
        assert_eq!(want("synapse_backup_repository_up"), 1.0);
        assert_eq!(
            sample(
                &m,
                &format!(
                    "synapse_backup_job_failures_total{{cluster=\"{c}\",job_type=\"backup\"}}"
                )
            ),
            Some(0.0),
            "{c}: a backup failed:\n{}",
            tail(&agent.log(), 60)
        );
    }
    assert!(m.contains("# TYPE synapse_backup_job_runs_total counter"));

    // The rhythm: revenue's later backups are incrementals on its first full; the others
    // (no full_schedule) take a full every time. The chain and per-type sizes are exported,
    // and the data-loss exposure beside revenue's objective.
    agent.wait_for(
        "an incremental backup of revenue",
        Duration::from_secs(120),
        |_| {
            let m = metrics(port);
            sample(
                &m,
                "synapse_backup_last_backup_chain_length{cluster=\"revenue\"}",
            )
            .is_some_and(|n| n >= 2.0)
                && sample(
                    &m,
                    "synapse_backup_stored_bytes{cluster=\"revenue\",type=\"incr\"}",
                )
                .is_some_and(|b| b > 0.0)
        },
    );
    let m = metrics(port);
    assert!(agent.log().contains("this backup is an incremental"));
    assert_eq!(
        sample(
            &m,
            "synapse_backup_stored_bytes{cluster=\"core\",type=\"incr\"}"
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "synapse_backup_last_backup_chain_length{cluster=\"core\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "synapse_backup_rpo_objective_seconds{cluster=\"revenue\"}"
        ),
        Some(3600.0)
    );
    assert!(sample(&m, "synapse_backup_rpo_objective_seconds{cluster=\"core\"}").is_none());
    // The exposure is the age of the last archived commit: make one and archive it.
    setup.clusters[2].psql("insert into t values (0)");
    setup.clusters[2].switch_wal();
    agent.wait_for(
        "the data-loss exposure of revenue",
        Duration::from_secs(60),
        |_| {
            sample(
                &metrics(port),
                "synapse_backup_rpo_seconds{cluster=\"revenue\"}",
            )
            .is_some_and(|s| (0.0..60.0).contains(&s))
        },
    );

    // A second agent on the same config refuses to start, saying why.
    let twin = Command::new(BIN)
        .arg("--config")
        .arg(&setup.config)
        .arg("agent")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let twin_err = String::from_utf8_lossy(&twin.stderr);
    assert_ne!(twin.status.code(), Some(0), "second agent: {twin_err}");
    assert!(
        twin_err.contains("another synapse-backup agent is already running"),
        "{twin_err}"
    );

    // SIGHUP with a broken config: refused, the agent keeps running on the old one.
    std::fs::write(&setup.config, "[repository\nthis is not TOML").unwrap();
    agent.signal("HUP");
    agent.wait_for("the refused reload", Duration::from_secs(20), |a| {
        a.log()
            .contains("the new config is refused, the old one stays in force")
    });
    assert_eq!(
        sample(
            &metrics(port),
            "synapse_backup_config_last_reload_successful"
        ),
        Some(0.0)
    );
    std::fs::write(&setup.config, &setup.good_config).unwrap();
    agent.signal("HUP");
    agent.wait_for("the good reload", Duration::from_secs(20), |_| {
        sample(
            &metrics(port),
            "synapse_backup_config_last_reload_successful",
        ) == Some(1.0)
    });
    assert!(agent.log().contains("SIGHUP: config reloaded"));

    // SIGTERM while a backup runs: exit 0 within 10 s, nothing partial listed, no lock left.
    agent.wait_for("a running backup of core", Duration::from_secs(120), |_| {
        sample(
            &metrics(port),
            "synapse_backup_job_running{cluster=\"core\",job_type=\"backup\"}",
        ) == Some(1.0)
    });
    let before = backup_ids(&repo(&setup, "core")).await;
    agent.signal("TERM");
    let stop = Instant::now();
    let status = loop {
        if let Some(st) = agent.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            stop.elapsed() < Duration::from_secs(10),
            "the agent did not stop within 10 s:\n{}",
            tail(&agent.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = agent.log();
    assert_eq!(status.code(), Some(0), "{}", tail(&log, 40));
    assert!(log.contains("SIGTERM: stopping"), "{}", tail(&log, 40));
    let core = repo(&setup, "core");
    let after = backup_ids(&core).await;
    if log.contains("failed to backup core: aborted: the agent is stopping") {
        // The aborted backup stored parts, perhaps, but no manifest: it is not listed.
        assert_eq!(after, before, "{}", tail(&log, 40));
    }
    assert!(
        !RepoLock::is_held(&core).await.unwrap(),
        "the aborted backup's lock was left behind:\n{}",
        tail(&log, 40)
    );
    // PostgreSQL has no backup in progress left: a new one starts at once.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&setup.config)
        .args(["--cluster", "core", "backup"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "backup after the agent stopped: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(setup.repo_dir.join("core").join("repository.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_verifies_each_new_backup() {
    if harness::skip("agent_verifies_each_new_backup") {
        return;
    }
    let scratch = Scratch::new("agent-verify");
    // Once a day (03:00 UTC): the only backups are the missed runs at start-up. Only core
    // verifies (the default); the others opt out in their sections.
    let setup = setup(&scratch, "backup_schedule = \"0 0 3 * * *\"\n", &|name| {
        if name == "core" {
            String::new()
        } else {
            "verify_after_backup = false".into()
        }
    });
    let mut agent = Agent::start(&setup.config, scratch.path().join("agent.log"));
    let port = setup.port;
    agent.wait_for("/healthz", Duration::from_secs(30), |_| {
        matches!(get(port, "/healthz"), Some((200, _)))
    });
    // A verification is attempted after the first backup of core (whatever its outcome in
    // this environment: the result is recorded either way).
    agent.wait_for("a verification attempt", Duration::from_secs(300), |a| {
        sample(
            &metrics(port),
            "synapse_backup_job_runs_total{cluster=\"core\",job_type=\"verify\"}",
        )
        .is_some_and(|n| n >= 1.0)
            && a.log()
                .contains("starting verify of core (after the backup)")
    });
    let m = metrics(port);
    assert!(
        sample(
            &m,
            "synapse_backup_next_run_timestamp_seconds{cluster=\"core\",job_type=\"backup\"}"
        )
        .is_some_and(|t| t > unix_now()),
        "{m}"
    );
    agent.wait_for("the verification result", Duration::from_secs(600), |_| {
        sample(
            &metrics(port),
            "synapse_backup_last_verify_success{cluster=\"core\"}",
        )
        .is_some()
    });
    // Idle now (the next run is at 03:00).
    agent.wait_for("every job to finish", Duration::from_secs(120), |_| {
        !metrics(port)
            .lines()
            .any(|l| l.starts_with("synapse_backup_job_running{") && l.ends_with(" 1.0"))
    });
    // Resident memory is reported here, not asserted: memory targets are measured by
    // bench/agent_memory.sh (issue 7: idle VmRSS under 30 MB, release build). How much freed
    // heap glibc keeps depends on what the jobs happened to overlap, so a bound here would
    // only be a flaky test.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let kb = |key: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    eprintln!(
        "idle agent, 3 clusters, after backups and a verification (debug build): VmRSS {}, RssAnon {}",
        kb("VmRSS:"),
        kb("RssAnon:")
    );
    agent.signal("TERM");
    let stop = Instant::now();
    while agent.running() {
        assert!(
            stop.elapsed() < Duration::from_secs(10),
            "the agent did not stop within 10 s:\n{}",
            tail(&agent.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Catalog snapshots of the agent's `catalog_schedule` (issue 16): a table created after the
/// last backup is recorded by the next refresh (an unchanged catalog stores nothing new), so
/// `events` names it when it is dropped before the next backup.
#[tokio::test(flavor = "multi_thread")]
async fn agent_refreshes_the_catalog_so_events_name_new_tables() {
    if harness::skip("agent_refreshes_the_catalog_so_events_name_new_tables") {
        return;
    }
    let scratch = Scratch::new("agent-catalog");
    let setup = setup(
        &scratch,
        "backup_schedule = \"0 0 3 * * *\"\ncatalog_schedule = \"*/2 * * * * *\"\nverify_after_backup = false\n",
        &|_| String::new(),
    );
    let mut agent = Agent::start(&setup.config, scratch.path().join("agent.log"));
    let catalog_dir = setup.repo_dir.join("core").join("catalog");
    let snapshots = || -> Vec<String> {
        let mut texts: Vec<(String, String)> = std::fs::read_dir(&catalog_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .map(|e| {
                        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                        (e.file_name().to_string_lossy().into_owned(), text)
                    })
                    .collect()
            })
            .unwrap_or_default();
        texts.sort();
        texts.into_iter().map(|(_, text)| text).collect()
    };
    agent.wait_for(
        "core's first catalog snapshot",
        Duration::from_secs(120),
        |_| !snapshots().is_empty(),
    );
    let core = &setup.clusters[0];
    core.psql(
        "create table made_after_the_backup(i int); insert into made_after_the_backup values (1)",
    );
    agent.wait_for(
        "a snapshot naming the new table",
        Duration::from_secs(60),
        |_| {
            snapshots()
                .last()
                .is_some_and(|s| s.contains("made_after_the_backup"))
        },
    );
    // Unchanged: three more fire times store nothing.
    let stored = snapshots().len();
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        snapshots().len(),
        stored,
        "an unchanged catalog was stored again"
    );
    core.psql("drop table made_after_the_backup");
    let seg = core.switch_wal();
    core.wait_archived(&seg, Duration::from_secs(60));
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&setup.config)
        .args(["--cluster", "core", "events"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "events: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.contains("DROP TABLE public.made_after_the_backup")),
        "events does not name the dropped table:\n{text}"
    );
    agent.signal("TERM");
    let stop = Instant::now();
    while agent.running() {
        assert!(
            stop.elapsed() < Duration::from_secs(10),
            "the agent did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
