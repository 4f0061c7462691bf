//! Times for `restore --to`.
//!
//! Accepted: `2024-01-01 12:00`, `2024-01-01 12:00:00`, `2024-01-01 12:00:00.123456`, each
//! optionally followed by a numeric offset (`+02`, `+0200`, `+02:00`) or `Z`, and with `T`
//! instead of the space (so RFC 3339 works as is). A time without an offset is read in the
//! configured zone. A local time that the zone's clocks skip (spring forward) or show twice
//! (fall back) is an error naming the gap or both candidate instants: guessing would restore
//! to the wrong hour.
//!
//! PostgreSQL reads a `recovery_target_time` without a zone in the *server's* `timezone`, and
//! rejects abbreviations such as `Z` or `CEST` (pg-reference §0 item 4, §4.3), so the value we
//! write always carries a numeric offset: [`recovery_target_time`].

use std::fmt;

use chrono::{DateTime, Duration, FixedOffset, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::{OffsetName, Tz};

/// A resolved recovery target time, and how the input was read (for the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetTime {
    pub utc: DateTime<Utc>,
    pub local: NaiveDateTime,
    pub reading: Reading,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// The input carried this offset.
    Offset(FixedOffset),
    /// The input had no offset and was read in this zone.
    Zone(Tz),
}

/// Why a time could not be used; the message says what to type instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TimeError(String);

const FORMS: &str =
    "'2024-01-01 12:00', '2024-01-01 12:00:00[.ffffff]', optionally with an offset \
                     ('2024-01-01 12:00:00+02:00', '2024-01-01T12:00:00Z')";

/// Parse a `--to` time; `zone` is used when the input has no offset.
pub fn parse_target_time(input: &str, zone: Tz) -> Result<TargetTime, TimeError> {
    let garbage = || {
        TimeError(format!(
            "cannot read the time {input:?}: expected {FORMS}; time zone names and abbreviations are not accepted, \
             configure `timezone` or give a numeric offset"
        ))
    };
    let s = input.trim();
    if s.len() < 16 || !s.is_ascii() {
        return Err(garbage());
    }
    // RFC 3339's `T` (or `t`) between date and time.
    let mut text = s.to_string();
    if matches!(text.as_bytes()[10], b'T' | b't') {
        text.replace_range(10..11, " ");
    }
    let (naive_part, offset) = split_offset(&text).ok_or_else(garbage)?;
    let local = parse_naive(naive_part.trim_end()).ok_or_else(garbage)?;
    match offset {
        Some(off) => {
            let utc = off
                .from_local_datetime(&local)
                .single()
                .ok_or_else(garbage)?
                .with_timezone(&Utc);
            Ok(TargetTime {
                utc,
                local,
                reading: Reading::Offset(off),
            })
        }
        None => match zone.from_local_datetime(&local) {
            LocalResult::Single(t) => Ok(TargetTime {
                utc: t.with_timezone(&Utc),
                local,
                reading: Reading::Zone(zone),
            }),
            LocalResult::Ambiguous(a, b) => Err(TimeError(format!(
                "{s} is ambiguous in {zone} (the clocks go back and show it twice): it is either {} ({}) or {} ({}); \
                 add the offset you mean, e.g. '{}{}'",
                format_utc(a.with_timezone(&Utc)),
                describe_offset(&a),
                format_utc(b.with_timezone(&Utc)),
                describe_offset(&b),
                local.format("%Y-%m-%d %H:%M:%S"),
                a.offset().fix(),
            ))),
            LocalResult::None => Err(gap_error(s, local, zone)),
        },
    }
}

/// The value for `recovery_target_time`: UTC with an explicit numeric offset and microseconds,
/// e.g. `2024-01-01 12:00:00.123456+00`. Truncating below a microsecond changes nothing:
/// commit times are whole microseconds.
pub fn recovery_target_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// `2024-01-01 12:00:00 UTC`, with microseconds when there are any.
pub fn format_utc(t: DateTime<Utc>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string()
    }
}

/// `2024-01-01 13:00:00 CET`: a UTC instant shown in a zone (for window messages).
pub fn format_in_zone(t: DateTime<Utc>, zone: Tz) -> String {
    let local = t.with_timezone(&zone);
    let fmt = if t.timestamp_subsec_micros() == 0 {
        "%Y-%m-%d %H:%M:%S"
    } else {
        "%Y-%m-%d %H:%M:%S%.6f"
    };
    format!("{} {}", local.format(fmt), zone_label(&local))
}

impl fmt::Display for TargetTime {
    /// `2024-01-01 13:02:00 Europe/Berlin (CET, +01:00) = 2024-01-01 12:02:00 UTC`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fmt = if self.local.and_utc().timestamp_subsec_micros() == 0 {
            "%Y-%m-%d %H:%M:%S"
        } else {
            "%Y-%m-%d %H:%M:%S%.6f"
        };
        let local = self.local.format(fmt);
        match self.reading {
            Reading::Offset(off) => write!(f, "{local}{off} = {}", format_utc(self.utc)),
            Reading::Zone(zone) => {
                let at = self.utc.with_timezone(&zone);
                write!(
                    f,
                    "{local} {zone} ({}) = {}",
                    describe_offset(&at),
                    format_utc(self.utc)
                )
            }
        }
    }
}

/// Split a trailing `Z` or numeric offset off the time text.
fn split_offset(s: &str) -> Option<(&str, Option<FixedOffset>)> {
    if let Some(rest) = s.strip_suffix(['Z', 'z']) {
        return Some((
            rest,
            Some(FixedOffset::east_opt(0).expect("0 is a valid offset")),
        ));
    }
    // The date's own '-' signs are before index 10; an offset sign comes after the time.
    let Some(pos) = s[11..].rfind(['+', '-']).map(|p| p + 11) else {
        return Some((s, None));
    };
    let sign = if s.as_bytes()[pos] == b'-' { -1 } else { 1 };
    let digits = s[pos + 1..].trim();
    let (hh, mm) = match digits.len() {
        2 => (digits, "00"),
        4 => (&digits[..2], &digits[2..]),
        5 if digits.as_bytes()[2] == b':' => (&digits[..2], &digits[3..]),
        _ => return None,
    };
    if !hh.bytes().chain(mm.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i32, i32) = (hh.parse().ok()?, mm.parse().ok()?);
    if h > 15 || m > 59 {
        return None;
    }
    let off = FixedOffset::east_opt(sign * (h * 3600 + m * 60))?;
    Some((&s[..pos], Some(off)))
}

fn parse_naive(s: &str) -> Option<NaiveDateTime> {
    // `%.f` also accepts no fraction at all.
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .filter(|_| s.as_bytes().get(4) == Some(&b'-'))
}

fn zone_label(t: &DateTime<Tz>) -> String {
    match t.offset().abbreviation() {
        Some(a) if !a.starts_with(['+', '-']) => a.to_string(),
        _ => t.offset().fix().to_string(),
    }
}

/// `CET, +01:00`
fn describe_offset(t: &DateTime<Tz>) -> String {
    let fixed = t.offset().fix();
    match t.offset().abbreviation() {
        Some(a) if !a.starts_with(['+', '-']) => format!("{a}, {fixed}"),
        _ => fixed.to_string(),
    }
}

/// The error for a local time that the zone skips: find the transition and name the gap.
fn gap_error(input: &str, local: NaiveDateTime, zone: Tz) -> TimeError {
    let offset_at = |t: DateTime<Utc>| zone.offset_from_utc_datetime(&t.naive_utc()).fix();
    // Transitions are whole seconds; search the day around the local time for the one that
    // changes the offset.
    let mut lo = local.and_utc() - Duration::days(1);
    let mut hi = local.and_utc() + Duration::days(1);
    let (before, after) = (offset_at(lo), offset_at(hi));
    if before == after {
        return TimeError(format!(
            "{input} does not exist in {zone} (the clocks skip it); give an explicit offset"
        ));
    }
    while (hi - lo).num_seconds() > 1 {
        let mid = lo + Duration::seconds((hi - lo).num_seconds() / 2);
        if offset_at(mid) == before {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let change = hi;
    let gap_start = change.naive_utc() + Duration::seconds(i64::from(before.local_minus_utc()));
    let gap_end = change.naive_utc() + Duration::seconds(i64::from(after.local_minus_utc()));
    let name = |t: DateTime<Utc>| zone_label(&t.with_timezone(&zone));
    TimeError(format!(
        "{input} does not exist in {zone}: the clocks jump from {} to {} ({} {before} → {} {after}), \
         so local times in [{}, {}) never happen; pick a time outside that gap or give an explicit offset",
        gap_start.format("%Y-%m-%d %H:%M:%S"),
        gap_end.format("%H:%M:%S"),
        name(lo),
        name(change),
        gap_start.format("%H:%M:%S"),
        gap_end.format("%H:%M:%S"),
    ))
}

/// A duration as the config writes one: a number and a unit, repeated — `"90s"`, `"15m"`,
/// `"4h"`, `"1d"`, `"1h30m"` (units `s`, `m`, `h`, `d`). At least one second.
pub fn parse_duration(input: &str) -> Result<std::time::Duration, String> {
    let bad = || {
        format!(
            "{input:?} is not a duration: write a number and a unit (s, m, h, d), e.g. \"15m\", \"4h\" or \"1h30m\""
        )
    };
    let text = input.trim();
    let mut total: u64 = 0;
    let mut digits = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn naive_times_are_read_in_the_configured_zone() {
        let ny = chrono_tz::America::New_York;
        let cases = [
            // EST in winter, EDT in summer.
            ("2024-01-01 12:00", "2024-01-01T17:00:00Z"),
            ("2024-01-01 12:00:00", "2024-01-01T17:00:00Z"),
            ("2024-07-01 12:00:00", "2024-07-01T16:00:00Z"),
            ("2024-01-01 12:00:00.123456", "2024-01-01T17:00:00.123456Z"),
            ("2024-01-01T12:00:00.5", "2024-01-01T17:00:00.5Z"),
            ("  2024-01-01 12:00  ", "2024-01-01T17:00:00Z"),
        ];
        for (input, want) in cases {
            let t = parse_target_time(input, ny).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(t.utc, utc(want), "{input}");
            assert_eq!(t.reading, Reading::Zone(ny));
        }
        let t = parse_target_time("2024-01-01 13:02", chrono_tz::Europe::Berlin).unwrap();
        assert_eq!(
            t.to_string(),
            "2024-01-01 13:02:00 Europe/Berlin (CET, +01:00) = 2024-01-01 12:02:00 UTC"
        );
    }

    #[test]
    fn offsets_override_the_zone() {
        let berlin = chrono_tz::Europe::Berlin;
        let cases = [
            ("2024-01-01T12:00:00+02:00", "2024-01-01T10:00:00Z"),
            ("2024-01-01 12:00:00+02:00", "2024-01-01T10:00:00Z"),
            ("2024-01-01 12:00:00+0200", "2024-01-01T10:00:00Z"),
            ("2024-01-01 12:00:00+02", "2024-01-01T10:00:00Z"),
            ("2024-01-01 12:00:00 +02:00", "2024-01-01T10:00:00Z"),
            ("2024-01-01 12:00-05:00", "2024-01-01T17:00:00Z"),
            ("2024-01-01T12:00:00Z", "2024-01-01T12:00:00Z"),
            ("2024-01-01t12:00:00z", "2024-01-01T12:00:00Z"),
            ("2024-01-01 12:00:00.000001Z", "2024-01-01T12:00:00.000001Z"),
            ("2024-01-01T12:00:00+05:30", "2024-01-01T06:30:00Z"),
            // An offset makes an otherwise ambiguous or skipped local time exact.
            ("2024-10-27 02:30:00+02:00", "2024-10-27T00:30:00Z"),
            ("2024-10-27 02:30:00+01:00", "2024-10-27T01:30:00Z"),
            ("2024-03-31 02:30:00+01:00", "2024-03-31T01:30:00Z"),
        ];
        for (input, want) in cases {
            let t = parse_target_time(input, berlin).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(t.utc, utc(want), "{input}");
            assert!(matches!(t.reading, Reading::Offset(_)), "{input}");
        }
        let t = parse_target_time("2024-01-01T12:00:00+02:00", berlin).unwrap();
        assert_eq!(
            t.to_string(),
            "2024-01-01 12:00:00+02:00 = 2024-01-01 10:00:00 UTC"
        );
    }

    #[test]
    fn ambiguous_local_time_names_both_instants() {
        let err = parse_target_time("2024-10-27 02:30", chrono_tz::Europe::Berlin)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ambiguous"), "{err}");
        assert!(err.contains("2024-10-27 00:30:00 UTC"), "{err}");
        assert!(err.contains("2024-10-27 01:30:00 UTC"), "{err}");
        assert!(err.contains("CEST") && err.contains("CET"), "{err}");
        // New York's fall back, too.
        let err = parse_target_time("2024-11-03 01:30:00", chrono_tz::America::New_York)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2024-11-03 05:30:00 UTC") && err.contains("2024-11-03 06:30:00 UTC"),
            "{err}"
        );
    }

    #[test]
    fn skipped_local_time_names_the_gap() {
        let err = parse_target_time("2024-03-31 02:30", chrono_tz::Europe::Berlin)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist in Europe/Berlin"), "{err}");
        assert!(
            err.contains("from 2024-03-31 02:00:00 to 03:00:00"),
            "{err}"
        );
        assert!(err.contains("[02:00:00, 03:00:00)"), "{err}");
        assert!(err.contains("CET") && err.contains("CEST"), "{err}");
        // Just outside the gap is fine.
        let t = parse_target_time("2024-03-31 01:59:59", chrono_tz::Europe::Berlin).unwrap();
        assert_eq!(t.utc, utc("2024-03-31T00:59:59Z"));
        let t = parse_target_time("2024-03-31 03:00", chrono_tz::Europe::Berlin).unwrap();
        assert_eq!(t.utc, utc("2024-03-31T01:00:00Z"));
    }

    #[test]
    fn garbage_is_refused_with_the_accepted_forms() {
        for bad in [
            "",
            "now",
            "yesterday",
            "2024-01-01",
            "2024-01-01 25:00",
            "2024-02-30 12:00",
            "2024-01-01 12:00:00 CEST",
            "2024-01-01 12:00:00 Europe/Berlin",
            "2024-01-01 12:00:00+2",
            "2024-01-01 12:00:00+24:00",
            "01/02/2024 12:00",
            "2024-01-01 12:00:00+02:00junk",
            "2024-01-01 12:00:00Zjunk",
            "2024-01-01 ünicode",
        ] {
            let err = parse_target_time(bad, chrono_tz::UTC)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} must not parse"));
            if !bad.is_empty() && bad.len() >= 16 {
                assert!(err.to_string().contains("expected"), "{bad:?}: {err}");
            }
        }
    }

    #[test]
    fn recovery_target_time_has_a_numeric_offset() {
        assert_eq!(
            recovery_target_time(utc("2024-01-01T12:02:00Z")),
            "2024-01-01 12:02:00.000000+00"
        );
        assert_eq!(
            recovery_target_time(utc("2024-05-01T12:00:00.123456789Z")),
            "2024-05-01 12:00:00.123456+00"
        );
        let t = parse_target_time("2024-01-01 13:02", chrono_tz::Europe::Berlin).unwrap();
        assert_eq!(recovery_target_time(t.utc), "2024-01-01 12:02:00.000000+00");
    }

    #[test]
    fn instants_are_shown_in_utc_and_in_the_zone() {
        let t = utc("2024-07-01T10:00:00Z");
        assert_eq!(format_utc(t), "2024-07-01 10:00:00 UTC");
        assert_eq!(
            format_in_zone(t, chrono_tz::Europe::Berlin),
            "2024-07-01 12:00:00 CEST"
        );
        assert_eq!(
            format_utc(utc("2024-07-01T10:00:00.25Z")),
            "2024-07-01 10:00:00.250000 UTC"
        );
    }

    #[test]
    fn durations_parse_with_units() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("15m"), Ok(900));
        assert_eq!(secs(" 4h "), Ok(14_400));
        assert_eq!(secs("1d"), Ok(86_400));
        assert_eq!(secs("1h30m"), Ok(5_400));
        for bad in ["", "15", "m", "0s", "1w", "1.5h", "-1h", "1 h"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("not a duration"), "{bad:?}: {err}");
        }
    }
}
