//! Parse, start logging, run, print the error once, pick the exit code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use synapse_backup::cli::{Cli, Command, SigningKeyAction};
use synapse_backup::config::Config;
use synapse_backup::error::{self, exit};
use synapse_backup::repo::{Access, Repository};
use synapse_backup::settings::{
    self, CheckSettings, EventsSettings, ExpireSettings, ListSettings, WalFetchSettings,
    WalPrefetchSettings, WalPushSettings,
};
use synapse_backup::{commands, logging};

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
    logging::init(cli.log_format.into(), level);
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
            log_format: cli.log_format.into(),
            verbose: cli.verbose,
        })
        .await;
    }
    if let Command::SigningKey {
        action: SigningKeyAction::Generate { out },
    } = &cli.command
    {
        return commands::signing_key::generate(out);
    }
    let config = Config::load(cli.config.as_deref())?;
    let cluster = config.cluster(cli.cluster.as_deref())?;
    // Read-only commands never create a repository: a wrong `url` is an error, not an empty
    // repository.
    let access = match cli.command {
        Command::List { .. }
        | Command::Restore(_)
        | Command::Export { .. }
        | Command::Verify(_)
        | Command::Events { .. }
        | Command::WalFetch { .. }
        | Command::WalPrefetch { .. } => Access::Existing,
        _ => Access::Create,
    };
    let repo = Repository::open_with(&config.repository, &cluster.name, access)?;
    match cli.command {
        Command::WalPush { path, file_name } => {
            let push = WalPushSettings::from_args(path, file_name)?;
            commands::wal_push::run(&repo, &config.archive, &push).await
        }
        Command::WalFetch {
            name,
            dest,
            timeline,
        } => {
            let fetch = WalFetchSettings::from_args(&name, dest, timeline)?;
            let prefetch = commands::wal_fetch::PrefetchSpawn {
                count: config.archive.prefetch,
                config: cli.config.clone(),
                cluster: cli.cluster.clone(),
            };
            commands::wal_fetch::run(&repo, &prefetch, &fetch).await
        }
        Command::WalPrefetch {
            after,
            spool,
            count,
            segment_size,
            timeline,
        } => {
            let prefetch =
                WalPrefetchSettings::from_args(&after, spool, count, segment_size, timeline)?;
            commands::wal_fetch::prefetch(&repo, &prefetch).await
        }
        Command::Backup { kind } => {
            commands::backup::run(&config, cluster, &repo, kind.into()).await
        }
        Command::Export { id, dir } => {
            let export = synapse_backup::settings::ExportSettings::from_args(&id, dir)?;
            commands::export::run(&repo, &export).await
        }
        Command::List { json } => commands::list::run(&config, &repo, ListSettings { json }).await,
        Command::Expire {
            dry_run,
            now,
            apply_now,
            json,
        } => {
            let expire = ExpireSettings::from_args(
                (dry_run, apply_now),
                now.as_deref(),
                json,
                config.timezone(),
            )?;
            commands::expire::run(&config, &repo, expire).await
        }
        Command::Check => {
            commands::check::run(&config, cluster, &repo, CheckSettings::from_env()).await
        }
        Command::Restore(args) => {
            let settings =
                settings::restore_settings(&args, config.timezone(), cli.config.as_deref())?;
            commands::restore::run(&config, cluster, &repo, &settings).await
        }
        Command::Events {
            since,
            until,
            table,
            json,
        } => {
            let settings = EventsSettings::from_args(
                since.as_deref(),
                until.as_deref(),
                table,
                json,
                config.timezone(),
            )?;
            commands::events::run(&repo, config.timezone(), &settings).await
        }
        Command::Reindex => commands::events::reindex(&repo).await,
        Command::Key { action } => {
            let settings = settings::KeySettings::from_args(action)?;
            commands::key::run(cluster, &repo, &settings).await
        }
        Command::Agent => unreachable!("handled above: the agent needs no --cluster"),
        Command::SigningKey { .. } => unreachable!("handled above: needs no config"),
        Command::Verify(args) => {
            let settings = settings::verify_settings(&args, &config, cli.config.as_deref())?;
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
