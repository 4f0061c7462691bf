//! synapse-backup: PostgreSQL backup and point-in-time recovery.

pub mod agent;
pub mod cli;
pub mod codec;
pub mod commands;
pub mod config;
pub mod crypt;
pub mod env;
pub mod error;
pub mod format;
pub mod logging;
pub mod os;
pub mod pg;
pub mod pgz;
pub mod policy;
pub mod repo;
pub mod restore;
pub mod sandbox;
pub mod schedule;
pub mod settings;
pub mod storage;
pub mod timeparse;
