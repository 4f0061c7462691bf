//! `restore`: point-in-time restore (work in progress).

use std::path::Path;

use crate::cli::RestoreArgs;
use crate::config::{ClusterConfig, Config};
use crate::repo::Repository;

pub async fn run(
    _config: &Config,
    _cluster: &ClusterConfig,
    _repo: &Repository,
    _args: &RestoreArgs,
    _config_path: Option<&Path>,
) -> anyhow::Result<()> {
    anyhow::bail!("restore is not implemented yet")
}
