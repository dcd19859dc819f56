//! A fake card that answers and accepts settings the way a real one does, for tests and for the
//! `CITADEL_FAKE_GPU` demo hook (then every change is written back to that file, so a later
//! run, e.g. `--restore`, sees it). It starts from real readings (an H200: milliwatts, bytes,
//! the calls that card refused) and rejects what NVML rejects: a power limit outside the
//! constraints, a GPU index that does not exist, a setting the card does not report.

use crate::control::GpuControl;
use citadel_common::gpu::{FixtureGpu, GpuInfo, GpuSource, GpuUnavailable, Snapshot};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An in-memory GPU box.
#[derive(Debug, Clone)]
pub struct FakeCard {
    snap: Snapshot,
    /// Locked graphics clocks per GPU (NVML has no getter for them).
    locked: BTreeMap<u32, (u32, u32)>,
    /// Where to write the readings back after each change.
    persist: Option<PathBuf>,
    /// Every setter call, in order (`set_power_limit(0, 600000)`), refused or not.
    pub calls: Vec<String>,
}

impl FakeCard {
    pub fn new(snap: Snapshot) -> FakeCard {
        FakeCard {
            snap,
            locked: BTreeMap::new(),
            persist: None,
            calls: Vec::new(),
        }
    }

    /// Load a readings file; changes are written back to it (as a serialized snapshot).
    pub fn load_persistent(file: &Path) -> Result<FakeCard, GpuUnavailable> {
        let snap = FixtureGpu::load(file)?.snapshot()?;
        Ok(FakeCard {
            persist: Some(file.to_path_buf()),
            ..FakeCard::new(snap)
        })
    }

    /// The shipped H200 readings.
    pub fn h200() -> Result<FakeCard, GpuUnavailable> {
        let snap = FixtureGpu::load(&citadel_common::gpu::h200_fixture_path())?.snapshot()?;
        Ok(FakeCard::new(snap))
    }

    /// The readings as they are now.
    pub fn readings(&self) -> &Snapshot {
        &self.snap
    }

    /// Change the readings (tests: make a GPU hot, add an ECC error ...).
    pub fn readings_mut(&mut self) -> &mut Snapshot {
        &mut self.snap
    }

    /// Locked clocks of a GPU, if set.
    pub fn locked_clocks(&self, gpu: u32) -> Option<(u32, u32)> {
        self.locked.get(&gpu).copied()
    }

    fn set(
        &mut self,
        call: String,
        gpu: u32,
        f: impl FnOnce(&mut GpuInfo) -> Result<(), String>,
    ) -> Result<(), String> {
        self.calls.push(call);
        let g = self
            .snap
            .gpus
            .iter_mut()
            .find(|g| g.index == gpu)
            .ok_or_else(|| format!("NVML: GPU {gpu}: invalid argument (no such GPU)"))?;
        f(g)?;
        self.save()
    }

    fn save(&self) -> Result<(), String> {
        let Some(p) = &self.persist else {
            return Ok(());
        };
        let text = serde_json::to_vec_pretty(&self.snap).map_err(|e| e.to_string())?;
        citadel_common::fsutil::write_atomic(p, &text, 0o644)
            .map_err(|e| format!("{}: {e}", p.display()))
    }
}

impl GpuSource for FakeCard {
    fn snapshot(&self) -> Result<Snapshot, GpuUnavailable> {
        Ok(self.snap.clone())
    }
}

const NOT_SUPPORTED: &str = "the requested operation is not available on the target device";

impl GpuControl for FakeCard {
    fn set_persistence(&mut self, gpu: u32, enabled: bool) -> Result<(), String> {
        self.set(format!("set_persistence({gpu}, {enabled})"), gpu, |g| {
            g.persistence_mode
                .as_mut()
                .map(|p| *p = enabled)
                .ok_or_else(|| format!("NVML: set persistence mode: {NOT_SUPPORTED}"))
        })
    }

    fn set_power_limit(&mut self, gpu: u32, mw: u32) -> Result<(), String> {
        self.set(format!("set_power_limit({gpu}, {mw})"), gpu, |g| {
            let (lo, hi) = g
                .power_limit_constraints_mw
                .ok_or_else(|| format!("NVML: set power limit: {NOT_SUPPORTED}"))?;
            if mw < lo || mw > hi {
                return Err("NVML: set power limit: invalid argument".into());
            }
            g.power_limit_mw = Some(mw);
            g.enforced_power_limit_mw = Some(mw);
            Ok(())
        })
    }

    fn set_app_clocks(&mut self, gpu: u32, mem_mhz: u32, graphics_mhz: u32) -> Result<(), String> {
        self.set(
            format!("set_app_clocks({gpu}, {mem_mhz}, {graphics_mhz})"),
            gpu,
            |g| {
                if g.clocks.app_graphics_mhz.is_none() {
                    return Err(format!("NVML: set application clocks: {NOT_SUPPORTED}"));
                }
                let over = |v: u32, max: Option<u32>| max.is_some_and(|m| v > m);
                if over(graphics_mhz, g.clocks.max_graphics_mhz)
                    || over(mem_mhz, g.clocks.max_mem_mhz)
                {
                    return Err("NVML: set application clocks: invalid argument".into());
                }
                g.clocks.app_mem_mhz = Some(mem_mhz);
                g.clocks.app_graphics_mhz = Some(graphics_mhz);
                Ok(())
            },
        )
    }

    fn reset_app_clocks(&mut self, gpu: u32) -> Result<(), String> {
        self.set(format!("reset_app_clocks({gpu})"), gpu, |g| {
            let c = &mut g.clocks;
            c.app_graphics_mhz = c.default_app_graphics_mhz.or(c.app_graphics_mhz);
            c.app_mem_mhz = c.default_app_mem_mhz.or(c.app_mem_mhz);
            Ok(())
        })
    }

    fn set_locked_clocks(&mut self, gpu: u32, min_mhz: u32, max_mhz: u32) -> Result<(), String> {
        let r = self.set(
            format!("set_locked_clocks({gpu}, {min_mhz}, {max_mhz})"),
            gpu,
            |g| {
                if min_mhz > max_mhz || g.clocks.max_graphics_mhz.is_some_and(|m| max_mhz > m) {
                    return Err("NVML: lock graphics clocks: invalid argument".into());
                }
                Ok(())
            },
        );
        if r.is_ok() {
            self.locked.insert(gpu, (min_mhz, max_mhz));
        }
        r
    }

    fn reset_locked_clocks(&mut self, gpu: u32) -> Result<(), String> {
        let r = self.set(format!("reset_locked_clocks({gpu})"), gpu, |_| Ok(()));
        if r.is_ok() {
            self.locked.remove(&gpu);
        }
        r
    }

    fn set_compute_mode(&mut self, gpu: u32, mode: &str) -> Result<(), String> {
        self.set(format!("set_compute_mode({gpu}, {mode})"), gpu, |g| {
            if !matches!(mode, "default" | "exclusive_process" | "prohibited") {
                return Err(format!("compute mode {mode:?} cannot be set"));
            }
            g.compute_mode = Some(mode.to_string());
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_rejects_what_the_card_rejects() {
        let mut c = FakeCard::h200().unwrap();
        assert!(c.set_power_limit(0, 150_000).is_err());
        assert!(c.set_power_limit(0, 800_000).is_err());
        assert!(c.set_power_limit(1, 600_000).is_err());
        c.set_power_limit(0, 600_000).unwrap();
        assert_eq!(c.readings().gpus[0].power_limit_mw, Some(600_000));
        assert!(c.set_app_clocks(0, 3201, 2100).is_err());
        assert_eq!(c.calls.len(), 5);
    }

    #[test]
    fn persistent_fake_writes_back() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("gpu.json");
        std::fs::copy(citadel_common::gpu::h200_fixture_path(), &f).unwrap();
        let mut c = FakeCard::load_persistent(&f).unwrap();
        c.set_compute_mode(0, "exclusive_process").unwrap();
        let again = FakeCard::load_persistent(&f).unwrap();
        assert_eq!(
            again.readings().gpus[0].compute_mode.as_deref(),
            Some("exclusive_process")
        );
    }
}
