//! Failures that decide the exit code, and every exit-code mapping of the program (including
//! `wal-fetch`'s). Everything else is an `anyhow` error (exit 1).

/// Outcomes a caller (or `main`, for the exit code) branches on.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad input: flags, config, file names.
    #[error("{0}")]
    Usage(String),
    /// The requested WAL file is not in the archive (`wal-fetch` exits 1 for this).
    #[error("{0} is not in the archive")]
    WalNotFound(String),
    /// Different content is already archived under this WAL file's name.
    #[error("{0}")]
    WalConflict(String),
    /// The repository belongs to another database system (or PostgreSQL version, segment size).
    #[error("{0}")]
    SystemIdMismatch(String),
    /// Another process holds the repository lock.
    #[error("{0}")]
    LockHeld(String),
    /// Another conflict: a running server on the target, a backup id taken, a refused overwrite.
    #[error("{0}")]
    Conflict(String),
    /// No backup can serve the requested target (or the target is outside the window).
    #[error("{0}")]
    NoBackupForTarget(String),
    /// Something named is not there (a backup id, a timeline's history).
    #[error("{0}")]
    NotFound(String),
    /// A backup failed verification.
    #[error("{0}")]
    VerifyFailed(String),
    /// An encrypted repository read without a usable operator identity (none configured,
    /// an unreadable or world-readable identity file, one that cannot open the keyring): a
    /// configuration error, exit 2 — for `wal-fetch` too, as every call would fail alike.
    #[error("{0}")]
    Identity(String),
}

/// Exit codes, documented in the README. None of the general codes is above 125: PostgreSQL
/// treats those as fatal for archive_command. `wal-fetch` has its own (see [`wal_fetch_exit_code`]).
pub mod exit {
    pub const OK: u8 = 0;
    pub const RUNTIME: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const CONFLICT: u8 = 4;
    pub const VERIFY_FAILED: u8 = 5;
    /// `wal-fetch` only: the file is not in the archive (PostgreSQL asks for such files routinely).
    pub const FETCH_ABSENT: u8 = 1;
    /// `wal-fetch` only: the archive could not be read (store down, corruption). Above 125 so
    /// PostgreSQL stops recovery instead of taking it as the end of WAL and promoting early.
    pub const FETCH_FATAL: u8 = 255;
}

/// The first `Failure` in an error's chain, if any.
pub fn failure(err: &anyhow::Error) -> Option<&Failure> {
    err.chain().find_map(|c| c.downcast_ref::<Failure>())
}

/// The exit code for an error: the first `Failure` in its chain decides, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    match failure(err) {
        Some(Failure::Usage(_) | Failure::Identity(_)) => exit::USAGE,
        Some(Failure::WalNotFound(_) | Failure::NotFound(_) | Failure::NoBackupForTarget(_)) => {
            exit::NOT_FOUND
        }
        Some(
            Failure::WalConflict(_)
            | Failure::SystemIdMismatch(_)
            | Failure::LockHeld(_)
            | Failure::Conflict(_),
        ) => exit::CONFLICT,
        Some(Failure::VerifyFailed(_)) => exit::VERIFY_FAILED,
        None => exit::RUNTIME,
    }
}

/// `wal-fetch`'s exit code (restore_command): 1 when the file is not in the archive, 255 for
/// anything else, so that PostgreSQL never ends recovery early on an unreadable archive.
pub fn wal_fetch_exit_code(err: &anyhow::Error) -> u8 {
    match failure(err) {
        Some(Failure::WalNotFound(_)) => exit::FETCH_ABSENT,
        Some(Failure::Identity(_)) => exit::USAGE,
        _ => exit::FETCH_FATAL,
    }
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
        assert_eq!(
            exit_code(&Failure::LockHeld("l".into()).into()),
            exit::CONFLICT
        );
        assert_eq!(
            exit_code(&Failure::NoBackupForTarget("t".into()).into()),
            exit::NOT_FOUND
        );
    }

    #[test]
    fn wal_fetch_codes() {
        let absent: anyhow::Error = Failure::WalNotFound("000000010000000000000001".into()).into();
        assert_eq!(
            wal_fetch_exit_code(&absent.context("fetch")),
            exit::FETCH_ABSENT
        );
        assert_eq!(
            wal_fetch_exit_code(&anyhow::anyhow!("store down")),
            exit::FETCH_FATAL
        );
        assert_eq!(wal_fetch_exit_code(&usage("bad name")), exit::FETCH_FATAL);
        let no_identity: anyhow::Error = Failure::Identity("no identity_file".into()).into();
        assert_eq!(exit_code(&no_identity), exit::USAGE);
        assert_eq!(
            wal_fetch_exit_code(&no_identity.context("fetch")),
            exit::USAGE
        );
    }
}
