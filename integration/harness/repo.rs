//! The repository behind a test config, and backups taken the way the agent takes them.

use std::path::Path;
use std::process::Output;

use synapse_backup::config::Config;
use synapse_backup::repo::Repository;

use super::{code, stderr, TestConfig};

/// The repository of cluster "core" in `cfg`.
pub fn repository(cfg: &TestConfig) -> Repository {
    repository_of(&cfg.path, "core")
}

/// The repository of `cluster` in the config file at `config`.
pub fn repository_of(config: &Path, cluster: &str) -> Repository {
    let config = Config::load(Some(config)).expect("config");
    Repository::open(&config.repository, cluster).expect("repository")
}

/// Run `backup` as the postgres OS user, as the agent does (a root-run backup would create
/// root-owned directories in a local repository that `wal-push`, running as postgres, then
/// cannot write into); the whole output, whatever the outcome.
pub fn backup_output(cfg: &TestConfig) -> Output {
    backup_output_with(cfg, &[])
}

/// [`backup_output`] with more arguments (`--type incr`).
pub fn backup_output_with(cfg: &TestConfig, args: &[&str]) -> Output {
    let mut all = vec!["backup"];
    all.extend_from_slice(args);
    cfg.run_as_postgres(&all, cfg.path.parent().expect("config in a directory"))
}

/// An incremental backup that must succeed; the new backup id.
pub fn backup_incr(cfg: &TestConfig) -> String {
    backup_id(&backup_output_with(cfg, &["--type", "incr"]))
}

/// The id a successful `backup` printed; panics with its stderr when it failed.
pub fn backup_id(out: &Output) -> String {
    assert_eq!(code(out), 0, "backup failed: {}", stderr(out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Take a backup that must succeed (see [`backup_output`]); the new backup id.
pub fn backup(cfg: &TestConfig) -> String {
    backup_id(&backup_output(cfg))
}

/// The ids of the backups `repo` lists, oldest first.
pub async fn backup_ids(repo: &Repository) -> Vec<String> {
    repo.list_backups()
        .await
        .expect("list backups")
        .iter()
        .map(|m| m.id.to_string())
        .collect()
}

/// Every WAL segment `repo` holds is at or above segment number `segno` (16 MiB segments):
/// retention removed nothing needed from there and everything below.
pub async fn assert_no_wal_below(repo: &Repository, segno: u64, what: &str) {
    for (name, _) in repo.list_wal().await.expect("list WAL") {
        if let Some(s) = name.segment() {
            assert!(
                u64::from(s.seg) + (u64::from(s.log) << 8) >= segno,
                "{name} is below {what}"
            );
        }
    }
}
