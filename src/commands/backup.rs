//! `backup`: an online base backup (work in progress).

use crate::config::{ClusterConfig, Config};
use crate::repo::Repository;

pub async fn run(_config: &Config, _cluster: &ClusterConfig, _repo: &Repository) -> anyhow::Result<()> {
    anyhow::bail!("backup is not implemented yet")
}
