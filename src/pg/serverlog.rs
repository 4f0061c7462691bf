//! What a PostgreSQL server log says about start-up and recovery. One scanner for `restore
//! --start` and `verify`; both run the server with `lc_messages` as configured (`verify` forces
//! `C`), so the messages are matched in English.

/// What the log says so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerLog {
    /// "starting point-in-time recovery …", "starting archive recovery", …
    pub recovery_started: bool,
    /// "consistent recovery state reached …"
    pub consistent: Option<String>,
    /// "recovery stopping before commit of transaction 781, time …"
    pub stopping: Option<String>,
    /// "last completed transaction was at log time …"
    pub last_completed: Option<String>,
    /// "database system is ready to accept connections" (read-write: promoted).
    pub promoted: bool,
    /// "selected new timeline ID …"
    pub new_timeline: Option<String>,
    /// The server sends its log to the logging collector: this file sees nothing more.
    pub collector: bool,
    /// "pausing at the end of recovery"
    pub paused: bool,
    /// "shutdown at recovery target"
    pub shutdown_at_target: bool,
    /// "database system is shut down"
    pub shut_down: bool,
    /// FATAL and PANIC messages.
    pub fatal: Vec<String>,
    /// The whole log lines of those messages, trimmed.
    pub fatal_lines: Vec<String>,
    /// The last WAL file restored by the restore_command.
    pub last_restored: Option<String>,
}

impl ServerLog {
    pub fn scan(text: &str) -> ServerLog {
        let mut st = ServerLog::default();
        for line in text.lines() {
            let message = |tag: &str| {
                line.find(tag)
                    .map(|i| line[i + tag.len()..].trim().to_string())
            };
            if let Some(m) = message("LOG:  ") {
                st.log_message(m);
            } else if let Some(m) = message("FATAL:  ").or_else(|| message("PANIC:  ")) {
                st.fatal.push(m);
                st.fatal_lines.push(line.trim().to_string());
            }
        }
        st
    }

    fn log_message(&mut self, m: String) {
        if m.starts_with("starting point-in-time recovery")
            || m.starts_with("starting archive recovery")
            || m.starts_with("starting backup recovery")
        {
            self.recovery_started = true;
        } else if m.starts_with("consistent recovery state reached") {
            self.consistent = Some(m);
        } else if m.starts_with("recovery stopping") {
            self.stopping = Some(m);
        } else if m.starts_with("last completed transaction was at log time") {
            self.last_completed = Some(m);
        } else if m.starts_with("database system is ready to accept connections") {
            self.promoted = true;
        } else if m.starts_with("selected new timeline ID") {
            self.new_timeline = Some(m);
        } else if m.starts_with("redirecting log output to logging collector process") {
            self.collector = true;
        } else if m.starts_with("pausing at the end of recovery") {
            self.paused = true;
        } else if m.starts_with("shutdown at recovery target") {
            self.shutdown_at_target = true;
        } else if m.starts_with("database system is shut down") {
            self.shut_down = true;
        } else if let Some(rest) = m.strip_prefix("restored log file \"") {
            self.last_restored = rest.split('"').next().map(str::to_string);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_start_messages() {
        let log = "LOG:  restored log file \"000000010000000000000003\" from archive\n\
                   FATAL:  recovery ended before configured recovery target was reached\n\
                   LOG:  database system is shut down\n";
        let st = ServerLog::scan(log);
        assert_eq!(
            st.last_restored.as_deref(),
            Some("000000010000000000000003")
        );
        assert_eq!(st.fatal_lines.len(), 1);
        assert!(st.shut_down && !st.promoted);
        let st = ServerLog::scan("LOG:  database system is ready to accept read-only connections\nLOG:  pausing at the end of recovery\n");
        assert!(st.paused && !st.promoted);
    }
}
