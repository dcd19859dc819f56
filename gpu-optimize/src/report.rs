//! The report: one entry per check or change, the whole document for `--json`, and the exit code.

use citadel_common::gpu::{GpuInfo, Snapshot};
use citadel_common::Exit;
use serde::Serialize;

pub use citadel_common::report::Status;
use citadel_common::report::{verdict, Finding};

/// One line of the report: `{"gpu": 0|null, "check": "...", "status": "...", "detail": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub gpu: Option<u32>,
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// The failure means "no usable GPU" (exit 69), not "verification failed" (exit 1).
    #[serde(skip)]
    pub unavailable: bool,
}

impl Check {
    pub fn new(gpu: Option<u32>, check: &str, status: Status, detail: impl Into<String>) -> Self {
        Check {
            gpu,
            check: check.to_string(),
            status,
            detail: detail.into(),
            unavailable: false,
        }
    }
    pub fn ok(gpu: Option<u32>, check: &str, detail: impl Into<String>) -> Self {
        Self::new(gpu, check, Status::Ok, detail)
    }
    pub fn warn(gpu: Option<u32>, check: &str, detail: impl Into<String>) -> Self {
        Self::new(gpu, check, Status::Warn, detail)
    }
    pub fn fail(gpu: Option<u32>, check: &str, detail: impl Into<String>) -> Self {
        Self::new(gpu, check, Status::Fail, detail)
    }
    /// Mark as a "no usable GPU" failure.
    pub fn unavailable(mut self) -> Self {
        self.unavailable = true;
        self
    }
    /// One line: `gpu 0: temperature: fail: ...`.
    pub fn line(&self) -> String {
        let who = self.gpu.map_or_else(String::new, |g| format!("gpu {g}: "));
        format!(
            "{who}{}: {}: {}",
            self.check,
            self.status.as_str(),
            self.detail
        )
    }
}

impl Finding for Check {
    fn status(&self) -> Status {
        self.status
    }
    fn exit(&self) -> Exit {
        if self.unavailable {
            Exit::Unavailable
        } else {
            Exit::Failure
        }
    }
}

/// The driver versions, as read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Driver {
    pub driver_version: String,
    pub cuda_driver_version: Option<String>,
    pub nvml_version: Option<String>,
}

/// The `--json` document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `apply`, `check` or `restore`.
    pub mode: String,
    /// `null` when no driver could be read.
    pub driver: Option<Driver>,
    /// The readings the checks were made on (after the changes, in apply and restore mode).
    pub gpus: Vec<GpuInfo>,
    /// Settings changed (apply, restore), in order.
    pub changes: Vec<Check>,
    pub checks: Vec<Check>,
    /// The exit code this run ends with.
    pub exit: u8,
}

impl Report {
    pub fn new(mode: &str) -> Report {
        Report {
            mode: mode.to_string(),
            driver: None,
            gpus: Vec::new(),
            changes: Vec::new(),
            checks: Vec::new(),
            exit: 0,
        }
    }

    /// Record the readings.
    pub fn set_snapshot(&mut self, s: &Snapshot) {
        self.driver = Some(Driver {
            driver_version: s.driver_version.clone(),
            cuda_driver_version: s.cuda_driver_version.clone(),
            nvml_version: s.nvml_version.clone(),
        });
        self.gpus = s.gpus.clone();
    }

    /// The exit code: 69 for a "no usable GPU" failure, 1 for any other failure, else 0.
    pub fn outcome(&self) -> Exit {
        verdict(self.deciding_order()).exit
    }

    /// Every entry in the order that decides the exit status: "no usable GPU" first.
    fn deciding_order(&self) -> impl Iterator<Item = &Check> + Clone {
        let all = self.changes.iter().chain(&self.checks);
        all.clone()
            .filter(|c| c.unavailable)
            .chain(all.filter(|c| !c.unavailable))
    }

    /// The failed entries that decide the exit status, one line each (the error message).
    pub fn failure_lines(&self) -> Vec<String> {
        let all = || self.deciding_order();
        citadel_common::report::deciding(all(), &verdict(all()))
            .into_iter()
            .map(Check::line)
            .collect()
    }

    /// A human-readable table of changes and checks.
    pub fn table(&self) -> String {
        let mut rows = vec![vec![
            "GPU".to_string(),
            "CHECK".to_string(),
            "STATUS".to_string(),
            "DETAIL".to_string(),
        ]];
        for c in self.changes.iter().chain(&self.checks) {
            rows.push(vec![
                c.gpu.map_or_else(|| "-".to_string(), |g| g.to_string()),
                c.check.clone(),
                c.status.as_str().to_string(),
                c.detail.clone(),
            ]);
        }
        citadel_common::output::table(&rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_ranks_unavailable_over_failure() {
        let mut r = Report::new("check");
        r.checks.push(Check::ok(None, "driver", "x"));
        r.checks.push(Check::warn(Some(0), "processes", "x"));
        assert_eq!(r.outcome(), Exit::Ok);
        r.checks.push(Check::fail(Some(0), "ecc", "x"));
        assert_eq!(r.outcome(), Exit::Failure);
        r.checks
            .push(Check::fail(None, "gpu_count", "x").unavailable());
        assert_eq!(r.outcome(), Exit::Unavailable);
    }

    #[test]
    fn entries_serialize_as_documented() {
        let c = Check::fail(Some(0), "ecc", "3 errors").unavailable();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"gpu": 0, "check": "ecc", "status": "fail", "detail": "3 errors"})
        );
        let v = serde_json::to_value(Check::ok(None, "driver", "d")).unwrap();
        assert_eq!(v["gpu"], serde_json::Value::Null);
        assert_eq!(c.line(), "gpu 0: ecc: fail: 3 errors");
    }
}
