//! `events`: the timeline of drops, truncates, mass deletes and restore points in the archived
//! WAL, from the event index (issue 16); and `reindex`, which builds that index for segments
//! archived before `wal-push` wrote it.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::pg::catalog::Catalogs;
use crate::pg::events::{format_event, EventIndex, NameResolver, RelTarget, Resolution, WalEvent};
use crate::pg::{walevents, WalFileName};
use crate::repo::Repository;
use crate::settings::EventsSettings;

/// One event as `events --json` prints it: the index's fields and the printed line.
#[derive(Serialize)]
struct JsonEvent<'a> {
    #[serde(flatten)]
    event: &'a WalEvent,
    description: String,
}

pub async fn run(repo: &Repository, zone: Tz, settings: &EventsSettings) -> anyhow::Result<()> {
    let names = Catalogs::new(repo.catalogs().await?);
    let events: Vec<WalEvent> = repo
        .all_events()
        .await?
        .into_iter()
        .filter(|e| settings.since.is_none_or(|t| e.time >= t))
        .filter(|e| settings.until.is_none_or(|t| e.time <= t))
        .filter(|e| {
            settings
                .table
                .as_deref()
                .is_none_or(|t| concerns(e, t, &names))
        })
        .collect();
    if settings.json {
        let out: Vec<JsonEvent> = events
            .iter()
            .map(|event| JsonEvent {
                event,
                description: format_event(event, zone, &names),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if events.is_empty() {
        eprintln!("no indexed events (run `synapse-backup reindex` for WAL archived before the index existed)");
    }
    let mut day = None;
    for e in &events {
        if day != Some(e.time.date_naive()) {
            day = Some(e.time.date_naive());
            println!("{}", day_heading(e.time, zone));
        }
        println!("{}", format_event(e, zone, &names));
    }
    Ok(())
}

/// `2024-01-01 (UTC; America/New_York is UTC-05:00)`: the date the following lines are on,
/// and the zone's offset that day.
fn day_heading(t: DateTime<Utc>, zone: Tz) -> String {
    let local = t.with_timezone(&zone);
    format!(
        "{} (UTC; {} is UTC{})",
        t.format("%Y-%m-%d"),
        zone.name(),
        local.format("%:z")
    )
}

/// Whether the event concerns relation `table` (`name` or `schema.name`, or a relfilenode).
fn concerns(event: &WalEvent, table: &str, names: &dyn NameResolver) -> bool {
    let matches = |n: &crate::pg::events::RelName| {
        n.name == table || format!("{}.{}", n.schema, n.name) == table
    };
    let db = event.database.unwrap_or(0);
    let targets = event
        .relfilenodes
        .iter()
        .map(|&r| RelTarget::FileNode(r))
        .chain(
            event
                .relation_oids
                .iter()
                .map(|&oid| RelTarget::Oid { database: db, oid }),
        );
    targets.into_iter().any(|target| {
        if let RelTarget::FileNode(r) = target {
            if r.rel_node.to_string() == table {
                return true;
            }
        }
        match names.resolve(event.lsn, target) {
            Resolution::Known(n) => matches(&n),
            Resolution::Renamed { before, after } => matches(&before) || matches(&after),
            Resolution::Unknown => false,
        }
    })
}

/// `reindex`: scan every archived segment that has no event index and store the index of
/// those with events. Segments without events stay without an index, so a second run
/// scans them again (it is a one-off for repositories written before the index).
pub async fn reindex(repo: &Repository) -> anyhow::Result<()> {
    let indexed: std::collections::HashSet<String> = repo
        .indexed_segments()
        .await?
        .iter()
        .map(ToString::to_string)
        .collect();
    let (mut scanned, mut stored) = (0usize, 0usize);
    for (name, _) in repo.list_wal().await? {
        let WalFileName::Segment(seg) = name else {
            continue;
        };
        if indexed.contains(&seg.to_string()) {
            continue;
        }
        let Some((content, _)) = repo.get_wal(&name).await? else {
            continue;
        };
        scanned += 1;
        let scan = tokio::task::spawn_blocking(move || {
            walevents::scan_segment_events(&content, seg.timeline)
        })
        .await
        .expect("scan task does not panic");
        match scan {
            Ok(scan) if !scan.events.is_empty() => {
                repo.put_events(&seg, &EventIndex::new(seg.to_string(), scan.events))
                    .await?;
                stored += 1;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(file = %seg, "cannot scan for events: {e}"),
        }
    }
    eprintln!("reindex: scanned {scanned} segment(s), stored {stored} event index(es)");
    Ok(())
}
