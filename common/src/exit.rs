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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
        }
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

/// Log the failure (one line per message line, at error level) and turn the result into the
/// process exit code. Used as the last line of every `main`.
pub fn report(result: Result<Exit, Failure>) -> ExitCode {
    match result {
        Ok(code) => code.into(),
        Err(f) => {
            for line in f.message.lines() {
                log::error!("{line}");
            }
            f.exit.into()
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
        assert_eq!(f.exit, Exit::TempFail);
    }
}
