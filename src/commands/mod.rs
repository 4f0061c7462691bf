//! One module per command.

pub mod backup;
pub mod check;
pub mod events;
pub mod expire;
pub mod export;
pub mod key;
pub mod list;
pub mod restore;
pub mod signing_key;
pub mod verify;
pub mod wal_fetch;
pub mod wal_push;

/// Write a command's output to stdout; a reader that went away (`list --json | head`) is not
/// an error: the output was not wanted any more.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
