//! One backup or expire per cluster at a time, across hosts: a lock object in the store.
//! The holder refreshes it; a lock not refreshed within its TTL belongs to a dead process
//! and is taken over (compare-and-swap where the store supports it).

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::LOCK_KEY;
use super::Repository;
use crate::error::Failure;
use crate::storage::{Put, Storage};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    pub token: String,
    pub holder: String,
    pub purpose: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A held lock; refreshed in the background until `release` (or the process ends).
pub struct RepoLock {
    storage: Storage,
    info: LockInfo,
    refresher: tokio::task::JoinHandle<()>,
}

fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    format!("{host} pid {}", std::process::id())
}

impl RepoLock {
    /// Take the cluster's lock for `purpose` ("backup", "expire"), or fail saying who holds it.
    pub async fn acquire(
        repo: &Repository,
        purpose: &str,
        ttl: Duration,
    ) -> anyhow::Result<RepoLock> {
        let storage = &repo.storage;
        let now = Utc::now();
        let info = LockInfo {
            token: format!(
                "{}-{}",
                std::process::id(),
                now.timestamp_nanos_opt().unwrap_or_default()
            ),
            holder: holder(),
            purpose: purpose.to_string(),
            acquired_at: now,
            expires_at: now
                + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(10)),
        };
        let body = || Bytes::from(serde_json::to_vec_pretty(&info).expect("serializes"));
        let mut taken = storage.put_if_absent(LOCK_KEY, body()).await? == Put::Stored;
        if !taken {
            let (bytes, version) = storage
                .get_versioned(LOCK_KEY)
                .await?
                .context("lock vanished while taking it; try again")?;
            let other: Option<LockInfo> = serde_json::from_slice(&bytes).ok();
            match &other {
                Some(o) if o.expires_at > Utc::now() => {
                    return Err(Failure::LockHeld(format!(
                        "another {} holds this cluster's repository lock ({} since {}); it expires at {} if that process died. \
                         Backup and expire of one cluster never run at once: wait for it to finish",
                        o.purpose,
                        o.holder,
                        o.acquired_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        o.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
                    ))
                    .into());
                }
                _ => {
                    if let Some(o) = &other {
                        tracing::warn!(holder = %o.holder, purpose = %o.purpose, "taking over an expired lock");
                    }
                    taken = match storage
                        .replace_if_unchanged(LOCK_KEY, body(), version)
                        .await?
                    {
                        Some(won) => won,
                        None => {
                            storage.delete(LOCK_KEY).await?;
                            storage.put_if_absent(LOCK_KEY, body()).await? == Put::Stored
                        }
                    };
                }
            }
        }
        if !taken {
            return Err(Failure::LockHeld(
                "another process took this cluster's repository lock at the same moment; try again"
                    .into(),
            )
            .into());
        }
        let refresher = tokio::spawn(refresh_loop(storage.clone(), info.clone(), ttl));
        Ok(RepoLock {
            storage: storage.clone(),
            info,
            refresher,
        })
    }

    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Release the lock if it is still ours.
    pub async fn release(self) -> anyhow::Result<()> {
        self.refresher.abort();
        if let Some(bytes) = self.storage.get(LOCK_KEY).await? {
            let current: Option<LockInfo> = serde_json::from_slice(&bytes).ok();
            if current.is_some_and(|c| c.token == self.info.token) {
                self.storage.delete(LOCK_KEY).await?;
            }
        }
        Ok(())
    }
}

impl RepoLock {
    /// Release the lock if this process holds it, whatever its token: for a job dropped
    /// mid-way, whose own `release` did not run. Returns what was released.
    pub async fn release_if_mine(repo: &Repository) -> anyhow::Result<Option<LockInfo>> {
        let Some(bytes) = repo.storage.get(LOCK_KEY).await? else {
            return Ok(None);
        };
        let info: LockInfo = serde_json::from_slice(&bytes)?;
        if info.holder != holder() {
            return Ok(None);
        }
        repo.storage.delete(LOCK_KEY).await?;
        Ok(Some(info))
    }

    /// Whether anyone holds (or left behind) the cluster's lock.
    pub async fn is_held(repo: &Repository) -> anyhow::Result<bool> {
        Ok(repo.storage.get(LOCK_KEY).await?.is_some())
    }
}

async fn refresh_loop(storage: Storage, mut info: LockInfo, ttl: Duration) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        info.expires_at =
            Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(10));
        let body = Bytes::from(serde_json::to_vec_pretty(&info).expect("serializes"));
        if let Err(e) = storage.put(LOCK_KEY, body).await {
            tracing::warn!("could not refresh the repository lock: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_holder_is_refused_and_expired_lock_taken_over() {
        let repo = Repository::in_memory("core");
        let s = &repo.storage;
        let a = RepoLock::acquire(&repo, "backup", Duration::from_secs(60))
            .await
            .unwrap();
        let err = RepoLock::acquire(&repo, "expire", Duration::from_secs(60))
            .await
            .err()
            .unwrap();
        assert_eq!(crate::error::exit_code(&err), crate::error::exit::CONFLICT);
        let err = err.to_string();
        assert!(err.contains("another backup holds"), "{err}");
        a.release().await.unwrap();
        let b = RepoLock::acquire(&repo, "expire", Duration::from_secs(60))
            .await
            .unwrap();
        // simulate a dead holder: an expired lock
        b.refresher.abort();
        let mut dead = b.info.clone();
        dead.expires_at = Utc::now() - chrono::Duration::seconds(1);
        s.put(LOCK_KEY, Bytes::from(serde_json::to_vec(&dead).unwrap()))
            .await
            .unwrap();
        let c = RepoLock::acquire(&repo, "backup", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(c.info().purpose, "backup");
        c.release().await.unwrap();
        assert!(s.get(LOCK_KEY).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_dropped_holder_releases_its_own_lock_only() {
        let repo = Repository::in_memory("core");
        let lock = RepoLock::acquire(&repo, "backup", Duration::from_secs(60))
            .await
            .unwrap();
        lock.refresher.abort();
        assert!(RepoLock::is_held(&repo).await.unwrap());
        let released = RepoLock::release_if_mine(&repo).await.unwrap().unwrap();
        assert_eq!(released.purpose, "backup");
        assert!(!RepoLock::is_held(&repo).await.unwrap());
        assert!(RepoLock::release_if_mine(&repo).await.unwrap().is_none());
        let mut other = lock.info.clone();
        other.holder = "elsewhere pid 1".into();
        repo.storage
            .put(LOCK_KEY, Bytes::from(serde_json::to_vec(&other).unwrap()))
            .await
            .unwrap();
        assert!(RepoLock::release_if_mine(&repo).await.unwrap().is_none());
        assert!(RepoLock::is_held(&repo).await.unwrap());
    }
}
