//! The agent's timers, and the missed-run decision.
//!
//! Each schedule is registered with `tokio-cron-scheduler`'s [`JobScheduler`], which runs it.
//! Its cron jobs are not used: `Job::new_async_tz` fixes the zone's UTC offset when the job is
//! created (after the next daylight-saving change it fires an hour off the wall clock) and
//! reads expressions with `croner`, whose handling of a skipped or repeated wall-clock time
//! differs from the rules the README documents. So each schedule is a one-shot job at the
//! fire time [`Schedule::next_after`] computes (those rules, tested in [`crate::schedule`]),
//! and the job registers the schedule's next one when it runs. The scheduler compares its
//! jobs' fire times with the wall clock every half second, so a clock step (NTP, suspend)
//! moves no fire time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio_cron_scheduler::job::JobId;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use crate::repo::manifest::BackupKind;
use crate::schedule::Schedule;

/// The agent's job scheduler.
#[derive(Clone)]
pub struct Timers {
    scheduler: JobScheduler,
}

/// One schedule's registration.
struct Timer {
    schedule: Schedule,
    zone: Tz,
    /// Cancelled when the schedule is dropped (reload, shutdown).
    stop: CancellationToken,
    /// The one-shot job of the next fire time.
    pending: Mutex<Option<JobId>>,
    /// Told each next fire time as it is registered (`None`: the schedule fires no more).
    on_next: Box<dyn Fn(Option<DateTime<Utc>>) + Send + Sync>,
    /// Called at each fire time.
    on_fire: Box<dyn Fn() + Send + Sync>,
}

impl Timers {
    /// Create the scheduler and start its clock.
    pub async fn start() -> anyhow::Result<Timers> {
        let scheduler = JobScheduler::new()
            .await
            .context("create the job scheduler")?;
        scheduler.start().await.context("start the job scheduler")?;
        Ok(Timers { scheduler })
    }

    /// Call `on_fire` at every fire time of `schedule` on `zone`'s wall clock until `stop` is
    /// cancelled. `on_next` is told each next fire time before it is waited for.
    pub async fn every(
        &self,
        schedule: Schedule,
        zone: Tz,
        stop: CancellationToken,
        on_next: impl Fn(Option<DateTime<Utc>>) + Send + Sync + 'static,
        on_fire: impl Fn() + Send + Sync + 'static,
    ) -> anyhow::Result<()> {
        let timer = Arc::new(Timer {
            schedule,
            zone,
            stop,
            pending: Mutex::new(None),
            on_next: Box::new(on_next),
            on_fire: Box::new(on_fire),
        });
        register(self.scheduler.clone(), timer.clone(), Utc::now()).await?;
        let scheduler = self.scheduler.clone();
        tokio::spawn(async move {
            timer.stop.cancelled().await;
            let pending = timer
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(id) = pending {
                let _ = scheduler.remove(&id).await;
            }
        });
        Ok(())
    }

    /// Stop the scheduler's clock (at shutdown).
    pub async fn shutdown(&mut self) {
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::debug!("job scheduler shutdown: {e}");
        }
    }
}

type Registration = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Register the one-shot job of `timer`'s first fire time after `after`.
fn register(scheduler: JobScheduler, timer: Arc<Timer>, after: DateTime<Utc>) -> Registration {
    Box::pin(async move {
        let next = timer.schedule.next_after(after, timer.zone);
        (timer.on_next)(next);
        let Some(next) = next else { return Ok(()) };
        let run = {
            let timer = timer.clone();
            move |_id, scheduler: JobScheduler| -> Pin<Box<dyn Future<Output = ()> + Send>> {
                let timer = timer.clone();
                Box::pin(async move {
                    if timer.stop.is_cancelled() {
                        return;
                    }
                    (timer.on_fire)();
                    let after = Utc::now().max(next);
                    if let Err(e) = register(scheduler, timer.clone(), after).await {
                        tracing::error!(
                            schedule = timer.schedule.expr(),
                            "cannot schedule the next run: {e:#}"
                        );
                    }
                })
            }
        };
        let job = one_shot_at(next, run)?;
        if timer.stop.is_cancelled() {
            return Ok(());
        }
        let id = scheduler
            .add(job)
            .await
            .context("add a job to the job scheduler")?;
        *timer.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        Ok(())
    })
}

/// A job that runs `run` once, when the wall clock reaches `at`.
fn one_shot_at(
    at: DateTime<Utc>,
    run: impl FnMut(JobId, JobScheduler) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync
        + 'static,
) -> anyhow::Result<Job> {
    let mut job =
        Job::new_one_shot_async(std::time::Duration::ZERO, run).context("create a one-shot job")?;
    let mut data = job.job_data().context("read the job's data")?;
    // Fire times are whole seconds (the first field of an expression is seconds).
    data.next_tick = u64::try_from(at.timestamp()).context("a fire time before 1970")?;
    job.set_job_data(data).context("set the job's fire time")?;
    Ok(job)
}

/// A scheduled backup was missed (the agent was down, or the run failed) when the newest
/// backup started before the schedule's latest fire time — or there is no backup at all.
///
/// This covers "the last backup is older than the schedule's period" (the period being the
/// interval from the latest fire time to the next) and also a cluster whose backup ran late in
/// the previous cycle (clusters run one after another), whose age is still below one period.
pub fn missed_run(
    last_backup_start: Option<DateTime<Utc>>,
    latest_fire: Option<DateTime<Utc>>,
) -> bool {
    match (last_backup_start, latest_fire) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(last), Some(fire)) => last < fire,
    }
}

/// The kind of a scheduled backup. Without a `full_schedule`, always a full (a full every
/// night). With one: a full when the cluster has no full backup yet, or when `full_schedule`
/// fired since the newest full started (a missed full night makes the next backup a full);
/// else an incremental. `backup` itself still takes a full when the chain would grow past
/// `max_chain` or its parent is unusable.
pub fn backup_kind_due(
    full_schedule: Option<&Schedule>,
    newest_full_start: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    zone: Tz,
) -> (BackupKind, String) {
    let Some(s) = full_schedule else {
        return (
            BackupKind::Full,
            "no full_schedule: every backup is a full".into(),
        );
    };
    let fired = s.prev_at_or_before(now, zone);
    match (newest_full_start, fired) {
        (None, _) => (
            BackupKind::Full,
            "the cluster has no full backup yet".into(),
        ),
        (Some(last), Some(fire)) if last < fire => (
            BackupKind::Full,
            format!(
                "full_schedule {:?} fired at {} since the newest full ({})",
                s.expr(),
                fire.to_rfc3339(),
                last.to_rfc3339()
            ),
        ),
        (Some(last), _) => (
            BackupKind::Incr,
            format!(
                "full_schedule {:?} has not fired since the newest full ({})",
                s.expr(),
                last.to_rfc3339()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_one_shot_job_fires_at_the_time_the_schedule_computes() {
        // Spring forward in Berlin: 02:30 does not exist and fires at 03:00 CEST.
        let s = Schedule::parse("0 30 2 * * *").unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let at = s.next_after(utc("2025-03-29T12:00:00Z"), berlin).unwrap();
        assert_eq!(at, utc("2025-03-30T01:00:00Z"));
        let mut job = one_shot_at(at, |_, _| Box::pin(async {})).unwrap();
        let data = job.job_data().unwrap();
        assert_eq!(data.next_tick, at.timestamp() as u64);
    }

    #[tokio::test]
    async fn timers_fire_reschedule_and_stop() {
        let timers = Timers::start().await.unwrap();
        let stop = CancellationToken::new();
        let fired = Arc::new(AtomicUsize::new(0));
        let nexts = Arc::new(Mutex::new(Vec::new()));
        let (f, n) = (fired.clone(), nexts.clone());
        timers
            .every(
                Schedule::parse("* * * * * *").unwrap(),
                chrono_tz::UTC,
                stop.clone(),
                move |t| n.lock().unwrap().push(t),
                move || {
                    f.fetch_add(1, Ordering::SeqCst);
                },
            )
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while fired.load(Ordering::SeqCst) < 2 {
            assert!(std::time::Instant::now() < deadline, "no second fire");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after_stop = fired.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2_200)).await;
        assert_eq!(fired.load(Ordering::SeqCst), after_stop, "fired after stop");
        let nexts = nexts.lock().unwrap();
        assert!(nexts.len() >= 2 && nexts.iter().all(Option::is_some));
        assert!(nexts.windows(2).all(|w| w[0] < w[1]), "{nexts:?}");
    }

    #[test]
    fn weekly_fulls_and_nightly_incrementals() {
        let sunday = Schedule::parse("0 0 2 * * Sun").unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Five weeks of nightly backups at 02:00 Berlin time (the clocks skip 02:00 on
        // Sunday 2025-03-30: both schedules fire at 03:00 then), starting on a Wednesday; the
        // agent is down on the night of Sunday 2025-03-23.
        let daily = Schedule::parse("0 0 2 * * *").unwrap();
        let mut fulls = Vec::new();
        let mut newest_full: Option<DateTime<Utc>> = None;
        let mut at = utc("2025-03-04T12:00:00Z");
        let first = daily.next_after(at, berlin).unwrap();
        for _ in 0..35 {
            at = daily.next_after(at, berlin).unwrap();
            let now = at + chrono::Duration::seconds(5);
            let day = now.with_timezone(&berlin).format("%m-%d %a").to_string();
            if day == "03-23 Sun" {
                continue;
            }
            let (kind, why) = backup_kind_due(Some(&sunday), newest_full, now, berlin);
            assert!(!why.is_empty());
            if kind == BackupKind::Full {
                fulls.push(day);
                newest_full = Some(now);
            }
        }
        assert_eq!(
            fulls,
            [
                "03-05 Wed", // no full yet
                "03-09 Sun",
                "03-16 Sun",
                "03-24 Mon", // Sunday was missed
                "03-30 Sun", // the night the clocks change
                "04-06 Sun"
            ]
        );
        // No full_schedule: a full every night (the default contract).
        let (kind, _) = backup_kind_due(None, Some(first), first, berlin);
        assert_eq!(kind, BackupKind::Full);
    }

    #[test]
    fn missed_run_decision() {
        let fire = Some(utc("2025-01-10T02:00:00Z"));
        // No backup at all: run now.
        assert!(missed_run(None, fire));
        // Yesterday's backup, today's 02:00 passed while the agent was down: run now.
        assert!(missed_run(Some(utc("2025-01-09T02:00:01Z")), fire));
        // A cluster whose backup ran late yesterday (after the others): still missed.
        assert!(missed_run(Some(utc("2025-01-09T05:40:00Z")), fire));
        // Today's backup exists: nothing missed.
        assert!(!missed_run(Some(utc("2025-01-10T02:00:03Z")), fire));
        assert!(!missed_run(Some(utc("2025-01-10T02:00:00Z")), fire));
        assert!(!missed_run(None, None));
    }
}
