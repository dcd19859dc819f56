//! Read-only view of the NVIDIA GPUs: one [`Snapshot`] of the driver and every GPU.
//!
//! Backends, behind the [`GpuSource`] trait:
//! - [`Nvml`]: the real one, through nvml-wrapper. `libnvidia-ml.so.1` is loaded at run time
//!   (dlopen), so every binary builds and runs on a machine without the NVIDIA driver; there,
//!   [`GpuSource::snapshot`] returns a [`GpuUnavailable`] naming the library and the fix.
//! - [`FixtureGpu`]: answers from a JSON file of real readings (format of
//!   `common/data/h200-nvml-readings.json`, read from an H200 with nvml-wrapper), including the
//!   calls the card refused (a field holding `{"error": "..."}` reads as `None`).
//!
//! [`open`] picks the backend: NVML, unless the environment variable `CITADEL_FAKE_GPU`
//! ([`FAKE_GPU_ENV`]) names a readings file, which is then served by [`FixtureGpu`]. That is a
//! documented test and demo hook: it never touches a GPU.
//!
//! Units are NVML's: memory in bytes, power in milliwatts, temperatures in °C, clocks in MHz.
//! Nothing here changes a GPU setting; setters live in gpu-optimize.
//!
//! # Fixture format
//! `{"driver": "580.159.04", "cuda": 13000, "nvml": "13.580.159.04", "devices": [{...}]}` with,
//! per device, the keys of the H200 readings (`index`, `name`, `uuid`, `pci`, `memory`
//! `{total, used, free}`, `temperature_c`, `temp_slowdown_c`, `temp_shutdown_c`,
//! `power_usage_mw`, `power_limit_mw`, `power_limit_constraints_mw` `[min, max]`,
//! `power_limit_default_mw`, `enforced_power_limit_mw`, `persistence_mode`, `compute_mode`,
//! `mig_mode {current, pending}`, `ecc_enabled {current, pending}`, `ecc_uncorrected_volatile`,
//! clocks `*_mhz`, `performance_state`, `throttle_reasons`, `utilization {gpu, memory}`).
//! Keys a test may add (absent from the real readings, so `None` there):
//! `retired_pages_pending`, `remap_pending`, `default_app_clock_mem_mhz`, `max_clock_mem_mhz`,
//! and `processes: [{"pid": N, "used_memory": BYTES|null, "name": "..", "unit": ".."}]` (name
//! and unit are read from `/proc` when left out). A top-level `{"error": "..."}` makes the
//! source unavailable with that message (a box without a driver). A serialized [`Snapshot`]
//! (top-level `gpus` key) is accepted too.

mod fixture;
mod nvml;
mod proc;

pub use fixture::{h200_fixture_path, FixtureGpu};
pub use nvml::Nvml;
pub use proc::{process_name, unit_from_cgroup, unit_of_pid};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Environment variable naming a readings file to serve instead of the real NVML.
pub const FAKE_GPU_ENV: &str = "CITADEL_FAKE_GPU";

/// The NVML library, by its runtime soname (the unversioned `libnvidia-ml.so` only exists
/// where the driver's development package is installed).
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// The fix to print when the library or driver is missing.
const DRIVER_FIX: &str =
    "install the NVIDIA driver, e.g. nvidia-driver or nvidia-utils-XXX, and reboot or modprobe nvidia";

/// The driver and every GPU, read at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// e.g. `580.159.04`.
    pub driver_version: String,
    /// The CUDA version the driver supports, e.g. `13.0`.
    pub cuda_driver_version: Option<String>,
    /// e.g. `13.580.159.04`.
    pub nvml_version: Option<String>,
    /// By NVML index.
    pub gpus: Vec<GpuInfo>,
}

impl Snapshot {
    /// The GPU with NVML index `index`.
    pub fn gpu(&self, index: u32) -> Option<&GpuInfo> {
        self.gpus.iter().find(|g| g.index == index)
    }
}

/// One GPU's readings. `None` = NVML refused the call (not supported, no permission) or the
/// source does not know it; [`GpuInfo::refused`] says why where NVML gave a reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    /// e.g. `00000000:00:06.0`.
    pub pci_bus_id: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub memory_free_bytes: u64,
    pub temperature_c: Option<u32>,
    /// Hardware slowdown threshold.
    pub temp_slowdown_c: Option<u32>,
    pub temp_shutdown_c: Option<u32>,
    pub power_usage_mw: Option<u32>,
    /// The limit set by software (what `set_power_management_limit` changes).
    pub power_limit_mw: Option<u32>,
    pub power_limit_default_mw: Option<u32>,
    /// The limit actually enforced (the lower of all limiters).
    pub enforced_power_limit_mw: Option<u32>,
    /// `(min, max)` allowed for the power limit.
    pub power_limit_constraints_mw: Option<(u32, u32)>,
    pub persistence_mode: Option<bool>,
    /// `default`, `exclusive_process`, `prohibited` (the config's spelling) or
    /// `exclusive_thread` (removed mode).
    pub compute_mode: Option<String>,
    pub mig_current: Option<bool>,
    pub mig_pending: Option<bool>,
    pub ecc_enabled: Option<bool>,
    /// Uncorrected ECC errors since the driver loaded.
    pub ecc_uncorrected_volatile: Option<u64>,
    /// Pages waiting for retirement (pre-Ampere; Hopper refuses and uses row remapping).
    pub retired_pages_pending: Option<bool>,
    /// A row remap is waiting for a GPU reset.
    pub remap_pending: Option<bool>,
    pub clocks: Clocks,
    /// e.g. `P0`.
    pub performance_state: Option<String>,
    pub throttle_reasons: Option<String>,
    pub utilization_gpu_pct: Option<u32>,
    pub utilization_memory_pct: Option<u32>,
    /// Compute processes running on this GPU.
    pub processes: Vec<GpuProcess>,
    /// Field name -> NVML's answer, for each call the card refused.
    #[serde(default)]
    pub refused: BTreeMap<String, String>,
}

/// Clocks in MHz.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Clocks {
    /// Current graphics clock.
    pub graphics_mhz: Option<u32>,
    /// Application clocks (target).
    pub app_graphics_mhz: Option<u32>,
    pub app_mem_mhz: Option<u32>,
    /// Default application clocks (what a reset gives back).
    pub default_app_graphics_mhz: Option<u32>,
    pub default_app_mem_mhz: Option<u32>,
    pub max_graphics_mhz: Option<u32>,
    pub max_mem_mhz: Option<u32>,
}

/// A compute process on a GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// `None` when NVML cannot tell (e.g. inside some containers).
    pub used_memory_bytes: Option<u64>,
    /// `/proc/PID/comm` (or argv0), `?` when the process is not visible here.
    pub name: String,
    /// The systemd unit it runs in, from `/proc/PID/cgroup`.
    pub unit: Option<String>,
}

impl GpuProcess {
    /// Fill name and unit from `/proc`.
    pub fn from_pid(pid: u32, used_memory_bytes: Option<u64>) -> GpuProcess {
        GpuProcess {
            pid,
            used_memory_bytes,
            name: process_name(pid).unwrap_or_else(|| "?".into()),
            unit: unit_of_pid(pid),
        }
    }
}

/// No GPU information at all: no library, no driver, no permission, unreadable fixture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct GpuUnavailable {
    /// One line naming the library (or file) and the fix.
    pub message: String,
}

impl GpuUnavailable {
    pub fn new(message: impl Into<String>) -> Self {
        GpuUnavailable {
            message: message.into(),
        }
    }
}

/// Anything that can read the GPUs.
pub trait GpuSource {
    fn snapshot(&self) -> Result<Snapshot, GpuUnavailable>;
}

/// The backend to use: NVML, or the readings file named by `CITADEL_FAKE_GPU`.
pub fn open() -> Box<dyn GpuSource> {
    match std::env::var_os(FAKE_GPU_ENV) {
        Some(p) if !p.is_empty() => match FixtureGpu::load(Path::new(&p)) {
            Ok(f) => Box::new(f),
            Err(e) => Box::new(Unavailable(e)),
        },
        _ => match Nvml::init() {
            Ok(n) => Box::new(n),
            Err(e) => Box::new(Unavailable(e)),
        },
    }
}

/// A source that has nothing but the reason why.
struct Unavailable(GpuUnavailable);

impl GpuSource for Unavailable {
    fn snapshot(&self) -> Result<Snapshot, GpuUnavailable> {
        Err(self.0.clone())
    }
}

/// `Zero` -> `P0`: nvml-wrapper's Debug names of a performance state, as in the readings file.
fn pstate_from_debug(s: &str) -> String {
    const NAMES: [&str; 16] = [
        "Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten",
        "Eleven", "Twelve", "Thirteen", "Fourteen", "Fifteen",
    ];
    match NAMES.iter().position(|n| *n == s) {
        Some(i) => format!("P{i}"),
        None => s.to_string(),
    }
}

/// The config's spelling of a compute mode name as nvml-wrapper's Debug writes it.
fn compute_mode_from_debug(s: &str) -> String {
    match s {
        "Default" => "default".into(),
        "ExclusiveThread" => "exclusive_thread".into(),
        "ExclusiveProcess" => "exclusive_process".into(),
        "Prohibited" => "prohibited".into(),
        other => other.to_string(),
    }
}

/// `13000` -> `13.0` (NVML's CUDA driver version encoding).
pub fn cuda_version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_versions_format() {
        assert_eq!(cuda_version_string(13000), "13.0");
        assert_eq!(cuda_version_string(12040), "12.4");
    }
}
