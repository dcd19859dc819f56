//! Human output helpers: colour (only on a terminal, never with `NO_COLOR`), durations, bytes.
//! Everything here is pure: data in, `String` out.

use std::io::IsTerminal;

/// Whether to colour output written to stdout.
pub fn use_color() -> bool {
    color_allowed(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to a non-empty value
/// (<https://no-color.org>).
pub fn color_allowed(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.unwrap_or_default().is_empty()
}

/// How a word should look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Warn,
    Bad,
    Plain,
}

/// Paint `text` in the tone's colour when `color` is on.
pub fn paint(text: &str, tone: Tone, color: bool) -> String {
    let code = match tone {
        Tone::Good => "32",
        Tone::Warn => "33",
        Tone::Bad => "31",
        Tone::Plain => return text.to_string(),
    };
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// The tone of a systemd ActiveState or a health word.
pub fn tone_of(word: &str) -> Tone {
    match word {
        "active" | "healthy" | "ready" | "up" | "stopped" | "ok" => Tone::Good,
        "failed" | "unhealthy" | "gave_up" | "refused" | "timeout" | "error" | "not-installed" => {
            Tone::Bad
        }
        "activating" | "deactivating" | "reloading" | "starting" | "failing" | "restarting"
        | "loading" | "queued" | "stopping" | "stale" | "warning" => Tone::Warn,
        _ => Tone::Plain,
    }
}

/// `95s`, `3m05s`, `2h03m`, `4d02h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

pub use citadel_common::text::latency_ms;

/// A GPU temperature, the one way `health` and `top` print it: `41 C` (ASCII: any terminal).
pub fn celsius(t: u32) -> String {
    format!("{t} C")
}

/// Binary units with one decimal: `512.0 MiB`, `40.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub use citadel_common::output::{table, visible_len};

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(color_allowed(true, None));
        assert!(color_allowed(true, Some(OsStr::new(""))));
        assert!(!color_allowed(true, Some(OsStr::new("1"))));
        assert!(!color_allowed(false, None));
    }

    #[test]
    fn paint_is_plain_without_colour() {
        assert_eq!(paint("failed", Tone::Bad, false), "failed");
        assert_eq!(paint("failed", Tone::Bad, true), "\x1b[31mfailed\x1b[0m");
        assert_eq!(visible_len(&paint("failed", Tone::Bad, true)), 6);
    }

    #[test]
    fn durations_and_bytes() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(7380), "2h03m");
        assert_eq!(duration(3 * 86_400 + 7200), "3d02h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }

    #[test]
    fn coloured_tables_stay_aligned() {
        let t = table(&[
            vec!["A".into(), "B".into(), "C".into()],
            vec![paint("xx", Tone::Good, true), "y".into(), "z".into()],
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A   B  C");
        assert_eq!(visible_len(lines[1]), "xx  y  z".len());
    }
}
