//! Recovery settings as PostgreSQL reads them: the target, what to do there, the timeline,
//! and the `restore_command`, rendered for `postgresql.auto.conf`.

use std::fmt;

use chrono::{DateTime, Utc};

use super::{Lsn, TimelineId};
use crate::timeparse::{self, format_utc};

/// Where recovery should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    Latest,
    /// Stop before the first commit after this instant (`recovery_target_time`, inclusive).
    Time(DateTime<Utc>),
    /// Stop after the first record at or after this position (`recovery_target_lsn`).
    Lsn(Lsn),
}

impl fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("the end of the archived WAL"),
            RecoveryTarget::Time(t) => f.write_str(&format_utc(*t)),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
        }
    }
}

/// A target PostgreSQL stops *before* (or at a restore point), found in the event index
/// (issue 16). When set, it is what the recovery configuration names; the
/// [`RecoveryTarget`] beside it is the position of the same point (`Lsn`), for the checks
/// against the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopBefore {
    /// `recovery_target_xid`, `recovery_target_inclusive = false`.
    Xid(u32),
    /// `recovery_target_lsn`, `recovery_target_inclusive = false`.
    Lsn(Lsn),
    /// `recovery_target_name`: a restore point.
    RestorePoint(String),
}

impl fmt::Display for StopBefore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopBefore::Xid(x) => write!(f, "just before transaction {x} commits"),
            StopBefore::Lsn(l) => write!(f, "just before the record at LSN {l}"),
            StopBefore::RestorePoint(n) => write!(f, "the restore point '{n}'"),
        }
    }
}

/// `recovery_target_action`: what the server does when it reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

impl TargetAction {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// What goes into a restored directory's recovery configuration.
#[derive(Debug, Clone)]
pub struct RecoverySettings {
    /// As PostgreSQL runs it (`%f`, `%p` placeholders).
    pub restore_command: String,
    pub target: RecoveryTarget,
    pub action: TargetAction,
    /// `recovery_target_timeline`; `None` is `latest`.
    pub timeline: Option<TimelineId>,
    /// Replaces `target` in the configuration when set (see [`StopBefore`]).
    pub stop_before: Option<StopBefore>,
    /// Whether the restored server archives WAL once it is promoted.
    pub archiving: Archiving,
}

/// Whether a restored server archives. A copy that archives into the repository it came from
/// pushes a new timeline there and splits the archive's history (`restore --latest` would
/// follow the copy), so a restored copy does not archive unless it replaces the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archiving {
    /// `archive_mode = 'off'`, written last in `postgresql.auto.conf` (which PostgreSQL reads
    /// after `postgresql.conf`, and where the last occurrence of a setting wins), so the
    /// restored `archive_command` never runs.
    Off,
    /// The restored configuration's `archive_mode`/`archive_command` as they are
    /// (`restore --as-primary`).
    AsConfigured,
}

/// The one command that turns archiving back on in a copy restored with [`Archiving::Off`]
/// (`ALTER SYSTEM` replaces every `archive_mode` line of `postgresql.auto.conf` with one;
/// `archive_mode` needs a restart).
pub fn archiving_on_command(pgdata: &std::path::Path) -> String {
    format!(
        "psql -c \"ALTER SYSTEM SET archive_mode = on\" && pg_ctl -D {} restart",
        shell_word(&pgdata.display().to_string())
    )
}

/// One word of a `restore_command`: shell-quoted when needed, and `%` doubled because
/// PostgreSQL replaces `%f`, `%p`, `%r` in the command.
pub fn command_word(s: &str) -> String {
    shell_word(s).replace('%', "%%")
}

/// One shell word, quoted when needed.
fn shell_word(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// A string value for postgresql.conf.
fn conf_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The block appended to `postgresql.auto.conf`. Every recovery target setting is written,
/// the unused ones empty, so that settings left in the restored configuration by an earlier
/// restore cannot combine with ours ("multiple recovery targets specified"): the last
/// occurrence of a setting wins, and the empty ones come first.
/// `backup` names the restored backup in a comment.
pub fn recovery_conf(
    settings: &RecoverySettings,
    backup: &impl fmt::Display,
    now: DateTime<Utc>,
) -> String {
    let mut lines = vec![
        String::new(),
        format!(
            "# Added by synapse-backup restore of backup {backup} at {}",
            format_utc(now)
        ),
        format!(
            "restore_command = {}",
            conf_value(&settings.restore_command)
        ),
    ];
    let (name, value) = match (&settings.stop_before, settings.target) {
        (Some(StopBefore::Xid(x)), _) => ("recovery_target_xid", x.to_string()),
        (Some(StopBefore::Lsn(l)), _) => ("recovery_target_lsn", l.to_string()),
        (Some(StopBefore::RestorePoint(n)), _) => ("recovery_target_name", n.clone()),
        (None, RecoveryTarget::Time(t)) => {
            ("recovery_target_time", timeparse::recovery_target_time(t))
        }
        (None, RecoveryTarget::Lsn(l)) => ("recovery_target_lsn", l.to_string()),
        (None, RecoveryTarget::Latest) => ("", String::new()),
    };
    for unset in [
        "recovery_target",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_time",
        "recovery_target_xid",
    ] {
        if unset != name {
            lines.push(format!("{unset} = ''"));
        }
    }
    if !name.is_empty() {
        lines.push(format!("{name} = {}", conf_value(&value)));
    }
    if matches!(
        settings.stop_before,
        Some(StopBefore::Xid(_) | StopBefore::Lsn(_))
    ) {
        lines.push("recovery_target_inclusive = 'false'".to_string());
    }
    lines.push(format!(
        "recovery_target_action = '{}'",
        settings.action.as_str()
    ));
    let timeline = settings
        .timeline
        .map_or_else(|| "latest".to_string(), |t| t.0.to_string());
    lines.push(format!("recovery_target_timeline = '{timeline}'"));
    if settings.archiving == Archiving::Off {
        lines.push(
            "# A restored copy does not archive into the repository it came from; when it becomes the \
             primary: ALTER SYSTEM SET archive_mode = on, then restart"
                .into(),
        );
        lines.push("archive_mode = 'off'".into());
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::manifest::BackupId;

    #[test]
    fn restore_command_words_survive_shell_and_postgres() {
        assert_eq!(
            command_word("/usr/bin/synapse-backup"),
            "/usr/bin/synapse-backup"
        );
        assert_eq!(command_word("/etc/my conf.toml"), "'/etc/my conf.toml'");
        assert_eq!(command_word("/a'b"), "'/a'\\''b'");
        assert_eq!(command_word("/a%p"), "/a%%p");
        assert_eq!(conf_value("it's"), "'it''s'");
        assert_eq!(conf_value("a\\b"), "'a\\\\b'");
    }

    #[test]
    fn recovery_settings_reset_every_other_target() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let id: BackupId = "20240101T020000Z".parse().unwrap();
        let mut s = RecoverySettings {
            restore_command: "/bin/sb --config /c.toml --cluster core wal-fetch %f %p".into(),
            target: RecoveryTarget::Time("2024-01-01T12:02:00Z".parse().unwrap()),
            action: TargetAction::Promote,
            timeline: None,
            stop_before: None,
            archiving: Archiving::AsConfigured,
        };
        let text = recovery_conf(&s, &id, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            &lines[2..],
            [
                "restore_command = '/bin/sb --config /c.toml --cluster core wal-fetch %f %p'",
                "recovery_target = ''",
                "recovery_target_lsn = ''",
                "recovery_target_name = ''",
                "recovery_target_xid = ''",
                "recovery_target_time = '2024-01-01 12:02:00.000000+00'",
                "recovery_target_action = 'promote'",
                "recovery_target_timeline = 'latest'",
            ]
        );
        s.target = RecoveryTarget::Lsn("0/3000060".parse().unwrap());
        s.action = TargetAction::Pause;
        s.timeline = Some(TimelineId(2));
        let text = recovery_conf(&s, &id, now);
        assert!(text.contains("recovery_target_time = ''\n"));
        assert!(text.contains("recovery_target_lsn = '0/3000060'\n"));
        assert!(
            text.ends_with("recovery_target_action = 'pause'\nrecovery_target_timeline = '2'\n")
        );
        s.target = RecoveryTarget::Latest;
        let text = recovery_conf(&s, &id, now);
        assert_eq!(text.matches(" = ''").count(), 5);
        assert!(!text.contains("archive_mode"));
        // A copy that does not archive: archive_mode off, last, after everything else.
        s.archiving = Archiving::Off;
        let text = recovery_conf(&s, &id, now);
        assert!(text.ends_with("\narchive_mode = 'off'\n"), "{text}");
        assert_eq!(
            archiving_on_command(std::path::Path::new("/srv/pg copy")),
            "psql -c \"ALTER SYSTEM SET archive_mode = on\" && pg_ctl -D '/srv/pg copy' restart"
        );
    }

    #[test]
    fn stop_before_targets_are_exclusive() {
        let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let id: BackupId = "20240101T020000Z".parse().unwrap();
        let mut s = RecoverySettings {
            restore_command: "x".into(),
            target: RecoveryTarget::Lsn("0/3000060".parse().unwrap()),
            action: TargetAction::Promote,
            timeline: None,
            stop_before: Some(StopBefore::Xid(84123)),
            archiving: Archiving::AsConfigured,
        };
        let text = recovery_conf(&s, &id, now);
        assert!(
            text.contains("recovery_target_xid = '84123'\nrecovery_target_inclusive = 'false'\n")
        );
        assert!(text.contains("recovery_target_lsn = ''\n"));
        s.stop_before = Some(StopBefore::Lsn("0/3000060".parse().unwrap()));
        let text = recovery_conf(&s, &id, now);
        assert!(text
            .contains("recovery_target_lsn = '0/3000060'\nrecovery_target_inclusive = 'false'\n"));
        assert!(text.contains("recovery_target_xid = ''\n"));
        s.stop_before = Some(StopBefore::RestorePoint("before-deploy".into()));
        let text = recovery_conf(&s, &id, now);
        assert!(text.contains("recovery_target_name = 'before-deploy'\n"));
        assert!(!text.contains("recovery_target_inclusive"));
    }
}
