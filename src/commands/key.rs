//! `key init|list|add|remove|rotate|export`: the repository's encryption keys (issue 14). Every
//! operation re-seals the small keyring object only; no data object is rewritten.

use anyhow::Context;
use chrono::Utc;

use crate::config::ClusterConfig;
use crate::crypt::{self, PublicKeyring};
use crate::error::usage;
use crate::repo::{OpenedKeys, Repository, RepositoryInfo};
use crate::settings::KeySettings;

pub async fn run(
    cluster: &ClusterConfig,
    repo: &Repository,
    settings: &KeySettings,
) -> anyhow::Result<()> {
    match settings {
        KeySettings::Init => init(cluster, repo).await,
        KeySettings::List => list(repo).await,
        KeySettings::Add {
            recipient,
            identity_file,
        } => {
            let keys = repo.open_keys(identity_file.as_deref()).await?;
            let up = crypt::add_recipient(&keys.public, &keys.secret, recipient)
                .map_err(|e| usage(e.to_string()))?;
            store(repo, keys, up, &format!("added operator {recipient}")).await
        }
        KeySettings::Remove {
            recipient,
            identity_file,
        } => {
            let keys = repo.open_keys(identity_file.as_deref()).await?;
            let up = crypt::remove_recipient(&keys.public, &keys.secret, recipient)
                .map_err(|e| usage(e.to_string()))?;
            store(repo, keys, up, &format!("removed operator {recipient}")).await
        }
        KeySettings::Rotate { identity_file } => {
            let keys = repo.open_keys(identity_file.as_deref()).await?;
            let up = crypt::rotate(&keys.public, &keys.secret, Utc::now())
                .map_err(|e| usage(e.to_string()))?;
            let generation = up.public.current().generation;
            store(
                repo,
                keys,
                up,
                &format!("key generation {generation} is current; older objects keep theirs"),
            )
            .await
        }
        KeySettings::Export { identity_file } => {
            let keys = repo.open_keys(Some(identity_file)).await?;
            // The secret goes to stdout only, for a 0600 file the operator chose.
            super::print_stdout(crypt::export(&keys.secret).expose())
        }
    }
}

/// Create the keys of a new repository for the configured recipients.
async fn init(cluster: &ClusterConfig, repo: &Repository) -> anyhow::Result<()> {
    let recipients = repo.encryption_recipients().ok_or_else(|| {
        usage(
            "key init needs [repository.encryption] with recipients = [\"age1…\"] (the operators \
             who can read the repository)",
        )
    })?;
    if recipients.is_empty() {
        return Err(usage(
            "[repository.encryption] recipients is empty: list the operators' age recipients \
             (age1…) who can read the repository",
        ));
    }
    let session = super::backup::open_session(cluster).await?;
    let server = session.server_info().await;
    session.close().await;
    let server = server.context("read the cluster's identity")?;
    let ours = RepositoryInfo::new(server.system_id, server.major(), server.wal_segment_size);
    let public = repo.init_keys(&ours, &recipients, Utc::now()).await?;
    eprintln!(
        "created the keys of the encrypted repository of cluster {:?}",
        repo.cluster()
    );
    super::print_stdout(&describe(&public))
}

async fn list(repo: &Repository) -> anyhow::Result<()> {
    match repo.encryption().await? {
        None => super::print_stdout("encryption: off\n"),
        Some(public) => super::print_stdout(&describe(&public)),
    }
}

async fn store(
    repo: &Repository,
    keys: OpenedKeys,
    update: crypt::KeyringUpdate,
    done: &str,
) -> anyhow::Result<()> {
    let public = repo.store_keys(keys.info, update).await?;
    eprintln!("{done}");
    super::print_stdout(&describe(&public))
}

/// The public keys as `key list` prints them (no secrets).
pub fn describe(public: &PublicKeyring) -> String {
    let mut out = format!("{}\nrecipients:\n", summary(public));
    for r in public.recipients() {
        out.push_str(&format!("  {r}\n"));
    }
    out.push_str("generations:\n");
    for g in public.generations() {
        let current = if g.generation == public.current().generation {
            "  (current)"
        } else {
            ""
        };
        out.push_str(&format!(
            "  {}  created {}  {}{current}\n",
            g.generation,
            g.created.format("%Y-%m-%d %H:%M:%S UTC"),
            g.public_key
        ));
    }
    out
}

/// `encryption: on, N recipients, key generation G`, as `check` prints it.
pub fn summary(public: &PublicKeyring) -> String {
    let n = public.recipients().len();
    format!(
        "encryption: on, {n} recipient{}, key generation {}",
        if n == 1 { "" } else { "s" },
        public.current().generation
    )
}
