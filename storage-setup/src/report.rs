//! The report: one entry per check, printed as an aligned table or as JSON.
//!
//! JSON shape (stdout with `--json`):
//!
//! ```json
//! {
//!   "mode": "setup",            // "setup" | "check" | "cleanup"
//!   "ok": true,                 // no entry failed
//!   "exit": 0,                  // the exit status the run ends with
//!   "changed": false,           // something was created, fixed or removed
//!   "summary": "already configured: nothing changed",
//!   "checks": [
//!     {"name": "models_mount", "path": "/mnt/citadel-models", "status": "ok",
//!      "detail": "mount point, device /dev/nvme1n1, xfs, 812.3 GiB free (minimum 20 GiB)",
//!      "changed": false, "action": null}
//!   ]
//! }
//! ```
//!
//! `status` is `ok`, `warn` or `fail`; `action` names what setup did (or, with `--check`, would
//! do) for that entry, `null` when nothing is needed.

use citadel_common::Exit;
use serde::Serialize;
use std::path::{Path, PathBuf};

pub use citadel_common::report::Status;
use citadel_common::report::{verdict, Finding};

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub status: Status,
    pub detail: String,
    pub changed: bool,
    pub action: Option<String>,
    /// For a failed entry: the exit status it calls for (not part of the JSON).
    #[serde(skip)]
    pub exit: Option<Exit>,
}

impl Entry {
    pub fn ok(name: impl Into<String>, path: &Path, detail: impl Into<String>) -> Entry {
        Entry {
            name: name.into(),
            path: path.to_path_buf(),
            status: Status::Ok,
            detail: detail.into(),
            changed: false,
            action: None,
            exit: None,
        }
    }
    pub fn warn(name: impl Into<String>, path: &Path, detail: impl Into<String>) -> Entry {
        Entry {
            status: Status::Warn,
            ..Entry::ok(name, path, detail)
        }
    }
    pub fn fail(
        name: impl Into<String>,
        path: &Path,
        exit: Exit,
        detail: impl Into<String>,
    ) -> Entry {
        Entry {
            status: Status::Fail,
            exit: Some(exit),
            ..Entry::ok(name, path, detail)
        }
    }
}

impl Finding for Entry {
    fn status(&self) -> Status {
        self.status
    }
    fn exit(&self) -> Exit {
        self.exit.unwrap_or(Exit::Failure)
    }
}

/// Which mode produced the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Setup,
    Check,
    Cleanup,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub ok: bool,
    pub exit: u8,
    pub changed: bool,
    pub summary: String,
    pub checks: Vec<Entry>,
}

impl Report {
    /// Build the report; `exit`, `ok` and `changed` follow from the entries.
    pub fn new(mode: Mode, checks: Vec<Entry>, summary: String) -> Report {
        let v = verdict(&checks);
        Report {
            mode,
            ok: v.ok(),
            exit: v.exit.code(),
            changed: checks.iter().any(|c| c.changed),
            summary,
            checks,
        }
    }

    /// Aligned text: `STATUS  NAME  PATH  DETAIL`, then the summary.
    pub fn text(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .checks
            .iter()
            .map(|c| {
                let mut detail = c.detail.clone();
                if let Some(a) = &c.action {
                    detail = format!("{detail} [{a}]");
                }
                vec![
                    c.status.as_str().to_string(),
                    c.name.clone(),
                    c.path.display().to_string(),
                    detail,
                ]
            })
            .collect();
        let mut out = citadel_common::output::table(&rows);
        out.push_str(&format!("storage-setup: {}\n", self.summary));
        out
    }

    /// The JSON document (common's one encoding, and its one failure).
    pub fn json(&self) -> Result<String, citadel_common::Failure> {
        citadel_common::output::to_json(self)
    }
}

/// The failed entry that decides the exit status (the rule of `citadel_common::report`), the
/// status, and how many entries failed.
pub fn first_failure(checks: &[Entry]) -> Option<(&Entry, Exit, usize)> {
    let v = verdict(checks);
    citadel_common::report::deciding(checks, &v)
        .first()
        .map(|e| (*e, v.exit, v.failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_and_flags_follow_the_entries() {
        let p = Path::new("/x");
        let r = Report::new(
            Mode::Check,
            vec![Entry::ok("a", p, "fine"), Entry::warn("b", p, "hm")],
            "s".into(),
        );
        assert!(r.ok);
        assert_eq!(r.exit, 0);
        assert!(!r.changed);
        let r = Report::new(
            Mode::Setup,
            vec![
                Entry::ok("a", p, "fine"),
                Entry::fail("b", p, Exit::Unavailable, "gone"),
                Entry::fail("c", p, Exit::Failure, "bad"),
            ],
            "s".into(),
        );
        assert!(!r.ok);
        assert_eq!(r.exit, 69);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let mut e = Entry::ok("models_link", Path::new("/opt/citadel/models"), "created");
        e.changed = true;
        e.action = Some("create symlink".into());
        let r = Report::new(Mode::Setup, vec![e], "configured".into());
        let v: serde_json::Value = serde_json::from_str(&r.json().unwrap()).unwrap();
        assert_eq!(v["mode"], "setup");
        assert_eq!(v["ok"], true);
        assert_eq!(v["exit"], 0);
        assert_eq!(v["changed"], true);
        let c = &v["checks"][0];
        assert_eq!(c["name"], "models_link");
        assert_eq!(c["path"], "/opt/citadel/models");
        assert_eq!(c["status"], "ok");
        assert_eq!(c["detail"], "created");
        assert_eq!(c["changed"], true);
        assert_eq!(c["action"], "create symlink");
        assert!(c.get("exit").is_none());
    }

    #[test]
    fn text_is_aligned_and_ends_with_the_summary() {
        let r = Report::new(
            Mode::Check,
            vec![
                Entry::ok("a", Path::new("/x"), "d1"),
                Entry::warn("long_name", Path::new("/y/z"), "d2"),
            ],
            "would change nothing".into(),
        );
        let t = r.text();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ok    a          /x    d1");
        assert_eq!(lines[1], "warn  long_name  /y/z  d2");
        assert_eq!(lines[2], "storage-setup: would change nothing");
    }
}
