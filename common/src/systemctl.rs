//! The one wrapper around `systemctl` (argv vectors, absolute path, stderr in the error).
//!
//! `systemctl show` has no JSON output on systemd 252, so properties are read as `KEY=VALUE`
//! lines; an unknown unit still exits 0, so callers check `LoadState`.

use crate::Failure;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// The systemd state of one unit, as the helpers need it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnitStatus {
    pub unit: String,
    /// loaded, not-found, masked ...
    pub load_state: String,
    /// active, activating, deactivating, inactive, failed, reloading
    pub active_state: String,
    pub sub_state: String,
    /// 0 when there is no main process.
    pub main_pid: u32,
    /// How many times systemd restarted it automatically.
    pub n_restarts: u32,
    /// success, exit-code, signal, watchdog, start-limit-hit ...
    pub result: String,
    /// Exit status of the last main process.
    pub exec_main_status: i32,
    /// CLOCK_MONOTONIC µs when it last entered `active` (0 if never).
    pub active_enter_monotonic_usec: u64,
    /// `STATUS=` text sent by the service.
    pub status_text: String,
    /// enabled, disabled, static ...
    pub unit_file_state: String,
}

/// The properties [`UnitStatus`] is read from.
pub const STATUS_PROPERTIES: &[&str] = &[
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "MainPID",
    "NRestarts",
    "Result",
    "ExecMainStatus",
    "ActiveEnterTimestampMonotonic",
    "StatusText",
    "UnitFileState",
];

impl UnitStatus {
    /// Build from `systemctl show` properties.
    pub fn from_properties(unit: &str, p: &BTreeMap<String, String>) -> UnitStatus {
        let s = |k: &str| p.get(k).cloned().unwrap_or_default();
        let n = |k: &str| p.get(k).and_then(|v| v.parse().ok()).unwrap_or_default();
        UnitStatus {
            unit: unit.to_string(),
            load_state: s("LoadState"),
            active_state: s("ActiveState"),
            sub_state: s("SubState"),
            main_pid: n("MainPID") as u32,
            n_restarts: n("NRestarts") as u32,
            result: s("Result"),
            exec_main_status: n("ExecMainStatus") as i32,
            active_enter_monotonic_usec: n("ActiveEnterTimestampMonotonic"),
            status_text: s("StatusText"),
            unit_file_state: s("UnitFileState"),
        }
    }
}

/// Parse `systemctl show` output: `KEY=VALUE` lines, blocks separated by blank lines.
pub fn parse_show(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = vec![];
    let mut cur = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            cur.insert(k.to_string(), v.to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// What the helpers ask of systemd. The real one runs `systemctl`; tests use fakes.
pub trait Systemd: Send + Sync {
    /// The state of each unit, in order.
    fn status(&self, units: &[String]) -> Result<Vec<UnitStatus>, Failure>;
    /// The monitor's restart of a broken model: `systemctl kill --kill-whom=main
    /// --signal=SIGUSR1 UNIT` ([`crate::launch::NO_DRAIN_SIGNAL`]: start-model's next stop
    /// kills the engine at once instead of draining requests that will never finish; best
    /// effort), then `systemctl restart --no-block UNIT`: queue a restart job and return at once.
    fn restart_no_block(&self, unit: &str) -> Result<(), Failure>;
    /// `systemctl stop --no-block UNIT` (a quarantined GPU's models).
    fn stop_no_block(&self, unit: &str) -> Result<(), Failure>;
}

/// `systemctl`, by absolute path.
#[derive(Debug, Clone)]
pub struct Systemctl {
    pub program: PathBuf,
}

impl Default for Systemctl {
    fn default() -> Self {
        Systemctl {
            program: PathBuf::from(crate::paths::SYSTEMCTL),
        }
    }
}

/// The output of one `systemctl` run.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Systemctl {
    /// Run `systemctl ARGS...`; a failure to spawn is an error, a non-zero exit is not.
    pub fn run<S: AsRef<str>>(&self, args: &[S]) -> Result<Output, Failure> {
        let argv: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        log::trace!("{} {}", self.program.display(), argv.join(" "));
        let out = Command::new(&self.program)
            .args(&argv)
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            .output()
            .map_err(|e| {
                Failure::unavailable(format!("cannot run {}: {e}", self.program.display()))
            })?;
        Ok(Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// Run and require exit 0; the error carries systemctl's stderr.
    pub fn run_ok<S: AsRef<str>>(&self, args: &[S]) -> Result<Output, Failure> {
        let out = self.run(args)?;
        if out.code != 0 {
            let argv: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
            return Err(Failure::other(format!(
                "systemctl {} exited with {}: {}",
                argv.join(" "),
                out.code,
                out.stderr.lines().next().unwrap_or("")
            )));
        }
        Ok(out)
    }

    /// `systemctl show -p ... UNITS...` parsed, one map per unit, in order.
    pub fn show(
        &self,
        units: &[String],
        props: &[&str],
    ) -> Result<Vec<BTreeMap<String, String>>, Failure> {
        if units.is_empty() {
            return Ok(vec![]);
        }
        let mut args = vec!["show".to_string(), "-p".to_string(), props.join(",")];
        args.extend(units.iter().cloned());
        let out = self.run_ok(&args)?;
        let blocks = parse_show(&out.stdout);
        if blocks.len() != units.len() {
            return Err(Failure::other(format!(
                "systemctl show returned {} blocks for {} units",
                blocks.len(),
                units.len()
            )));
        }
        Ok(blocks)
    }
}

impl Systemd for Systemctl {
    fn status(&self, units: &[String]) -> Result<Vec<UnitStatus>, Failure> {
        let blocks = self.show(units, STATUS_PROPERTIES)?;
        Ok(units
            .iter()
            .zip(blocks.iter())
            .map(|(u, p)| UnitStatus::from_properties(u, p))
            .collect())
    }

    fn restart_no_block(&self, unit: &str) -> Result<(), Failure> {
        let signal = format!("--signal={}", crate::launch::NO_DRAIN_SIGNAL);
        if let Err(e) = self.run_ok(&["kill", "--kill-whom=main", &signal, unit]) {
            log::warn!("{unit}: could not ask for a stop without drain: {e}");
        }
        self.run_ok(&["restart", "--no-block", unit]).map(|_| ())
    }

    fn stop_no_block(&self, unit: &str) -> Result<(), Failure> {
        self.run_ok(&["stop", "--no-block", unit]).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_blocks() {
        let text = "Id=a.service\nLoadState=loaded\nActiveState=active\nMainPID=42\nNRestarts=2\n\nId=b.service\nLoadState=not-found\nActiveState=inactive\nMainPID=0\n";
        let b = parse_show(text);
        assert_eq!(b.len(), 2);
        let a = UnitStatus::from_properties("a.service", &b[0]);
        assert_eq!(a.main_pid, 42);
        assert_eq!(a.n_restarts, 2);
        assert_eq!(a.active_state, "active");
        let b = UnitStatus::from_properties("b.service", &b[1]);
        assert_eq!(b.load_state, "not-found");
    }

    #[test]
    fn a_missing_systemctl_is_unavailable() {
        let s = Systemctl {
            program: PathBuf::from("/nonexistent/systemctl"),
        };
        let e = s.run(&["status"]).unwrap_err();
        assert_eq!(e.exit, crate::Exit::Unavailable);
    }

    #[test]
    fn a_monitor_restart_asks_for_no_drain_first_and_survives_a_refused_kill() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("argv");
        let prog = d.path().join("systemctl");
        std::fs::write(
            &prog,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\n[ \"$1\" = kill ] && exit 1\nexit 0\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = Systemctl { program: prog };
        s.restart_no_block("citadel-model@a.service").unwrap();
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "kill --kill-whom=main --signal=SIGUSR1 citadel-model@a.service\nrestart --no-block citadel-model@a.service\n"
        );
    }
}
