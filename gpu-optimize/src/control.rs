//! The write side: every setter gpu-optimize may call, kept apart from the read side
//! ([`GpuSource`]) so that code given only a reader cannot change a GPU.

use citadel_common::gpu::{GpuSource, GpuUnavailable, Nvml, Snapshot};

/// Settings gpu-optimize changes. Errors are one line (NVML's reason, and the fix).
pub trait GpuControl {
    fn set_persistence(&mut self, gpu: u32, enabled: bool) -> Result<(), String>;
    fn set_power_limit(&mut self, gpu: u32, mw: u32) -> Result<(), String>;
    fn set_app_clocks(&mut self, gpu: u32, mem_mhz: u32, graphics_mhz: u32) -> Result<(), String>;
    fn reset_app_clocks(&mut self, gpu: u32) -> Result<(), String>;
    fn set_locked_clocks(&mut self, gpu: u32, min_mhz: u32, max_mhz: u32) -> Result<(), String>;
    fn reset_locked_clocks(&mut self, gpu: u32) -> Result<(), String>;
    /// `mode` in the config's spelling: `default`, `exclusive_process`, `prohibited`.
    fn set_compute_mode(&mut self, gpu: u32, mode: &str) -> Result<(), String>;
}

/// A GPU backend that can be read and written (apply, restore).
pub trait Card: GpuSource + GpuControl {}
impl<T: GpuSource + GpuControl> Card for T {}

/// The real NVML, read and write.
pub struct NvmlCard {
    nvml: Nvml,
}

impl NvmlCard {
    pub fn init() -> Result<NvmlCard, GpuUnavailable> {
        Ok(NvmlCard {
            nvml: Nvml::init()?,
        })
    }

    fn with_device(
        &mut self,
        gpu: u32,
        what: &str,
        f: impl FnOnce(&mut nvml_wrapper::Device<'_>) -> Result<(), nvml_wrapper::error::NvmlError>,
    ) -> Result<(), String> {
        use nvml_wrapper::error::NvmlError as E;
        let mut d = self
            .nvml
            .handle()
            .device_by_index(gpu)
            .map_err(|e| format!("NVML: GPU {gpu}: {e}"))?;
        f(&mut d).map_err(|e| match e {
            E::NoPermission => format!("NVML: {what}: no permission (run as root)"),
            E::NotSupported => format!("NVML: {what}: not supported by this GPU"),
            other => format!("NVML: {what}: {other}"),
        })
    }
}

impl GpuSource for NvmlCard {
    fn snapshot(&self) -> Result<Snapshot, GpuUnavailable> {
        self.nvml.snapshot()
    }
}

impl GpuControl for NvmlCard {
    fn set_persistence(&mut self, gpu: u32, enabled: bool) -> Result<(), String> {
        self.with_device(gpu, "set persistence mode", |d| d.set_persistent(enabled))
    }
    fn set_power_limit(&mut self, gpu: u32, mw: u32) -> Result<(), String> {
        self.with_device(gpu, "set power limit", |d| d.set_power_management_limit(mw))
    }
    fn set_app_clocks(&mut self, gpu: u32, mem_mhz: u32, graphics_mhz: u32) -> Result<(), String> {
        self.with_device(gpu, "set application clocks", |d| {
            d.set_applications_clocks(mem_mhz, graphics_mhz)
        })
    }
    fn reset_app_clocks(&mut self, gpu: u32) -> Result<(), String> {
        self.with_device(gpu, "reset application clocks", |d| {
            d.reset_applications_clocks()
        })
    }
    fn set_locked_clocks(&mut self, gpu: u32, min_mhz: u32, max_mhz: u32) -> Result<(), String> {
        use nvml_wrapper::enums::device::GpuLockedClocksSetting;
        self.with_device(gpu, "lock graphics clocks", |d| {
            d.set_gpu_locked_clocks(GpuLockedClocksSetting::Numeric {
                min_clock_mhz: min_mhz,
                max_clock_mhz: max_mhz,
            })
        })
    }
    fn reset_locked_clocks(&mut self, gpu: u32) -> Result<(), String> {
        self.with_device(gpu, "reset locked clocks", |d| d.reset_gpu_locked_clocks())
    }
    fn set_compute_mode(&mut self, gpu: u32, mode: &str) -> Result<(), String> {
        use nvml_wrapper::enum_wrappers::device::ComputeMode as M;
        let m = match mode {
            "default" => M::Default,
            "exclusive_process" => M::ExclusiveProcess,
            "prohibited" => M::Prohibited,
            other => return Err(format!("compute mode {other:?} cannot be set")),
        };
        self.with_device(gpu, "set compute mode", |d| d.set_compute_mode(m))
    }
}
