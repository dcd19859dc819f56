//! The real backend: NVML through nvml-wrapper, loaded at run time.

use super::*;
use std::collections::BTreeMap;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs a machine without the NVIDIA driver"]
    fn no_nvml_names_the_library_in_one_line() {
        let e = match Nvml::init() {
            Err(e) => e,
            Ok(_) => panic!("NVML is present on this machine"),
        };
        assert!(e.message.contains(NVML_LIBRARY), "{e}");
        assert!(!e.message.contains('\n'));
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU and driver"]
    fn real_nvml_read_only_when_present() {
        let n = Nvml::init().unwrap_or_else(|e| panic!("no NVML here: {e}"));
        let s = n.snapshot().expect("snapshot from a working NVML");
        assert!(!s.driver_version.is_empty());
        for g in &s.gpus {
            assert!(g.memory_total_bytes > 0);
            assert!(g.memory_used_bytes <= g.memory_total_bytes);
        }
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    }
}
