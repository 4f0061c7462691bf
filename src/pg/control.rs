//! `global/pg_control`: the cluster's identity, read without pg_controldata.

use std::path::Path;

use anyhow::Context;

use super::SystemId;

/// The system identifier: the first 8 bytes of pg_control (little-endian u64).
pub fn read_system_id(pgdata: &Path) -> anyhow::Result<SystemId> {
    let path = pgdata.join("global").join("pg_control");
    let bytes = std::fs::read(&path)
        .with_context(|| format!("read {} (is pgdata right?)", path.display()))?;
    let head: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{}: too short to be pg_control", path.display()))?;
    Ok(SystemId(u64::from_le_bytes(head)))
}
