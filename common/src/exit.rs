//! The exit-code contract, shared by every binary and by the unit files.
//!
//! | code | name | meaning |
//! |---|---|---|
//! | 0 | ok | done |
//! | 1 | failure | unexpected failure |
//! | 2 | usage | bad command line (clap also uses 2) |
//! | 69 | unavailable | a required resource is missing: driver, mount, model files (EX_UNAVAILABLE) |
//! | 75 | temporary | try again later: port busy, GPU memory still held (EX_TEMPFAIL) |
//! | 78 | config | invalid configuration; restarting will not help (EX_CONFIG) |
//!
//! The model unit says `RestartPreventExitStatus=78` so a config error never becomes a
//! restart loop.

use std::fmt;
use std::process::ExitCode;

/// One outcome of a binary, as an exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    Unavailable = 69,
    TempFail = 75,
    Config = 78,
}

impl Exit {
    /// Every exit status, in code order.
    pub const ALL: [Exit; 6] = [
        Exit::Ok,
        Exit::Failure,
        Exit::Usage,
        Exit::Unavailable,
        Exit::TempFail,
        Exit::Config,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// The status with this code, if it is one of the contract's.
    pub fn from_code(code: i64) -> Option<Exit> {
        Exit::ALL.into_iter().find(|e| i64::from(e.code()) == code)
    }

    /// What the status means, in a few words (man pages, `citadel-service status`).
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Failure => "unexpected failure",
            Exit::Usage => "usage: bad command line or unknown service name",
            Exit::Unavailable => {
                "a required resource is missing (driver, mount, model files, systemd)"
            }
            Exit::TempFail => "temporary: port busy or GPU memory still held; retried",
            Exit::Config => "invalid configuration (run citadel-service check)",
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// An error on its way out of a binary: the exit status and one line for the journal.
///
/// A `Failure` never carries success: its status is private and [`Failure::new`] turns
/// [`Exit::Ok`] into [`Exit::Failure`] (an early end that is not an error is the caller's own
/// type, e.g. start-model's `Abort::Stopped`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    exit: Exit,
    pub message: String,
    /// The binary already printed its one JSON document (a report saying what failed): with
    /// `--json`, [`report_as`] prints no second one.
    pub document_printed: bool,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        debug_assert!(exit != Exit::Ok, "a Failure with exit status 0");
        Failure {
            exit: if exit == Exit::Ok {
                Exit::Failure
            } else {
                exit
            },
            message: message.into(),
            document_printed: false,
        }
    }
    /// The exit status (never [`Exit::Ok`]).
    pub fn exit(&self) -> Exit {
        self.exit
    }
    /// Exit 1: something unexpected.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(Exit::Failure, message)
    }
    /// Exit 2: the command line is wrong.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }
    /// Exit 69: a required resource (driver, mount, model files) is missing.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Exit::Unavailable, message)
    }
    /// Exit 75: temporary; trying again later may work.
    pub fn temporary(message: impl Into<String>) -> Self {
        Self::new(Exit::TempFail, message)
    }
    /// Exit 78: the configuration is invalid.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(Exit::Config, message)
    }
    /// Mark that stdout already holds this run's JSON document.
    pub fn with_document_printed(mut self) -> Self {
        self.document_printed = true;
        self
    }

    /// The one JSON document of a failed `--json` run:
    /// `{"error": {"exit": 78, "kind": "config", "message": "...", "lines": [...]}}`.
    pub fn json(&self) -> serde_json::Value {
        error_document(self.exit, &self.message)
    }

    /// Prefix the message with what we were doing.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::other(e.to_string())
    }
}

/// The name of an exit code in the error document.
pub fn kind(exit: Exit) -> &'static str {
    match exit {
        Exit::Ok => "ok",
        Exit::Failure => "failure",
        Exit::Usage => "usage",
        Exit::Unavailable => "unavailable",
        Exit::TempFail => "temporary",
        Exit::Config => "config",
    }
}

/// `{"error": {"exit", "kind", "message", "lines"}}`: the first line is the message, every
/// line is in `lines`. The one place the error document is built.
pub fn error_document(exit: Exit, message: &str) -> serde_json::Value {
    let lines: Vec<&str> = message.lines().collect();
    serde_json::json!({
        "error": {
            "exit": exit.code(),
            "kind": kind(exit),
            "message": lines.first().copied().unwrap_or(""),
            "lines": lines,
        }
    })
}

/// Log the failure (one line per message line, at error level) and turn the result into the
/// process exit code. Used as the last line of every `main` without `--json`.
pub fn report(result: Result<Exit, Failure>) -> ExitCode {
    report_as(result, false)
}

/// [`report`], and with `json` a failure is also one JSON document on stdout
/// ([`Failure::json`]) unless the binary printed its own: `--json` always prints exactly one
/// valid document, with the same exit code.
pub fn report_as(result: Result<Exit, Failure>, json: bool) -> ExitCode {
    match result {
        Ok(code) => code.into(),
        Err(f) => {
            for line in f.message.lines() {
                log::error!("{line}");
            }
            if json && !f.document_printed {
                println!("{}", f.json());
            }
            f.exit.into()
        }
    }
}

/// Parse the command line. A usage error with `--json` among the arguments is also an error
/// document on stdout (exit 2); help and version print as usual.
pub fn parse_args<T: clap::Parser>() -> T {
    match T::try_parse() {
        Ok(t) => t,
        Err(e) => {
            use clap::error::ErrorKind;
            let informational = matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if !informational && std::env::args_os().any(|a| a == "--json") {
                let text = e.kind().as_str().map_or_else(
                    || e.to_string().lines().next().unwrap_or("").to_string(),
                    |k| k.to_string(),
                );
                let msg = e
                    .to_string()
                    .lines()
                    .find(|l| l.starts_with("error:"))
                    .map_or(text, |l| l.trim_start_matches("error:").trim().to_string());
                println!("{}", error_document(Exit::Usage, &msg));
            }
            e.exit()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_contract() {
        assert_eq!(Exit::Ok.code(), 0);
        assert_eq!(Exit::Failure.code(), 1);
        assert_eq!(Exit::Usage.code(), 2);
        assert_eq!(Exit::Unavailable.code(), 69);
        assert_eq!(Exit::TempFail.code(), 75);
        assert_eq!(Exit::Config.code(), 78);
    }

    #[test]
    fn codes_round_trip_and_have_a_meaning() {
        for e in Exit::ALL {
            assert_eq!(Exit::from_code(i64::from(e.code())), Some(e));
            assert!(!e.meaning().is_empty());
        }
        assert_eq!(Exit::from_code(3), None);
        assert!(Exit::Config.meaning().contains("invalid configuration"));
    }

    #[test]
    fn context_prefixes_the_message() {
        let f = Failure::temporary("port 11400 busy").context("model phi3");
        assert_eq!(f.to_string(), "model phi3: port 11400 busy");
        assert_eq!(f.exit(), Exit::TempFail);
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn a_failure_never_carries_success() {
        assert_eq!(Failure::new(Exit::Ok, "x").exit(), Exit::Failure);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "a Failure with exit status 0")]
    fn a_failure_with_status_zero_is_a_bug() {
        let _ = Failure::new(Exit::Ok, "x");
    }
}
