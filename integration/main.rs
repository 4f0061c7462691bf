#![allow(clippy::unwrap_used)]
//! Integration tests against real services: PostgreSQL 15 clusters the tests `initdb`, an
//! S3-compatible server on 127.0.0.1, and the real binary. Run them with `bash .ci/run`.
//!
//! One module per theme; the shared helpers live in `harness/`.

mod agent;
mod backup;
mod chain_retention;
mod crypt_cli;
mod encryption;
mod expire;
mod failover;
mod harness;
mod incident;
mod incremental;
mod kill_campaign;
mod ops;
mod restore;
mod restore_plan;
mod restore_safety;
mod robustness;
mod sandbox;
mod signing;
mod standby;
mod storage_suite;
mod tls;
mod verify;
mod wal;
mod walevents;
