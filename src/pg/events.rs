//! Events found in the WAL (issue 16): drops, truncates, restore points and mass deletes, the
//! per-segment JSON "event index" they are stored in, and how one is shown to an operator.
//!
//! [`super::walevents`] extracts them from a segment; [`super::catalog`] names their relations.
//!
//! # The event index (one small JSON document per segment)
//!
//! ```json
//! {"format_version":1,"segment":"000000010000000000000001","events":[
//!   {"kind":"restore_point","time":"2026-12-06T17:53:30.010000Z","xid":0,"lsn":"0/18392A0",
//!    "timeline":1,"restore_point":"before-deploy"},
//!   {"kind":"drop","time":"2026-12-06T17:53:30.109792Z","xid":725,"lsn":"0/1839BE0",
//!    "timeline":1,"database":5,"relfilenodes":["1663/5/16384","1663/5/16387"]},
//!   {"kind":"truncate","time":"…","xid":726,"lsn":"0/183A8F0","timeline":1,"database":5,
//!    "relfilenodes":["1663/5/16391"],"created":["1663/5/16401"]},
//!   {"kind":"mass_delete","time":"…","xid":727,"lsn":"0/18DF310","timeline":1,"database":5,
//!    "relfilenodes":["1663/5/16398"],"rows":12000}]}
//! ```
//!
//! Times are RFC 3339 UTC with microseconds (PostgreSQL's precision), LSNs are `X/Y`,
//! relfilenodes are `spcNode/dbNode/relNode` as `pg_waldump` prints them. Empty lists and
//! absent values are left out. Readers ignore unknown fields, so later versions may add some
//! without raising `format_version`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Lsn, TimelineId};

/// PostgreSQL's `RelFileNode` (`RelFileLocator` from 16): where a relation's storage lives.
/// Relfilenodes are only unique within one database (and tablespace).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RelFileNode {
    /// `spcNode`: the tablespace OID (1663 `pg_default`, 1664 `pg_global`).
    pub spc_node: u32,
    /// `dbNode`: the database OID (0 for shared relations).
    pub db_node: u32,
    /// `relNode`: the file name under the database directory.
    pub rel_node: u32,
}

impl fmt::Display for RelFileNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.spc_node, self.db_node, self.rel_node)
    }
}

impl FromStr for RelFileNode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<u32> = s
            .split('/')
            .map(|p| p.parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("bad relfilenode {s:?}: expected SPC/DB/REL"))?;
        match parts[..] {
            [spc_node, db_node, rel_node] => Ok(RelFileNode {
                spc_node,
                db_node,
                rel_node,
            }),
            _ => Err(format!("bad relfilenode {s:?}: expected SPC/DB/REL")),
        }
    }
}

impl Serialize for RelFileNode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RelFileNode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A committed transaction removed relations' storage and created none.
    Drop,
    /// A committed transaction truncated relations: a heap TRUNCATE record (`wal_level =
    /// logical`), or storage dropped at commit and replaced by new storage created in the
    /// same transaction (see [`super::walevents`] for what that cannot tell apart), or an
    /// `smgr` truncation to zero blocks.
    Truncate,
    /// `pg_create_restore_point(name)`.
    RestorePoint,
    /// A committed transaction deleted at least [`super::walevents::MASS_DELETE_ROWS`] rows of
    /// one relation within one segment.
    MassDelete,
}

/// One event of the WAL.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WalEvent {
    pub kind: EventKind,
    /// The commit record's `xact_time` (a restore point's own `rp_time`).
    pub time: DateTime<Utc>,
    /// The top-level transaction id; 0 for restore points. `restore --before-xid` target.
    pub xid: u32,
    /// Start LSN of the commit record (of the restore point record). Recovery with
    /// `recovery_target_lsn` = this and `recovery_target_inclusive = false` stops before it.
    pub lsn: Lsn,
    pub timeline: TimelineId,
    /// Database OID, when the event concerns relations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<u32>,
    /// Relations whose storage was dropped (or truncated, or whose rows were deleted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relfilenodes: Vec<RelFileNode>,
    /// Relation OIDs (`pg_class.oid`, not relfilenodes) from heap TRUNCATE records; only
    /// written with `wal_level = logical`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relation_oids: Vec<u32>,
    /// New storage created by the same transaction (a TRUNCATE's or rewrite's replacement).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<RelFileNode>,
    /// The restore point's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    /// Rows deleted, for [`EventKind::MassDelete`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

/// The event index of one segment, stored beside its summary.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct EventIndex {
    pub format_version: u32,
    /// The segment's WAL file name.
    pub segment: String,
    pub events: Vec<WalEvent>,
}

impl EventIndex {
    pub const FORMAT_VERSION: u32 = 1;

    pub fn new(segment: impl Into<String>, events: Vec<WalEvent>) -> Self {
        EventIndex {
            format_version: Self::FORMAT_VERSION,
            segment: segment.into(),
            events,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event index always serializes")
    }

    /// Errors on malformed JSON or a `format_version` newer than this build knows.
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<Self> {
        let index: EventIndex = serde_json::from_slice(bytes)?;
        if index.format_version > Self::FORMAT_VERSION {
            anyhow::bail!(
                "event index format {} is newer than this version of synapse-backup reads ({})",
                index.format_version,
                Self::FORMAT_VERSION
            );
        }
        Ok(index)
    }
}

/// A relation an event refers to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RelTarget {
    FileNode(RelFileNode),
    /// A relation OID in a database (from a heap TRUNCATE record).
    Oid {
        database: u32,
        oid: u32,
    },
}

/// A relation's name, as a catalog snapshot recorded it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RelName {
    pub database: String,
    pub schema: String,
    pub name: String,
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `i` index, `t` TOAST, …
    pub kind: char,
}

impl RelName {
    /// "TABLE", "INDEX", … as in the SQL that drops one.
    fn kind_word(&self) -> &'static str {
        match self.kind {
            'r' | 'p' => "TABLE",
            'i' | 'I' => "INDEX",
            'S' => "SEQUENCE",
            't' => "TOAST TABLE",
            'm' => "MATERIALIZED VIEW",
            'f' => "FOREIGN TABLE",
            'v' => "VIEW",
            'c' => "TYPE",
            _ => "RELATION",
        }
    }

    /// Tables, sequences and materialized views: what a user names. Their indexes and TOAST
    /// tables go with them and are not listed when one of these is.
    fn is_primary(&self) -> bool {
        matches!(self.kind, 'r' | 'p' | 'S' | 'm' | 'f')
    }
}

/// What a resolver knows about one relation of an event.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Resolution {
    Known(RelName),
    /// No snapshot taken before the event has it: never guess.
    Unknown,
    /// Named differently by the snapshots before and after the event: we cannot tell which
    /// name it had at the time.
    Renamed {
        before: RelName,
        after: RelName,
    },
}

/// Maps an event's relations to names (implemented by [`super::catalog::Catalogs`]).
pub trait NameResolver {
    /// The relation `target` as it was at `at`.
    fn resolve(&self, at: Lsn, target: RelTarget) -> Resolution;
}

/// A resolver with no snapshots: every relation is "name unknown".
pub struct NoNames;

impl NameResolver for NoNames {
    fn resolve(&self, _: Lsn, _: RelTarget) -> Resolution {
        Resolution::Unknown
    }
}

/// One line per event, as `synapse-backup events` prints it:
/// `14:03:07.412 UTC (09:03:07 America/New_York) xid 84123 DROP TABLE public.orders (core)
/// LSN 3/1A2B3C40 tl 1`. A relation no snapshot names is shown as `relfilenode 16384 in
/// database 5 (name unknown)`.
pub fn format_event(event: &WalEvent, zone: chrono_tz::Tz, names: &dyn NameResolver) -> String {
    let local = event.time.with_timezone(&zone);
    let mut line = format!(
        "{} UTC ({} {})",
        event.time.format("%H:%M:%S%.3f"),
        local.format("%H:%M:%S"),
        zone.name()
    );
    match event.kind {
        EventKind::RestorePoint => {
            let name = event.restore_point.as_deref().unwrap_or("");
            line.push_str(&format!(" RESTORE POINT '{name}'"));
        }
        EventKind::Drop => {
            line.push_str(&format!(
                " xid {} DROP {}",
                event.xid,
                relations(event, names)
            ));
        }
        EventKind::Truncate => {
            // Exact only when a heap TRUNCATE record named the relations.
            let verb = if event.relation_oids.is_empty() && !event.created.is_empty() {
                "TRUNCATE (or rewrite)"
            } else {
                "TRUNCATE"
            };
            line.push_str(&format!(
                " xid {} {verb} {}",
                event.xid,
                relations(event, names)
            ));
        }
        EventKind::MassDelete => {
            line.push_str(&format!(
                " xid {} DELETE {} rows FROM {}",
                event.xid,
                event.rows.unwrap_or(0),
                relations(event, names)
            ));
        }
    }
    line.push_str(&format!(" LSN {} tl {}", event.lsn, event.timeline.0));
    line
}

/// "TABLE public.orders (core)", "TABLE public.a, TABLE public.b (core)", or the unknown
/// relfilenodes spelled out.
fn relations(event: &WalEvent, names: &dyn NameResolver) -> String {
    let mut targets: Vec<RelTarget> = event
        .relation_oids
        .iter()
        .map(|&oid| RelTarget::Oid {
            database: event.database.unwrap_or(0),
            oid,
        })
        .collect();
    if targets.is_empty() {
        targets = event
            .relfilenodes
            .iter()
            .map(|&r| RelTarget::FileNode(r))
            .collect();
    }
    let mut known = Vec::new();
    let mut other = Vec::new();
    for target in targets {
        match names.resolve(event.lsn, target) {
            Resolution::Known(name) => known.push(name),
            Resolution::Unknown => other.push(format!("{} (name unknown)", describe(target))),
            Resolution::Renamed { before, after } => other.push(format!(
                "{} (name unknown: {}.{} before, {}.{} after)",
                describe(target),
                before.schema,
                before.name,
                after.schema,
                after.name
            )),
        }
    }
    if known.iter().any(RelName::is_primary) {
        known.retain(RelName::is_primary);
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(first) = known.first() {
        let database = first.database.clone();
        let listed: Vec<String> = known
            .iter()
            .map(|n| format!("{} {}.{}", n.kind_word(), n.schema, n.name))
            .collect();
        parts.push(format!("{} ({database})", listed.join(", ")));
    }
    parts.extend(other);
    if parts.is_empty() {
        return "(no relations)".into();
    }
    parts.join(", ")
}

fn describe(target: RelTarget) -> String {
    match target {
        RelTarget::FileNode(r) => format!("relfilenode {} in database {}", r.rel_node, r.db_node),
        RelTarget::Oid { database, oid } => {
            format!("relation OID {oid} in database {database}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    fn drop_event() -> WalEvent {
        WalEvent {
            kind: EventKind::Drop,
            time: t("2026-03-10T14:03:07.412345Z"),
            xid: 84123,
            lsn: Lsn(0x3_1A2B_3C40),
            timeline: TimelineId(1),
            database: Some(5),
            relfilenodes: vec![
                RelFileNode {
                    spc_node: 1663,
                    db_node: 5,
                    rel_node: 16384,
                },
                RelFileNode {
                    spc_node: 1663,
                    db_node: 5,
                    rel_node: 16390,
                },
            ],
            relation_oids: vec![],
            created: vec![],
            restore_point: None,
            rows: None,
        }
    }

    /// Knows relfilenode 16384 (a table) and 16390 (its index), nothing else.
    struct Fixed;
    impl NameResolver for Fixed {
        fn resolve(&self, _: Lsn, target: RelTarget) -> Resolution {
            let name = |name: &str, kind| {
                Resolution::Known(RelName {
                    database: "core".into(),
                    schema: "public".into(),
                    name: name.into(),
                    kind,
                })
            };
            match target {
                RelTarget::FileNode(r) if r.rel_node == 16384 => name("orders", 'r'),
                RelTarget::FileNode(r) if r.rel_node == 16390 => name("orders_pkey", 'i'),
                RelTarget::Oid { oid: 16400, .. } => name("items", 'r'),
                _ => Resolution::Unknown,
            }
        }
    }

    #[test]
    fn formats_like_the_issue() {
        let ny: chrono_tz::Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            format_event(&drop_event(), ny, &Fixed),
            "14:03:07.412 UTC (10:03:07 America/New_York) xid 84123 DROP TABLE public.orders \
             (core) LSN 3/1A2B3C40 tl 1"
        );
        // In January New York is UTC-5, as in the issue's example.
        let mut winter = drop_event();
        winter.time = t("2026-01-10T14:03:07.412Z");
        assert!(format_event(&winter, ny, &Fixed).starts_with("14:03:07.412 UTC (09:03:07 "));
    }

    #[test]
    fn unknown_relations_are_never_guessed() {
        let e = drop_event();
        assert_eq!(
            format_event(&e, chrono_tz::UTC, &NoNames),
            "14:03:07.412 UTC (14:03:07 UTC) xid 84123 DROP relfilenode 16384 in database 5 \
             (name unknown), relfilenode 16390 in database 5 (name unknown) LSN 3/1A2B3C40 tl 1"
        );
        let mut e = drop_event();
        e.relfilenodes[1].rel_node = 99999;
        assert_eq!(
            format_event(&e, chrono_tz::UTC, &Fixed),
            "14:03:07.412 UTC (14:03:07 UTC) xid 84123 DROP TABLE public.orders (core), \
             relfilenode 99999 in database 5 (name unknown) LSN 3/1A2B3C40 tl 1"
        );
    }

    #[test]
    fn other_kinds() {
        let base = drop_event();
        let rp = WalEvent {
            kind: EventKind::RestorePoint,
            xid: 0,
            database: None,
            relfilenodes: vec![],
            restore_point: Some("before-deploy".into()),
            ..base.clone()
        };
        assert_eq!(
            format_event(&rp, chrono_tz::UTC, &Fixed),
            "14:03:07.412 UTC (14:03:07 UTC) RESTORE POINT 'before-deploy' LSN 3/1A2B3C40 tl 1"
        );
        let truncate = WalEvent {
            kind: EventKind::Truncate,
            relation_oids: vec![16400],
            ..base.clone()
        };
        assert!(format_event(&truncate, chrono_tz::UTC, &Fixed)
            .contains(" xid 84123 TRUNCATE TABLE public.items (core) LSN"));
        let rewrite = WalEvent {
            kind: EventKind::Truncate,
            created: vec![base.relfilenodes[0]],
            ..base.clone()
        };
        assert!(format_event(&rewrite, chrono_tz::UTC, &Fixed)
            .contains(" xid 84123 TRUNCATE (or rewrite) TABLE public.orders (core) LSN"));
        let delete = WalEvent {
            kind: EventKind::MassDelete,
            relfilenodes: vec![base.relfilenodes[0]],
            rows: Some(12000),
            ..base
        };
        assert!(format_event(&delete, chrono_tz::UTC, &Fixed)
            .contains(" xid 84123 DELETE 12000 rows FROM TABLE public.orders (core) LSN"));
    }

    #[test]
    fn index_round_trips_and_is_compact() {
        let index = EventIndex::new("000000010000000300000001", vec![drop_event()]);
        let json = String::from_utf8(index.to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"format_version":1,"segment":"000000010000000300000001","events":[{"kind":"drop","time":"2026-03-10T14:03:07.412345Z","xid":84123,"lsn":"3/1A2B3C40","timeline":1,"database":5,"relfilenodes":["1663/5/16384","1663/5/16390"]}]}"#
        );
        assert_eq!(EventIndex::from_json(json.as_bytes()).unwrap(), index);
        let newer = json.replace("\"format_version\":1", "\"format_version\":2");
        assert!(EventIndex::from_json(newer.as_bytes()).is_err());
        assert!("1/2".parse::<RelFileNode>().is_err());
        assert!("1/2/x".parse::<RelFileNode>().is_err());
    }
}
