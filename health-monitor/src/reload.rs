//! Config reload without a restart: SIGHUP (the unit's `ExecReload=`).
//!
//! On SIGHUP the loop wakes, sends `RELOADING=1`, re-reads and validates the config, swaps in
//! the new settings and models (records of models still present are kept), writes the
//! acknowledgement file and sends `READY=1` (sd_notify(3); systemd 252 has no
//! `Type=notify-reload`, so this is the `Type=notify` + `ExecReload=` form). A config that does
//! not validate is refused: the monitor keeps the running config, says why in one line and in
//! the acknowledgement.
//!
//! systemd 252 finishes a reload job when the `ExecReload=` process exits, so a bare
//! `kill -HUP` would let `systemctl reload` return before the monitor has reloaded.
//! `ExecReload=health-monitor --reload $MAINPID` is synchronous instead: it sends SIGHUP and
//! waits for the acknowledgement (`runtime_dir/monitor-config.json`, written at start and at
//! every reload), exiting 0 when the new config is in use, 78 when it was refused, 75 when no
//! acknowledgement came in time.

use citadel_common::config::Config;
use citadel_common::{notify, Exit, Failure};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The acknowledgement file: which config the running monitor uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loaded {
    pub pid: u32,
    /// Unix milliseconds of the last (re)load attempt.
    pub loaded_unix_ms: u64,
    pub config: String,
    /// The models it watches (enabled ones).
    pub models: Vec<String>,
    pub interval_secs: u64,
    /// Set when the last reload was refused (the previous config stays in use).
    pub error: Option<String>,
}

/// Where the acknowledgement lives.
pub fn ack_file(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("monitor-config.json")
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Loaded {
    pub fn of(cfg: &Config, error: Option<String>) -> Loaded {
        Loaded {
            pid: std::process::id(),
            loaded_unix_ms: unix_ms(),
            config: cfg.file.display().to_string(),
            models: cfg.enabled_models().map(|m| m.name.clone()).collect(),
            interval_secs: cfg.monitor.interval_secs,
            error,
        }
    }

    pub fn read(file: &Path) -> Option<Loaded> {
        serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
    }

    /// Write it (atomic); a failure is logged, not fatal.
    pub fn write(&self, runtime_dir: &Path) {
        let file = ack_file(runtime_dir);
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        if let Err(e) = citadel_common::fsutil::write_atomic(&file, &text, 0o644) {
            log::warn!("cannot write {}: {e}", file.display());
        }
    }
}

/// The monitor side: re-read the config named on the command line. `Ok` with the new config,
/// or `Err` with the one-line reason it was refused. Brackets the work with
/// `RELOADING=1` ... `READY=1`.
pub fn reload_config(file: &Path) -> Result<Config, String> {
    notify::notify("RELOADING=1\nSTATUS=reloading the config");
    Config::load(file).map_err(|e| {
        let n = e.issues.len();
        format!(
            "{}{}",
            e.lines().first().cloned().unwrap_or_default(),
            if n > 1 {
                format!(" (and {} more)", n - 1)
            } else {
                String::new()
            }
        )
    })
}

/// `--reload PID`: send SIGHUP to the monitor and wait for its acknowledgement.
pub fn signal_and_wait(pid: i32, runtime_dir: &Path, timeout: Duration) -> Result<Exit, Failure> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let file = ack_file(runtime_dir);
    let before = Loaded::read(&file).map_or(0, |l| l.loaded_unix_ms);
    let asked = unix_ms();
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .map_err(|e| Failure::other(format!("cannot signal the monitor (PID {pid}): {e}")))?;
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Some(l) = Loaded::read(&file) {
            if l.pid == pid as u32 && l.loaded_unix_ms > before && l.loaded_unix_ms >= asked {
                return match l.error {
                    None => {
                        log::info!(
                            "monitor (PID {pid}) reloaded {}: {} models every {}s",
                            l.config,
                            l.models.len(),
                            l.interval_secs
                        );
                        Ok(Exit::Ok)
                    }
                    Some(e) => Err(Failure::config(format!(
                        "the monitor refused the new config and keeps the old one: {e}"
                    ))),
                };
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Failure::temporary(format!(
        "the monitor (PID {pid}) did not acknowledge the reload within {}s ({} unchanged)",
        timeout.as_secs(),
        file.display()
    )))
}
