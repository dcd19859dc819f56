//! `logs`: `journalctl` for the chosen units, with `-f`, `-n N` and `--since` passed through.
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
}

/// journalctl's arguments (without the program): `-u UNIT` per unit, then the options.
pub fn journal_args(units: &[String], o: &LogOptions) -> Vec<String> {
    let mut a = vec![];
    for u in units {
        a.push("-u".to_string());
        a.push(u.clone());
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
        };
        assert_eq!(
            journal_args(&units[..1], &o),
            ["-u", "a.service", "-n", "50", "--since", "-1h", "-f"]
        );
    }
}
