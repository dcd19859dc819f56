//! The one check-report engine: the ok/warn/fail scale every checking command reports in
//! (storage-setup, gpu-optimize, `citadel-service check --host`), serialised as `"ok"`,
//! `"warn"`, `"fail"`, and the one rule that turns a list of findings into an exit status and a
//! summary ([`verdict`]).
//!
//! The exit rule: no failed finding is 0; otherwise the exit status the first failed finding
//! calls for. A report lists its findings in the order that decides, causes before their
//! consequences: storage-setup's models link before the model directories behind it;
//! gpu-optimize passes its "no usable GPU" findings (69) first, so they outrank a setting that
//! did not verify (1).

use crate::exit::Exit;
use crate::text::count;
use serde::Serialize;

/// How one check came out; ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// The worse of two statuses.
    pub fn worst(self, other: Status) -> Status {
        self.max(other)
    }
}

/// One entry of a check report.
pub trait Finding {
    fn status(&self) -> Status;
    /// The exit status this finding calls for when it failed; 1 unless it says otherwise.
    fn exit(&self) -> Exit {
        Exit::Failure
    }
}

/// What a list of findings comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The exit status the run ends with (the rule in the module's doc).
    pub exit: Exit,
    pub failed: usize,
    pub warned: usize,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    /// `WHAT: ok`, `WHAT: ok, 2 warnings`, `WHAT: 1 check failed, 1 warning`.
    pub fn summary(&self, what: &str) -> String {
        match (self.failed, self.warned) {
            (0, 0) => format!("{what}: ok"),
            (0, w) => format!("{what}: ok, {}", count(w, "warning")),
            (f, 0) => format!("{what}: {} failed", count(f, "check")),
            (f, w) => format!(
                "{what}: {} failed, {}",
                count(f, "check"),
                count(w, "warning")
            ),
        }
    }
}

/// Judge the findings (the exit rule in the module's doc).
pub fn verdict<'a, F: Finding + 'a>(findings: impl IntoIterator<Item = &'a F>) -> Verdict {
    let mut v = Verdict {
        exit: Exit::Ok,
        failed: 0,
        warned: 0,
    };
    for f in findings {
        match f.status() {
            Status::Ok => {}
            Status::Warn => v.warned += 1,
            Status::Fail => {
                v.failed += 1;
                if v.failed == 1 {
                    // A failed finding never makes the run succeed.
                    v.exit = match f.exit() {
                        Exit::Ok => Exit::Failure,
                        e => e,
                    };
                }
            }
        }
    }
    v
}

/// The failed findings that call for the verdict's exit status, the first one first (the
/// ones a one-line error should name).
pub fn deciding<'a, F: Finding + 'a>(
    findings: impl IntoIterator<Item = &'a F>,
    verdict: &Verdict,
) -> Vec<&'a F> {
    findings
        .into_iter()
        .filter(|f| f.status() == Status::Fail)
        .filter(|f| verdict.exit == Exit::Failure || f.exit() == verdict.exit)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialise_lowercase_and_order_by_severity() {
        assert_eq!(serde_json::to_string(&Status::Warn).unwrap(), "\"warn\"");
        assert_eq!(Status::Fail.as_str(), "fail");
        assert!(Status::Ok < Status::Warn && Status::Warn < Status::Fail);
        assert_eq!(Status::Warn.worst(Status::Ok), Status::Warn);
        assert_eq!(Status::Warn.worst(Status::Fail), Status::Fail);
    }

    struct F(Status, Exit);
    impl Finding for F {
        fn status(&self) -> Status {
            self.0
        }
        fn exit(&self) -> Exit {
            self.1
        }
    }

    #[test]
    fn the_exit_is_the_first_failures() {
        use Exit::{Config, Failure, TempFail, Unavailable};
        use Status::{Fail, Warn};
        let v = verdict(&[F(Status::Ok, Failure), F(Warn, Failure)]);
        assert_eq!((v.exit, v.failed, v.warned, v.ok()), (Exit::Ok, 0, 1, true));
        let v = verdict(&[F(Fail, Failure), F(Fail, Unavailable), F(Fail, Config)]);
        assert_eq!((v.exit, v.failed), (Failure, 3));
        let v = verdict(&[F(Warn, Config), F(Fail, TempFail), F(Fail, Failure)]);
        assert_eq!(v.exit, TempFail);
        let v = verdict(&[F(Fail, Failure), F(Status::Ok, Config)]);
        assert_eq!(v.exit, Failure);
        // A failed finding never makes the run succeed.
        assert_eq!(verdict(&[F(Fail, Exit::Ok)]).exit, Failure);
        let all = [F(Fail, Unavailable), F(Fail, Failure), F(Warn, Unavailable)];
        let v = verdict(&all);
        assert_eq!(deciding(&all, &v).len(), 1);
        let all = [F(Fail, Failure), F(Fail, Failure)];
        assert_eq!(deciding(&all, &verdict(&all)).len(), 2);
    }

    #[test]
    fn summaries() {
        let v = |failed, warned| Verdict {
            exit: Exit::Ok,
            failed,
            warned,
        };
        assert_eq!(v(0, 0).summary("host"), "host: ok");
        assert_eq!(v(0, 2).summary("host"), "host: ok, 2 warnings");
        assert_eq!(v(1, 0).summary("host"), "host: 1 check failed");
        assert_eq!(v(2, 1).summary("host"), "host: 2 checks failed, 1 warning");
    }
}
