//! Logging: `tracing` to stderr (journald captures it under systemd). stdout is for data.

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// The format `init` chose, for displays that differ by it (progress: a bar only in text).
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format log lines are written in (text until `init`).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Text)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// The `--log-format` value that selects this format (for child processes).
    pub fn as_arg(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `default_level` applies unless `RUST_LOG` says otherwise.
pub fn init(format: LogFormat, default_level: &str) {
    let _ = FORMAT.set(format);
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("synapse_backup={default_level}")));
    // Colours only on a terminal: a log file or journald gets plain lines.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
}
