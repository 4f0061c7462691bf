//! Restoring an incremental (issue 15): its chain, newest first, and for every file of the
//! newest backup which backups' parts hold what the restore needs. Each level (backup) of
//! the chain is extracted after the newer ones, so a block is taken from the newest backup
//! that has it and written once; the file is finished, and its SHA-256 checked, by the level
//! that stores it whole (see [`super::combine`]).

use std::collections::{BTreeSet, HashMap};

use anyhow::bail;

use crate::error::Failure;
use crate::repo::chain::{self, ChainError};
use crate::repo::manifest::{BackupManifest, Stored};
use crate::repo::Repository;

/// `backup`'s chain, newest first (`backup` alone for a full), every link checked; a broken
/// chain is refused naming the missing or damaged ancestor (exit 3), before any download.
pub async fn resolve(
    repo: &Repository,
    backup: &BackupManifest,
) -> anyhow::Result<Vec<BackupManifest>> {
    if backup.parent.is_none() && backup.kind == crate::repo::manifest::BackupKind::Full {
        return Ok(vec![backup.clone()]);
    }
    let backups = repo.backups().await?;
    let mut all: Vec<BackupManifest> = backups
        .intact
        .iter()
        .filter(|m| m.id != backup.id)
        .cloned()
        .collect();
    all.push(backup.clone());
    match chain::checked_chain(&backup.id, &all) {
        Ok(links) => Ok(links.into_iter().cloned().collect()),
        Err(e) => {
            let detail = match &e {
                ChainError::MissingParent { parent, .. } => backups
                    .damaged(parent)
                    .map(|d| format!(" ({})", d.error))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            Err(Failure::NotFound(format!(
                "backup {} cannot be restored: {e}{detail}. Restore an older backup (--backup ID) or take a new full backup",
                backup.id
            ))
            .into())
        }
    }
}

/// Stored bytes a restore of `chain` (newest first, as [`resolve`] gives it) downloads: every
/// part of the backup itself, and of each older level only the parts holding something the
/// newer levels do not (never a block map: restore does not read them).
pub fn download_bytes(chain: &[BackupManifest]) -> anyhow::Result<u64> {
    let Some(newest) = chain.first() else {
        return Ok(0);
    };
    let mut total: u64 = newest.parts.iter().map(|p| p.size).sum();
    if chain.len() > 1 {
        let plan = ChainPlan::new(chain.to_vec())?;
        for (level, m) in chain.iter().enumerate().skip(1) {
            total += plan
                .parts_needed(level)
                .into_iter()
                .map(|i| m.parts[i].size)
                .sum::<u64>();
        }
    }
    Ok(total)
}

/// What a level's parts hold that the restore needs, for one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// Changed blocks: write those no newer level wrote.
    Blocks,
    /// The whole file: fill in every block no newer level wrote, and finish the file.
    Whole,
}

/// The chain and, per level, the files it must provide.
pub(super) struct ChainPlan {
    /// Newest first; `levels[0]` is the backup being restored.
    pub levels: Vec<BackupManifest>,
    /// Per level: path → what it provides, and the file's index in that level's manifest.
    needs: Vec<HashMap<String, (Need, usize)>>,
}

impl ChainPlan {
    /// Plan the restore of `levels[0]` from `levels` (newest first). Every file must end in
    /// a level that stores it whole.
    pub fn new(levels: Vec<BackupManifest>) -> anyhow::Result<ChainPlan> {
        let mut needs = vec![HashMap::new(); levels.len()];
        let lookups: Vec<HashMap<&str, (Stored, usize)>> = levels
            .iter()
            .map(|m| {
                m.files
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (f.path.as_str(), (f.stored, i)))
                    .collect()
            })
            .collect();
        for f in &levels[0].files {
            let mut level = 0;
            loop {
                let Some(&(stored, index)) =
                    lookups.get(level).and_then(|l| l.get(f.path.as_str()))
                else {
                    let at = levels.get(level).map_or_else(
                        || "no full backup ends the chain".to_string(),
                        |m| format!("backup {} does not have it", m.id),
                    );
                    bail!(
                        "backup {}: {} is unchanged since an older backup, but {at}; the chain is damaged",
                        levels[0].id,
                        f.path
                    );
                };
                match stored {
                    Stored::Whole => {
                        needs[level].insert(f.path.clone(), (Need::Whole, index));
                        break;
                    }
                    Stored::Blocks { .. } => {
                        needs[level].insert(f.path.clone(), (Need::Blocks, index));
                    }
                    Stored::Unchanged => {}
                }
                level += 1;
            }
        }
        Ok(ChainPlan { levels, needs })
    }

    /// What `level` must provide for `path`, if anything.
    pub fn need(&self, level: usize, path: &str) -> Option<Need> {
        self.needs[level].get(path).map(|n| n.0)
    }

    /// The parts of `level` that hold something the restore needs (indexes into its parts).
    pub fn parts_needed(&self, level: usize) -> BTreeSet<usize> {
        let files = &self.levels[level].files;
        self.needs[level]
            .values()
            .map(|(_, i)| files[*i].part)
            .collect()
    }

    /// The entry of `path` in `level`'s manifest, when the level provides something for it.
    pub fn entry(&self, level: usize, path: &str) -> Option<&crate::repo::manifest::FileEntry> {
        let (_, i) = self.needs[level].get(path)?;
        Some(&self.levels[level].files[*i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::{tests::sample, FileEntry};

    fn backup(id: &str, files: &[(&str, Stored, usize)]) -> BackupManifest {
        let mut m = sample();
        m.id = id.parse().unwrap();
        let proto = m.files[0].clone();
        m.files = files
            .iter()
            .map(|(p, s, part)| FileEntry {
                path: p.to_string(),
                stored: *s,
                part: *part,
                ..proto.clone()
            })
            .collect();
        m
    }

    #[test]
    fn each_file_reads_the_levels_it_needs_down_to_a_whole_copy() {
        let b = Stored::Blocks { count: 1 };
        let levels = vec![
            backup(
                "20240103T020000Z",
                &[
                    ("a", b, 0),
                    ("b", Stored::Unchanged, 0),
                    ("c", Stored::Whole, 1),
                ],
            ),
            backup(
                "20240102T020000Z",
                &[
                    ("a", Stored::Unchanged, 0),
                    ("b", b, 1),
                    ("c", b, 0),
                    ("gone", b, 0),
                ],
            ),
            backup(
                "20240101T020000Z",
                &[
                    ("a", Stored::Whole, 0),
                    ("b", Stored::Whole, 1),
                    ("c", Stored::Whole, 0),
                ],
            ),
        ];
        let plan = ChainPlan::new(levels.clone()).unwrap();
        assert_eq!(plan.need(0, "a"), Some(Need::Blocks));
        assert_eq!(plan.need(1, "a"), None);
        assert_eq!(plan.need(2, "a"), Some(Need::Whole));
        assert_eq!(plan.need(1, "b"), Some(Need::Blocks));
        assert_eq!(plan.need(0, "c"), Some(Need::Whole));
        assert_eq!(plan.need(1, "c"), None, "newer whole copy wins");
        assert_eq!(plan.need(1, "gone"), None, "absent from the newest");
        assert_eq!(plan.parts_needed(1), [1].into_iter().collect());
        assert_eq!(plan.parts_needed(2), [0, 1].into_iter().collect());

        let broken = vec![levels[0].clone(), levels[1].clone()];
        let err = ChainPlan::new(broken).err().unwrap().to_string();
        assert!(err.contains("no full backup"), "{err}");
    }

    #[test]
    fn a_restore_downloads_its_backup_and_only_the_older_parts_it_needs() {
        let b = Stored::Blocks { count: 1 };
        let with_parts = |mut m: BackupManifest, sizes: [u64; 2]| {
            let proto = m.parts[0].clone();
            m.parts = sizes
                .iter()
                .map(|&size| crate::repo::manifest::PartEntry {
                    size,
                    ..proto.clone()
                })
                .collect();
            m.block_map = Some(crate::repo::manifest::PartEntry {
                size: 1 << 30,
                ..proto.clone()
            });
            m
        };
        let newest = with_parts(
            backup(
                "20240102T020000Z",
                &[("a", b, 0), ("b", Stored::Unchanged, 1)],
            ),
            [100, 200],
        );
        let full = with_parts(
            backup(
                "20240101T020000Z",
                &[("a", Stored::Whole, 0), ("b", Stored::Whole, 1)],
            ),
            [10, 20],
        );
        // Both of the incremental's parts, both of the full's (a's blocks and b); never the maps.
        assert_eq!(
            download_bytes(&[newest.clone(), full.clone()]).unwrap(),
            330
        );
        assert_eq!(download_bytes(std::slice::from_ref(&full)).unwrap(), 30);
        let b_changed = with_parts(
            backup("20240103T020000Z", &[("a", Stored::Whole, 0), ("b", b, 1)]),
            [100, 200],
        );
        // Only the part holding b of the full.
        assert_eq!(download_bytes(&[b_changed, full]).unwrap(), 320);
    }
}
