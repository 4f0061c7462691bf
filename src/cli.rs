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
    },
}
