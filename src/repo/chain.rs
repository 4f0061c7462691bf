//! Chains of incremental backups (issue 15): an incremental names its parent, which may be
//! an incremental too, back to a full. Pure functions over listed manifests; what to do with
//! a broken chain (refuse a restore, take a full instead) is the caller's decision.

use std::collections::{BTreeMap, BTreeSet};

use super::manifest::{BackupId, BackupKind, BackupManifest};

/// Why a backup's chain cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// `child` names `parent`, which is not among the intact backups.
    MissingParent { child: BackupId, parent: BackupId },
    /// An incremental without a parent, or a full with one.
    Malformed { id: BackupId, why: &'static str },
    /// `child` was taken against another manifest of `parent` than the one stored now.
    ParentChanged { child: BackupId, parent: BackupId },
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainError::MissingParent { child, parent } => write!(
                f,
                "backup {child} is incremental on {parent}, which is missing or damaged; its chain cannot be restored"
            ),
            ChainError::Malformed { id, why } => write!(f, "backup {id}: {why}"),
            ChainError::ParentChanged { child, parent } => write!(
                f,
                "backup {child} is incremental on {parent}, whose manifest is not the one it was taken against \
                 (damaged or replaced); its chain cannot be restored"
            ),
        }
    }
}

impl std::error::Error for ChainError {}

/// `id`'s chain, newest first: `id` itself, its parent, …, ending with a full.
pub fn chain<'a>(
    id: &BackupId,
    backups: &'a [BackupManifest],
) -> Result<Vec<&'a BackupManifest>, ChainError> {
    let by_id: BTreeMap<&BackupId, &BackupManifest> = backups.iter().map(|m| (&m.id, m)).collect();
    let mut out = Vec::new();
    let mut at = *by_id.get(id).ok_or_else(|| ChainError::MissingParent {
        child: id.clone(),
        parent: id.clone(),
    })?;
    loop {
        out.push(at);
        match (at.kind, &at.parent) {
            (BackupKind::Full, None) => return Ok(out),
            (BackupKind::Full, Some(_)) => {
                return Err(ChainError::Malformed {
                    id: at.id.clone(),
                    why: "a full backup that names a parent",
                })
            }
            (BackupKind::Incr, None) => {
                return Err(ChainError::Malformed {
                    id: at.id.clone(),
                    why: "an incremental backup without a parent",
                })
            }
            (BackupKind::Incr, Some(p)) => {
                // Parents are older than their children; a cycle is a forged manifest.
                if p.id >= at.id || out.len() > backups.len() {
                    return Err(ChainError::Malformed {
                        id: at.id.clone(),
                        why: "its parent is not older than itself",
                    });
                }
                at = by_id.get(&p.id).ok_or_else(|| ChainError::MissingParent {
                    child: at.id.clone(),
                    parent: p.id.clone(),
                })?;
            }
        }
    }
}

/// `id`'s chain as [`chain`] gives it, with every link checked: each parent's manifest is
/// the one its child recorded (`parent.manifest_sha256`).
pub fn checked_chain<'a>(
    id: &BackupId,
    backups: &'a [BackupManifest],
) -> Result<Vec<&'a BackupManifest>, ChainError> {
    let links = chain(id, backups)?;
    for pair in links.windows(2) {
        let (child, parent) = (pair[0], pair[1]);
        let recorded = child.parent.as_ref().map(|p| p.manifest_sha256);
        if recorded != Some(parent.fingerprint()) {
            return Err(ChainError::ParentChanged {
                child: child.id.clone(),
                parent: parent.id.clone(),
            });
        }
    }
    Ok(links)
}

/// Number of backups in `id`'s chain (1 for a full), or None when it is broken.
pub fn chain_len(id: &BackupId, backups: &[BackupManifest]) -> Option<usize> {
    chain(id, backups).ok().map(|c| c.len())
}

/// Number of backups in `id`'s chain (1 for a full) over any record of backups: `link` gives
/// a backup's kind and parent (`None`: not among them). `None` when the chain is broken: a
/// missing ancestor, an incremental without a parent, a full with one, or a parent that is
/// not older than its child. For callers that keep less than whole manifests (retention's
/// facts, the agent's summaries).
pub fn walk_len<'a>(
    id: &'a BackupId,
    link: impl Fn(&BackupId) -> Option<(BackupKind, Option<&'a BackupId>)>,
) -> Option<usize> {
    let mut at = id;
    // Parents are strictly older, so the walk ends; the bound only guards a forged cycle.
    for n in 1..=MAX_WALK {
        match link(at)? {
            (BackupKind::Full, None) => return Some(n),
            (BackupKind::Incr, Some(p)) if p < at => at = p,
            _ => return None,
        }
    }
    None
}

/// Longer than any chain `max_chain` allows.
const MAX_WALK: usize = 10_000;

/// The backups `kept` depend on, `kept` included: what retention must never delete.
/// Ancestors that are missing are simply absent (the caller reports broken chains).
pub fn closure(kept: &[BackupId], backups: &[BackupManifest]) -> BTreeSet<BackupId> {
    let by_id: BTreeMap<&BackupId, &BackupManifest> = backups.iter().map(|m| (&m.id, m)).collect();
    let mut out = BTreeSet::new();
    for id in kept {
        let mut at = Some(id.clone());
        while let Some(cur) = at.take() {
            if !out.insert(cur.clone()) {
                break;
            }
            at = by_id
                .get(&cur)
                .and_then(|m| m.parent.as_ref())
                .filter(|p| p.id < cur)
                .map(|p| p.id.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Sha256;
    use crate::repo::manifest::{tests::sample, ParentRef};

    fn full(id: &str) -> BackupManifest {
        let mut m = sample();
        m.id = id.parse().unwrap();
        m
    }

    fn incr(id: &str, parent: &str) -> BackupManifest {
        let mut m = full(id);
        m.kind = BackupKind::Incr;
        m.parent = Some(ParentRef {
            id: parent.parse().unwrap(),
            manifest_sha256: Sha256::of(parent.as_bytes()),
        });
        m
    }

    #[test]
    fn checked_chains_compare_the_parents_fingerprint() {
        let base = full("20240101T020000Z");
        let mut child = incr("20240102T020000Z", "20240101T020000Z");
        child.parent.as_mut().unwrap().manifest_sha256 = base.fingerprint();
        let all = vec![base.clone(), child.clone()];
        let c = checked_chain(&child.id, &all).unwrap();
        assert_eq!(ids(&c), ["20240102T020000Z", "20240101T020000Z"]);
        let mut replaced = base;
        replaced.stop_lsn = crate::pg::Lsn(0x2000200);
        let all = vec![replaced, child.clone()];
        let err = checked_chain(&child.id, &all).unwrap_err();
        assert_eq!(
            err,
            ChainError::ParentChanged {
                child: child.id.clone(),
                parent: "20240101T020000Z".parse().unwrap()
            }
        );
        assert!(err.to_string().contains("20240101T020000Z"), "{err}");
    }

    fn ids(c: &[&BackupManifest]) -> Vec<String> {
        c.iter().map(|m| m.id.to_string()).collect()
    }

    #[test]
    fn chains_walk_back_to_the_full() {
        let all = vec![
            full("20240101T020000Z"),
            incr("20240102T020000Z", "20240101T020000Z"),
            incr("20240103T020000Z", "20240102T020000Z"),
            full("20240104T020000Z"),
        ];
        let c = chain(&"20240103T020000Z".parse().unwrap(), &all).unwrap();
        assert_eq!(
            ids(&c),
            ["20240103T020000Z", "20240102T020000Z", "20240101T020000Z"]
        );
        assert_eq!(
            chain_len(&"20240104T020000Z".parse().unwrap(), &all),
            Some(1)
        );
        let kept = closure(&["20240103T020000Z".parse().unwrap()], &all);
        assert_eq!(kept.len(), 3);
        assert!(!kept.contains(&"20240104T020000Z".parse().unwrap()));
    }

    #[test]
    fn broken_chains_name_the_missing_parent() {
        let all = vec![
            incr("20240102T020000Z", "20240101T020000Z"),
            incr("20240103T020000Z", "20240102T020000Z"),
        ];
        let err = chain(&"20240103T020000Z".parse().unwrap(), &all).unwrap_err();
        assert_eq!(
            err,
            ChainError::MissingParent {
                child: "20240102T020000Z".parse().unwrap(),
                parent: "20240101T020000Z".parse().unwrap()
            }
        );
        assert!(err.to_string().contains("20240101T020000Z"));
        let mut bad = incr("20240105T020000Z", "20240106T020000Z");
        assert!(chain(&bad.id.clone(), std::slice::from_ref(&bad)).is_err());
        bad.parent = None;
        assert!(chain(&bad.id.clone(), std::slice::from_ref(&bad)).is_err());
    }
}
