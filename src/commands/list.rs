//! `list`: backups and the recoverable window (work in progress).

use crate::config::Config;
use crate::repo::Repository;

pub async fn run(_config: &Config, _repo: &Repository, _json: bool) -> anyhow::Result<()> {
    anyhow::bail!("list is not implemented yet")
}
