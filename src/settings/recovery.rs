//! `restore` and `verify`: their arguments turned into the settings types the commands take.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cli::{self, RestoreArgs, VerifyArgs};
use crate::commands::restore::{RestoreSettings, Target, Unmapped};
use crate::commands::verify::{VerifySettings, Which};
use crate::config::Config;
use crate::error::usage;
use crate::pg::recovery_conf::TargetAction;
use crate::pg::{Lsn, TimelineId};
use crate::repo::manifest::BackupId;
use crate::timeparse;

impl From<cli::TargetAction> for TargetAction {
    fn from(a: cli::TargetAction) -> TargetAction {
        match a {
            cli::TargetAction::Promote => TargetAction::Promote,
            cli::TargetAction::Pause => TargetAction::Pause,
            cli::TargetAction::Shutdown => TargetAction::Shutdown,
        }
    }
}

/// `restore`'s arguments; times without an offset are read in `zone`. `config_path` is the
/// `--config` given, for the restore_command.
pub fn restore_settings(
    args: &RestoreArgs,
    zone: chrono_tz::Tz,
    config_path: Option<&Path>,
) -> anyhow::Result<RestoreSettings> {
    let target = restore_target(args, zone)?;
    let unmapped = match (
        args.tablespaces_in_target,
        args.tablespaces_at_original_location,
    ) {
        (true, _) => Unmapped::InTarget,
        (false, true) => Unmapped::Original,
        (false, false) => Unmapped::Refuse,
    };
    let action: TargetAction = args.target_action.into();
    if args.as_primary && unmapped == Unmapped::InTarget {
        return Err(usage(
            "--as-primary restores the new primary: give its tablespaces real directories \
             (--tablespace-map or --tablespaces-at-original-location), not --tablespaces-in-target",
        ));
    }
    if args.as_primary && action == TargetAction::Shutdown {
        return Err(usage(
            "--as-primary with --target-action shutdown: a primary is promoted; use promote, or pause to \
             look before promoting with pg_promote()",
        ));
    }
    Ok(RestoreSettings {
        target,
        unmapped,
        as_primary: args.as_primary,
        tablespace_map: parse_tablespace_map(&args.tablespace_map)?,
        backup: args.backup.as_deref().map(parse_backup_id).transpose()?,
        timeline: args.timeline.map(TimelineId),
        pgdata: args.pgdata.clone(),
        force: args.force,
        action,
        start: args.start,
        dry_run: args.dry_run,
        config_path: config_path.map(Path::to_path_buf),
    })
}

/// The one target of `restore`'s arguments.
fn restore_target(args: &RestoreArgs, zone: chrono_tz::Tz) -> anyhow::Result<Target> {
    let lsn = |s: &str| s.parse::<Lsn>().map_err(|e| usage(e.to_string()));
    let given = [
        args.to.is_some(),
        args.lsn.is_some(),
        args.latest,
        args.before_xid.is_some(),
        args.before_event.is_some(),
        args.to_restore_point.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(usage(
            "give exactly one of --to, --lsn, --latest, --before-xid, --before-event and --to-restore-point",
        ));
    }
    Ok(if let Some(to) = &args.to {
        timeparse::parse_target_time(to, zone)
            .map(Target::Time)
            .map_err(|e| usage(e.to_string()))?
    } else if let Some(l) = &args.lsn {
        Target::Lsn(lsn(l)?)
    } else if let Some(x) = args.before_xid {
        Target::BeforeXid(x)
    } else if let Some(l) = &args.before_event {
        Target::BeforeEvent(lsn(l)?)
    } else if let Some(name) = &args.to_restore_point {
        Target::RestorePoint(name.clone())
    } else {
        Target::Latest
    })
}

/// `verify`'s arguments, with the configured defaults. `config_path` is the `--config` given:
/// the scratch instance must not see that file.
pub fn verify_settings(
    args: &VerifyArgs,
    config: &Config,
    config_path: Option<&Path>,
) -> anyhow::Result<VerifySettings> {
    let to = match &args.to {
        Some(s) => {
            if args.all_unverified {
                return Err(usage(
                    "--to names one moment, so it goes with one backup (--backup or --latest), not --all-unverified",
                ));
            }
            let t = timeparse::parse_target_time(s, config.timezone())
                .map_err(|e| usage(e.to_string()))?;
            Some(t)
        }
        None => None,
    };
    let which = if args.all_unverified {
        Which::AllUnverified
    } else if let Some(id) = &args.backup {
        Which::Backup(parse_backup_id(id)?)
    } else {
        Which::Newest
    };
    Ok(VerifySettings {
        which,
        to,
        runtime: args.runtime.map_or(config.verify.runtime, Into::into),
        json: args.json,
        config_path: crate::config::config_path(config_path),
    })
}

fn parse_backup_id(id: &str) -> anyhow::Result<BackupId> {
    id.parse().map_err(|e: anyhow::Error| usage(e.to_string()))
}

/// `--tablespace-map OID=DIR` (repeatable): OID → absolute directory.
pub fn parse_tablespace_map(args: &[String]) -> anyhow::Result<BTreeMap<u32, PathBuf>> {
    let mut out = BTreeMap::new();
    for arg in args {
        let bad = || {
            usage(format!(
                "--tablespace-map {arg:?}: expected OID=DIR with an absolute DIR"
            ))
        };
        let (oid, dir) = arg.split_once('=').ok_or_else(bad)?;
        let oid: u32 = oid.trim().parse().map_err(|_| bad())?;
        let dir = PathBuf::from(dir);
        if !dir.is_absolute() {
            return Err(bad());
        }
        if out.insert(oid, dir).is_some() {
            return Err(usage(format!(
                "--tablespace-map: tablespace {oid} is given twice"
            )));
        }
    }
    Ok(out)
}

/// `restore` settings from a command line (`restore --to … --pgdata …`), for tests.
#[cfg(test)]
pub(crate) fn restore_settings_from_argv(
    argv: &[String],
    zone: chrono_tz::Tz,
    config_path: Option<&Path>,
) -> anyhow::Result<RestoreSettings> {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: RestoreArgs,
    }
    restore_settings(&Wrap::parse_from(argv).args, zone, config_path)
}
