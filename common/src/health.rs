//! The health monitor's view of the box, written atomically to the state file
//! (`[monitor] state_file`, default `/run/citadel/health.json`) after every sweep, and read by
//! `citadel-service status` and `health`. The schema is versioned; readers ignore unknown fields.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Current schema version.
pub const SCHEMA: u32 = 1;

/// What the monitor concluded about one model in its last sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// `/health` 200 (and the deep probe, when due, answered).
    Healthy,
    /// The unit is activating: weights loading. Never restarted by the monitor.
    Starting,
    /// Failing, fewer than `failure_threshold` times in a row so far.
    Failing,
    /// The monitor queued a restart and is following it.
    Restarting,
    /// The restart budget is spent; waiting for an operator or for the model to recover.
    GaveUp,
    /// The unit is inactive (stopped on purpose). Left alone.
    Stopped,
    /// The unit is failed (systemd gave up, or a config error). Reported, not restarted.
    Failed,
    /// `enabled = false` in the config.
    Disabled,
}

impl ModelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Healthy => "healthy",
            ModelState::Starting => "starting",
            ModelState::Failing => "failing",
            ModelState::Restarting => "restarting",
            ModelState::GaveUp => "gave_up",
            ModelState::Stopped => "stopped",
            ModelState::Failed => "failed",
            ModelState::Disabled => "disabled",
        }
    }
}

/// One model's line in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelHealth {
    pub name: String,
    pub unit: String,
    pub port: u16,
    pub state: ModelState,
    /// systemd ActiveState at the sweep (active, activating, inactive, failed ...); `null` when
    /// the monitor did not ask (a disabled model) or systemd did not answer, as in
    /// `citadel-service health --json`. A state file that says `""` (older monitors) reads as
    /// `null`.
    #[serde(default, deserialize_with = "crate::text::empty_as_none")]
    pub unit_state: Option<String>,
    pub main_pid: u32,
    /// systemd's own automatic restarts (NRestarts).
    pub systemd_restarts: u32,
    /// Restarts the monitor issued (since it started).
    pub monitor_restarts: u32,
    pub consecutive_failures: u32,
    /// Latency of the last `/health` probe, when it answered.
    pub latency_ms: Option<u64>,
    /// Why it is not healthy, one line.
    pub reason: Option<String>,
    /// Unix time of the last change of `state`.
    pub since_unix: u64,
}

impl ModelHealth {
    /// Model `name` (its unit and port) in `state`, with nothing observed yet: no unit state,
    /// pid or latency, every counter zero, no reason, `since_unix` 0. The monitor's line for a
    /// model it has no record of, and the tests' fixture, set the rest with struct update syntax.
    pub fn new(name: &str, unit: &str, port: u16, state: ModelState) -> ModelHealth {
        ModelHealth {
            name: name.into(),
            unit: unit.into(),
            port,
            state,
            unit_state: None,
            main_pid: 0,
            systemd_restarts: 0,
            monitor_restarts: 0,
            consecutive_failures: 0,
            latency_ms: None,
            reason: None,
            since_unix: 0,
        }
    }
}

/// One GPU's reading, when NVML is there: the one type for it (the monitor's state file and
/// textfile, `citadel-service health`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuHealth {
    pub index: u32,
    pub temperature_c: Option<u32>,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
}

impl GpuHealth {
    /// The reading of every GPU of a snapshot, in its order.
    pub fn of(s: &crate::gpu::Snapshot) -> Vec<GpuHealth> {
        s.gpus
            .iter()
            .map(|g| GpuHealth {
                index: g.index,
                temperature_c: g.temperature_c,
                memory_used_bytes: g.memory_used_bytes,
                memory_total_bytes: g.memory_total_bytes,
            })
            .collect()
    }
}

/// The whole state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthState {
    pub schema: u32,
    /// Unix time the sweep finished.
    pub updated_unix: u64,
    /// How long the sweep took.
    pub sweep_ms: u64,
    pub models: Vec<ModelHealth>,
    /// GPUs quarantined after a fatal fault (`citadel-service gpu clear N` lifts it).
    #[serde(default)]
    pub quarantined_gpus: Vec<u32>,
    #[serde(default)]
    pub gpus: Vec<GpuHealth>,
}

/// The largest health state file read (16 MiB).
pub const MAX_STATE_BYTES: u64 = 16 << 20;

impl HealthState {
    /// Read the state file; `Ok(None)` when there is none (monitor not running yet). Only a
    /// regular file of at most [`MAX_STATE_BYTES`] is read: the service account can write the
    /// runtime directory, and a FIFO or `/dev/zero` there must not hang or flood `status`.
    pub fn read(path: &Path) -> Result<Option<HealthState>, String> {
        match crate::safefs::read_regular_text(path, MAX_STATE_BYTES) {
            Ok(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Write it atomically (mode 0644: status is readable by any local user).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(path, &text, 0o644)
    }

    pub fn model(&self, name: &str) -> Option<&ModelHealth> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// State-file fixtures for tests, this crate's and the other crates' (the `testing` feature;
/// never in a shipped binary): the one way a test builds a [`ModelHealth`] or a [`HealthState`];
/// a test that needs other values sets them with struct update syntax.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::{HealthState, ModelHealth, ModelState, SCHEMA};

    /// Model `name` in `state`: unit `citadel-model@NAME.service`, port 11400, everything else
    /// zero or unknown.
    pub fn model(name: &str, state: ModelState) -> ModelHealth {
        ModelHealth::new(name, &format!("citadel-model@{name}.service"), 11400, state)
    }

    /// A state file of `models`, written now (fresh), no GPU readings.
    pub fn state(models: Vec<ModelHealth>) -> HealthState {
        HealthState {
            schema: SCHEMA,
            updated_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            sweep_ms: 1,
            models,
            quarantined_gpus: vec![],
            gpus: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("health.json");
        assert_eq!(HealthState::read(&p).unwrap(), None);
        let s = HealthState {
            updated_unix: 1,
            sweep_ms: 2,
            ..testing::state(vec![ModelHealth {
                port: 11403,
                unit_state: Some("activating".into()),
                main_pid: 7,
                reason: Some("loading".into()),
                since_unix: 1,
                ..testing::model("phi3", ModelState::Starting)
            }])
        };
        s.write(&p).unwrap();
        assert_eq!(HealthState::read(&p).unwrap().as_ref(), Some(&s));
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"state\": \"starting\""), "{text}");
        // Unknown is null, never "": an older monitor's "" reads as unknown too.
        let mut unknown = s.clone();
        unknown.models[0].unit_state = None;
        unknown.write(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("\"unit_state\": null"), "{text}");
        std::fs::write(
            &p,
            text.replace("\"unit_state\": null", "\"unit_state\": \"\""),
        )
        .unwrap();
        assert_eq!(HealthState::read(&p).unwrap(), Some(unknown));
    }
}
