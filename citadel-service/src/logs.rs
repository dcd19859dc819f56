//! `logs`: `journalctl` for the chosen units, with `-f`, `-n N`, `--since`, `-p PRIO` and
//! `--grep` passed through; `--kernel` merges the kernel's lines (NVIDIA Xid, OOM killer) by
//! matching the units' fields or `_TRANSPORT=kernel` (journalctl's `+` is an OR).
//! journalctl replaces this process (exec), so it owns the terminal, the pager and Ctrl-C.

use citadel_common::{paths, Exit, Failure};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// What to pass through to journalctl.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub lines: Option<u32>,
    pub since: Option<String>,
    pub priority: Option<String>,
    pub grep: Option<String>,
    pub kernel: bool,
}

/// The syslog priorities journalctl accepts, by name (or 0-7, or a range `err..warning`).
pub const PRIORITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// A `-p` value: a name, a digit 0-7, or a range of those (`FROM..TO`).
pub fn parse_priority(s: &str) -> Result<String, String> {
    let one = |p: &str| {
        PRIORITIES.contains(&p) || matches!(p, "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7")
    };
    let ok = match s.split_once("..") {
        Some((a, b)) => one(a) && one(b),
        None => one(s),
    };
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a priority: one of {} or 0-7, or a range FROM..TO",
            PRIORITIES.join(", ")
        ))
    }
}

/// journalctl's arguments (without the program): `-u UNIT` per unit, then the options.
pub fn journal_args(units: &[String], o: &LogOptions) -> Vec<String> {
    let mut a = vec![];
    if o.kernel {
        // Positional matches: fields of the same name OR, `+` ORs the groups.
        let mut groups: Vec<String> = vec![];
        for u in units {
            groups.push(format!("_SYSTEMD_UNIT={u}"));
            groups.push(format!("UNIT={u}"));
        }
        groups.push("_TRANSPORT=kernel".into());
        for (i, g) in groups.into_iter().enumerate() {
            if i > 0 {
                a.push("+".into());
            }
            a.push(g);
        }
    } else {
        for u in units {
            a.push("-u".to_string());
            a.push(u.clone());
        }
    }
    if let Some(p) = &o.priority {
        a.push("-p".into());
        a.push(p.clone());
    }
    if let Some(g) = &o.grep {
        a.push("--grep".into());
        a.push(g.clone());
    }
    if let Some(n) = o.lines {
        a.push("-n".into());
        a.push(n.to_string());
    }
    if let Some(s) = &o.since {
        a.push("--since".into());
        a.push(s.clone());
    }
    if o.follow {
        a.push("-f".into());
    }
    a
}

/// Run journalctl in place of this process; returns only if it could not be started.
pub fn exec(units: &[String], o: &LogOptions) -> Result<Exit, Failure> {
    let args = journal_args(units, o);
    log::debug!("{} {}", paths::JOURNALCTL, args.join(" "));
    let err = Command::new(paths::JOURNALCTL).args(&args).exec();
    Err(Failure::unavailable(format!(
        "cannot run {}: {err}",
        paths::JOURNALCTL
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_passed_through() {
        let units = vec!["a.service".to_string(), "b.target".to_string()];
        assert_eq!(
            journal_args(&units, &LogOptions::default()),
            ["-u", "a.service", "-u", "b.target"]
        );
        let o = LogOptions {
            follow: true,
            lines: Some(50),
            since: Some("-1h".into()),
            ..LogOptions::default()
        };
        assert_eq!(
            journal_args(&units[..1], &o),
            ["-u", "a.service", "-n", "50", "--since", "-1h", "-f"]
        );
        let o = LogOptions {
            priority: Some("err".into()),
            grep: Some("Xid|oom".into()),
            kernel: true,
            ..LogOptions::default()
        };
        assert_eq!(
            journal_args(&units, &o),
            [
                "_SYSTEMD_UNIT=a.service",
                "+",
                "UNIT=a.service",
                "+",
                "_SYSTEMD_UNIT=b.target",
                "+",
                "UNIT=b.target",
                "+",
                "_TRANSPORT=kernel",
                "-p",
                "err",
                "--grep",
                "Xid|oom"
            ]
        );
    }

    #[test]
    fn priorities_are_journalctls() {
        for p in ["err", "warning", "0", "7", "err..warning", "0..3"] {
            assert_eq!(parse_priority(p).as_deref(), Ok(p));
        }
        for p in ["error", "8", "", "err..", "loud"] {
            assert!(parse_priority(p).is_err(), "{p}");
        }
    }
}
