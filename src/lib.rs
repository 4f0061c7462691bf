//! synapse-backup: PostgreSQL backup and point-in-time recovery.

pub mod agent;
pub mod cli;
pub mod codec;
pub mod commands;
pub mod config;
pub mod crypt;
pub(crate) mod env;
pub mod error;
pub(crate) mod format;
pub mod logging;
pub(crate) mod os;
pub mod pg;
pub(crate) mod pgz;
pub(crate) mod policy;
pub(crate) mod progress;
pub mod repo;
pub(crate) mod restore;
pub(crate) mod sandbox;
pub(crate) mod schedule;
pub mod settings;
pub mod storage;
pub(crate) mod timeparse;
