//! The edge: command-line arguments (`cli`, clap) become the settings the commands and the
//! agent take, with every value parsed into its domain type once, here. Commands and the
//! agent never see clap types or raw argument strings.
//!
//! Conversions run after the config is loaded (some need its `timezone`), so a broken config
//! is still reported before a bad argument, as it always was.

mod recovery;

pub use recovery::*;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::cli;
use crate::config::VerifyRuntime;
use crate::crypt::Recipient;
use crate::env;
use crate::error::usage;
use crate::logging::LogFormat;
use crate::pg::walname::ParseWalNameError;
use crate::pg::{TimelineId, WalFileName, WalSegmentName, WalSegmentSize};
use crate::repo::manifest::{BackupId, BackupKind};

impl From<cli::LogFormat> for LogFormat {
    fn from(f: cli::LogFormat) -> Self {
        match f {
            cli::LogFormat::Text => LogFormat::Text,
            cli::LogFormat::Json => LogFormat::Json,
        }
    }
}

impl From<cli::VerifyRuntime> for VerifyRuntime {
    fn from(r: cli::VerifyRuntime) -> Self {
        match r {
            cli::VerifyRuntime::Namespace => VerifyRuntime::Namespace,
            cli::VerifyRuntime::Docker => VerifyRuntime::Docker,
        }
    }
}

impl From<cli::BackupType> for BackupKind {
    fn from(t: cli::BackupType) -> Self {
        match t {
            cli::BackupType::Full => BackupKind::Full,
            cli::BackupType::Incr => BackupKind::Incr,
        }
    }
}

/// `export ID DIR`: the backup and an absolute directory.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub id: BackupId,
    pub dir: PathBuf,
}

impl ExportSettings {
    pub fn from_args(id: &str, dir: PathBuf) -> anyhow::Result<Self> {
        let id = id
            .parse()
            .map_err(|e: anyhow::Error| usage(format!("{e:#}")))?;
        let dir = std::path::absolute(&dir)
            .map_err(|e| usage(format!("export directory {}: {e}", dir.display())))?;
        Ok(ExportSettings { id, dir })
    }
}

/// A WAL file name argument; a bad one is a usage error.
fn wal_file_name(text: &str) -> anyhow::Result<WalFileName> {
    text.parse()
        .map_err(|e: ParseWalNameError| usage(e.to_string()))
}

/// `wal-push PATH [%f]`: the file, and its name parsed once.
#[derive(Debug, Clone)]
pub struct WalPushSettings {
    /// As PostgreSQL passes it (relative to the data directory).
    pub path: PathBuf,
    pub name: WalFileName,
}

impl WalPushSettings {
    /// `%f`, when given, must be PATH's file name.
    pub fn from_args(path: PathBuf, file_name: Option<String>) -> anyhow::Result<Self> {
        let base = path.file_name().and_then(|s| s.to_str());
        if let Some(f) = file_name {
            if base != Some(f.as_str()) {
                return Err(usage(format!(
                    "file name {f:?} does not match path {}",
                    path.display()
                )));
            }
        }
        let base = base.ok_or_else(|| usage(format!("{}: not a WAL file path", path.display())))?;
        let name = wal_file_name(base)?;
        Ok(WalPushSettings { path, name })
    }
}

/// `wal-fetch %f %p [--timeline N]`.
#[derive(Debug, Clone)]
pub struct WalFetchSettings {
    pub name: WalFileName,
    /// Where to write it (`%p`).
    pub dest: PathBuf,
    /// The timeline recovery follows (written by `restore`).
    pub timeline: Option<TimelineId>,
}

impl WalFetchSettings {
    pub fn from_args(name: &str, dest: PathBuf, timeline: Option<u32>) -> anyhow::Result<Self> {
        Ok(WalFetchSettings {
            name: wal_file_name(name)?,
            dest,
            timeline: timeline.map(TimelineId),
        })
    }
}

/// `wal-prefetch` (internal, started by `wal-fetch`).
#[derive(Debug, Clone)]
pub struct WalPrefetchSettings {
    /// Fill the spool with the segments after this one.
    pub after: WalSegmentName,
    pub spool: PathBuf,
    pub count: usize,
    pub segment_size: WalSegmentSize,
    pub timeline: Option<TimelineId>,
}

impl WalPrefetchSettings {
    pub fn from_args(
        after: &str,
        spool: PathBuf,
        count: usize,
        segment_size: u32,
        timeline: Option<u32>,
    ) -> anyhow::Result<Self> {
        let after = after
            .parse()
            .map_err(|e: ParseWalNameError| usage(e.to_string()))?;
        let segment_size = WalSegmentSize::new(segment_size)
            .ok_or_else(|| usage(format!("invalid segment size {segment_size}")))?;
        Ok(WalPrefetchSettings {
            after,
            spool,
            count,
            segment_size,
            timeline: timeline.map(TimelineId),
        })
    }
}

/// `expire`, from the command line or the agent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExpireSettings {
    /// Print what would be removed; remove nothing.
    pub dry_run: bool,
    /// Plan as if it were this time (`--now`); else the current time.
    pub now: Option<DateTime<Utc>>,
    pub json: bool,
}

impl ExpireSettings {
    /// `--now` is read like `restore --to`: without an offset, in `zone`. It is for planning:
    /// a future `--now` deletes nothing unless `--dry-run` or `--apply-now` says which is meant.
    pub fn from_args(
        (dry_run, apply_now): (bool, bool),
        now: Option<&str>,
        json: bool,
        zone: chrono_tz::Tz,
    ) -> anyhow::Result<Self> {
        let now = now
            .map(|s| {
                crate::timeparse::parse_target_time(s, zone)
                    .map(|t| t.utc)
                    .map_err(|e| usage(format!("--now: {e}")))
            })
            .transpose()?;
        if let Some(t) = now.filter(|t| *t > Utc::now() && !dry_run && !apply_now) {
            return Err(usage(format!(
                "--now {} is in the future: add --dry-run to see what would expire then \
                 (--apply-now really deletes as of that time, for a rehearsal on a copy of a repository)",
                crate::timeparse::format_utc(t)
            )));
        }
        Ok(ExpireSettings { dry_run, now, json })
    }
}

/// `list`.
#[derive(Debug, Clone, Copy)]
pub struct ListSettings {
    /// Machine-readable output.
    pub json: bool,
}

/// `events`.
#[derive(Debug, Clone)]
pub struct EventsSettings {
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// `name`, `schema.name` or a relfilenode.
    pub table: Option<String>,
    pub json: bool,
}

impl EventsSettings {
    /// Times without an offset are read in `zone`, like `restore --to`.
    pub fn from_args(
        since: Option<&str>,
        until: Option<&str>,
        table: Option<String>,
        json: bool,
        zone: chrono_tz::Tz,
    ) -> anyhow::Result<Self> {
        let time = |s: &str| {
            crate::timeparse::parse_target_time(s, zone)
                .map(|t| t.utc)
                .map_err(|e| usage(e.to_string()))
        };
        Ok(EventsSettings {
            since: since.map(time).transpose()?,
            until: until.map(time).transpose()?,
            table,
            json,
        })
    }
}

/// `check`.
#[derive(Debug, Clone, Copy)]
pub struct CheckSettings {
    /// How long a switched WAL segment may take to reach the repository.
    pub archive_timeout: Duration,
}

impl CheckSettings {
    /// 60 s, or `$SYNAPSE_CHECK_TIMEOUT_SECONDS` when it is a number.
    pub fn from_env() -> Self {
        let secs = std::env::var(env::CHECK_TIMEOUT_SECONDS)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        CheckSettings {
            archive_timeout: Duration::from_secs(secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn wal_push_checks_and_parses_the_name_once() {
        let seg = "000000010000000000000003";
        let s =
            WalPushSettings::from_args(format!("pg_wal/{seg}").into(), Some(seg.into())).unwrap();
        assert_eq!(s.name.to_string(), seg);
        let s = WalPushSettings::from_args(format!("pg_wal/{seg}").into(), None).unwrap();
        assert_eq!(s.name.to_string(), seg);
        let err = WalPushSettings::from_args(
            format!("pg_wal/{seg}").into(),
            Some("000000010000000000000004".into()),
        )
        .unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::exit::USAGE);
        assert!(err.to_string().contains("does not match path"), "{err}");
        let err = WalPushSettings::from_args("pg_wal/notwal".into(), None).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), crate::error::exit::USAGE);
    }

    #[test]
    fn wal_fetch_and_prefetch_arguments_become_domain_types() {
        let f = WalFetchSettings::from_args("00000002.history", "/x/p".into(), Some(2)).unwrap();
        assert_eq!(f.name.to_string(), "00000002.history");
        assert_eq!(f.timeline, Some(TimelineId(2)));
        assert!(WalFetchSettings::from_args("nope", "/x/p".into(), None).is_err());
        let p = WalPrefetchSettings::from_args(
            "000000010000000000000003",
            "/s".into(),
            8,
            16 << 20,
            None,
        )
        .unwrap();
        assert_eq!(p.after.to_string(), "000000010000000000000003");
        let err =
            WalPrefetchSettings::from_args("000000010000000000000003", "/s".into(), 8, 3, None)
                .unwrap_err();
        assert_eq!(err.to_string(), "invalid segment size 3");
    }

    #[test]
    fn expire_now_is_read_in_the_zone() {
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let s = ExpireSettings::from_args((true, false), Some("2025-01-10 12:00"), false, berlin)
            .unwrap();
        assert_eq!(
            s.now.unwrap(),
            DateTime::parse_from_rfc3339("2025-01-10T11:00:00Z").unwrap()
        );
        assert!(s.dry_run);
        let err =
            ExpireSettings::from_args((false, false), Some("soon"), false, berlin).unwrap_err();
        assert!(err.to_string().starts_with("--now: "), "{err}");
        assert_eq!(
            ExpireSettings::from_args((false, false), None, false, berlin)
                .unwrap()
                .now,
            None
        );
        let err =
            ExpireSettings::from_args((false, false), Some("2099-01-01 00:00"), false, berlin)
                .unwrap_err();
        assert!(err.to_string().contains("add --dry-run"), "{err}");
        for flags in [(true, false), (false, true)] {
            assert!(
                ExpireSettings::from_args(flags, Some("2099-01-01 00:00"), false, berlin).is_ok()
            );
        }
        assert!(
            ExpireSettings::from_args((false, false), Some("2020-01-01 00:00"), false, berlin)
                .is_ok()
        );
    }

    #[test]
    fn enums_convert_and_log_format_round_trips() {
        for f in cli::LogFormat::value_variants() {
            let name = f.to_possible_value().unwrap();
            assert_eq!(LogFormat::from(*f).as_arg(), name.get_name());
        }
        assert_eq!(
            VerifyRuntime::from(cli::VerifyRuntime::Docker),
            VerifyRuntime::Docker
        );
        assert_eq!(
            VerifyRuntime::from(cli::VerifyRuntime::Namespace),
            VerifyRuntime::Namespace
        );
    }
}

/// What `key` does, its arguments parsed.
#[derive(Debug, Clone)]
pub enum KeySettings {
    Init,
    List,
    Add {
        recipient: Recipient,
        identity_file: Option<PathBuf>,
    },
    Remove {
        recipient: Recipient,
        identity_file: Option<PathBuf>,
    },
    Rotate {
        identity_file: Option<PathBuf>,
    },
    Export {
        identity_file: PathBuf,
    },
}

impl KeySettings {
    pub fn from_args(action: crate::cli::KeyAction) -> anyhow::Result<Self> {
        use crate::cli::KeyAction as A;
        let recipient = |r: &str| -> anyhow::Result<Recipient> {
            r.parse()
                .map_err(|e: crate::crypt::RecipientError| usage(format!("--recipient: {e}")))
        };
        Ok(match action {
            A::Init => KeySettings::Init,
            A::List => KeySettings::List,
            A::Add {
                recipient: r,
                identity_file,
            } => KeySettings::Add {
                recipient: recipient(&r)?,
                identity_file,
            },
            A::Remove {
                recipient: r,
                identity_file,
            } => KeySettings::Remove {
                recipient: recipient(&r)?,
                identity_file,
            },
            A::Rotate { identity_file } => KeySettings::Rotate { identity_file },
            A::Export { identity_file } => KeySettings::Export { identity_file },
        })
    }
}
