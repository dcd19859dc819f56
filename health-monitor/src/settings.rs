//! The settings (from `[monitor]`), the targets (from `[models]`) and the monitor's authority.

use crate::decide::Policy;
use citadel_common::config::Config;
use citadel_common::systemd::{Job, Signal, Systemd, UnitStatus};
use citadel_common::Failure;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The monitor's settings, as durations (built from `[monitor]`; tests use milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub interval: Duration,
    pub probe_timeout: Duration,
    pub failure_threshold: u32,
    /// `None`: no deep probe.
    pub deep_interval: Option<Duration>,
    pub deep_timeout: Duration,
    pub stall: Duration,
    pub restart_budget: u32,
    pub restart_window: Duration,
    /// How long a queued restart is followed before the old process is judged again.
    pub restart_follow: Duration,
    /// `None`: not written.
    pub state_file: Option<PathBuf>,
    pub textfile: Option<PathBuf>,
    pub webhook_url: Option<String>,
    pub webhook_timeout: Duration,
    pub webhook_format: citadel_common::alert::Format,
    /// Where incidents and the GPU quarantine live (`paths.state_dir`); `None`: not kept.
    pub state_dir: Option<PathBuf>,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let m = &cfg.monitor;
        let s = Duration::from_secs;
        Settings {
            interval: s(m.interval_secs),
            probe_timeout: s(m.probe_timeout_secs),
            failure_threshold: m.failure_threshold.max(1),
            deep_interval: (m.deep_probe_interval_secs > 0).then(|| s(m.deep_probe_interval_secs)),
            deep_timeout: s(m.deep_probe_timeout_secs),
            stall: s(m.stall_secs),
            restart_budget: m.restart_budget,
            restart_window: s(m.restart_window_secs),
            // The old process may take stop_grace_secs to exit before the new one starts.
            restart_follow: s(cfg.engine.stop_grace_secs + 3 * m.interval_secs),
            state_file: Some(m.state_file.clone()),
            textfile: m.textfile.clone(),
            webhook_url: m.webhook_url.clone(),
            webhook_timeout: s(m.webhook_timeout_secs),
            webhook_format: m.webhook_format,
            state_dir: Some(cfg.paths.state_dir.clone()),
        }
    }

    pub(crate) fn policy(&self, may_restart: bool) -> Policy {
        Policy {
            failure_threshold: self.failure_threshold,
            stall: self.stall,
            probe_timeout: self.probe_timeout,
            restart_follow: self.restart_follow,
            may_restart,
        }
    }
}

/// One model as the monitor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub unit: String,
    pub port: u16,
    /// `http://HOST:PORT`.
    pub base_url: String,
    pub served_model_name: String,
    /// Disabled models are listed as such, never probed.
    pub enabled: bool,
    /// Its GPUs (a quarantined GPU stops its models).
    pub gpus: Vec<u32>,
}

impl Target {
    pub fn from_config(cfg: &Config) -> Vec<Target> {
        cfg.models
            .iter()
            .map(|m| Target {
                name: m.name.clone(),
                unit: m.unit(),
                port: m.port,
                base_url: citadel_common::probe::base_url(&cfg.engine.host, m.port),
                served_model_name: m.served_model_name.clone(),
                enabled: m.enabled,
                gpus: m.gpus.clone(),
            })
            .collect()
    }
}

/// Whether the monitor may restart units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// The service: restarts what the decision says.
    Supervise,
    /// `--once`: the decision is told it may not restart, and systemd is only reachable
    /// through [`StatusOnly`], which refuses restarts.
    Observe,
}

/// A [`Systemd`] that can read unit states and nothing else.
pub struct StatusOnly(pub Arc<dyn Systemd>);

impl Systemd for StatusOnly {
    fn units(&self, names: &[String]) -> Result<Vec<UnitStatus>, Failure> {
        self.0.units(names)
    }
    fn sweep(&self, names: &[String]) -> Result<Vec<UnitStatus>, Failure> {
        self.0.sweep(names)
    }
    fn queue(&self, job: Job, names: &[String]) -> Result<(), Failure> {
        Err(Failure::other(format!(
            "refusing to {} {}: this monitor is read-only (--once)",
            job.as_str(),
            names.join(" ")
        )))
    }
    fn signal_main(&self, unit: &str, signal: Signal) -> Result<(), Failure> {
        Err(Failure::other(format!(
            "refusing to send {signal} to {unit}: this monitor is read-only (--once)"
        )))
    }
    fn set_enabled(&self, _: bool, names: &[String]) -> Result<String, Failure> {
        Err(Failure::other(format!(
            "refusing to enable or disable {}: this monitor is read-only (--once)",
            names.join(" ")
        )))
    }
    fn journal_tail(&self, unit: &str, lines: u32) -> Result<String, Failure> {
        self.0.journal_tail(unit, lines)
    }
}
