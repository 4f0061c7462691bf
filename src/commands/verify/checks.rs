//! The checks' bookkeeping, and the judgements: did recovery reach the target, what
//! pg_amcheck said, what a probe returned.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::plan::{Mode, Plan};
use super::report::CheckResult;
use crate::format;
use crate::pg::serverlog::ServerLog;
use crate::sandbox::{ScratchDirs, Sql};
use crate::timeparse::format_utc;

#[derive(Debug, Default)]
pub(super) struct Checks {
    pub list: Vec<CheckResult>,
}

impl Checks {
    pub fn record(&mut self, name: &str, started: Instant, result: Result<String, String>) -> bool {
        self.record_took(name, started.elapsed(), result)
    }

    /// Record a check and put it right after the check `after` (or first).
    pub fn insert_after(
        &mut self,
        after: &str,
        name: &str,
        took: Duration,
        result: Result<String, String>,
    ) -> bool {
        let ok = self.record_took(name, took, result);
        let check = self.list.pop().expect("just recorded");
        let at = self
            .list
            .iter()
            .position(|c| c.name == after)
            .map_or(0, |i| i + 1);
        self.list.insert(at, check);
        ok
    }

    pub fn record_took(
        &mut self,
        name: &str,
        took: Duration,
        result: Result<String, String>,
    ) -> bool {
        let ok = result.is_ok();
        let detail = match result {
            Ok(d) | Err(d) => d,
        };
        eprintln!(
            "verify: {name}: {} in {:.1}s: {}",
            if ok { "ok" } else { "FAILED" },
            took.as_secs_f64(),
            format::truncate(&detail, 300)
        );
        self.list.push(CheckResult {
            name: name.to_string(),
            ok,
            duration_seconds: (took.as_secs_f64() * 1000.0).round() / 1000.0,
            detail,
        });
        ok
    }
}

/// Split `pg_amcheck --progress` output into its final progress line ("547/547 relations
/// (100%), 11199/11199 pages (100%)") and everything else it said.
pub(super) fn amcheck_output(stdout: &str, stderr: &str) -> (Option<String>, String) {
    let mut progress = None;
    let mut messages = Vec::new();
    for line in stdout.lines().chain(stderr.split(['\r', '\n'])) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.contains(" relations (") && line.contains(" pages (") {
            progress = Some(line.to_string());
        } else {
            messages.push(line.to_string());
        }
    }
    (progress, messages.join("\n"))
}

/// Run one probe; `Ok(result)` when it returned what it should.
pub(super) async fn run_probe(
    dirs: &ScratchDirs,
    user: &str,
    db: &str,
    sql_text: &str,
    expect: &str,
) -> Result<String, String> {
    let sql = Sql::connect(dirs, user, db)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let rows = sql.query_column(sql_text).await;
    sql.close().await;
    let rows = rows.map_err(|e| format!("failed: {e:#}"))?;
    let got = probe_text(&rows);
    if got.trim() == expect.trim() {
        Ok(format!("returned {:?}", format::truncate(got.trim(), 200)))
    } else {
        Err(format!(
            "returned {:?}, expected {:?}",
            format::truncate(got.trim(), 1000),
            expect.trim()
        ))
    }
}

/// A probe's rows as one text: one line per row, NULL as an empty line.
fn probe_text(rows: &[Option<String>]) -> String {
    rows.iter()
        .map(|r| r.as_deref().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Did a promoted server reach the plan's target?
pub(super) fn judge_recovery(
    plan: &Plan,
    log: &ServerLog,
    replayed: Option<DateTime<Utc>>,
) -> Result<String, String> {
    let replayed_text = replayed.map_or("no commit".to_string(), format_utc);
    let not_reached = |why: String| {
        Err(format!(
            "recovery could not reach the target {}: {why}{}",
            plan.describe(),
            plan.missing_note()
        ))
    };
    if log.consistent.is_none() {
        return not_reached("the log has no \"consistent recovery state reached\"".into());
    }
    match plan.mode {
        Mode::Time(t) => {
            let Some(stop) = &log.stopping else {
                return not_reached(format!(
                    "recovery ended without stopping at the target time (the last replayed commit is at {replayed_text})"
                ));
            };
            if replayed.is_some_and(|r| r > t) {
                return not_reached(format!(
                    "it replayed a commit at {replayed_text}, after the target"
                ));
            }
            Ok(format!(
                "{stop}; last replayed commit at {replayed_text} (target {})",
                format_utc(t)
            ))
        }
        Mode::End(Some(t)) => {
            if replayed.is_none_or(|r| r < t) {
                return not_reached(format!(
                    "replay ended with the last commit at {replayed_text}, before the target{}",
                    log.last_restored
                        .as_ref()
                        .map(|s| format!(" (the last WAL file restored was {s})"))
                        .unwrap_or_default()
                ));
            }
            Ok(format!(
                "replayed the staged WAL to its end; last replayed commit at {replayed_text} = the target; {}",
                log.consistent.as_deref().unwrap_or_default()
            ))
        }
        Mode::End(None) => Ok(format!(
            "replayed the backup's WAL; {}",
            log.consistent.as_deref().unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::history::TimelinePath;
    use crate::pg::{TimelineId, WalSegmentSize};

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn recovery_is_judged_from_the_log_and_the_replayed_commit() {
        let log = "2026-11-25 00:49:58.478 UTC [9] LOG:  starting point-in-time recovery to 2024-01-01 05:00:00+00\n\
                   2026-11-25 00:49:58.600 UTC [9] LOG:  restored log file \"000000010000000000000005\" from archive\n\
                   2026-11-25 00:49:58.700 UTC [9] LOG:  consistent recovery state reached at 0/5000100\n\
                   2026-11-25 00:49:58.800 UTC [9] LOG:  recovery stopping before commit of transaction 781, time 2024-01-01 05:00:01+00\n\
                   2026-11-25 00:49:58.900 UTC [1] LOG:  database system is ready to accept connections\n";
        let st = ServerLog::scan(log);
        assert!(st.recovery_started && st.promoted);
        assert_eq!(
            st.last_restored.as_deref(),
            Some("000000010000000000000005")
        );
        let plan = Plan {
            mode: Mode::Time(t("2024-01-01T05:00:00Z")),
            size: WalSegmentSize::DEFAULT,
            path: TimelinePath::root(TimelineId(1)),
            start_segno: 2,
            through_segno: 6,
            segments: vec![],
            missing: vec![],
            backup_files: 0,
        };
        let ok = judge_recovery(&plan, &st, Some(t("2024-01-01T04:59:59Z"))).unwrap();
        assert!(ok.contains("recovery stopping before commit"), "{ok}");
        assert!(judge_recovery(&plan, &st, Some(t("2024-01-01T05:00:02Z"))).is_err());

        let end = Plan {
            mode: Mode::End(Some(t("2024-01-01T07:00:00Z"))),
            missing: vec![4],
            ..plan.clone()
        };
        let err = judge_recovery(&end, &st, Some(t("2024-01-01T03:00:00Z"))).unwrap_err();
        assert!(
            err.starts_with("recovery could not reach the target")
                && err.contains("000000010000000000000004 is missing"),
            "{err}"
        );
        assert!(judge_recovery(&end, &st, Some(t("2024-01-01T07:00:00Z"))).is_ok());

        let failed = ServerLog::scan(
            "x LOG:  starting archive recovery\ny FATAL:  recovery ended before configured recovery target was reached\n",
        );
        assert_eq!(
            failed.fatal,
            vec!["recovery ended before configured recovery target was reached"]
        );
        assert!(!failed.promoted);
    }

    #[test]
    fn small_helpers() {
        assert_eq!(
            probe_text(&[Some("a".into()), None, Some("b".into())]),
            "a\n\nb"
        );
        let (progress, rest) = amcheck_output(
            "",
            "  0/547 relations (0%),     0/11199 pages (0%)\r547/547 relations (100%), 11199/11199 pages (100%)\nheap table \"x\": bad\n",
        );
        assert_eq!(
            progress.as_deref(),
            Some("547/547 relations (100%), 11199/11199 pages (100%)")
        );
        assert_eq!(rest, "heap table \"x\": bad");
    }
}
