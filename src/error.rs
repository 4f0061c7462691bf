//! Failures that decide the exit code. Everything else is an `anyhow` error (exit 1).

/// Outcomes a caller (or `main`, for the exit code) branches on.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad input: flags, config, file names.
    #[error("{0}")]
    Usage(String),
    /// The requested WAL file is not in the archive (`wal-fetch` exits 1 for this).
    #[error("{0} is not in the archive")]
    WalNotFound(String),
    /// Different content already archived under this name, or a repository for another cluster.
    #[error("{0}")]
    Conflict(String),
    /// No backup can serve the requested target.
    #[error("{0}")]
    NotFound(String),
    /// A backup failed verification.
    #[error("{0}")]
    VerifyFailed(String),
}

/// Exit codes, documented in the README. None is above 125: PostgreSQL treats those as fatal
/// for archive_command. `wal-fetch` maps its own codes (see `commands::wal_fetch`).
pub mod exit {
    pub const OK: u8 = 0;
    pub const RUNTIME: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const CONFLICT: u8 = 4;
    pub const VERIFY_FAILED: u8 = 5;
    /// `wal-fetch` only: the archive could not be read (store down, corruption). Above 125 so
    /// PostgreSQL stops recovery instead of taking it as the end of WAL and promoting early.
    pub const FETCH_FATAL: u8 = 255;
}

/// The exit code for an error: the first `Failure` in its chain decides, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return match f {
                Failure::Usage(_) => exit::USAGE,
                Failure::WalNotFound(_) | Failure::NotFound(_) => exit::NOT_FOUND,
                Failure::Conflict(_) => exit::CONFLICT,
                Failure::VerifyFailed(_) => exit::VERIFY_FAILED,
            };
        }
    }
    exit::RUNTIME
}

/// Shorthand for a usage error.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    Failure::Usage(msg.into()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn exit_code_walks_the_chain() {
        let e: anyhow::Result<()> = Err(Failure::Conflict("x".into()).into());
        let e = e.context("push WAL").unwrap_err();
        assert_eq!(exit_code(&e), exit::CONFLICT);
        assert_eq!(exit_code(&anyhow::anyhow!("io")), exit::RUNTIME);
        assert_eq!(exit_code(&usage("bad")), exit::USAGE);
        assert_eq!(
            exit_code(&Failure::WalNotFound("a".into()).into()),
            exit::NOT_FOUND
        );
    }
}
