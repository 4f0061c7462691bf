//! One backup or expire per cluster at a time, across hosts: a lock object in the store.
//!
//! Every change to the lock object is conditional (compare-and-swap: `If-Match` on S3, a
//! content compare under a `flock` on local files, see [`Storage::replace_if_unchanged`]):
//! - the holder refreshes it every TTL/3; a refresh that finds the object changed means the
//!   lock was taken over (this holder stalled past the TTL): it stops refreshing, and the
//!   work checks [`LockWatch::ensure_held`] before anything it stores becomes visible, and aborts;
//! - a lock not refreshed within its TTL is taken over;
//! - a lock whose holder ran on this host and is gone (pid and start time no longer match,
//!   or the host rebooted) is taken over at once: a `backup` killed by the OOM killer does not
//!   block the next one for the TTL. A holder on another host is waited for until the TTL.
//! - release deletes the object only while it is still ours.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::layout::LOCK_KEY;
use super::Repository;
use crate::error::Failure;
use crate::os::ProcessId;
use crate::storage::{Put, Storage, Versioned};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    pub token: String,
    /// "HOST pid N", for messages.
    pub holder: String,
    pub purpose: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The holding process (absent in locks written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<HolderProcess>,
}

/// Who holds the lock, precisely enough to tell that it is gone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HolderProcess {
    pub host: String,
    pub boot_id: String,
    pub pid: u32,
    /// `/proc/PID/stat` field 22: a later process reusing the pid has another.
    pub start_ticks: u64,
}

impl HolderProcess {
    fn current() -> HolderProcess {
        let p = ProcessId::current();
        HolderProcess {
            host: p.host,
            boot_id: p.boot_id,
            pid: p.pid,
            start_ticks: p.start_ticks,
        }
    }

    /// Known to be gone (on this host); `false` when alive or on another host.
    fn is_dead(&self) -> bool {
        let id = ProcessId {
            host: self.host.clone(),
            boot_id: self.boot_id.clone(),
            pid: self.pid,
            start_ticks: self.start_ticks,
        };
        id.is_dead_here() == Some(true)
    }
}

/// A held lock; refreshed in the background until `release` (or the process ends).
pub struct RepoLock {
    info: LockInfo,
    watch: LockWatch,
    refresher: tokio::task::JoinHandle<()>,
}

/// The held lock as the refresher and the holder's work share it.
#[derive(Clone)]
struct LockWatch {
    storage: Storage,
    ttl: Duration,
    /// The lock object as we last wrote it; `None` once lost (or released).
    current: Arc<Mutex<Option<(LockInfo, Versioned)>>>,
    lost: Arc<AtomicBool>,
}

fn holder() -> String {
    format!("{} pid {}", crate::os::host_name(), std::process::id())
}

fn body(info: &LockInfo) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(info).expect("serializes"))
}

fn ttl_from_now(ttl: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::minutes(10))
}

fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

impl RepoLock {
    /// Take the cluster's lock for `purpose` ("backup", "expire"), or fail saying who holds it.
    pub async fn acquire(
        repo: &Repository,
        purpose: &str,
        ttl: Duration,
    ) -> anyhow::Result<RepoLock> {
        let storage = repo.storage.plain();
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
            expires_at: ttl_from_now(ttl),
            process: Some(HolderProcess::current()),
        };
        let mine = body(&info);
        let taken = storage.put_if_absent(LOCK_KEY, mine.clone()).await? == Put::Stored
            || take_over(storage, mine.clone()).await?;
        // What we wrote, as the store has it (its version is what the next update compares).
        let written = match storage.get_versioned(LOCK_KEY).await? {
            Some(v) if taken && v.bytes == mine => v,
            _ => return Err(Failure::LockHeld(
                "another process took this cluster's repository lock at the same moment; try again"
                    .into(),
            )
            .into()),
        };
        let watch = LockWatch {
            storage: storage.clone(),
            ttl,
            current: Arc::new(Mutex::new(Some((info.clone(), written)))),
            lost: Arc::new(AtomicBool::new(false)),
        };
        let refresher = tokio::spawn(refresh_loop(watch.clone()));
        Ok(RepoLock {
            info,
            watch,
            refresher,
        })
    }

    pub fn info(&self) -> &LockInfo {
        &self.info
    }

    /// Fail when the lock is known to be lost (no I/O: for loops that wait).
    pub fn check(&self) -> anyhow::Result<()> {
        self.watch.check(&self.info)
    }

    /// Before making work visible (storing a manifest, deleting): extend the lock now, and
    /// fail when it is no longer ours.
    pub async fn ensure_held(&self) -> anyhow::Result<()> {
        self.watch.ensure_held(&self.info).await
    }

    /// Release the lock if it is still ours; a lock taken over is left to its new holder.
    pub async fn release(self) -> anyhow::Result<()> {
        self.refresher.abort();
        // Refreshed first, so that the lock has its whole TTL left while it is deleted:
        // nobody may take it over in between (S3 has no conditional delete).
        if !self.watch.refresh().await? {
            return Ok(());
        }
        let current = self.watch.current.lock().await.take();
        if let Some((_, written)) = current {
            self.watch
                .storage
                .delete_if_unchanged(LOCK_KEY, &written)
                .await?;
        }
        Ok(())
    }
}

/// The lock is there: take it over if its holder is gone, else say who holds it.
async fn take_over(storage: &Storage, mine: Bytes) -> anyhow::Result<bool> {
    let Some(found) = storage.get_versioned(LOCK_KEY).await? else {
        // Released in the meantime.
        return Ok(storage.put_if_absent(LOCK_KEY, mine).await? == Put::Stored);
    };
    if let Ok(o) = serde_json::from_slice::<LockInfo>(&found.bytes) {
        if let Some(p) = o.process.as_ref().filter(|p| p.is_dead()) {
            tracing::warn!(
                holder = %o.holder,
                purpose = %o.purpose,
                "taking over the lock of dead process {} on this host ({} since {}; it would have expired at {})",
                p.pid,
                o.purpose,
                at(o.acquired_at),
                at(o.expires_at)
            );
        } else if o.expires_at > Utc::now() {
            return Err(Failure::LockHeld(format!(
                "another {} holds this cluster's repository lock ({} since {}); it expires at {} if that process died. \
                 Backup and expire of one cluster never run at once: wait for it to finish",
                o.purpose,
                o.holder,
                at(o.acquired_at),
                at(o.expires_at)
            ))
            .into());
        } else {
            tracing::warn!(holder = %o.holder, purpose = %o.purpose, "taking over an expired lock");
        }
    }
    Ok(storage
        .replace_if_unchanged(LOCK_KEY, mine, &found)
        .await?
        .is_some())
}

fn lost_error(info: &LockInfo) -> anyhow::Error {
    Failure::LockHeld(format!(
        "this {} lost the repository lock ({} since {}): it stalled past lock_ttl_seconds and another \
         process took the lock over; aborted, nothing of it is stored",
        info.purpose,
        info.holder,
        at(info.acquired_at)
    ))
    .into()
}

impl LockWatch {
    /// Extend the lock by a TTL, if it is still ours (compare-and-swap). `false` when it was
    /// taken over: then it is marked lost for good.
    async fn refresh(&self) -> anyhow::Result<bool> {
        let mut current = self.current.lock().await;
        let Some((info, written)) = current.as_ref() else {
            return Ok(false);
        };
        let mut next = info.clone();
        next.expires_at = ttl_from_now(self.ttl);
        match self
            .storage
            .replace_if_unchanged(LOCK_KEY, body(&next), written)
            .await?
        {
            Some(version) => {
                *current = Some((next, version));
                Ok(true)
            }
            None => {
                tracing::error!(
                    holder = %info.holder,
                    "the repository lock was taken over by another process; this {} stops",
                    info.purpose
                );
                *current = None;
                self.lost.store(true, Ordering::SeqCst);
                Ok(false)
            }
        }
    }

    fn check(&self, info: &LockInfo) -> anyhow::Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(lost_error(info));
        }
        Ok(())
    }

    async fn ensure_held(&self, info: &LockInfo) -> anyhow::Result<()> {
        self.check(info)?;
        if !self.refresh().await? {
            return Err(lost_error(info));
        }
        Ok(())
    }
}

impl RepoLock {
    /// Release the lock if this process holds it, whatever its token: for a job dropped
    /// mid-way, whose own `release` did not run. Returns what was released.
    pub async fn release_if_mine(repo: &Repository) -> anyhow::Result<Option<LockInfo>> {
        let Some(found) = repo.storage.plain().get_versioned(LOCK_KEY).await? else {
            return Ok(None);
        };
        let info: LockInfo = serde_json::from_slice(&found.bytes)?;
        if info.holder != holder() {
            return Ok(None);
        }
        repo.storage
            .plain()
            .delete_if_unchanged(LOCK_KEY, &found)
            .await?;
        Ok(Some(info))
    }

    /// Whether anyone holds (or left behind) the cluster's lock.
    pub async fn is_held(repo: &Repository) -> anyhow::Result<bool> {
        Ok(repo.storage.plain().get(LOCK_KEY).await?.is_some())
    }
}

async fn refresh_loop(watch: LockWatch) {
    loop {
        tokio::time::sleep(watch.ttl / 3).await;
        match watch.refresh().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!("could not refresh the repository lock: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_holder_is_refused_and_expired_lock_taken_over() {
        let repo = Repository::in_memory("core");
        let s = repo.storage.plain();
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
            .plain()
            .put(LOCK_KEY, Bytes::from(serde_json::to_vec(&other).unwrap()))
            .await
            .unwrap();
        assert!(RepoLock::release_if_mine(&repo).await.unwrap().is_none());
        assert!(RepoLock::is_held(&repo).await.unwrap());
    }

    #[tokio::test]
    async fn a_dead_local_holder_is_taken_over_at_once_another_hosts_is_not() {
        let repo = Repository::in_memory("core");
        let a = RepoLock::acquire(&repo, "backup", Duration::from_secs(600))
            .await
            .unwrap();
        a.refresher.abort();
        let mut dead = a.info.clone();
        dead.process.as_mut().unwrap().pid = u32::MAX - 1;
        let mut elsewhere = dead.clone();
        elsewhere.process.as_mut().unwrap().host = "elsewhere.example".into();
        let forge = |i: &LockInfo| Bytes::from(serde_json::to_vec(i).unwrap());
        repo.storage
            .plain()
            .put(LOCK_KEY, forge(&elsewhere))
            .await
            .unwrap();
        let err = RepoLock::acquire(&repo, "backup", Duration::from_secs(600))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("another backup holds"), "{err}");
        repo.storage
            .plain()
            .put(LOCK_KEY, forge(&dead))
            .await
            .unwrap();
        let b = RepoLock::acquire(&repo, "backup", Duration::from_secs(600))
            .await
            .unwrap();
        b.release().await.unwrap();
        assert!(!RepoLock::is_held(&repo).await.unwrap());
    }

    #[tokio::test]
    async fn a_holder_whose_lock_was_taken_over_aborts_and_leaves_it() {
        let repo = Repository::in_memory("core");
        let a = RepoLock::acquire(&repo, "backup", Duration::from_secs(600))
            .await
            .unwrap();
        a.ensure_held().await.unwrap();
        let mut other = a.info.clone();
        other.token = "someone-else".into();
        let other = Bytes::from(serde_json::to_vec(&other).unwrap());
        repo.storage
            .plain()
            .put(LOCK_KEY, other.clone())
            .await
            .unwrap();
        let err = a.ensure_held().await.err().unwrap();
        assert!(
            err.to_string().contains("lost the repository lock"),
            "{err}"
        );
        assert!(a.check().is_err());
        a.release().await.unwrap();
        assert_eq!(
            repo.storage.plain().get(LOCK_KEY).await.unwrap(),
            Some(other)
        );
    }
}
