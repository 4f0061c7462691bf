//! Catalog snapshots: relfilenode and relation OID → `database`, `schema.table`, so WAL
//! events ([`super::events`]) are shown with names (issue 16).
//!
//! # Taking one
//! Relfilenodes and `pg_class` are per database, so a snapshot is one [`DatabaseCatalog`]
//! per database: list the databases with [`list_databases`] on any session (those with
//! `datallowconn`; `template0` refuses connections), open a session to each (the same
//! connection string with `dbname=` replaced) and run [`database_catalog`] on it, then
//! [`CatalogSnapshot::new`]. Mapped catalogs (`pg_class.relfilenode = 0`) are read through
//! `pg_relation_filenode()`; relations without storage (views, partitioned tables) keep
//! relfilenode 0 and are found by OID only. Temporary and shared relations are left out:
//! temporary ones are not WAL-logged, shared ones are not in any one database.
//!
//! # Which snapshot names an event
//! Each database's catalog records `valid_from`: the WAL insert position read right *after*
//! its catalog query (`pg_last_wal_replay_lsn()` on a standby). Everything the query saw was
//! committed before that position. An event at LSN `L` is named from the newest catalog of
//! its database with `valid_from <= L` — never from one taken after it, because a later
//! snapshot may show a name the relation got after the event (a rename). If there is no
//! such catalog, or it lacks the relation (created after the snapshot), the name is
//! unknown. If the next catalog after the event has the same relation OID under another
//! name, it was renamed around the event and both names are given as candidates, not as
//! the answer. What no snapshot can show: a rename after the last snapshot before the event
//! and followed by a drop before the next one; snapshot often enough to make that rare.
//! LSNs are compared without regard to timelines.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::events::{NameResolver, RelName, RelTarget, Resolution};
use super::Lsn;
use crate::codec::Sha256;

/// One relation of a database.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RelationEntry {
    /// `pg_class.oid`.
    pub oid: u32,
    /// `pg_relation_filenode(oid)`; 0 for relations without storage.
    pub relfilenode: u32,
    /// The tablespace OID its storage is in (the database's default resolved).
    pub tablespace: u32,
    pub schema: String,
    pub name: String,
    /// `pg_class.relkind`.
    pub kind: char,
}

/// The catalog of one database at one moment.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DatabaseCatalog {
    pub oid: u32,
    pub name: String,
    /// Events at or after this LSN may be named from this catalog (see the module docs).
    pub valid_from: Lsn,
    /// Sorted by OID.
    pub relations: Vec<RelationEntry>,
}

impl DatabaseCatalog {
    fn by_filenode(&self, spc: u32, relfilenode: u32) -> Option<&RelationEntry> {
        self.relations
            .iter()
            .find(|r| r.relfilenode == relfilenode && r.tablespace == spc && relfilenode != 0)
    }

    fn by_oid(&self, oid: u32) -> Option<&RelationEntry> {
        self.relations
            .binary_search_by_key(&oid, |r| r.oid)
            .ok()
            .map(|i| &self.relations[i])
    }

    fn name_of(&self, r: &RelationEntry) -> RelName {
        RelName {
            database: self.name.clone(),
            schema: r.schema.clone(),
            name: r.name.clone(),
            kind: r.kind,
        }
    }
}

/// The catalogs of every database, with a hash of their content.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct CatalogSnapshot {
    pub format_version: u32,
    pub taken_at: DateTime<Utc>,
    /// Sorted by database OID.
    pub databases: Vec<DatabaseCatalog>,
    /// SHA-256 of the names and relations only (not `taken_at` or `valid_from`), so an
    /// agent stores a new snapshot only when the hash differs from the last stored one.
    pub content_hash: Sha256,
}

impl CatalogSnapshot {
    pub const FORMAT_VERSION: u32 = 1;

    pub fn new(taken_at: DateTime<Utc>, mut databases: Vec<DatabaseCatalog>) -> Self {
        databases.sort_by_key(|d| d.oid);
        for d in &mut databases {
            d.relations.sort_by_key(|r| r.oid);
        }
        let content: Vec<(u32, &str, &[RelationEntry])> = databases
            .iter()
            .map(|d| (d.oid, d.name.as_str(), d.relations.as_slice()))
            .collect();
        let bytes = serde_json::to_vec(&content).expect("a catalog always serializes");
        CatalogSnapshot {
            format_version: Self::FORMAT_VERSION,
            taken_at,
            content_hash: Sha256::of(&bytes),
            databases,
        }
    }
}

/// The databases to snapshot: `(oid, name)` of those that accept connections.
pub async fn list_databases(client: &Client) -> anyhow::Result<Vec<(u32, String)>> {
    let rows = client
        .query(
            "select oid, datname::text from pg_database where datallowconn order by oid",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("list databases (pg_database): {e}"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The catalog of the database `client` is connected to.
pub async fn database_catalog(client: &Client) -> anyhow::Result<DatabaseCatalog> {
    let rows = client
        .query(
            "select c.oid, coalesce(pg_relation_filenode(c.oid), 0::oid),
                    case when c.reltablespace = 0 then d.dattablespace else c.reltablespace end,
                    n.nspname::text, c.relname::text, c.relkind::text
               from pg_class c
               join pg_namespace n on n.oid = c.relnamespace
               join pg_database d on d.datname = current_database()
              where not c.relisshared and c.relpersistence <> 't'
              order by c.oid",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("read the catalog (pg_class): {e}"))?;
    let relations = rows
        .iter()
        .map(|r| RelationEntry {
            oid: r.get(0),
            relfilenode: r.get(1),
            tablespace: r.get(2),
            schema: r.get(3),
            name: r.get(4),
            kind: r.get::<_, String>(5).chars().next().unwrap_or('?'),
        })
        .collect();
    // Read after the catalog query: see the module docs.
    let row = client
        .query_one(
            "select d.oid, d.datname::text,
                    (case when pg_is_in_recovery() then pg_last_wal_replay_lsn()
                          else pg_current_wal_insert_lsn() end)::text
               from pg_database d where d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| anyhow::anyhow!("read the WAL position after the catalog: {e}"))?;
    let lsn: String = row.get(2);
    Ok(DatabaseCatalog {
        oid: row.get(0),
        name: row.get(1),
        valid_from: lsn.parse()?,
        relations,
    })
}

/// Take a snapshot of every database `session`'s server lets us connect to: the session's
/// own database on the session, the others over `conninfo` with `dbname` replaced (key/value
/// strings only; with a URI only the session's database is read). A database that refuses
/// the connection is left out with a warning: its events are shown as "name unknown".
pub async fn take_snapshot(
    session: &super::client::Session,
    conninfo: &str,
) -> anyhow::Result<CatalogSnapshot> {
    let own = database_catalog(session.client()).await?;
    let mut dbs = Vec::new();
    let uri = conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://");
    if !uri {
        for (oid, name) in list_databases(session.client()).await? {
            if oid == own.oid {
                continue;
            }
            let other = format!(
                "{conninfo} dbname='{}'",
                name.replace('\\', "\\\\").replace('\'', "\\'")
            );
            let read = async {
                let s = super::client::connect(&other).await?;
                let c = database_catalog(s.client()).await;
                s.close().await;
                c
            };
            match read.await {
                Ok(c) => dbs.push(c),
                Err(e) => tracing::warn!(database = %name, "catalog snapshot: {e:#}"),
            }
        }
    }
    dbs.push(own);
    Ok(CatalogSnapshot::new(Utc::now(), dbs))
}

/// Names events from a set of snapshots (the rule is in the module docs).
#[derive(Clone, Debug, Default)]
pub struct Catalogs {
    snapshots: Vec<CatalogSnapshot>,
}

impl Catalogs {
    pub fn new(snapshots: Vec<CatalogSnapshot>) -> Self {
        Catalogs { snapshots }
    }

    fn of_database(&self, db: u32) -> impl Iterator<Item = &DatabaseCatalog> {
        self.snapshots
            .iter()
            .flat_map(|s| &s.databases)
            .filter(move |d| d.oid == db)
    }
}

impl NameResolver for Catalogs {
    fn resolve(&self, at: Lsn, target: RelTarget) -> Resolution {
        let db = match target {
            RelTarget::FileNode(r) => r.db_node,
            RelTarget::Oid { database, .. } => database,
        };
        let Some(before) = self
            .of_database(db)
            .filter(|d| d.valid_from <= at)
            .max_by_key(|d| d.valid_from)
        else {
            return Resolution::Unknown;
        };
        let entry = match target {
            RelTarget::FileNode(r) => before.by_filenode(r.spc_node, r.rel_node),
            RelTarget::Oid { oid, .. } => before.by_oid(oid),
        };
        let Some(entry) = entry else {
            return Resolution::Unknown;
        };
        let name = before.name_of(entry);
        let after = self
            .of_database(db)
            .filter(|d| d.valid_from > at)
            .min_by_key(|d| d.valid_from);
        if let Some(after) = after {
            if let Some(later) = after.by_oid(entry.oid) {
                let later = after.name_of(later);
                if (&later.database, &later.schema, &later.name)
                    != (&name.database, &name.schema, &name.name)
                {
                    return Resolution::Renamed {
                        before: name,
                        after: later,
                    };
                }
            }
        }
        Resolution::Known(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::events::RelFileNode;

    fn rel(oid: u32, relfilenode: u32, name: &str) -> RelationEntry {
        RelationEntry {
            oid,
            relfilenode,
            tablespace: 1663,
            schema: "public".into(),
            name: name.into(),
            kind: 'r',
        }
    }

    fn snapshot(at: u64, relations: Vec<RelationEntry>) -> CatalogSnapshot {
        CatalogSnapshot::new(
            DateTime::from_timestamp(1_700_000_000 + at as i64, 0).unwrap(),
            vec![DatabaseCatalog {
                oid: 5,
                name: "core".into(),
                valid_from: Lsn(at),
                relations,
            }],
        )
    }

    fn node(rel_node: u32) -> RelTarget {
        RelTarget::FileNode(RelFileNode {
            spc_node: 1663,
            db_node: 5,
            rel_node,
        })
    }

    fn known(name: &str) -> Resolution {
        Resolution::Known(RelName {
            database: "core".into(),
            schema: "public".into(),
            name: name.into(),
            kind: 'r',
        })
    }

    #[test]
    fn newest_snapshot_before_the_event_names_it() {
        // 100: orders (16384); 200: renamed to orders_old; 300: truncated (new relfilenode).
        let s1 = snapshot(100, vec![rel(16384, 16384, "orders")]);
        let s2 = snapshot(200, vec![rel(16384, 16384, "orders_old")]);
        let s3 = snapshot(300, vec![rel(16384, 16390, "orders_old")]);
        let c = Catalogs::new(vec![s3, s1, s2]);
        // Before any snapshot: unknown, even though later snapshots know the relfilenode.
        assert_eq!(c.resolve(Lsn(50), node(16384)), Resolution::Unknown);
        // Between 100 and 200 the relation was renamed: both names, no answer.
        assert!(matches!(
            c.resolve(Lsn(150), node(16384)),
            Resolution::Renamed { ref before, ref after }
                if before.name == "orders" && after.name == "orders_old"
        ));
        assert_eq!(c.resolve(Lsn(200), node(16384)), known("orders_old"));
        assert_eq!(c.resolve(Lsn(250), node(16384)), known("orders_old"));
        // After the truncate the old relfilenode is gone from the newest snapshot.
        assert_eq!(c.resolve(Lsn(350), node(16384)), Resolution::Unknown);
        assert_eq!(c.resolve(Lsn(350), node(16390)), known("orders_old"));
        // By OID, and other databases / tablespaces do not match.
        let oid = RelTarget::Oid {
            database: 5,
            oid: 16384,
        };
        assert_eq!(c.resolve(Lsn(350), oid), known("orders_old"));
        let other_db = RelTarget::FileNode(RelFileNode {
            spc_node: 1663,
            db_node: 6,
            rel_node: 16384,
        });
        assert_eq!(c.resolve(Lsn(350), other_db), Resolution::Unknown);
        let other_spc = RelTarget::FileNode(RelFileNode {
            spc_node: 16500,
            db_node: 5,
            rel_node: 16390,
        });
        assert_eq!(c.resolve(Lsn(350), other_spc), Resolution::Unknown);
        // A dropped relation, absent from the next snapshot, keeps its name.
        let gone = Catalogs::new(vec![
            snapshot(100, vec![rel(16384, 16384, "orders")]),
            snapshot(200, vec![]),
        ]);
        assert_eq!(gone.resolve(Lsn(150), node(16384)), known("orders"));
        assert_eq!(
            Catalogs::default().resolve(Lsn(1), node(1)),
            Resolution::Unknown
        );
    }

    #[test]
    fn content_hash_ignores_positions_and_order() {
        let a = snapshot(100, vec![rel(1, 1, "a"), rel(2, 2, "b")]);
        let b = snapshot(900, vec![rel(2, 2, "b"), rel(1, 1, "a")]);
        assert_eq!(a.content_hash, b.content_hash);
        let c = snapshot(100, vec![rel(1, 1, "a"), rel(2, 2, "c")]);
        assert_ne!(a.content_hash, c.content_hash);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<CatalogSnapshot>(&json).unwrap(), a);
    }
}
