//! The configuration file (TOML), resolved once into a validated `Config`.
//!
//! Where the file is: `--config FILE`, else `$SYNAPSE_BACKUP_CONFIG`, else
//! `/etc/synapse-backup/config.toml` ([`config_path`]). [`Config::load`] is the one place that
//! combines the file with the environment (`BACKUP_RETENTION_DAYS`, see [`crate::env`]).
//! Schedules are parsed into [`Schedule`]s as the file loads: the types are generic over how a
//! schedule is held (`String` as read, `Schedule` once parsed), and the rest of the program
//! only sees the parsed form (the default). Secrets never live in this file: S3 credentials
//! come from the standard `AWS_*` environment variables or a 0600 `credentials_file`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer};
use url::Url;

use crate::env;
use crate::error::usage;
use crate::schedule::Schedule;

pub const DEFAULT_PATH: &str = "/etc/synapse-backup/config.toml";

/// Where the config file is: `--config`, else `$SYNAPSE_BACKUP_CONFIG`, else the default.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    located(flag).0
}

/// The config file's path and what named it (for messages).
fn located(flag: Option<&Path>) -> (PathBuf, &'static str) {
    match flag {
        Some(p) => (p.to_path_buf(), "--config"),
        None => match std::env::var_os(env::CONFIG) {
            Some(p) => (PathBuf::from(p), env::CONFIG),
            None => (PathBuf::from(DEFAULT_PATH), "the default location"),
        },
    }
}

/// The configuration. `S` is how schedules are held: [`Schedule`] (parsed, what the program
/// uses), or `String` while the file is being read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(bound(deserialize = "S: Deserialize<'de> + From<&'static str>"))]
pub struct Config<S = Schedule> {
    /// How times without an offset are read. Default: the machine's zone.
    #[serde(default, deserialize_with = "de_tz")]
    pub timezone: Option<chrono_tz::Tz>,
    pub repository: RepositoryConfig,
    #[serde(default)]
    pub archive: ArchiveConfig,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(rename = "cluster", default)]
    pub clusters: Vec<ClusterConfig<S>>,
    /// `verify`: how scratch instances are run.
    #[serde(default)]
    pub verify: VerifyConfig,
    /// The long-running `agent`: schedules and the metrics endpoint.
    #[serde(default)]
    pub agent: AgentConfig<S>,
}

/// `[agent]`. Schedules are cron expressions of six fields, seconds first
/// (`sec min hour day-of-month month day-of-week`), read in the configured `timezone`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(bound(deserialize = "S: Deserialize<'de> + From<&'static str>"))]
pub struct AgentConfig<S = Schedule> {
    /// Address of `/metrics` and `/healthz`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Run the jobs of different clusters at the same time (default: one cluster after another).
    #[serde(default)]
    pub parallel_clusters: bool,
    /// When to take each cluster's base backup (expire follows every successful backup).
    #[serde(default = "default_backup_schedule")]
    pub backup_schedule: S,
    /// Verify each new backup right after it is taken (and expired).
    #[serde(default = "default_true")]
    pub verify_after_backup: bool,
    /// An extra schedule that verifies the newest backup.
    pub verify_schedule: Option<S>,
    /// When to refresh each cluster's catalog snapshot (relation names for `events`; stored
    /// only when it changed). Default: hourly.
    #[serde(default = "default_catalog_schedule")]
    pub catalog_schedule: S,
    /// When a full backup is due: a scheduled backup is a full when this schedule fired since
    /// the newest full (or there is none), else an incremental. Unset: every backup is a full.
    pub full_schedule: Option<S>,
    /// Recovery time objective (e.g. `"4h"`): exported as a metric; an alert fires when the
    /// last measured recovery time exceeds it.
    #[serde(default, deserialize_with = "de_objective")]
    pub rto_objective: Option<std::time::Duration>,
    /// Recovery point objective (e.g. `"15m"`): exported as a metric; an alert fires when the
    /// data-loss exposure (the age of the last archived commit) exceeds it.
    #[serde(default, deserialize_with = "de_objective")]
    pub rpo_objective: Option<std::time::Duration>,
}

impl<S: From<&'static str>> Default for AgentConfig<S> {
    fn default() -> Self {
        AgentConfig {
            listen: default_listen(),
            parallel_clusters: false,
            backup_schedule: default_backup_schedule(),
            verify_after_backup: true,
            verify_schedule: None,
            catalog_schedule: default_catalog_schedule(),
            full_schedule: None,
            rto_objective: None,
            rpo_objective: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Parts compressed and uploaded at once [default: the number of cores].
    #[serde(default = "default_backup_parallelism")]
    pub parallelism: usize,
    /// gzip level for base backups (1–9).
    #[serde(default = "default_level")]
    pub compress_level: u32,
    /// Ask PostgreSQL for an immediate checkpoint at backup start instead of a spread one.
    #[serde(default = "default_true")]
    pub fast_checkpoint: bool,
    /// How long to wait, after the stop call, for the backup's last WAL segment to reach the archive.
    #[serde(default = "default_archive_wait")]
    pub archive_wait_seconds: u64,
    /// A lock not refreshed for this long is taken to belong to a dead process.
    #[serde(default = "default_lock_ttl")]
    pub lock_ttl_seconds: u64,
    /// Backups in a chain at most (a full and its incrementals): the backup after a chain this
    /// long is a full, whatever was asked.
    #[serde(default = "default_max_chain")]
    pub max_chain: usize,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            parallelism: default_backup_parallelism(),
            compress_level: default_level(),
            fast_checkpoint: true,
            archive_wait_seconds: default_archive_wait(),
            lock_ttl_seconds: default_lock_ttl(),
            max_chain: default_max_chain(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// `file:///path` or `s3://bucket/prefix`.
    #[serde(deserialize_with = "de_url")]
    pub url: Url,
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// S3 endpoint, e.g. `http://127.0.0.1:9000`. Default: AWS.
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Allow plain HTTP (loopback test servers).
    #[serde(default)]
    pub allow_http: bool,
    /// A 0600 file of `AWS_ACCESS_KEY_ID=…` / `AWS_SECRET_ACCESS_KEY=…` lines, read instead
    /// of the environment (useful for `archive_command`, which inherits PostgreSQL's environment).
    pub credentials_file: Option<PathBuf>,
    /// Retries of a failed store request before giving up.
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// Timeout of one store request, and of all its retries together.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Writers: the 0600 file of the Ed25519 key that signs what is stored (see `repo::signing`).
    pub signing_key_file: Option<PathBuf>,
    /// Readers: the public key every stored object must be signed by (`ed25519:…`).
    pub verify_key: Option<crate::repo::signing::VerifyKey>,
    /// `[repository.encryption]`: the repository is encrypted (issue 14); `recipients` for
    /// `key init`, `identity_file` where the repository is read.
    #[serde(default)]
    pub encryption: Option<crate::crypt::EncryptionConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// How many WAL files one `wal-push` call stores at once: the requested one plus
    /// segments that `pg_wal/archive_status/*.ready` shows are waiting (look-ahead).
    #[serde(default = "default_push_parallelism")]
    pub push_parallelism: usize,
    /// How many following segments one `wal-fetch` call downloads ahead into the spool.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// gzip level for WAL (1–9).
    #[serde(default = "default_level")]
    pub compress_level: u32,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            push_parallelism: default_push_parallelism(),
            prefetch: default_prefetch(),
            compress_level: default_level(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig<S = Schedule> {
    pub name: String,
    pub pgdata: PathBuf,
    /// libpq-style connection string (`host=… port=… user=… dbname=…`). May list several
    /// hosts (`host=db1,db2 port=5432,5432`); see `backup_from` for which one a backup uses.
    #[serde(default = "default_connection")]
    pub connection: String,
    /// Which server of `connection` the base backup is taken from. `pgdata` must be that
    /// server's data directory.
    #[serde(default)]
    pub backup_from: BackupFrom,
    /// Directory of the PostgreSQL binaries (pg_ctl, …). Default: /usr/lib/postgresql/<major>/bin.
    pub pg_bin_dir: Option<PathBuf>,
    /// `verify`: SQL run in the recovered scratch instance, each with the text it must return.
    #[serde(default)]
    pub verify_probe: Vec<VerifyProbe>,
    /// Agent: this cluster's backup schedule instead of `[agent] backup_schedule`.
    pub backup_schedule: Option<S>,
    /// Agent: instead of `[agent] verify_after_backup`.
    pub verify_after_backup: Option<bool>,
    /// Agent: instead of `[agent] verify_schedule`.
    pub verify_schedule: Option<S>,
    /// Agent: instead of `[agent] full_schedule`.
    pub full_schedule: Option<S>,
    /// Instead of `[agent] rto_objective`.
    #[serde(default, deserialize_with = "de_objective")]
    pub rto_objective: Option<std::time::Duration>,
    /// Instead of `[agent] rpo_objective`.
    #[serde(default, deserialize_with = "de_objective")]
    pub rpo_objective: Option<std::time::Duration>,
}

impl<S> ClusterConfig<S> {
    /// The agent's backup schedule for this cluster.
    pub fn backup_schedule<'a>(&'a self, agent: &'a AgentConfig<S>) -> &'a S {
        self.backup_schedule
            .as_ref()
            .unwrap_or(&agent.backup_schedule)
    }
    /// Whether the agent verifies each new backup of this cluster.
    pub fn verify_after_backup(&self, agent: &AgentConfig<S>) -> bool {
        self.verify_after_backup
            .unwrap_or(agent.verify_after_backup)
    }
    /// The agent's separate verify schedule for this cluster, if any.
    pub fn verify_schedule<'a>(&'a self, agent: &'a AgentConfig<S>) -> Option<&'a S> {
        self.verify_schedule
            .as_ref()
            .or(agent.verify_schedule.as_ref())
    }
    /// When the agent's scheduled backup of this cluster is a full (`None`: always).
    pub fn full_schedule<'a>(&'a self, agent: &'a AgentConfig<S>) -> Option<&'a S> {
        self.full_schedule.as_ref().or(agent.full_schedule.as_ref())
    }
    /// This cluster's recovery time objective, if any.
    pub fn rto_objective(&self, agent: &AgentConfig<S>) -> Option<std::time::Duration> {
        self.rto_objective.or(agent.rto_objective)
    }
    /// This cluster's recovery point objective, if any.
    pub fn rpo_objective(&self, agent: &AgentConfig<S>) -> Option<std::time::Duration> {
        self.rpo_objective.or(agent.rpo_objective)
    }
}

impl<S> ClusterConfig<S> {
    /// The connection, for messages: described from the parsed string (hosts, ports, user,
    /// database), never echoed, so no password in any of its forms is printed.
    pub fn connection_description(&self) -> String {
        crate::pg::conninfo::describe_conninfo(&self.connection)
    }
}

/// `backup_from`: which server of a cluster's `connection` a base backup is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupFrom {
    /// The primary: a read-write session (default).
    #[default]
    Primary,
    /// A streaming standby (in recovery), to keep the load off the primary.
    Standby,
    /// A standby if one of the listed hosts is one, else the primary.
    PreferStandby,
}

impl BackupFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupFrom::Primary => "primary",
            BackupFrom::Standby => "standby",
            BackupFrom::PreferStandby => "prefer-standby",
        }
    }
}

/// Where `verify` runs its scratch instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyRuntime {
    /// The PostgreSQL binaries of this machine in new Linux namespaces (no daemon needed).
    Namespace,
    /// `docker run --network none` with `[verify] docker_image`.
    Docker,
}

/// `[verify]`: the scratch instances that prove backups restore and recover.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// `namespace` (default on Linux) or `docker`; `verify --runtime` overrides it.
    #[serde(default = "default_verify_runtime")]
    pub runtime: VerifyRuntime,
    /// Docker image [default: `postgres:<major>` of the backup].
    pub docker_image: Option<String>,
    /// The PostgreSQL binaries inside the image [default: /usr/lib/postgresql/<major>/bin].
    pub docker_pg_bin_dir: Option<PathBuf>,
    /// Where scratch directories are made (each removed afterwards).
    #[serde(default = "default_scratch_dir")]
    pub scratch_dir: PathBuf,
    /// Longest a verification may take, restore and recovery included.
    #[serde(default = "default_verify_timeout")]
    pub timeout_seconds: u64,
    /// `shared_buffers` of the scratch instance (not the original's, which may be huge).
    #[serde(default = "default_verify_shared_buffers")]
    pub shared_buffers: String,
    /// Memory limit of the scratch container (docker runtime).
    #[serde(default = "default_verify_memory")]
    pub memory_mb: u64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            runtime: default_verify_runtime(),
            docker_image: None,
            docker_pg_bin_dir: None,
            scratch_dir: default_scratch_dir(),
            timeout_seconds: default_verify_timeout(),
            shared_buffers: default_verify_shared_buffers(),
            memory_mb: default_verify_memory(),
        }
    }
}

/// `[[cluster.verify_probe]]`: a query run in the recovered scratch instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyProbe {
    /// Named in the report and errors [default: the SQL].
    pub name: Option<String>,
    /// Run with the simple query protocol; the result is the first column of the last
    /// statement's rows, one per line (NULL as an empty line).
    pub sql: String,
    /// What the result must equal (surrounding whitespace ignored).
    pub expect: String,
    /// Database to run it in [default: the one of the cluster's connection].
    pub database: Option<String>,
}

impl VerifyProbe {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.sql)
    }
}

fn default_verify_runtime() -> VerifyRuntime {
    if cfg!(target_os = "linux") {
        VerifyRuntime::Namespace
    } else {
        VerifyRuntime::Docker
    }
}
fn default_scratch_dir() -> PathBuf {
    PathBuf::from("/var/tmp")
}
fn default_verify_timeout() -> u64 {
    6 * 3600
}
fn default_verify_shared_buffers() -> String {
    "128MB".into()
}
fn default_verify_memory() -> u64 {
    2048
}

fn default_retention_days() -> u32 {
    30
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_retries() -> usize {
    3
}
fn default_timeout() -> u64 {
    60
}
fn default_push_parallelism() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
}
fn default_backup_parallelism() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 16)
}
fn default_true() -> bool {
    true
}
fn default_archive_wait() -> u64 {
    300
}
fn default_lock_ttl() -> u64 {
    600
}
fn default_max_chain() -> usize {
    6
}
fn default_prefetch() -> usize {
    8
}
fn default_level() -> u32 {
    6
}
fn default_listen() -> String {
    "127.0.0.1:9187".into()
}
fn default_backup_schedule<S: From<&'static str>>() -> S {
    S::from("0 0 2 * * *")
}
fn default_catalog_schedule<S: From<&'static str>>() -> S {
    S::from("0 0 * * * *")
}
fn default_connection() -> String {
    "host=/var/run/postgresql port=5432 user=postgres dbname=postgres".into()
}

fn de_url<'de, D: Deserializer<'de>>(d: D) -> Result<Url, D::Error> {
    let s = String::deserialize(d)?;
    let url = Url::parse(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "bad repository url {s:?}: {e} (use file:///path or s3://bucket/prefix)"
        ))
    })?;
    match url.scheme() {
        "file" | "s3" => Ok(url),
        other => Err(serde::de::Error::custom(format!(
            "bad repository url {s:?}: unsupported scheme {other:?} (use file:///path or s3://bucket/prefix)"
        ))),
    }
}

fn de_objective<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::time::Duration>, D::Error> {
    let s = String::deserialize(d)?;
    crate::timeparse::parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_tz<'de, D: Deserializer<'de>>(d: D) -> Result<Option<chrono_tz::Tz>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<chrono_tz::Tz>().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "unknown time zone {s:?} (use an IANA name such as \"Europe/Berlin\" or \"UTC\")"
        ))
    })
}

impl Config {
    /// Find, read and validate the configuration, with the environment's overrides: the one
    /// place where the file, the environment and `--config` come together.
    pub fn load(flag: Option<&Path>) -> anyhow::Result<Config> {
        let (path, source) = located(flag);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            usage(format!(
                "cannot read config file {} (from {source}): {e}",
                path.display()
            ))
        })?;
        Self::resolve(&text, |k| std::env::var(k).ok())
            .map_err(|e| usage(format!("config file {}: {e:#}", path.display())))
    }

    /// Read and validate a config file's text alone (no environment).
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        Self::resolve(text, |_| None)
    }

    /// Read and validate a config file's text, with the environment variables `var` gives.
    fn resolve(text: &str, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let mut cfg: Config<String> = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!("{}", e.message().trim()).context(describe_span(text, e.span()))
        })?;
        if let Some(days) = var(env::RETENTION_DAYS) {
            cfg.repository.retention_days = days.trim().parse().with_context(|| {
                format!("{}={days:?} is not a number of days", env::RETENTION_DAYS)
            })?;
        }
        cfg.validate()?;
        cfg.parse_schedules()
    }
}

impl Config<String> {
    /// The same configuration with every schedule parsed; an error names the key.
    fn parse_schedules(self) -> anyhow::Result<Config> {
        let parse = |what: String, expr: String| {
            Schedule::parse(&expr).map_err(|e| anyhow::anyhow!("{what}: {e}"))
        };
        let agent = self.agent;
        let agent = AgentConfig {
            listen: agent.listen,
            parallel_clusters: agent.parallel_clusters,
            backup_schedule: parse("agent.backup_schedule".into(), agent.backup_schedule)?,
            verify_after_backup: agent.verify_after_backup,
            verify_schedule: agent
                .verify_schedule
                .map(|v| parse("agent.verify_schedule".into(), v))
                .transpose()?,
            catalog_schedule: parse("agent.catalog_schedule".into(), agent.catalog_schedule)?,
            full_schedule: agent
                .full_schedule
                .map(|v| parse("agent.full_schedule".into(), v))
                .transpose()?,
            rto_objective: agent.rto_objective,
            rpo_objective: agent.rpo_objective,
        };
        let clusters = self
            .clusters
            .into_iter()
            .map(|c| {
                let key = |k: &str| format!("cluster {:?}: {k}", c.name);
                Ok(ClusterConfig {
                    backup_schedule: c
                        .backup_schedule
                        .map(|v| parse(key("backup_schedule"), v))
                        .transpose()?,
                    verify_schedule: c
                        .verify_schedule
                        .map(|v| parse(key("verify_schedule"), v))
                        .transpose()?,
                    full_schedule: c
                        .full_schedule
                        .map(|v| parse(key("full_schedule"), v))
                        .transpose()?,
                    rto_objective: c.rto_objective,
                    rpo_objective: c.rpo_objective,
                    name: c.name,
                    pgdata: c.pgdata,
                    connection: c.connection,
                    backup_from: c.backup_from,
                    pg_bin_dir: c.pg_bin_dir,
                    verify_probe: c.verify_probe,
                    verify_after_backup: c.verify_after_backup,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Config {
            timezone: self.timezone,
            repository: self.repository,
            archive: self.archive,
            backup: self.backup,
            clusters,
            verify: self.verify,
            agent,
        })
    }
}

impl<S> Config<S> {
    fn validate(&self) -> anyhow::Result<()> {
        if self.clusters.is_empty() {
            bail!("no [[cluster]] configured");
        }
        for (i, c) in self.clusters.iter().enumerate() {
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                bail!(
                    "cluster name {:?}: use letters, digits, '-' and '_' only",
                    c.name
                );
            }
            if self.clusters[..i].iter().any(|o| o.name == c.name) {
                bail!("cluster {:?} is configured twice", c.name);
            }
            if !c.pgdata.is_absolute() {
                bail!("cluster {:?}: pgdata must be an absolute path", c.name);
            }
        }
        if self.backup.max_chain == 0 {
            bail!("backup.max_chain must be at least 1 (1: every backup is a full)");
        }
        if !self.verify.scratch_dir.is_absolute() {
            bail!("verify.scratch_dir must be an absolute path");
        }
        if let Some(c) = self
            .clusters
            .iter()
            .find(|c| c.verify_probe.iter().any(|p| p.sql.trim().is_empty()))
        {
            bail!("cluster {:?}: a verify_probe has an empty sql", c.name);
        }
        if self.repository.retention_days == 0 {
            bail!(
                "retention_days = 0: retention must be at least 1 day (from [repository] retention_days or {})",
                env::RETENTION_DAYS
            );
        }
        let url = &self.repository.url;
        if !url.username().is_empty() || url.password().is_some() {
            // Never echo the user-info: it may hold a secret key.
            bail!(
                "repository url {}://…@{}{}: credentials do not belong in the url; set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY in the environment or use [repository] credentials_file",
                url.scheme(),
                url.host_str().unwrap_or(""),
                url.path()
            );
        }
        if !(1..=9).contains(&self.archive.compress_level) {
            bail!("archive.compress_level must be 1..9");
        }
        if !(1..=9).contains(&self.backup.compress_level) {
            bail!("backup.compress_level must be 1..9");
        }
        if self.backup.parallelism == 0 {
            bail!("backup.parallelism must be at least 1");
        }
        if self.archive.push_parallelism == 0 {
            bail!("archive.push_parallelism must be at least 1");
        }
        self.agent
            .listen
            .parse::<std::net::SocketAddr>()
            .map_err(|e| {
                anyhow::anyhow!(
                    "agent.listen {:?}: {e} (use ADDRESS:PORT, e.g. \"127.0.0.1:9187\")",
                    self.agent.listen
                )
            })?;
        Ok(())
    }

    /// The cluster named by `--cluster`, or the only one.
    pub fn cluster(&self, name: Option<&str>) -> anyhow::Result<&ClusterConfig<S>> {
        let names = || {
            self.clusters
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(n) => self.clusters.iter().find(|c| c.name == n).ok_or_else(|| {
                usage(format!(
                    "unknown cluster {n:?}; configured clusters: {}",
                    names()
                ))
            }),
            None if self.clusters.len() == 1 => Ok(&self.clusters[0]),
            None => Err(usage(format!(
                "several clusters are configured ({}); pick one with --cluster NAME",
                names()
            ))),
        }
    }

    /// The zone for times without an offset: configured, else the machine's.
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.timezone.unwrap_or_else(|| {
            iana_time_zone::get_timezone()
                .ok()
                .and_then(|z| z.parse().ok())
                .unwrap_or(chrono_tz::UTC)
        })
    }
}

fn describe_span(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let line = text[..r.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}")
        }
        None => "parse error".into(),
    }
}

/// S3 credentials, from a 0600 file or the standard environment variables. Never printed.
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl S3Credentials {
    pub fn load(cfg: &RepositoryConfig) -> anyhow::Result<Self> {
        let file_pairs = match &cfg.credentials_file {
            Some(path) => Some(read_credentials_file(path)?),
            None => None,
        };
        let lookup = |k: &str| match &file_pairs {
            Some(pairs) => pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            None => std::env::var(k).ok().filter(|v| !v.is_empty()),
        };
        let from = match &cfg.credentials_file {
            Some(p) => format!("credentials file {}", p.display()),
            None => "the environment".to_string(),
        };
        let (Some(access_key_id), Some(secret_access_key)) =
            (lookup("AWS_ACCESS_KEY_ID"), lookup("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(usage(format!(
                "S3 repository {} needs credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set in {from}",
                cfg.url
            )));
        };
        Ok(S3Credentials {
            access_key_id,
            secret_access_key,
            session_token: lookup("AWS_SESSION_TOKEN"),
        })
    }
}

fn read_credentials_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| usage(format!("credentials file {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(usage(format!(
            "credentials file {} is readable by others; chmod 600 it",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("credentials file {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.trim_start_matches("export ").split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[repository]
url = "file:///tmp/repo"
[[cluster]]
name = "core"
pgdata = "/var/lib/postgresql/15/main"
"#;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../config/synapse-backup.example.toml");
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.clusters.len(), 3);
        assert_eq!(cfg.cluster(Some("core")).unwrap().name, "core");
        assert_eq!(cfg.repository.retention_days, 30);
        assert_eq!(cfg.timezone, Some(chrono_tz::UTC));
    }

    #[test]
    fn agent_section_defaults_and_overrides() {
        let cfg = Config::parse(include_str!("../config/synapse-backup.example.toml")).unwrap();
        assert_eq!(cfg.agent.listen, "127.0.0.1:9187");
        assert!(!cfg.agent.parallel_clusters);
        assert!(cfg.agent.verify_after_backup);
        let core = cfg.cluster(Some("core")).unwrap();
        let analytics = cfg.cluster(Some("analytics")).unwrap();
        assert_eq!(core.backup_schedule(&cfg.agent).expr(), "0 0 2 * * *");
        assert_eq!(analytics.backup_schedule(&cfg.agent).expr(), "0 30 3 * * *");
        assert_eq!(core.verify_schedule(&cfg.agent).map(Schedule::expr), None);

        let cfg = Config::parse(MINIMAL).unwrap();
        assert_eq!(cfg.agent.backup_schedule.expr(), "0 0 2 * * *");
        assert_eq!(cfg.agent.catalog_schedule.expr(), "0 0 * * * *");
        assert!(cfg.agent.verify_after_backup);
        let every_10 = Config::parse(&format!(
            "[agent]\ncatalog_schedule = \"0 */10 * * * *\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(every_10.agent.catalog_schedule.expr(), "0 */10 * * * *");
        let cfg = Config::parse(&format!(
            "[agent]\nverify_after_backup = false\nverify_schedule = \"0 0 3 * * Sun\"\n{MINIMAL}verify_after_backup = true\n"
        ))
        .unwrap();
        let core = cfg.cluster(None).unwrap();
        assert!(core.verify_after_backup(&cfg.agent));
        assert_eq!(
            core.verify_schedule(&cfg.agent).map(Schedule::expr),
            Some("0 0 3 * * Sun")
        );
    }

    #[test]
    fn bad_agent_settings_name_the_problem() {
        let cases = [
            (
                "[agent]\nbackup_schedule = \"0 2 * * *\"\n",
                "six fields, seconds first",
            ),
            ("[agent]\nbackup_schedule = \"0 0 2 * * 1-5\"\n", "Mon-Fri"),
            ("[agent]\nlisten = \"9187\"\n", "agent.listen"),
            ("[agent]\nbogus = 1\n", "bogus"),
        ];
        for (agent, want) in cases {
            let err = format!(
                "{:#}",
                Config::parse(&format!("{agent}{MINIMAL}")).unwrap_err()
            );
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
        let err = format!(
            "{:#}",
            Config::parse(&format!("{MINIMAL}backup_schedule = \"nope\"\n")).unwrap_err()
        );
        assert!(err.contains("cluster \"core\": backup_schedule"), "{err}");
    }

    #[test]
    fn full_schedule_and_objectives_default_off_and_override_per_cluster() {
        let cfg = Config::parse(MINIMAL).unwrap();
        let core = cfg.cluster(None).unwrap();
        assert!(
            core.full_schedule(&cfg.agent).is_none(),
            "a full every night"
        );
        assert_eq!(core.rto_objective(&cfg.agent), None);
        assert_eq!(core.rpo_objective(&cfg.agent), None);
        let cfg = Config::parse(&format!(
            "[agent]\nfull_schedule = \"0 0 2 * * Sun\"\nrto_objective = \"4h\"\nrpo_objective = \"15m\"\n\
             {MINIMAL}rpo_objective = \"5m\"\nfull_schedule = \"0 0 2 1 * *\"\n"
        ))
        .unwrap();
        let core = cfg.cluster(None).unwrap();
        assert_eq!(
            cfg.agent.full_schedule.as_ref().map(Schedule::expr),
            Some("0 0 2 * * Sun")
        );
        assert_eq!(
            core.full_schedule(&cfg.agent).map(Schedule::expr),
            Some("0 0 2 1 * *")
        );
        assert_eq!(
            core.rto_objective(&cfg.agent).map(|d| d.as_secs()),
            Some(14_400)
        );
        assert_eq!(
            core.rpo_objective(&cfg.agent).map(|d| d.as_secs()),
            Some(300)
        );
        let example = Config::parse(include_str!("../config/synapse-backup.example.toml")).unwrap();
        let core = example.cluster(Some("core")).unwrap();
        assert_eq!(
            core.full_schedule(&example.agent).map(Schedule::expr),
            Some("0 0 2 * * Sun")
        );
        for (text, want) in [
            ("[agent]\nrto_objective = \"4 hours\"\n", "not a duration"),
            (
                "[agent]\nfull_schedule = \"0 2 * * 0\"\n",
                "agent.full_schedule",
            ),
        ] {
            let err = format!(
                "{:#}",
                Config::parse(&format!("{text}{MINIMAL}")).unwrap_err()
            );
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }

    #[test]
    fn backup_from_defaults_to_the_primary() {
        let cfg = Config::parse(MINIMAL).unwrap();
        assert_eq!(cfg.clusters[0].backup_from, BackupFrom::Primary);
        for (text, want) in [
            ("primary", BackupFrom::Primary),
            ("standby", BackupFrom::Standby),
            ("prefer-standby", BackupFrom::PreferStandby),
        ] {
            let cfg = Config::parse(&format!("{MINIMAL}backup_from = \"{text}\"\n")).unwrap();
            assert_eq!(cfg.clusters[0].backup_from, want);
            assert_eq!(want.as_str(), text);
        }
        let example = Config::parse(include_str!("../config/synapse-backup.example.toml")).unwrap();
        let analytics = example.cluster(Some("analytics")).unwrap();
        assert_eq!(analytics.backup_from, BackupFrom::PreferStandby);
        assert!(analytics.connection.contains("host=db1,db2"));
    }

    #[test]
    fn retention_days_can_come_from_the_environment() {
        let days = |v: &str| {
            let v = v.to_string();
            Config::resolve(MINIMAL, move |k| {
                (k == env::RETENTION_DAYS).then(|| v.clone())
            })
        };
        assert_eq!(days(" 7 ").unwrap().repository.retention_days, 7);
        let err = format!("{:#}", days("a week").unwrap_err());
        assert!(
            err.contains("BACKUP_RETENTION_DAYS=\"a week\" is not a number of days"),
            "{err}"
        );
        assert_eq!(
            Config::parse(MINIMAL).unwrap().repository.retention_days,
            30
        );
    }

    #[test]
    fn one_cluster_needs_no_name() {
        let cfg = Config::parse(MINIMAL).unwrap();
        assert_eq!(cfg.cluster(None).unwrap().name, "core");
        let err = cfg.cluster(Some("nope")).unwrap_err().to_string();
        assert!(
            err.contains("unknown cluster \"nope\"") && err.contains("core"),
            "{err}"
        );
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let cases = [
            (format!("{MINIMAL}\nbogus = 1"), "bogus"),
            (
                MINIMAL.replace("file:///tmp/repo", "ftp://x/y"),
                "unsupported scheme",
            ),
            (
                MINIMAL.replace("file:///tmp/repo", "not a url"),
                "bad repository url",
            ),
            (
                format!("timezone = \"Mars/Base\"\n{MINIMAL}"),
                "unknown time zone",
            ),
            (
                MINIMAL.replace("/var/lib/postgresql/15/main", "relative/dir"),
                "absolute",
            ),
            (
                "[repository]\nurl = \"file:///x\"\n".to_string(),
                "no [[cluster]]",
            ),
            (
                format!("{MINIMAL}backup_from = \"replica\"\n"),
                "unknown variant `replica`, expected one of `primary`, `standby`, `prefer-standby`",
            ),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", Config::parse(&text).unwrap_err());
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }

    #[test]
    fn connection_description_hides_passwords() {
        let mut cfg = Config::parse(MINIMAL).unwrap();
        cfg.clusters[0].connection = "host=/tmp password=hunter2 user=x".into();
        assert_eq!(cfg.clusters[0].connection_description(), "host=/tmp user=x");
        cfg.clusters[0].connection = "postgresql://x:hunter2@db:5432/postgres".into();
        assert_eq!(
            cfg.clusters[0].connection_description(),
            "postgresql://db:5432/postgres"
        );
    }

    #[test]
    fn missing_s3_credentials_are_named() {
        let mut cfg = Config::parse(&MINIMAL.replace("file:///tmp/repo", "s3://bucket/p")).unwrap();
        cfg.repository.credentials_file = Some("/nonexistent/creds".into());
        let err = S3Credentials::load(&cfg.repository)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nonexistent/creds"), "{err}");
    }
}
