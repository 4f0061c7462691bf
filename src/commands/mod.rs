//! One module per command.

pub mod backup;
pub mod check;
pub mod events;
pub mod expire;
pub mod list;
pub mod restore;
pub mod signing_key;
pub mod verify;
pub mod wal_fetch;
pub mod wal_push;
