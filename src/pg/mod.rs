//! PostgreSQL knowledge: positions, timelines, WAL file names and formats, client queries.

pub mod lsn;
pub mod page;
pub mod walname;
pub mod walscan;

pub use lsn::{Lsn, SystemId, TimelineId, WalSegmentSize};
pub use walname::{WalFileName, WalSegmentName};
