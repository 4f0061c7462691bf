//! One module per command.

pub mod backup;
pub mod expire;
pub mod list;
pub mod restore;
pub mod wal_fetch;
pub mod wal_push;
