//! Which backup an incremental is taken against (issue 15): the newest backup of the same
//! database system and timeline, when its chain is intact, shorter than `max_chain`, and it
//! has a block map. Otherwise a full is taken, with a log line saying why.

use std::sync::Arc;

use crate::pg::{SystemId, TimelineId};
use crate::repo::blockmap::BlockMap;
use crate::repo::chain;
use crate::repo::manifest::{BackupKind, BackupManifest};
use crate::repo::{Backups, Repository};

/// What the server is, for matching a parent.
pub(super) struct Server {
    pub system_id: SystemId,
    pub timeline: TimelineId,
    pub pg_version: u32,
}

/// The base of the backup about to be taken.
pub(super) enum Base {
    Full,
    Incr {
        parent: Box<BackupManifest>,
        map: Arc<BlockMap>,
    },
}

/// The base for a backup of `requested` kind; an incremental falls back to a full (logged)
/// when no parent qualifies.
pub(super) async fn choose(
    repo: &Repository,
    requested: BackupKind,
    max_chain: usize,
    server: &Server,
) -> anyhow::Result<Base> {
    if requested == BackupKind::Full {
        return Ok(Base::Full);
    }
    let backups = repo.backups().await?;
    let parent = match pick(&backups, server, max_chain) {
        Ok(p) => p.clone(),
        Err(why) => {
            tracing::info!("taking a full backup instead of an incremental: {why}");
            return Ok(Base::Full);
        }
    };
    match repo.get_block_map(&parent).await {
        Ok(Some(map)) => Ok(Base::Incr {
            parent: Box::new(parent),
            map: Arc::new(map),
        }),
        Ok(None) => {
            tracing::info!(
                "taking a full backup instead of an incremental: the newest backup {} has no block map \
                 (taken by an older version)",
                parent.id
            );
            Ok(Base::Full)
        }
        Err(e) => {
            tracing::warn!(
                "taking a full backup instead of an incremental: the block map of {} is unusable: {e:#}",
                parent.id
            );
            Ok(Base::Full)
        }
    }
}

/// The parent an incremental would have, or why there is none.
fn pick<'a>(
    backups: &'a Backups,
    server: &Server,
    max_chain: usize,
) -> Result<&'a BackupManifest, String> {
    let newest = backups.intact.iter().max_by(|a, b| a.id.cmp(&b.id));
    if let Some(damaged) = backups
        .damaged
        .iter()
        .filter(|d| newest.is_none_or(|n| d.id > n.id))
        .max_by(|a, b| a.id.cmp(&b.id))
    {
        return Err(format!(
            "the newest backup {} is damaged ({})",
            damaged.id, damaged.error
        ));
    }
    let Some(newest) = newest else {
        return Err("there is no backup yet".into());
    };
    if newest.system_identifier != server.system_id || newest.pg_version != server.pg_version {
        return Err(format!(
            "the newest backup {} is of another database system or PostgreSQL version",
            newest.id
        ));
    }
    if newest.timeline != server.timeline {
        return Err(format!(
            "the newest backup {} is on timeline {}, the server on {}",
            newest.id, newest.timeline.0, server.timeline.0
        ));
    }
    let links = chain::checked_chain(&newest.id, &backups.intact).map_err(|e| e.to_string())?;
    if links.len() >= max_chain {
        return Err(format!(
            "the chain of {} ends a chain of {} backups, and max_chain is {max_chain}",
            newest.id,
            links.len()
        ));
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Sha256;
    use crate::repo::manifest::{tests::sample, ParentRef};
    use crate::repo::DamagedBackup;

    fn full(id: &str) -> BackupManifest {
        let mut m = sample();
        m.id = id.parse().unwrap();
        m
    }

    fn incr(id: &str, parent: &BackupManifest) -> BackupManifest {
        let mut m = full(id);
        m.kind = BackupKind::Incr;
        m.parent = Some(ParentRef {
            id: parent.id.clone(),
            manifest_sha256: parent.fingerprint(),
        });
        m
    }

    fn server() -> Server {
        let m = sample();
        Server {
            system_id: m.system_identifier,
            timeline: m.timeline,
            pg_version: m.pg_version,
        }
    }

    fn of(intact: Vec<BackupManifest>) -> Backups {
        Backups {
            intact,
            damaged: vec![],
        }
    }

    #[test]
    fn the_newest_backup_is_the_parent_until_the_chain_is_full() {
        let a = full("20240101T020000Z");
        let b = incr("20240102T020000Z", &a);
        let c = incr("20240103T020000Z", &b);
        let all = of(vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!(pick(&all, &server(), 6).unwrap().id, c.id);
        let why = pick(&all, &server(), 3).unwrap_err();
        assert!(why.contains("max_chain is 3"), "{why}");
        assert!(pick(&of(vec![]), &server(), 6).is_err());
    }

    #[test]
    fn a_broken_or_foreign_chain_means_a_full() {
        let a = full("20240101T020000Z");
        let mut b = incr("20240102T020000Z", &a);
        b.parent.as_mut().unwrap().manifest_sha256 = Sha256::of(b"other");
        let why = pick(&of(vec![a.clone(), b]), &server(), 6).unwrap_err();
        assert!(why.contains("20240101T020000Z"), "{why}");
        let c = incr("20240103T020000Z", &a);
        let why = pick(&of(vec![c]), &server(), 6).unwrap_err();
        assert!(why.contains("missing"), "{why}");
        let mut other = server();
        other.timeline = TimelineId(2);
        assert!(pick(&of(vec![a.clone()]), &other, 6)
            .unwrap_err()
            .contains("timeline"));
        let mut damaged = of(vec![a]);
        damaged.damaged.push(DamagedBackup {
            id: "20240105T020000Z".parse().unwrap(),
            error: "corrupt".into(),
        });
        assert!(pick(&damaged, &server(), 6)
            .unwrap_err()
            .contains("damaged"));
    }
}
