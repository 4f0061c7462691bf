//! WAL events (issue 16) on a real PostgreSQL 15 cluster: a restore point, a DROP, a
//! TRUNCATE and a 12,000-row DELETE are found in the segments in `pg_wal` with the xids,
//! LSNs (checked against `pg_waldump`), times and relfilenodes PostgreSQL reports, and named
//! from catalog snapshots.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use synapse_backup::pg::catalog::{self, CatalogSnapshot, Catalogs};
use synapse_backup::pg::events::{format_event, EventKind, NoNames, RelFileNode, WalEvent};
use synapse_backup::pg::walevents::scan_segment_events;
use synapse_backup::pg::walscan::scan_segment;
use synapse_backup::pg::{Lsn, TimelineId};

use crate::harness::{self, as_postgres, run_ok, PgCluster, Scratch, PG_BIN};

/// A snapshot of every database that accepts connections, one session each.
async fn snapshot(pg: &PgCluster) -> CatalogSnapshot {
    let connect = |db: &str| {
        let conninfo = format!(
            "host={} port={} user=postgres dbname={db}",
            pg.socket_dir.display(),
            pg.port
        );
        async move {
            let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            client
        }
    };
    let first = connect("postgres").await;
    let mut dbs = Vec::new();
    for (_, name) in catalog::list_databases(&first).await.unwrap() {
        let client = connect(&name).await;
        dbs.push(catalog::database_catalog(&client).await.unwrap());
    }
    CatalogSnapshot::new(Utc::now(), dbs)
}

fn time(pg: &PgCluster) -> DateTime<Utc> {
    let micros: i64 = pg
        .psql("select (extract(epoch from clock_timestamp()) * 1000000)::int8")
        .parse()
        .unwrap();
    DateTime::from_timestamp_micros(micros).unwrap()
}

/// `sql` in one transaction that first prints its xid; returns (xid, time before, after).
fn in_transaction(pg: &PgCluster, sql: &str) -> (u32, DateTime<Utc>, DateTime<Utc>) {
    let before = time(pg);
    let xid = pg
        .psql(&format!("begin; select txid_current(); {sql}; commit;"))
        .parse()
        .unwrap();
    (xid, before, time(pg))
}

fn relfilenode(pg: &PgCluster, rel: &str) -> RelFileNode {
    let row = pg.psql(&format!(
        "select (select oid from pg_database where datname = current_database()),
                pg_relation_filenode('{rel}')"
    ));
    let (db, node) = row.split_once('|').unwrap();
    RelFileNode {
        spc_node: 1663,
        db_node: db.parse().unwrap(),
        rel_node: node.parse().unwrap(),
    }
}

/// `pg_waldump` lines of `rmgr` between two segments: (xid, LSN, description).
fn waldump(pg: &PgCluster, first: &str, last: &str, rmgr: &str) -> Vec<(u32, Lsn, String)> {
    let out = run_ok(
        as_postgres(format!("{PG_BIN}/pg_waldump"))
            .arg("-p")
            .arg(pg.pgdata.join("pg_wal"))
            .args(["-r", rmgr, first, last]),
    );
    out.lines()
        .filter_map(|line| {
            let xid = line
                .split("tx:")
                .nth(1)?
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()?;
            let lsn = line
                .split("lsn: ")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            let desc = line.split("desc: ").nth(1)?.to_string();
            Some((xid, lsn, desc))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_of_real_segments() {
    if harness::skip("events_of_real_segments") {
        return;
    }
    let scratch = Scratch::new("walevents");
    let mut pg = PgCluster::init(scratch.path(), "autovacuum = off");
    pg.start();
    pg.psql(
        "create table orders(id int primary key, note text);
         insert into orders select g, repeat('x', 3000) from generate_series(1, 50) g;
         create table items(id int primary key, v int);
         insert into items select g, g from generate_series(1, 1000) g;
         create table big(id int);
         insert into big select generate_series(1, 12000);
         checkpoint;",
    );
    let orders = relfilenode(&pg, "orders");
    let orders_pkey = relfilenode(&pg, "orders_pkey");
    let items = relfilenode(&pg, "items");
    let big = relfilenode(&pg, "big");
    let before_all = snapshot(&pg).await;

    // Start a fresh segment so the whole story is in one or two segments we read whole.
    pg.psql("select pg_switch_wal()");
    let first = pg.psql("select pg_walfile_name(pg_current_wal_insert_lsn())");
    let rp_before = time(&pg);
    pg.psql("select pg_create_restore_point('before-deploy')");
    let rp_after = time(&pg);
    let (drop_xid, drop_before, drop_after) = in_transaction(&pg, "drop table orders");
    let (trunc_xid, trunc_before, trunc_after) = in_transaction(&pg, "truncate items");
    pg.psql("alter table big rename to big_renamed");
    let (del_xid, del_before, del_after) = in_transaction(&pg, "delete from big_renamed");
    let last = pg.psql("select pg_walfile_name(pg_current_wal_insert_lsn())");
    pg.psql("select pg_switch_wal()");
    let after_all = snapshot(&pg).await;
    assert_ne!(before_all.content_hash, after_all.content_hash);

    // Every segment from `first` to `last`, scanned with and without events.
    let mut events: Vec<WalEvent> = Vec::new();
    let (mut name, mut segments) = (first.clone(), 0);
    loop {
        let bytes = std::fs::read(pg.pgdata.join("pg_wal").join(&name)).unwrap();
        let scan = scan_segment_events(&bytes, TimelineId(1)).unwrap();
        assert_eq!(scan.summary, scan_segment(&bytes).unwrap(), "{name}");
        events.extend(scan.events);
        segments += 1;
        if name == last {
            break;
        }
        let seg: synapse_backup::pg::WalSegmentName = name.parse().unwrap();
        name = seg
            .next(synapse_backup::pg::WalSegmentSize::DEFAULT)
            .to_string();
    }
    assert!(segments <= 2, "the story spans {segments} segments");

    let kinds: Vec<(EventKind, u32)> = events.iter().map(|e| (e.kind, e.xid)).collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::RestorePoint, 0),
            (EventKind::Drop, drop_xid),
            (EventKind::Truncate, trunc_xid),
            (EventKind::MassDelete, del_xid),
        ],
        "{events:#?}"
    );
    let (rp, dropped, truncated, deleted) = (&events[0], &events[1], &events[2], &events[3]);

    // LSNs and xids as pg_waldump shows them.
    let commits: HashMap<u32, Lsn> = waldump(&pg, &first, &last, "Transaction")
        .into_iter()
        .filter(|(_, _, desc)| desc.starts_with("COMMIT "))
        .map(|(xid, lsn, _)| (xid, lsn))
        .collect();
    for e in [dropped, truncated, deleted] {
        assert_eq!(Some(&e.lsn), commits.get(&e.xid), "{e:?}");
        assert_eq!(e.timeline, TimelineId(1));
        assert_eq!(e.database, Some(orders.db_node));
    }
    let points: Vec<(Lsn, String)> = waldump(&pg, &first, &last, "XLOG")
        .into_iter()
        .filter(|(_, _, desc)| desc.starts_with("RESTORE_POINT"))
        .map(|(_, lsn, desc)| (lsn, desc))
        .collect();
    assert_eq!(points, vec![(rp.lsn, "RESTORE_POINT before-deploy".into())]);
    assert_eq!(rp.restore_point.as_deref(), Some("before-deploy"));

    // Times: the commit's own timestamp, between the clock readings around it.
    for (e, before, after) in [
        (rp, rp_before, rp_after),
        (dropped, drop_before, drop_after),
        (truncated, trunc_before, trunc_after),
        (deleted, del_before, del_after),
    ] {
        assert!(
            before <= e.time && e.time <= after,
            "{:?} at {} not in [{before}, {after}]",
            e.kind,
            e.time
        );
    }

    // Relfilenodes from the catalog before.
    assert!(dropped.relfilenodes.contains(&orders), "{dropped:?}");
    assert!(dropped.relfilenodes.contains(&orders_pkey), "{dropped:?}");
    assert!(dropped.created.is_empty());
    assert!(truncated.relfilenodes.contains(&items), "{truncated:?}");
    assert!(!truncated.created.is_empty(), "{truncated:?}");
    assert_eq!(
        (&deleted.relfilenodes, deleted.rows),
        (&vec![big], Some(12_000))
    );

    // Names: from the snapshot before the events; the renamed table is not guessed.
    let names = Catalogs::new(vec![before_all.clone(), after_all.clone()]);
    let utc = chrono_tz::UTC;
    let line = |e: &WalEvent| format_event(e, utc, &names);
    assert!(
        line(dropped).contains(&format!(
            " xid {drop_xid} DROP TABLE public.orders (postgres) LSN {} tl 1",
            dropped.lsn
        )),
        "{}",
        line(dropped)
    );
    assert!(
        line(truncated).contains(" TRUNCATE (or rewrite) TABLE public.items (postgres) LSN"),
        "{}",
        line(truncated)
    );
    assert!(
        line(deleted).contains(&format!(
            " DELETE 12000 rows FROM relfilenode {} in database {} (name unknown: public.big \
             before, public.big_renamed after)",
            big.rel_node, big.db_node
        )),
        "{}",
        line(deleted)
    );
    assert!(line(rp).contains(" RESTORE POINT 'before-deploy' LSN "));
    // Only a snapshot taken after the events: no names at all, never the later ones.
    let later_only = Catalogs::new(vec![after_all]);
    let unknown = format!(
        " DROP relfilenode {} in database {} (name unknown)",
        orders.rel_node, orders.db_node
    );
    assert!(format_event(dropped, utc, &later_only).contains(&unknown));
    assert!(format_event(dropped, utc, &NoNames).contains(&unknown));
    assert!(format_event(deleted, utc, &later_only).contains(" (name unknown) LSN"));
    pg.stop();
}

/// The cost of event extraction (issue 16: `wal-push` within +10 %): times `scan_segment`
/// and `scan_segment_events` on the same real 16 MiB segments of a pgbench run and prints
/// the medians. Run it optimized (dependencies already are in the dev profile):
/// `CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo test --test integration walevents::scan_cost --
/// --ignored --nocapture` (or `--release`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
async fn scan_cost() {
    if harness::skip("scan_cost") {
        return;
    }
    let scratch = Scratch::new("walevents-bench");
    let mut pg = PgCluster::init(scratch.path(), "max_wal_size = 1GB");
    pg.start();
    pg.pgbench(&["-i", "-s", "10", "-q"]);
    pg.psql("select pg_switch_wal()");
    let first = pg.psql("select pg_walfile_name(pg_current_wal_insert_lsn())");
    pg.pgbench(&["-c", "4", "-T", "20", "-n"]);
    pg.psql("create table gone as select generate_series(1, 20000) g; delete from gone; drop table gone");
    let last = pg.psql("select pg_walfile_name(pg_current_wal_insert_lsn())");
    pg.psql("select pg_switch_wal()");
    let size = synapse_backup::pg::WalSegmentSize::DEFAULT;
    let mut name: synapse_backup::pg::WalSegmentName = first.parse().unwrap();
    let mut segments = Vec::new();
    while name.to_string() <= last {
        segments.push(std::fs::read(pg.pgdata.join("pg_wal").join(name.to_string())).unwrap());
        name = name.next(size);
    }
    pg.stop();
    // Alternate the two scans on each segment so that load from other processes hits both.
    let (mut plain, mut with_events) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        for s in &segments {
            let start = std::time::Instant::now();
            scan_segment(s).unwrap();
            plain.push(start.elapsed());
            let start = std::time::Instant::now();
            scan_segment_events(s, TimelineId(1)).unwrap();
            with_events.push(start.elapsed());
        }
    }
    plain.sort();
    with_events.sort();
    let (plain, with_events) = (plain[plain.len() / 2], with_events[with_events.len() / 2]);
    let (mut records, mut events) = (0, 0);
    for s in &segments {
        let scan = scan_segment_events(s, TimelineId(1)).unwrap();
        records += scan.summary.records;
        events += scan.events.len();
    }
    println!(
        "{} segments, {records} records, {events} events: scan_segment median {plain:?}, \
         with events {with_events:?} ({:+.1} %)",
        segments.len(),
        (with_events.as_secs_f64() / plain.as_secs_f64() - 1.0) * 100.0
    );
}
