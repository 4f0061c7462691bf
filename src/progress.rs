//! One progress display for the long phases of a restore (download and extract, WAL replay):
//! a bar on a terminal (indicatif), otherwise a log line (tracing, so JSON lines with
//! `--log-format json`) at every twentieth of the way and at least every 30 seconds. Each
//! shows the rate, the phase's ETA (remaining / observed rate) and, when the phases after it
//! were predicted, the ETA of the whole restore.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::format::{human_bytes, human_duration};
use crate::logging::{self, LogFormat};

/// What a phase counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Segments,
}

impl Unit {
    fn amount(self, n: u64) -> String {
        match self {
            Unit::Bytes => human_bytes(n),
            Unit::Segments => n.to_string(),
        }
    }

    fn rate(self, per_second: f64) -> String {
        match self {
            Unit::Bytes => format!("{}/s", human_bytes(per_second as u64)),
            Unit::Segments => format!("{per_second:.1} segments/s"),
        }
    }
}

/// Log lines at each twentieth of the way …
const STEPS: u64 = 20;
/// … and at least this often.
const EVERY: Duration = Duration::from_secs(30);

/// How far one phase is.
pub struct Meter {
    phase: &'static str,
    unit: Unit,
    total: u64,
    started: Instant,
    /// The predicted duration of the phases after this one (the whole restore's ETA adds it).
    after: Option<Duration>,
    /// The most done so far (a sample that goes back is ignored).
    high: u64,
    display: Display,
}

enum Display {
    Bar(indicatif::ProgressBar),
    Lines { last_at: Instant, last_step: u64 },
}

/// What one line says, computed from counts alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub done: u64,
    pub total: u64,
    pub percent: f64,
    /// Units per second since the phase began (`None` before the first unit).
    pub rate: Option<f64>,
    /// Remaining / rate.
    pub eta: Option<Duration>,
    /// The phase is over (not just at its planned total: a time target's last segment is an
    /// estimate, so replay can run past it).
    pub finished: bool,
}

impl Status {
    pub fn of(done: u64, total: u64, elapsed: Duration) -> Status {
        let done = done.min(total);
        let secs = elapsed.as_secs_f64();
        let rate = (done > 0 && secs > 0.0).then(|| done as f64 / secs);
        Status {
            done,
            total,
            percent: if total == 0 {
                100.0
            } else {
                100.0 * done as f64 / total as f64
            },
            rate,
            eta: rate.map(|r| Duration::from_secs_f64((total - done) as f64 / r)),
            finished: false,
        }
    }
}

impl Meter {
    /// A display for `total` units of `phase`; `after`: the predicted time of what follows.
    pub fn new(phase: &'static str, unit: Unit, total: u64, after: Option<Duration>) -> Meter {
        let tty = std::io::stderr().is_terminal() && logging::format() == LogFormat::Text;
        let display = if tty {
            let bar = indicatif::ProgressBar::new(total);
            let counts = match unit {
                Unit::Bytes => "{bytes}/{total_bytes} {binary_bytes_per_sec}",
                Unit::Segments => "{pos}/{len} segments {segments_per_sec}",
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{phase:>8} {{bar:40}} {counts} ETA {{eta}}{{msg}}"
                ))
                .map(|style| {
                    style.with_key(
                        "segments_per_sec",
                        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(w, "{:.1}/s", state.per_sec());
                        },
                    )
                })
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Display::Bar(bar)
        } else {
            Display::Lines {
                last_at: Instant::now(),
                last_step: 0,
            }
        };
        Meter {
            phase,
            unit,
            total,
            started: Instant::now(),
            after,
            high: 0,
            display,
        }
    }

    /// `done` units so far: move the bar, or log a line when a step or `EVERY` has passed.
    pub fn update(&mut self, done: u64) {
        self.high = self.high.max(done);
        let done = self.high;
        let status = Status::of(done, self.total, self.started.elapsed());
        let whole = self.whole_eta(&status);
        match &mut self.display {
            Display::Bar(bar) => {
                bar.set_position(status.done);
                if let Some(w) = whole {
                    bar.set_message(format!(", restore {}", human_duration(w)));
                }
            }
            Display::Lines { last_at, last_step } => {
                let step = status.done * STEPS / self.total.max(1);
                if step > *last_step || last_at.elapsed() >= EVERY {
                    *last_step = step;
                    *last_at = Instant::now();
                    self.log(&status, whole);
                }
            }
        }
    }

    /// The phase is over: clear the bar, or log its last line.
    pub fn finish(mut self) {
        let status = Status {
            finished: true,
            ..Status::of(self.total, self.total, self.started.elapsed())
        };
        if let Display::Lines { .. } = self.display {
            self.log(&status, None);
        }
        self.clear();
    }

    fn clear(&mut self) {
        if let Display::Bar(bar) = &self.display {
            bar.finish_and_clear();
        }
    }

    fn whole_eta(&self, status: &Status) -> Option<Duration> {
        Some(status.eta? + self.after?)
    }

    /// One line: "replay: 12 of 50 segments (24%), 3.1 segments/s, ETA 12s (restore 40s)".
    fn log(&self, s: &Status, whole: Option<Duration>) {
        let line = self.line(s, whole);
        let eta_seconds = s.eta.map(|d| d.as_secs());
        match logging::format() {
            LogFormat::Json => tracing::info!(
                phase = self.phase,
                done = s.done,
                total = s.total,
                percent = (s.percent * 10.0).round() / 10.0,
                eta_seconds,
                restore_eta_seconds = whole.map(|d| d.as_secs()),
                "{line}"
            ),
            LogFormat::Text => tracing::info!("{line}"),
        }
    }

    fn line(&self, s: &Status, whole: Option<Duration>) -> String {
        let mut line = format!(
            "{}: {} of {}{} ({:.0}%)",
            self.phase,
            self.unit.amount(s.done),
            self.unit.amount(s.total),
            if self.unit == Unit::Segments {
                " WAL segments"
            } else {
                ""
            },
            s.percent.floor()
        );
        if s.finished {
            line.push_str(&format!(
                ", done in {}",
                human_duration(self.started.elapsed())
            ));
            return line;
        }
        if s.done >= s.total {
            line.push_str(", at the planned end, still running");
            return line;
        }
        match (s.rate, s.eta) {
            (Some(r), Some(eta)) => {
                line.push_str(&format!(
                    ", {}, ETA {}",
                    self.unit.rate(r),
                    human_duration(eta)
                ));
                if let Some(w) = whole {
                    line.push_str(&format!(" (whole restore: {})", human_duration(w)));
                }
            }
            _ => line.push_str(", ETA: measuring"),
        }
        line
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_is_remaining_over_the_observed_rate() {
        let s = Status::of(10, 50, Duration::from_secs(5));
        assert_eq!(s.rate, Some(2.0));
        assert_eq!(s.eta, Some(Duration::from_secs(20)));
        assert_eq!(s.percent, 20.0);
        let none = Status::of(0, 50, Duration::from_secs(5));
        assert_eq!((none.rate, none.eta), (None, None));
        // More than the estimate (a time target's last segment is a guess): capped.
        let over = Status::of(60, 50, Duration::from_secs(5));
        assert_eq!((over.done, over.eta), (50, Some(Duration::ZERO)));
        assert_eq!(Status::of(0, 0, Duration::ZERO).percent, 100.0);
    }

    #[test]
    fn lines_say_rate_eta_and_the_whole_restore() {
        let m = Meter::new("replay", Unit::Segments, 50, Some(Duration::from_secs(100)));
        let s = Status::of(10, 50, Duration::from_secs(5));
        assert_eq!(
            m.line(&s, m.whole_eta(&s)),
            "replay: 10 of 50 WAL segments (20%), 2.0 segments/s, ETA 20s (whole restore: 2m 00s)"
        );
        let d = Meter::new("download", Unit::Bytes, 4 << 20, None);
        let s = Status::of(1 << 20, 4 << 20, Duration::from_secs(1));
        assert_eq!(
            d.line(&s, d.whole_eta(&s)),
            "download: 1.0 MiB of 4.0 MiB (25%), 1.0 MiB/s, ETA 3s"
        );
        assert_eq!(
            d.line(&Status::of(0, 4, Duration::ZERO), None),
            "download: 0 B of 4 B (0%), ETA: measuring"
        );
        // Past a planned total that was an estimate: not "done" until it is.
        assert_eq!(
            m.line(&Status::of(60, 50, Duration::from_secs(5)), None),
            "replay: 50 of 50 WAL segments (100%), at the planned end, still running"
        );
    }
}
