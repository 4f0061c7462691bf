//! One module per command.

pub mod wal_fetch;
pub mod wal_push;
