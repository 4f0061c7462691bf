//! Command-line types only (clap derive). Doc comments are the help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// PostgreSQL backup and point-in-time recovery.
#[derive(Debug, Parser)]
#[command(
    name = "synapse-backup",
    version,
    about,
    after_help = "Exit codes: 0 ok, 1 runtime failure, 2 usage or config, 3 not found, 4 conflict, 5 verification failed.\nwal-fetch: 0 ok, 1 not in the archive, 255 archive unreadable (recovery stops)."
)]
pub struct Cli {
    /// Config file [default: $SYNAPSE_BACKUP_CONFIG, else /etc/synapse-backup/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Which configured cluster (may be omitted when only one is configured).
    #[arg(long, global = true, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log output (-v info, -vv debug). Hooks log warnings only by default.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

/// `restore` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to", "lsn", "latest", "before_xid", "before_event", "to_restore_point"])))]
pub struct RestoreArgs {
    /// Recover to this time: '2024-01-01 12:00', '2024-01-01 12:00:00', or RFC 3339 with an
    /// offset. Without an offset it is read in the configured timezone.
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Recover to this WAL position (e.g. 0/3000060).
    #[arg(long, value_name = "LSN")]
    pub lsn: Option<String>,
    /// Recover to the end of the archived WAL.
    #[arg(long)]
    pub latest: bool,
    /// Recover to just before this transaction commits (an xid `events` lists:
    /// recovery_target_xid, not inclusive).
    #[arg(long, value_name = "XID")]
    pub before_xid: Option<u32>,
    /// Recover to just before the record at this LSN (an event's LSN as `events` prints it:
    /// recovery_target_lsn, not inclusive).
    #[arg(long, value_name = "LSN")]
    pub before_event: Option<String>,
    /// Recover to this restore point (pg_create_restore_point); it must be in the event index.
    #[arg(long, value_name = "NAME")]
    pub to_restore_point: Option<String>,
    /// Restore this backup instead of the one chosen for the target.
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Data directory to restore into [default: the cluster's pgdata].
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
    /// Restore into a non-empty data directory (its contents are removed first). Only the
    /// --pgdata directory: tablespace directories must be absent or empty.
    #[arg(long)]
    pub force: bool,
    /// What the server does when it reaches the target.
    #[arg(long, value_enum, default_value_t = TargetAction::Promote)]
    pub target_action: TargetAction,
    /// Start the server and wait until recovery reaches the target.
    #[arg(long)]
    pub start: bool,
    /// Print the plan (backup, bytes to download, WAL to replay, predicted duration) after
    /// every check, and stop: nothing is written, not even the data directory.
    #[arg(long, conflicts_with = "start")]
    pub dry_run: bool,
    /// Restore a tablespace into DIR (absent or empty): OID=DIR (repeatable). Every tablespace
    /// needs one of --tablespace-map, --tablespaces-in-target or
    /// --tablespaces-at-original-location.
    #[arg(long, value_name = "OID=DIR")]
    pub tablespace_map: Vec<String>,
    /// Restore tablespaces without a --tablespace-map inside the data directory
    /// (pg_tblspc/OID, PostgreSQL's in-place tablespaces), for a copy that is inspected and
    /// thrown away.
    #[arg(long, conflicts_with = "tablespaces_at_original_location")]
    pub tablespaces_in_target: bool,
    /// Restore tablespaces without a --tablespace-map into the directories the backup names,
    /// each of which must be absent or empty.
    #[arg(long)]
    pub tablespaces_at_original_location: bool,
    /// This copy replaces the primary: keep the restored archive_mode/archive_command, so once
    /// promoted it archives (a new timeline) into the repository. Without it the copy is
    /// restored with archive_mode = off.
    #[arg(long)]
    pub as_primary: bool,
    /// Follow this timeline instead of the latest.
    #[arg(long, value_name = "N")]
    pub timeline: Option<u32>,
}

/// `verify` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("which").args(["backup", "latest", "all_unverified"])))]
pub struct VerifyArgs {
    /// Verify this backup.
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Verify the newest backup (the default).
    #[arg(long)]
    pub latest: bool,
    /// Verify every backup that has no verification report yet, oldest first.
    #[arg(long)]
    pub all_unverified: bool,
    /// Recover to this time instead of the last archived commit the backup is responsible for
    /// (up to the next backup's end). Read like `restore --to`.
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Where the scratch instance runs [default: `[verify] runtime`, else namespace on Linux].
    #[arg(long, value_enum)]
    pub runtime: Option<VerifyRuntime>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `backup --type` (converted to `repo::manifest::BackupKind` in `settings`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BackupType {
    Full,
    Incr,
}

/// `verify --runtime` (converted to `config::VerifyRuntime` in `settings`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum VerifyRuntime {
    /// The PostgreSQL binaries of this machine in new Linux namespaces (no daemon needed).
    Namespace,
    /// `docker run --network none` with `[verify] docker_image`.
    Docker,
}

/// `--log-format` (converted to `logging::LogFormat` in `settings`).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive one WAL file (PostgreSQL's archive_command: `wal-push %p`).
    WalPush {
        /// Path of the file, relative to the data directory as PostgreSQL passes it.
        path: PathBuf,
        /// The file name (%f); optional, checked against PATH when given.
        file_name: Option<String>,
    },
    /// Fetch one WAL file from the archive (PostgreSQL's restore_command: `wal-fetch %f %p`).
    WalFetch {
        /// The WAL file name (%f).
        name: String,
        /// Where to write it (%p).
        dest: PathBuf,
        /// Recovery follows this timeline (written by `restore`): segments that lie off its
        /// history, such as an old primary's WAL after a failover, are reported as absent.
        #[arg(long)]
        timeline: Option<u32>,
    },
    /// Internal: fill a wal-fetch spool with the segments after SEGMENT (started by wal-fetch).
    #[command(hide = true)]
    WalPrefetch {
        after: String,
        spool: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        segment_size: u32,
        /// Follow this timeline's history (as the wal-fetch that started it).
        #[arg(long)]
        timeline: Option<u32>,
    },
    /// Take an online base backup of the cluster now.
    Backup {
        /// full: every file; incr: only the blocks changed since the newest backup (a full is
        /// taken instead when there is no usable parent or the chain is max_chain long).
        #[arg(long = "type", value_enum, default_value_t = BackupType::Full)]
        kind: BackupType,
    },
    /// Write any backup (full or incremental) as a plain full backup directory: the data
    /// files, backup_label and tablespace_map, what pg_combinebackup produces. DIR must be
    /// absent or empty.
    Export {
        /// The backup to export.
        id: String,
        /// Where to write it.
        dir: PathBuf,
    },
    /// List backups and the recoverable window.
    #[command(alias = "info")]
    List {
        /// Machine-readable output (stable; documented in the README).
        #[arg(long)]
        json: bool,
    },
    /// Point-in-time restore into a data directory.
    Restore(RestoreArgs),
    /// Prove a backup: restore it into an isolated scratch instance, recover it to a target,
    /// check it (pg_verifybackup, pg_amcheck, probes) and store the report next to the backup.
    /// Exit 5 when the backup fails verification.
    Verify(VerifyArgs),
    /// End-to-end self-test: config, store (write/read/conditional put), database
    /// connection and identity, and that WAL archiving reaches the repository.
    Check,
    /// Apply retention: remove backups and WAL no longer needed to recover any moment of the
    /// last `retention_days`.
    Expire {
        /// Print what would be removed and why; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Plan as if it were this time ("what would expire on the 1st?"). A time in the
        /// future needs --dry-run (or --apply-now).
        #[arg(long, value_name = "TIME")]
        now: Option<String>,
        /// With a future --now: really delete as of that time (a rehearsal on a copy of a
        /// repository). Without it a future --now only plans, with --dry-run.
        #[arg(long, requires = "now")]
        apply_now: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The timeline of drops, truncates, mass deletes and restore points in the archived WAL
    /// (from the event index), oldest first, in the configured zone.
    Events {
        /// Only events at or after this time (read like `restore --to`).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only events at or before this time.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Only events that concern this relation (`name`, `schema.name` or a relfilenode).
        #[arg(long, value_name = "NAME")]
        table: Option<String>,
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Build the event index for archived segments that have none (WAL archived before
    /// `wal-push` indexed events); downloads each such segment once.
    Reindex,
    /// Repository signing keys (see the README's "Signed repository").
    SigningKey {
        #[command(subcommand)]
        action: SigningKeyAction,
    },
    /// Repository encryption keys (see the README's "Encrypted repository").
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Run the service: every cluster's scheduled backup, expire and verify, and Prometheus
    /// metrics on `[agent] listen` (/metrics, /healthz). SIGHUP reloads the config;
    /// SIGTERM/SIGINT stop it.
    Agent,
}

/// `signing-key` actions.
#[derive(Debug, Subcommand)]
pub enum SigningKeyAction {
    /// Make a new Ed25519 key pair: the private key goes into FILE (created 0600, never
    /// replacing a file) for the writers' `signing_key_file`; the `verify_key` line for the
    /// readers' `[repository]` is printed. Needs no config.
    Generate {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `key` actions. Reading the keyring (add, remove, rotate, export) needs an operator
/// identity: `[repository.encryption] identity_file`, or `--identity-file`.
#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Create the keys of a new repository, sealed to the configured `recipients` (connects
    /// to the cluster to record its identity, as the first backup would).
    Init,
    /// The operator recipients and key generations (no secrets).
    List,
    /// Make another operator able to read the repository (re-seals the keyring only).
    Add {
        /// The operator's age recipient (`age1…`).
        #[arg(long, value_name = "AGE1…")]
        recipient: String,
        /// An operator identity file (0600) [default: the configured identity_file].
        #[arg(long, value_name = "FILE")]
        identity_file: Option<PathBuf>,
    },
    /// Remove an operator (re-seals the keyring only; the last one cannot be removed).
    Remove {
        #[arg(long, value_name = "AGE1…")]
        recipient: String,
        #[arg(long, value_name = "FILE")]
        identity_file: Option<PathBuf>,
    },
    /// A new repository key generation for objects written from now on (no data rewritten).
    Rotate {
        #[arg(long, value_name = "FILE")]
        identity_file: Option<PathBuf>,
    },
    /// Print the repository's secret keys (an age identity file) on stdout, for restoring by
    /// hand with `age -d -i`. Redirect it to a 0600 file.
    Export {
        /// The operator identity file (0600) that opens the keyring.
        #[arg(long, value_name = "FILE")]
        identity_file: PathBuf,
    },
}
