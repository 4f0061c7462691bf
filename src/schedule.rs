//! Cron schedules read in the configured time zone: the `[agent]` schedules of the config,
//! parsed when the config loads, and when they fire.
//!
//! An expression has six fields, seconds first: `sec min hour day-of-month month day-of-week`
//! (`"0 0 2 * * *"` is 02:00:00 every day). The `cron` crate matches the fields; this module
//! evaluates them on the *wall clock of the configured zone* and decides what happens when
//! daylight saving time moves that clock:
//! - a wall-clock time that does not exist (spring forward, 02:30 in Europe/Berlin on the last
//!   Sunday of March) fires once, at the first existing wall-clock time after it (03:00), so
//!   the nightly backup is not skipped that night;
//! - a wall-clock time that exists twice (fall back) fires once, at its first occurrence. A
//!   schedule that fires more often than hourly therefore pauses during the repeated hour.
//!
//! Day-of-week numbers are refused: this syntax counts 1 = Sunday where classic cron counts
//! 1 = Monday, so `1-5` would silently mean Sunday to Thursday. Names (`Mon-Fri`) are clear.

use std::str::FromStr;

use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A parsed, validated cron expression.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    inner: cron::Schedule,
}

/// How far the search for a fire time looks at most (candidates), so nothing loops forever.
const MAX_CANDIDATES: usize = 10_000;

impl Schedule {
    /// Parse a six-field expression; the error says how the expression is read.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        const HOW: &str = "a schedule has six fields, seconds first: \
                           \"sec min hour day-of-month month day-of-week\", e.g. \"0 0 2 * * *\" for 02:00:00 every day";
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if fields.len() != 6 {
            return Err(format!("{expr:?} has {} field(s); {HOW}", fields.len()));
        }
        let dow_has_number = fields[5].split(',').any(|part| {
            part.split('/')
                .next()
                .is_some_and(|range| range.chars().any(|c| c.is_ascii_digit()))
        });
        if dow_has_number {
            return Err(format!(
                "{expr:?}: write the day of week with names (Mon-Fri, Sun), not numbers: \
                 numbers count from Sunday = 1 here but from Monday = 1 in classic cron"
            ));
        }
        let inner = cron::Schedule::from_str(expr).map_err(|e| format!("{expr:?}: {e}; {HOW}"))?;
        if inner.upcoming(Utc).next().is_none() {
            return Err(format!("{expr:?} never fires"));
        }
        Ok(Schedule {
            expr: expr.to_string(),
            inner,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first fire time strictly after `after`, with the fields read on `zone`'s wall clock.
    pub fn next_after(&self, after: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        let wall = as_naive_utc(after.with_timezone(&zone).naive_local());
        self.inner
            .after(&wall)
            .take(MAX_CANDIDATES)
            .filter_map(|c| fire_instant(c.naive_utc(), zone))
            .find(|t| *t > after)
    }

    /// The latest fire time at or before `at`.
    pub fn prev_at_or_before(&self, at: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        // Wall-clock candidates from a little after `at` backwards. During a fall-back
        // overlap the wall clock of `at` may be behind its first occurrence: start an hour
        // (plus the longest offset change) later and filter by instant.
        let wall = as_naive_utc(at.with_timezone(&zone).naive_local() + Duration::hours(3));
        self.inner
            .after(&wall)
            .rev()
            .take(MAX_CANDIDATES)
            .filter_map(|c| fire_instant(c.naive_utc(), zone))
            .find(|t| *t <= at)
    }

    /// The interval between the fire time at or before `now` and the next one.
    pub fn period_around(&self, now: DateTime<Utc>, zone: Tz) -> Option<Duration> {
        Some(self.next_after(now, zone)? - self.prev_at_or_before(now, zone)?)
    }
}

fn as_naive_utc(t: NaiveDateTime) -> DateTime<Utc> {
    Utc.from_utc_datetime(&t)
}

/// When a wall-clock time fires: its only instant; the first of two (fall back); the first
/// existing wall-clock time after it when the clocks skipped it (spring forward).
fn fire_instant(wall: NaiveDateTime, zone: Tz) -> Option<DateTime<Utc>> {
    if let Some(t) = zone.from_local_datetime(&wall).earliest() {
        return Some(t.with_timezone(&Utc));
    }
    // In a gap: gaps are whole minutes long (at most a day, e.g. Samoa in 2011).
    (1..=48 * 60).find_map(|m| {
        zone.from_local_datetime(&(wall + Duration::minutes(m)))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn fires(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
        let s = Schedule::parse(expr).unwrap();
        let zone: Tz = zone.parse().unwrap();
        let mut t = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = s.next_after(t, zone).unwrap();
            out.push(t.to_rfc3339());
        }
        out
    }

    #[test]
    fn nightly_in_utc_and_in_a_zone() {
        assert_eq!(
            fires("0 0 2 * * *", "UTC", "2025-01-10T01:59:59Z", 2),
            ["2025-01-10T02:00:00+00:00", "2025-01-11T02:00:00+00:00"]
        );
        // Strictly after: at 02:00:00 exactly, the next is tomorrow.
        assert_eq!(
            fires("0 0 2 * * *", "UTC", "2025-01-10T02:00:00Z", 1),
            ["2025-01-11T02:00:00+00:00"]
        );
        // 02:00 in Berlin is 01:00 UTC in winter and 00:00 UTC in summer.
        assert_eq!(
            fires("0 0 2 * * *", "Europe/Berlin", "2025-01-10T00:00:00Z", 1),
            ["2025-01-10T01:00:00+00:00"]
        );
        assert_eq!(
            fires("0 0 2 * * *", "Europe/Berlin", "2025-07-10T03:00:00Z", 1),
            ["2025-07-11T00:00:00+00:00"]
        );
        assert_eq!(
            fires("*/5 * * * * *", "UTC", "2025-01-10T00:00:03Z", 3),
            [
                "2025-01-10T00:00:05+00:00",
                "2025-01-10T00:00:10+00:00",
                "2025-01-10T00:00:15+00:00"
            ]
        );
    }

    #[test]
    fn spring_forward_fires_once_after_the_gap() {
        // Berlin, 2025-03-30: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 does not exist.
        assert_eq!(
            fires("0 30 2 * * *", "Europe/Berlin", "2025-03-29T12:00:00Z", 3),
            [
                "2025-03-30T01:00:00+00:00", // 03:00 CEST, right after the jump
                "2025-03-31T00:30:00+00:00", // 02:30 CEST
                "2025-04-01T00:30:00+00:00",
            ]
        );
        // Several wall-clock times inside the gap fire once, together.
        assert_eq!(
            fires("0 */20 2 * * *", "Europe/Berlin", "2025-03-30T00:30:00Z", 2),
            ["2025-03-30T01:00:00+00:00", "2025-03-31T00:00:00+00:00"]
        );
        // New York, 2025-03-09: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
        assert_eq!(
            fires("0 0 2 * * *", "America/New_York", "2025-03-08T12:00:00Z", 2),
            ["2025-03-09T07:00:00+00:00", "2025-03-10T06:00:00+00:00"]
        );
    }

    #[test]
    fn fall_back_fires_once_at_the_first_occurrence() {
        // Berlin, 2025-10-26: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice
        // (00:30 UTC and 01:30 UTC). It fires at the first only.
        assert_eq!(
            fires("0 30 2 * * *", "Europe/Berlin", "2025-10-25T12:00:00Z", 2),
            ["2025-10-26T00:30:00+00:00", "2025-10-27T01:30:00+00:00"]
        );
        // Started during the second pass of the repeated hour: not again today.
        assert_eq!(
            fires("0 30 2 * * *", "Europe/Berlin", "2025-10-26T01:10:00Z", 1),
            ["2025-10-27T01:30:00+00:00"]
        );
    }

    #[test]
    fn previous_fire_and_period() {
        let s = Schedule::parse("0 0 2 * * *").unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            s.prev_at_or_before(utc("2025-01-10T10:00:00Z"), chrono_tz::UTC),
            Some(utc("2025-01-10T02:00:00Z"))
        );
        assert_eq!(
            s.prev_at_or_before(utc("2025-01-10T02:00:00Z"), chrono_tz::UTC),
            Some(utc("2025-01-10T02:00:00Z"))
        );
        assert_eq!(
            s.prev_at_or_before(utc("2025-01-10T01:59:59Z"), chrono_tz::UTC),
            Some(utc("2025-01-09T02:00:00Z"))
        );
        assert_eq!(
            s.period_around(utc("2025-01-10T10:00:00Z"), chrono_tz::UTC),
            Some(Duration::hours(24))
        );
        // The night the clocks go back is 25 hours long; the one they go forward, 23.
        assert_eq!(
            s.period_around(utc("2025-10-26T12:00:00Z"), berlin),
            Some(Duration::hours(25))
        );
        assert_eq!(
            s.period_around(utc("2025-03-30T12:00:00Z"), berlin),
            Some(Duration::hours(23))
        );
        // During the repeated hour the previous fire is the first occurrence.
        let s = Schedule::parse("0 30 2 * * *").unwrap();
        assert_eq!(
            s.prev_at_or_before(utc("2025-10-26T01:45:00Z"), berlin),
            Some(utc("2025-10-26T00:30:00Z"))
        );
        // Weekdays only: on Saturday the previous fire is Friday's, the period three days.
        let s = Schedule::parse("0 0 2 * * Mon-Fri").unwrap();
        let saturday = utc("2025-01-11T10:00:00Z");
        assert_eq!(
            s.prev_at_or_before(saturday, chrono_tz::UTC),
            Some(utc("2025-01-10T02:00:00Z"))
        );
        assert_eq!(
            s.period_around(saturday, chrono_tz::UTC),
            Some(Duration::hours(72))
        );
    }

    #[test]
    fn bad_expressions_say_how_to_write_one() {
        for (expr, want) in [
            ("0 2 * * *", "six fields, seconds first"),
            ("0 0 2 * * * 2030", "six fields"),
            ("@daily", "six fields"),
            ("0 0 25 * * *", "0 0 25 * * *"),
            ("0 0 2 * * 1-5", "names (Mon-Fri"),
            ("0 0 2 * * Mon,3", "names"),
        ] {
            let err = Schedule::parse(expr).unwrap_err();
            assert!(err.contains(want), "{expr}: want {want:?} in {err:?}");
        }
        assert!(Schedule::parse("0 0 2 * * Mon-Fri").is_ok());
        assert!(Schedule::parse("0 0 2 * * *").is_ok());
        assert!(Schedule::parse("*/5 * * * * *").is_ok());
        assert!(Schedule::parse("0 0 2 * * */2").is_ok());
    }
}
