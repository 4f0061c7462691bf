//! Small text formatting shared by the commands' messages and reports.

/// `512 B`, `3.0 MiB`: binary units, one decimal.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `45s`, `3m 20s`, `2h 05m`: a duration as an operator reads an estimate.
pub fn human_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64().round() as u64;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// The last `n` lines of `text`, joined with ` / ` (for one-line error messages).
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// At most `max` bytes of `s` (on a character boundary), with `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_estimates() {
        use std::time::Duration;
        for (secs, text) in [
            (0.2, "0s"),
            (45.4, "45s"),
            (200.0, "3m 20s"),
            (7500.0, "2h 05m"),
        ] {
            assert_eq!(human_duration(Duration::from_secs_f64(secs)), text);
        }
    }

    #[test]
    fn formats() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(truncate("ääää", 3), "ä…");
        assert_eq!(tail("a\nb\nc\n", 2), "b / c");
        assert_eq!(tail("", 2), "");
    }
}
