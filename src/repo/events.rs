//! The WAL event index (`events/<log>/<segment>.json`, one per segment) and catalog snapshots
//! (`catalog/<time>-<hash>.json`), issue 16. Both are small JSON objects with their own
//! checksum, signed like every object of a signed repository, and read without downloading
//! a segment.

use anyhow::Context;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::layout;
use super::Repository;
use crate::codec::Sha256;
use crate::pg::catalog::CatalogSnapshot;
use crate::pg::events::{EventIndex, WalEvent};
use crate::pg::WalSegmentName;

/// The outcome of [`Repository::put_catalog`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogStored {
    /// `<time>-<hash>`: the snapshot holding this content.
    pub name: String,
    /// False when the newest snapshot already had this content.
    pub stored: bool,
}

/// How many index objects are read at once.
const READ_PARALLELISM: usize = 16;

/// What is stored: the payload and the SHA-256 of its compact JSON.
#[derive(Serialize, Deserialize)]
struct Checked<T> {
    sha256: Sha256,
    #[serde(flatten)]
    body: T,
}

fn to_checked<T: Serialize>(body: T) -> Vec<u8> {
    let sha256 = Sha256::of(&serde_json::to_vec(&body).expect("serializes"));
    serde_json::to_vec_pretty(&Checked { sha256, body }).expect("serializes")
}

fn from_checked<T: Serialize + for<'de> Deserialize<'de>>(
    bytes: &[u8],
    name: &str,
) -> anyhow::Result<T> {
    let c: Checked<T> =
        serde_json::from_slice(bytes).with_context(|| format!("{name}: unreadable"))?;
    let got = Sha256::of(&serde_json::to_vec(&c.body).expect("serializes"));
    if got != c.sha256 {
        anyhow::bail!(
            "{name}: damaged: SHA-256 {got} does not match its recorded {}",
            c.sha256
        );
    }
    Ok(c.body)
}

impl Repository {
    /// Store a segment's event index (replacing one stored before: the same segment always
    /// yields the same index).
    pub async fn put_events(&self, seg: &WalSegmentName, index: &EventIndex) -> anyhow::Result<()> {
        let key = layout::events_key(seg);
        let body = self
            .signing
            .seal(&self.object_name(&key), to_checked(index))?;
        self.storage
            .put(&key, Bytes::from(body))
            .await
            .with_context(|| format!("store the event index of {seg}"))
    }

    /// A segment's event index, verified; `None` when it has none.
    pub async fn get_events(&self, seg: &WalSegmentName) -> anyhow::Result<Option<EventIndex>> {
        let key = layout::events_key(seg);
        let Some(bytes) = self.storage.get(&key).await? else {
            return Ok(None);
        };
        let name = self.object_name(&key);
        self.check_signature(&name, &bytes).await?;
        let index: EventIndex = from_checked(&bytes, &name)?;
        if index.segment != seg.to_string() {
            anyhow::bail!("{name}: holds the index of {}, not {seg}", index.segment);
        }
        Ok(Some(index))
    }

    /// The segments that have an event index.
    pub async fn indexed_segments(&self) -> anyhow::Result<Vec<WalSegmentName>> {
        Ok(self
            .storage
            .list(layout::EVENTS_DIR)
            .await?
            .iter()
            .filter_map(|e| layout::events_segment_from_key(&e.key))
            .collect())
    }

    /// Every indexed event of the archive, in (timeline, LSN) order.
    pub async fn all_events(&self) -> anyhow::Result<Vec<WalEvent>> {
        let segments = self.indexed_segments().await?;
        let indexes: Vec<Option<EventIndex>> = futures::stream::iter(segments)
            .map(|seg| async move { self.get_events(&seg).await })
            .buffered(READ_PARALLELISM)
            .try_collect()
            .await?;
        let mut events: Vec<WalEvent> = indexes
            .into_iter()
            .flatten()
            .flat_map(|i| i.events)
            .collect();
        events.sort_by_key(|e| (e.lsn, e.timeline.0));
        Ok(events)
    }

    /// Store a catalog snapshot unless the newest stored one has the same content. Returns
    /// the name of the snapshot that now holds this content (`<time>-<hash>`, what a manifest
    /// records) and whether it was stored.
    pub async fn put_catalog(&self, snapshot: &CatalogSnapshot) -> anyhow::Result<CatalogStored> {
        let hash = snapshot.content_hash.to_string();
        let short = &hash[..16.min(hash.len())];
        let newest = self
            .storage
            .list(layout::CATALOG_DIR)
            .await?
            .into_iter()
            .map(|e| e.key)
            .max();
        if let Some(name) = newest
            .as_deref()
            .filter(|k| k.ends_with(&format!("-{short}.json")))
            .and_then(layout::catalog_name_from_key)
        {
            return Ok(CatalogStored {
                name: name.to_string(),
                stored: false,
            });
        }
        let key = layout::catalog_key(&super::reports::report_time(snapshot.taken_at), short);
        let body = self
            .signing
            .seal(&self.object_name(&key), to_checked(snapshot))?;
        self.storage
            .put(&key, Bytes::from(body))
            .await
            .context("store the catalog snapshot")?;
        Ok(CatalogStored {
            name: layout::catalog_name_from_key(&key)
                .expect("a catalog key")
                .to_string(),
            stored: true,
        })
    }

    /// Every stored catalog snapshot, oldest first.
    pub async fn catalogs(&self) -> anyhow::Result<Vec<CatalogSnapshot>> {
        let mut out = Vec::new();
        for e in self.storage.list(layout::CATALOG_DIR).await? {
            let Some(bytes) = self.storage.get(&e.key).await? else {
                continue;
            };
            let name = self.object_name(&e.key);
            self.check_signature(&name, &bytes).await?;
            out.push(from_checked(&bytes, &name)?);
        }
        out.sort_by_key(|s: &CatalogSnapshot| s.taken_at);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::catalog::DatabaseCatalog;
    use crate::pg::Lsn;
    use chrono::DateTime;

    fn snapshot(secs: i64, db: &str) -> CatalogSnapshot {
        CatalogSnapshot::new(
            DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap(),
            vec![DatabaseCatalog {
                oid: 5,
                name: db.into(),
                valid_from: Lsn(0),
                relations: vec![],
            }],
        )
    }

    #[tokio::test]
    async fn a_catalog_is_stored_once_per_content_and_named_for_the_manifest() {
        let repo = Repository::in_memory("core");
        let first = repo.put_catalog(&snapshot(0, "core")).await.unwrap();
        assert!(first.stored);
        assert!(first.name.starts_with("20231114T221320Z-"), "{first:?}");
        let again = repo.put_catalog(&snapshot(3600, "core")).await.unwrap();
        assert_eq!(
            again,
            CatalogStored {
                name: first.name.clone(),
                stored: false
            }
        );
        let changed = repo.put_catalog(&snapshot(7200, "renamed")).await.unwrap();
        assert!(changed.stored && changed.name != first.name, "{changed:?}");
        assert_eq!(repo.catalogs().await.unwrap().len(), 2);
    }
}
