//! PostgreSQL knowledge: positions, timelines, WAL file names and formats, the data directory,
//! recovery settings, server logs, connection strings, client queries.

pub mod backup_manifest;
pub mod catalog;
pub mod client;
pub mod conninfo;
pub mod control;
pub mod datadir;
pub mod events;
pub mod exclude;
pub mod history;
pub mod lsn;
pub mod page;
pub mod recovery_conf;
pub mod server;
pub mod serverlog;
pub mod tls;
pub mod walevents;
pub mod walname;
pub mod walscan;

pub use lsn::{Lsn, SystemId, TimelineId, WalSegmentSize};
pub use walname::{WalFileName, WalSegmentName};
