//! The kill -9 campaign (issue 13): `wal-push`, `backup`, `expire`, `restore` and `verify` are
//! killed with SIGKILL at random moments while pgbench writes; afterwards every archived segment
//! must be fetchable and every listed backup must restore. The counts are printed.
//!
//! The random moments come from a seed printed at the start (`SYNAPSE_KILL_SEED` replays one).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::kill::{kill_nine, listed_backups, spawn};
use crate::harness::{self, archiving_cluster, code, stderr, PgCluster, RepoTarget, Scratch};

/// Kills that must land while the command runs.
const KILL_POINTS: usize = 30;
/// Attempts at most (a kill that comes after the command ended does not count).
const MAX_ATTEMPTS: usize = 60;

/// xorshift64*: enough randomness for kill moments, and replayable from the printed seed.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("SYNAPSE_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("kill campaign seed: {seed} (SYNAPSE_KILL_SEED={seed} replays it)");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    WalPush,
    Backup,
    Expire,
    Restore,
    Verify,
}

impl Victim {
    const ALL: [Victim; 5] = [
        Victim::WalPush,
        Victim::Backup,
        Victim::Expire,
        Victim::Restore,
        Victim::Verify,
    ];
}

#[derive(Default)]
struct Tally {
    /// How long one undisturbed run took, or the shortest run seen since (the kill moment is
    /// drawn from 0..90 % of it).
    duration: Duration,
    killed: usize,
    finished_first: usize,
}

/// A complete WAL segment of the cluster (one PostgreSQL marked .ready or .done), so that a
/// manual push never races the archiver with different content.
fn complete_segment(pg: &PgCluster, rng: &mut Rng) -> Option<String> {
    let status = pg.pgdata.join("pg_wal/archive_status");
    let mut names: Vec<String> = std::fs::read_dir(&status)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let stem = n
                .strip_suffix(".ready")
                .or_else(|| n.strip_suffix(".done"))?;
            (stem.len() == 24).then(|| stem.to_string())
        })
        .filter(|n| pg.pgdata.join("pg_wal").join(n).exists())
        .collect();
    names.sort();
    if names.is_empty() {
        return None;
    }
    let i = rng.below(names.len() as u64) as usize;
    Some(names.swap_remove(i))
}

fn wal_objects(repo: &Path) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if let Some(stem) = name.strip_suffix(".gz") {
                    if stem.len() == 24 || stem.ends_with(".history") {
                        out.push(stem.to_string());
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&repo.join("core/wal"), &mut out);
    out.sort();
    out
}

/// Scratch PostgreSQL servers left by a killed `verify` (started under our test): stop them.
fn stop_orphans(scratch_base: &Path) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let base = scratch_base.to_string_lossy().into_owned();
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&base) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[test]
fn kill_nine_campaign_leaves_every_segment_fetchable_and_every_backup_restorable() {
    if harness::skip("kill_nine_campaign") {
        return;
    }
    let mut rng = Rng::new();
    let scratch = Scratch::new("kill9");
    let repo_dir = scratch.subdir("repo");
    let verify_base = scratch.subdir("verify");
    let (pg, cfg) = archiving_cluster(&scratch, &RepoTarget::Local(repo_dir.clone()), "");
    let mut text = std::fs::read_to_string(&cfg.path).unwrap();
    // A lock left by a killed backup must not stall the campaign for 10 minutes.
    text.push_str(&format!(
        "\n[backup]\nlock_ttl_seconds = 15\n\n[verify]\nscratch_dir = \"{}\"\ntimeout_seconds = 300\n",
        verify_base.display()
    ));
    std::fs::write(&cfg.path, text).unwrap();
    pg.pgbench(&["-i", "-s", "3", "-q"]);
    let mut load = harness::as_postgres(format!("{}/pgbench", harness::PG_BIN))
        .arg("-h")
        .arg(&pg.socket_dir)
        .args(["-p", &pg.port.to_string(), "-U", "postgres"])
        .args(["-c", "2", "-T", "900", "-n", "--rate", "200", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // One complete backup first, so that restore and verify have something to work on.
    let dir = scratch.path().to_path_buf();
    let first = cfg.run_as_postgres(&["backup"], &dir);
    assert_eq!(code(&first), 0, "first backup: {}", stderr(&first));

    let mut tally: Vec<(Victim, Tally)> =
        Victim::ALL.iter().map(|v| (*v, Tally::default())).collect();
    let start = |victim: Victim, i: usize, rng: &mut Rng| -> Option<(Child, PathBuf)> {
        let target: PathBuf = scratch.path().join(format!("restore-{i}"));
        let child = match victim {
            Victim::WalPush => {
                let seg = complete_segment(&pg, rng)?;
                spawn(
                    &cfg.path,
                    &["wal-push", &format!("pg_wal/{seg}")],
                    &pg.pgdata,
                    true,
                )
            }
            Victim::Backup => spawn(&cfg.path, &["backup"], &dir, true),
            Victim::Expire => spawn(&cfg.path, &["expire"], &dir, true),
            Victim::Restore => spawn(
                &cfg.path,
                &["restore", "--latest", "--pgdata", target.to_str().unwrap()],
                &dir,
                false,
            ),
            Victim::Verify => spawn(&cfg.path, &["verify", "--latest"], &dir, false),
        };
        Some((child, target))
    };
    // Calibrate: one undisturbed run of each, timed.
    pg.switch_wal();
    for (i, (victim, t)) in tally.iter_mut().enumerate() {
        let began = Instant::now();
        let (mut child, target) = start(*victim, 1000 + i, &mut rng).expect("a complete segment");
        let status = child.wait().unwrap();
        t.duration = began.elapsed();
        assert!(status.success(), "{victim:?} failed undisturbed: {status}");
        let _ = std::fs::remove_dir_all(&target);
    }
    let started = Instant::now();
    let mut attempts = 0;
    while tally.iter().map(|(_, t)| t.killed).sum::<usize>() < KILL_POINTS {
        assert!(
            attempts < MAX_ATTEMPTS,
            "only {} kills landed mid-run in {MAX_ATTEMPTS} attempts",
            tally.iter().map(|(_, t)| t.killed).sum::<usize>()
        );
        let victim = Victim::ALL[attempts % Victim::ALL.len()];
        attempts += 1;
        let began = Instant::now();
        let Some((mut child, target)) = start(victim, attempts, &mut rng) else {
            pg.switch_wal();
            continue;
        };
        let t = &mut tally.iter_mut().find(|(v, _)| *v == victim).unwrap().1;
        let window = (t.duration.as_millis() as u64 * 9 / 10).max(5);
        std::thread::sleep(Duration::from_millis(rng.below(window)));
        if child.try_wait().ok().flatten().is_some() {
            t.finished_first += 1;
            // Runs differ (a wal-push of a segment already archived is a quick re-push, one
            // of a new segment stores it): draw later kill moments from the shortest run seen.
            t.duration = t.duration.min(began.elapsed());
        } else {
            kill_nine(&mut child);
            t.killed += 1;
        }
        if victim == Victim::Verify {
            stop_orphans(&verify_base);
        }
        let _ = std::fs::remove_dir_all(&target);
    }
    let _ = load.kill();
    let _ = load.wait();
    stop_orphans(&verify_base);
    // Each command was killed mid-run several times (a backup after a killed one no longer
    // fails at once on the dead holder's lock, so it runs and is killed too).
    for (victim, t) in &tally {
        assert!(
            t.killed >= 3,
            "{victim:?} was killed mid-run only {} time(s) ({} finished first)",
            t.killed,
            t.finished_first
        );
    }

    // After the campaign: a backup still works (waiting out a killed holder's lock at most).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cfg.run_as_postgres(&["backup"], &dir);
        if code(&out) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline && stderr(&out).contains("lock"),
            "backup after the campaign failed: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    pg.archive_everything();

    // Every archived segment (and history file) is fetchable and passes its checksum.
    let fetch_dir = scratch.subdir("fetched");
    let names = wal_objects(&repo_dir);
    assert!(!names.is_empty());
    for name in &names {
        let dest = fetch_dir.join(name);
        let out = cfg.run(&["wal-fetch", name, dest.to_str().unwrap()]);
        assert_eq!(
            code(&out),
            0,
            "wal-fetch {name} after the campaign: {}",
            stderr(&out)
        );
        let _ = std::fs::remove_file(&dest);
    }

    // Every listed backup restores.
    let backups = listed_backups(&cfg);
    assert!(backups.len() >= 2, "listed: {backups:?}");
    for id in &backups {
        let target = scratch.path().join(format!("check-{id}"));
        let out = cfg.run(&[
            "restore",
            "--latest",
            "--backup",
            id,
            "--pgdata",
            target.to_str().unwrap(),
        ]);
        assert_eq!(code(&out), 0, "restore --backup {id}: {}", stderr(&out));
        assert!(target.join("global/pg_control").exists());
        std::fs::remove_dir_all(&target).unwrap();
    }

    let summary: Vec<String> = tally
        .iter()
        .map(|(v, t)| {
            format!(
                "{v:?}: {} killed mid-run, {} finished first",
                t.killed, t.finished_first
            )
        })
        .collect();
    eprintln!(
        "kill -9 campaign: {} kills mid-run in {attempts} attempts, {:.0?} ({}); afterwards {} archived WAL objects fetched, {} listed backups restored",
        tally.iter().map(|(_, t)| t.killed).sum::<usize>(),
        started.elapsed(),
        summary.join("; "),
        names.len(),
        backups.len()
    );
    println!("{}", summary.join("\n"));
}
