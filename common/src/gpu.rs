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

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl fmt::Display for GpuUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for GpuUnavailable {}

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

// ---------------------------------------------------------------------------------------------
// /proc helpers

/// The process name: `/proc/PID/comm`, else the base name of argv0.
pub fn process_name(pid: u32) -> Option<String> {
    if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        let s = s.trim_end_matches('\n');
        if !s.is_empty() {
            return Some(s.to_string());
        }
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    let argv0 = String::from_utf8_lossy(argv0);
    let base = argv0.rsplit('/').next().unwrap_or(&argv0);
    (!base.is_empty()).then(|| base.to_string())
}

/// The systemd unit (`*.service` / `*.scope`) a process runs in, from `/proc/PID/cgroup`.
pub fn unit_of_pid(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    unit_from_cgroup(&text)
}

/// The unit in `/proc/PID/cgroup` text: the unified (`0::`) line, else the `name=systemd`
/// line; the last path element ending in `.service` or `.scope` (a unit with delegated
/// sub-cgroups has plain elements below it).
pub fn unit_from_cgroup(text: &str) -> Option<String> {
    let path_of = |pred: &dyn Fn(&str) -> bool| {
        text.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrl, path) = (it.next()?, it.next()?, it.next()?);
            pred(ctrl).then_some(path)
        })
    };
    let path = path_of(&|c| c.is_empty()).or_else(|| path_of(&|c| c == "name=systemd"))?;
    path.split('/')
        .rfind(|e| e.ends_with(".service") || e.ends_with(".scope"))
        .map(str::to_string)
}

/// `13000` -> `13.0` (NVML's CUDA driver version encoding).
pub fn cuda_version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

// ---------------------------------------------------------------------------------------------
// The real backend

/// The real NVML, loaded from [`NVML_LIBRARY`] at run time.
pub struct Nvml {
    nvml: nvml_wrapper::Nvml,
    /// A second handle on the same library for the calls nvml-wrapper 0.10 does not wrap
    /// (MIG mode, row remapping); `None` when it cannot be had.
    raw: Option<nvml_wrapper_sys::bindings::NvmlLib>,
}

impl Nvml {
    /// Load the library and initialise NVML.
    pub fn init() -> Result<Nvml, GpuUnavailable> {
        let nvml = nvml_wrapper::Nvml::builder()
            .lib_path(std::ffi::OsStr::new(NVML_LIBRARY))
            .init()
            .map_err(|e| init_error(&e))?;
        // SAFETY: loading the same shared library nvml-wrapper already loaded; the symbols
        // are only called with handles from `nvml`, which outlives this handle's uses.
        let raw = unsafe { nvml_wrapper_sys::bindings::NvmlLib::new(NVML_LIBRARY) }.ok();
        Ok(Nvml { nvml, raw })
    }

    /// The initialised library, for the setters in gpu-optimize.
    pub fn handle(&self) -> &nvml_wrapper::Nvml {
        &self.nvml
    }

    fn read_gpu(&self, index: u32) -> Result<GpuInfo, GpuUnavailable> {
        use nvml_wrapper::enum_wrappers::device::{
            Clock, EccCounter, MemoryError, TemperatureSensor, TemperatureThreshold,
        };
        let lost = |what: &str, e: nvml_wrapper::error::NvmlError| {
            GpuUnavailable::new(format!(
                "NVML: GPU {index}: reading {what} failed: {e} (check `dmesg` for Xid errors; the GPU may need a reset)"
            ))
        };
        let d = self
            .nvml
            .device_by_index(index)
            .map_err(|e| lost("the device", e))?;
        let mem = d.memory_info().map_err(|e| lost("memory", e))?;
        let mut refused = Refusals::default();
        let name = refused.opt("name", d.name()).unwrap_or_else(|| "?".into());
        let uuid = refused.opt("uuid", d.uuid()).unwrap_or_else(|| "?".into());
        let pci_bus_id = refused
            .opt("pci_bus_id", d.pci_info().map(|p| p.bus_id))
            .unwrap_or_default();
        let processes = refused
            .opt("processes", d.running_compute_processes())
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let used = match p.used_gpu_memory {
                    nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => Some(b),
                    nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
                };
                GpuProcess::from_pid(p.pid, used)
            })
            .collect();
        let util = refused.opt("utilization", d.utilization_rates());
        let mig = refused.opt("mig_mode", self.mig_mode(&d));
        let remap_pending = refused.opt("remap_pending", self.remap_pending(&d));
        #[allow(deprecated)]
        let clocks = Clocks {
            graphics_mhz: refused.opt("clock_graphics_mhz", d.clock_info(Clock::Graphics)),
            app_graphics_mhz: refused.opt(
                "app_clock_graphics_mhz",
                d.applications_clock(Clock::Graphics),
            ),
            app_mem_mhz: refused.opt("app_clock_mem_mhz", d.applications_clock(Clock::Memory)),
            default_app_graphics_mhz: refused.opt(
                "default_app_clock_graphics_mhz",
                d.default_applications_clock(Clock::Graphics),
            ),
            default_app_mem_mhz: refused.opt(
                "default_app_clock_mem_mhz",
                d.default_applications_clock(Clock::Memory),
            ),
            max_graphics_mhz: refused
                .opt("max_clock_graphics_mhz", d.max_clock_info(Clock::Graphics)),
            max_mem_mhz: refused.opt("max_clock_mem_mhz", d.max_clock_info(Clock::Memory)),
        };
        Ok(GpuInfo {
            index,
            name,
            uuid,
            pci_bus_id,
            memory_total_bytes: mem.total,
            memory_used_bytes: mem.used,
            memory_free_bytes: mem.free,
            temperature_c: refused.opt("temperature_c", d.temperature(TemperatureSensor::Gpu)),
            temp_slowdown_c: refused.opt(
                "temp_slowdown_c",
                d.temperature_threshold(TemperatureThreshold::Slowdown),
            ),
            temp_shutdown_c: refused.opt(
                "temp_shutdown_c",
                d.temperature_threshold(TemperatureThreshold::Shutdown),
            ),
            power_usage_mw: refused.opt("power_usage_mw", d.power_usage()),
            power_limit_mw: refused.opt("power_limit_mw", d.power_management_limit()),
            power_limit_default_mw: refused
                .opt("power_limit_default_mw", d.power_management_limit_default()),
            enforced_power_limit_mw: refused
                .opt("enforced_power_limit_mw", d.enforced_power_limit()),
            power_limit_constraints_mw: refused.opt(
                "power_limit_constraints_mw",
                d.power_management_limit_constraints()
                    .map(|c| (c.min_limit, c.max_limit)),
            ),
            persistence_mode: refused.opt("persistence_mode", d.is_in_persistent_mode()),
            compute_mode: refused.opt("compute_mode", d.compute_mode().map(compute_mode_name)),
            mig_current: mig.map(|m| m.0),
            mig_pending: mig.map(|m| m.1),
            ecc_enabled: refused.opt(
                "ecc_enabled",
                d.is_ecc_enabled().map(|s| s.currently_enabled),
            ),
            ecc_uncorrected_volatile: refused.opt(
                "ecc_uncorrected_volatile",
                d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
            ),
            retired_pages_pending: refused
                .opt("retired_pages_pending", d.are_pages_pending_retired()),
            remap_pending,
            clocks,
            performance_state: refused.opt(
                "performance_state",
                d.performance_state().map(|p| pstate_name(&p)),
            ),
            throttle_reasons: refused.opt(
                "throttle_reasons",
                d.current_throttle_reasons().map(|r| format!("{r:?}")),
            ),
            utilization_gpu_pct: util.as_ref().map(|u| u.gpu),
            utilization_memory_pct: util.as_ref().map(|u| u.memory),
            processes,
            refused: refused.0,
        })
    }

    fn raw_call(
        &self,
        what: &str,
        f: impl FnOnce(&nvml_wrapper_sys::bindings::NvmlLib) -> Option<u32>,
    ) -> Result<(), String> {
        let raw = self
            .raw
            .as_ref()
            .ok_or_else(|| format!("{NVML_LIBRARY} could not be opened for {what}"))?;
        match f(raw) {
            None => Err(format!("{what}: symbol not found in {NVML_LIBRARY}")),
            Some(code) => nvml_wrapper::error::nvml_try(code).map_err(|e| e.to_string()),
        }
    }

    /// `(current, pending)` MIG mode.
    fn mig_mode(&self, d: &nvml_wrapper::Device<'_>) -> Result<(bool, bool), String> {
        let (mut cur, mut pend) = (0u32, 0u32);
        self.raw_call("nvmlDeviceGetMigMode", |raw| {
            let f = raw.nvmlDeviceGetMigMode.as_ref().ok()?;
            // SAFETY: a valid device handle from the initialised library, two out-params.
            Some(unsafe { f(d.handle(), &mut cur, &mut pend) })
        })?;
        Ok((cur != 0, pend != 0))
    }

    /// Whether a row remap waits for a GPU reset.
    fn remap_pending(&self, d: &nvml_wrapper::Device<'_>) -> Result<bool, String> {
        let (mut corr, mut unc, mut pending, mut failed) = (0u32, 0u32, 0u32, 0u32);
        self.raw_call("nvmlDeviceGetRemappedRows", |raw| {
            let f = raw.nvmlDeviceGetRemappedRows.as_ref().ok()?;
            // SAFETY: a valid device handle from the initialised library, four out-params.
            Some(unsafe { f(d.handle(), &mut corr, &mut unc, &mut pending, &mut failed) })
        })?;
        Ok(pending != 0)
    }
}

impl GpuSource for Nvml {
    fn snapshot(&self) -> Result<Snapshot, GpuUnavailable> {
        let driver_version = self.nvml.sys_driver_version().map_err(|e| {
            GpuUnavailable::new(format!(
                "NVML: reading the driver version failed: {e} ({DRIVER_FIX})"
            ))
        })?;
        let count = self.nvml.device_count().map_err(|e| {
            GpuUnavailable::new(format!("NVML: counting GPUs failed: {e} ({DRIVER_FIX})"))
        })?;
        let gpus = (0..count)
            .map(|i| self.read_gpu(i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Snapshot {
            driver_version,
            cuda_driver_version: self
                .nvml
                .sys_cuda_driver_version()
                .ok()
                .map(cuda_version_string),
            nvml_version: self.nvml.sys_nvml_version().ok(),
            gpus,
        })
    }
}

/// Calls the card refused, by field name.
#[derive(Default)]
struct Refusals(BTreeMap<String, String>);

impl Refusals {
    fn opt<T, E: fmt::Display>(&mut self, field: &str, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.insert(field.to_string(), e.to_string());
                None
            }
        }
    }
}

/// One line for an NVML init failure, naming the library and the fix.
fn init_error(e: &nvml_wrapper::error::NvmlError) -> GpuUnavailable {
    use nvml_wrapper::error::NvmlError as E;
    GpuUnavailable::new(match e {
        E::LibloadingError(_) => format!(
            "NVML unavailable: {NVML_LIBRARY} not found ({DRIVER_FIX})"
        ),
        E::FailedToLoadSymbol(s) => format!(
            "NVML unavailable: {NVML_LIBRARY} lacks symbol {s} (driver too old or broken: reinstall the NVIDIA driver)"
        ),
        E::DriverNotLoaded => format!(
            "NVML unavailable: {NVML_LIBRARY} loaded but the NVIDIA kernel driver is not running (run `modprobe nvidia` or reinstall the driver; check `dmesg`)"
        ),
        E::NoPermission => format!(
            "NVML unavailable: {NVML_LIBRARY}: no permission to talk to the driver (/dev/nvidiactl): run as root or fix the device permissions"
        ),
        other => format!("NVML unavailable: initialising {NVML_LIBRARY} failed: {other}"),
    })
}

fn compute_mode_name(m: nvml_wrapper::enum_wrappers::device::ComputeMode) -> String {
    use nvml_wrapper::enum_wrappers::device::ComputeMode as M;
    match m {
        M::Default => "default",
        M::ExclusiveThread => "exclusive_thread",
        M::Prohibited => "prohibited",
        M::ExclusiveProcess => "exclusive_process",
    }
    .to_string()
}

/// `Zero` -> `P0` (nvml-wrapper's Debug names, as in the readings file).
fn pstate_name(p: &nvml_wrapper::enum_wrappers::device::PerformanceState) -> String {
    pstate_from_debug(&format!("{p:?}"))
}

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

// ---------------------------------------------------------------------------------------------
// The fixture backend

/// Answers from a readings file, exactly as the card it was read from (refused -> `None`).
#[derive(Debug, Clone)]
pub struct FixtureGpu {
    file: PathBuf,
    result: Result<Snapshot, GpuUnavailable>,
}

impl FixtureGpu {
    /// Read and parse a readings file. A file that cannot be read or parsed is an error;
    /// a file that says `{"error": ...}` loads, and its snapshot is unavailable.
    pub fn load(file: &Path) -> Result<FixtureGpu, GpuUnavailable> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            GpuUnavailable::new(format!(
                "{FAKE_GPU_ENV}={}: cannot read GPU readings file: {e}",
                file.display()
            ))
        })?;
        Self::parse(&text, file)
    }

    /// Parse readings text; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<FixtureGpu, GpuUnavailable> {
        let bad = |m: String| {
            GpuUnavailable::new(format!(
                "{FAKE_GPU_ENV}={}: invalid GPU readings file: {m}",
                file.display()
            ))
        };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let result = if let Some(msg) = v.get("error").and_then(Value::as_str) {
            Err(GpuUnavailable::new(msg))
        } else if v.get("gpus").is_some() {
            Ok(serde_json::from_value::<Snapshot>(v).map_err(|e| bad(e.to_string()))?)
        } else {
            Ok(snapshot_from_readings(&v).map_err(bad)?)
        };
        Ok(FixtureGpu {
            file: file.to_path_buf(),
            result,
        })
    }

    /// The file it was loaded from.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

impl GpuSource for FixtureGpu {
    fn snapshot(&self) -> Result<Snapshot, GpuUnavailable> {
        self.result.clone()
    }
}

/// Build a snapshot from the readings format (see the module docs).
fn snapshot_from_readings(v: &Value) -> Result<Snapshot, String> {
    let driver_version = v
        .get("driver")
        .and_then(Value::as_str)
        .ok_or("missing \"driver\"")?
        .to_string();
    let devices = v
        .get("devices")
        .and_then(Value::as_array)
        .ok_or("missing \"devices\" list")?;
    let gpus = devices
        .iter()
        .enumerate()
        .map(|(i, d)| device_from_readings(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Snapshot {
        driver_version,
        cuda_driver_version: v
            .get("cuda")
            .and_then(Value::as_i64)
            .map(|c| cuda_version_string(c as i32)),
        nvml_version: v.get("nvml").and_then(Value::as_str).map(str::to_string),
        gpus,
    })
}

fn device_from_readings(pos: usize, d: &Value) -> Result<GpuInfo, String> {
    let mut refused = BTreeMap::new();
    // A field: absent -> None; {"error": ..} -> None and noted as refused; else the value.
    let mut field = |k: &str| -> Option<&Value> {
        let v = d.get(k)?;
        if let Some(e) = v.get("error") {
            refused.insert(k.to_string(), e.as_str().unwrap_or("error").to_string());
            return None;
        }
        (!v.is_null()).then_some(v)
    };
    let u32_of = |v: Option<&Value>| v.and_then(Value::as_u64).map(|x| x as u32);
    let bool_of =
        |v: Option<&Value>| v.and_then(|v| v.as_bool().or_else(|| v.as_u64().map(|n| n != 0)));
    let str_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let index = u32_of(field("index")).unwrap_or(pos as u32);
    let mem = field("memory")
        .cloned()
        .ok_or(format!("device {index}: missing \"memory\""))?;
    let mem_of = |k: &str| {
        mem.get(k)
            .and_then(Value::as_u64)
            .ok_or(format!("device {index}: missing memory.{k}"))
    };
    let constraints = field("power_limit_constraints_mw").and_then(|c| {
        let a = c.as_array()?;
        Some((a.first()?.as_u64()? as u32, a.get(1)?.as_u64()? as u32))
    });
    let mig = field("mig_mode").cloned();
    let ecc = field("ecc_enabled").cloned();
    let util = field("utilization").cloned();
    let processes = match field("processes") {
        None => Vec::new(),
        Some(p) => p
            .as_array()
            .ok_or(format!("device {index}: \"processes\" must be a list"))?
            .iter()
            .map(|p| {
                let pid = p
                    .get("pid")
                    .and_then(Value::as_u64)
                    .ok_or(format!("device {index}: a process without \"pid\""))?
                    as u32;
                let mut gp =
                    GpuProcess::from_pid(pid, p.get("used_memory").and_then(Value::as_u64));
                if let Some(n) = p.get("name").and_then(Value::as_str) {
                    gp.name = n.to_string();
                }
                if let Some(u) = p.get("unit").and_then(Value::as_str) {
                    gp.unit = Some(u.to_string());
                }
                Ok(gp)
            })
            .collect::<Result<Vec<_>, String>>()?,
    };
    Ok(GpuInfo {
        index,
        name: str_of(field("name")).unwrap_or_else(|| "?".into()),
        uuid: str_of(field("uuid")).unwrap_or_else(|| "?".into()),
        pci_bus_id: str_of(field("pci")).unwrap_or_default(),
        memory_total_bytes: mem_of("total")?,
        memory_used_bytes: mem_of("used")?,
        memory_free_bytes: mem_of("free")?,
        temperature_c: u32_of(field("temperature_c")),
        temp_slowdown_c: u32_of(field("temp_slowdown_c")),
        temp_shutdown_c: u32_of(field("temp_shutdown_c")),
        power_usage_mw: u32_of(field("power_usage_mw")),
        power_limit_mw: u32_of(field("power_limit_mw")),
        power_limit_default_mw: u32_of(field("power_limit_default_mw")),
        enforced_power_limit_mw: u32_of(field("enforced_power_limit_mw")),
        power_limit_constraints_mw: constraints,
        persistence_mode: bool_of(field("persistence_mode")),
        compute_mode: str_of(field("compute_mode")).map(|s| compute_mode_from_debug(&s)),
        mig_current: bool_of(mig.as_ref().and_then(|m| m.get("current"))),
        mig_pending: bool_of(mig.as_ref().and_then(|m| m.get("pending"))),
        ecc_enabled: bool_of(ecc.as_ref().and_then(|m| m.get("current"))),
        ecc_uncorrected_volatile: field("ecc_uncorrected_volatile").and_then(Value::as_u64),
        retired_pages_pending: bool_of(field("retired_pages_pending")),
        remap_pending: bool_of(field("remap_pending")),
        clocks: Clocks {
            graphics_mhz: u32_of(field("clock_graphics_mhz")),
            app_graphics_mhz: u32_of(field("app_clock_graphics_mhz")),
            app_mem_mhz: u32_of(field("app_clock_mem_mhz")),
            default_app_graphics_mhz: u32_of(field("default_app_clock_graphics_mhz")),
            default_app_mem_mhz: u32_of(field("default_app_clock_mem_mhz")),
            max_graphics_mhz: u32_of(field("max_clock_graphics_mhz")),
            max_mem_mhz: u32_of(field("max_clock_mem_mhz")),
        },
        performance_state: str_of(field("performance_state")).map(|s| pstate_from_debug(&s)),
        throttle_reasons: str_of(field("throttle_reasons")),
        utilization_gpu_pct: u32_of(util.as_ref().and_then(|u| u.get("gpu"))),
        utilization_memory_pct: u32_of(util.as_ref().and_then(|u| u.get("memory"))),
        processes,
        refused,
    })
}

/// The H200 readings shipped with the project (tests and demos).
pub fn h200_fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/h200-nvml-readings.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h200() -> Snapshot {
        FixtureGpu::load(&h200_fixture_path())
            .unwrap()
            .snapshot()
            .unwrap()
    }

    #[test]
    fn h200_fixture_reads_like_the_card() {
        let s = h200();
        assert_eq!(s.driver_version, "580.159.04");
        assert_eq!(s.cuda_driver_version.as_deref(), Some("13.0"));
        assert_eq!(s.nvml_version.as_deref(), Some("13.580.159.04"));
        assert_eq!(s.gpus.len(), 1);
        let g = s.gpu(0).unwrap();
        assert_eq!(g.name, "NVIDIA H200");
        assert_eq!(g.uuid, "GPU-abb3f99e-7dc8-fb04-7f9d-6c963a49df37");
        assert_eq!(g.pci_bus_id, "00000000:00:06.0");
        assert_eq!(g.memory_total_bytes, 150_754_820_096);
        assert_eq!(g.memory_free_bytes, 150_109_880_320);
        assert_eq!(g.memory_used_bytes, 0);
        assert_eq!(g.temperature_c, Some(36));
        assert_eq!(g.temp_slowdown_c, Some(89));
        assert_eq!(g.temp_shutdown_c, Some(95));
        assert_eq!(g.power_usage_mw, Some(101_263));
        assert_eq!(g.power_limit_mw, Some(700_000));
        assert_eq!(g.power_limit_constraints_mw, Some((200_000, 700_000)));
        assert_eq!(g.persistence_mode, Some(true));
        assert_eq!(g.compute_mode.as_deref(), Some("default"));
        assert_eq!((g.mig_current, g.mig_pending), (Some(false), Some(false)));
        assert_eq!(g.ecc_enabled, Some(true));
        assert_eq!(g.ecc_uncorrected_volatile, Some(0));
        assert_eq!(g.clocks.app_graphics_mhz, Some(1980));
        assert_eq!(g.clocks.app_mem_mhz, Some(3201));
        assert_eq!(g.performance_state.as_deref(), Some("P0"));
        assert!(g.processes.is_empty());
        // Not in the readings (nvidia-smi shows retired pages N/A on Hopper): unknown.
        assert_eq!(g.retired_pages_pending, None);
        assert_eq!(g.remap_pending, None);
    }

    #[test]
    fn refused_fields_read_as_none_with_the_reason() {
        let mut v: Value =
            serde_json::from_str(&std::fs::read_to_string(h200_fixture_path()).unwrap()).unwrap();
        v["devices"][0]["power_usage_mw"] = serde_json::json!({"error": "NotSupported"});
        v["devices"][0]["mig_mode"] = serde_json::json!({"error": "NotSupported"});
        let s = FixtureGpu::parse(&v.to_string(), Path::new("x.json"))
            .unwrap()
            .snapshot()
            .unwrap();
        let g = &s.gpus[0];
        assert_eq!(g.power_usage_mw, None);
        assert_eq!(g.mig_current, None);
        assert_eq!(
            g.refused.get("power_usage_mw").map(String::as_str),
            Some("NotSupported")
        );
        assert!(g.refused.contains_key("mig_mode"));
    }

    #[test]
    fn processes_are_named_from_proc_or_the_file() {
        let mut v: Value =
            serde_json::from_str(&std::fs::read_to_string(h200_fixture_path()).unwrap()).unwrap();
        let me = std::process::id();
        v["devices"][0]["processes"] = serde_json::json!([
            {"pid": me, "used_memory": 1024},
            {"pid": 4_000_000, "used_memory": null, "name": "python3", "unit": "citadel-model@phi3.service"}
        ]);
        let s = FixtureGpu::parse(&v.to_string(), Path::new("x.json"))
            .unwrap()
            .snapshot()
            .unwrap();
        let p = &s.gpus[0].processes;
        assert_eq!(p[0].pid, me);
        assert_eq!(p[0].used_memory_bytes, Some(1024));
        assert_eq!(Some(p[0].name.clone()), process_name(me));
        assert_ne!(p[0].name, "?");
        assert_eq!(p[1].name, "python3");
        assert_eq!(p[1].used_memory_bytes, None);
        assert_eq!(p[1].unit.as_deref(), Some("citadel-model@phi3.service"));
    }

    #[test]
    fn error_file_is_unavailable_and_bad_file_names_itself() {
        let f = FixtureGpu::parse(
            r#"{"error": "NVML unavailable: test"}"#,
            Path::new("e.json"),
        )
        .unwrap();
        assert_eq!(f.snapshot().unwrap_err().message, "NVML unavailable: test");
        let e = FixtureGpu::load(Path::new("/nonexistent/readings.json")).unwrap_err();
        assert!(e.message.contains("/nonexistent/readings.json"), "{e}");
        assert!(e.message.contains(FAKE_GPU_ENV), "{e}");
        let e = FixtureGpu::parse(r#"{"driver": "1"}"#, Path::new("b.json")).unwrap_err();
        assert!(e.message.contains("devices"), "{e}");
    }

    #[test]
    fn serialized_snapshot_round_trips() {
        let s = h200();
        let text = serde_json::to_string(&s).unwrap();
        let back = FixtureGpu::parse(&text, Path::new("s.json"))
            .unwrap()
            .snapshot()
            .unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn unit_from_cgroup_finds_the_unit() {
        assert_eq!(
            unit_from_cgroup("0::/system.slice/citadel-model@phi3.service\n").as_deref(),
            Some("citadel-model@phi3.service")
        );
        // Delegated sub-cgroup below the unit.
        assert_eq!(
            unit_from_cgroup("0::/system.slice/foo.service/payload/x\n").as_deref(),
            Some("foo.service")
        );
        assert_eq!(
            unit_from_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n").as_deref(),
            Some("session-3.scope")
        );
        // cgroup v1: the name=systemd hierarchy.
        assert_eq!(
            unit_from_cgroup("12:cpu:/\n1:name=systemd:/system.slice/vllm.service\n").as_deref(),
            Some("vllm.service")
        );
        assert_eq!(unit_from_cgroup("0::/\n"), None);
        assert_eq!(unit_from_cgroup(""), None);
    }

    #[test]
    fn cuda_versions_format() {
        assert_eq!(cuda_version_string(13000), "13.0");
        assert_eq!(cuda_version_string(12040), "12.4");
    }

    #[test]
    fn real_nvml_read_only_when_present() {
        match Nvml::init() {
            Err(e) => {
                // The message names the library and is one line.
                assert!(e.message.contains(NVML_LIBRARY), "{e}");
                assert!(!e.message.contains('\n'));
                println!("skipped: no NVML here ({e})");
            }
            Ok(n) => {
                let s = n.snapshot().expect("snapshot from a working NVML");
                assert!(!s.driver_version.is_empty());
                for g in &s.gpus {
                    assert!(g.memory_total_bytes > 0);
                    assert!(g.memory_used_bytes <= g.memory_total_bytes);
                }
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            }
        }
    }
}
