//! synapse-backup: PostgreSQL backup and point-in-time recovery.

pub mod agent;
pub mod chunk_pipe;
pub mod cli;
pub mod codec;
pub mod commands;
pub mod config;
pub mod crypt;
pub mod error;
pub mod logging;
pub mod pg;
pub mod pgz;
pub mod policy;
pub mod repo;
pub mod sandbox;
pub mod storage;
pub mod timeparse;
pub mod writeback;
