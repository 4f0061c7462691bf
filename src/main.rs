//! Parse, start logging, run, print the error once, pick the exit code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use synapse_backup::cli::{Cli, Command};
use synapse_backup::config::Config;
use synapse_backup::error::{self, exit};
use synapse_backup::pg::WalFileName;
use synapse_backup::repo::Repository;
use synapse_backup::storage::Storage;
use synapse_backup::{commands, logging, settings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_hook = matches!(
        cli.command,
        Command::WalPush { .. } | Command::WalFetch { .. } | Command::WalPrefetch { .. }
    );
    let level = match (cli.verbose, is_hook) {
        (0, true) => "warn",
        (0, false) | (1, _) => "info",
        _ => "debug",
    };
    logging::init(cli.log_format, level);
    let is_fetch = matches!(cli.command, Command::WalFetch { .. });

    let runtime = if is_hook {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let result = runtime
        .context("start the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) if is_fetch => {
            let code = error::wal_fetch_exit_code(&err);
            if code != exit::FETCH_ABSENT {
                eprintln!("synapse-backup: {err:#}");
            }
            ExitCode::from(code)
        }
        Err(err) => {
            eprintln!("synapse-backup: {err:#}");
            ExitCode::from(error::exit_code(&err))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Agent = cli.command {
        if cli.cluster.is_some() {
            return Err(error::usage(
                "the agent serves every configured cluster; run it without --cluster",
            ));
        }
        return synapse_backup::agent::run(synapse_backup::agent::Options {
            config: cli.config,
            log_format: cli.log_format,
            verbose: cli.verbose,
        })
        .await;
    }
    let config = Config::load(cli.config.as_deref())?;
    let cluster = config.cluster(cli.cluster.as_deref())?;
    let storage = Storage::open(&config.repository)?;
    let repo = Repository::new(&storage, &cluster.name);
    match cli.command {
        Command::WalPush { path, file_name } => {
            if let Some(f) = file_name {
                if path.file_name().and_then(|s| s.to_str()) != Some(f.as_str()) {
                    return Err(error::usage(format!(
                        "file name {f:?} does not match path {}",
                        path.display()
                    )));
                }
            }
            commands::wal_push::run(&repo, &config.archive, &path).await
        }
        Command::WalFetch {
            name,
            dest,
            timeline,
        } => {
            let name: WalFileName =
                name.parse()
                    .map_err(|e: synapse_backup::pg::walname::ParseWalNameError| {
                        error::usage(e.to_string())
                    })?;
            let prefetch = commands::wal_fetch::PrefetchSpawn {
                count: config.archive.prefetch,
                config: cli.config.clone(),
                cluster: cli.cluster.clone(),
            };
            let timeline = timeline.map(synapse_backup::pg::TimelineId);
            commands::wal_fetch::run(&repo, &prefetch, &name, &dest, timeline).await
        }
        Command::WalPrefetch {
            after,
            spool,
            count,
            segment_size,
            timeline,
        } => {
            let after: synapse_backup::pg::WalSegmentName =
                after
                    .parse()
                    .map_err(|e: synapse_backup::pg::walname::ParseWalNameError| {
                        error::usage(e.to_string())
                    })?;
            let size = synapse_backup::pg::WalSegmentSize::new(segment_size)
                .ok_or_else(|| error::usage(format!("invalid segment size {segment_size}")))?;
            let timeline = timeline.map(synapse_backup::pg::TimelineId);
            commands::wal_fetch::prefetch(&repo, &after, &spool, count, size, timeline).await
        }
        Command::Backup => commands::backup::run(&config, cluster, &repo).await,
        Command::List { json } => commands::list::run(&config, &repo, json).await,
        Command::Expire { dry_run, now, json } => {
            commands::expire::run(&config, &repo, dry_run, now.as_deref(), json).await
        }
        Command::Check => commands::check::run(&config, cluster, &repo).await,
        Command::Restore(args) => {
            let settings =
                settings::restore_settings(&args, config.timezone(), cli.config.as_deref())?;
            commands::restore::run(&config, cluster, &repo, &settings).await
        }
        Command::Agent => unreachable!("handled above: the agent needs no --cluster"),
        Command::Verify(args) => {
            let settings = settings::verify_settings(&args, &config)?;
            commands::verify::run(&config, cluster, &repo, &settings).await
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        synapse_backup::cli::Cli::command().debug_assert();
    }
}
