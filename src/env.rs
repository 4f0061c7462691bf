//! Every environment variable the program reads for its own settings, declared once.
//!
//! Standard variables of other tools (`AWS_*`, `RUST_LOG`, `HOME`) are read where they are
//! used, under their own names.

/// The config file when `--config` is not given (else [`crate::config::DEFAULT_PATH`]).
pub const CONFIG: &str = "SYNAPSE_BACKUP_CONFIG";
/// Overrides `[repository] retention_days`. It has no `SYNAPSE_BACKUP_` prefix: deployments
/// already set it under this name.
pub const RETENTION_DAYS: &str = "BACKUP_RETENTION_DAYS";
/// `verify`: `1` keeps the scratch directory for inspection instead of removing it.
pub const VERIFY_KEEP: &str = "SYNAPSE_VERIFY_KEEP";
/// `check`: how long to wait for the switched WAL segment to reach the repository (seconds).
pub const CHECK_TIMEOUT_SECONDS: &str = "SYNAPSE_CHECK_TIMEOUT_SECONDS";
/// `wal-push`: `off` stores segments without their event index (commit times only, as before
/// issue 16); `reindex` adds the index later. For measuring the extraction's cost, or turning
/// it off should it ever cost too much.
pub const WAL_EVENTS: &str = "SYNAPSE_WAL_EVENTS";
