//! Verification: pure functions from one [`Snapshot`] and the config to report entries.
//!
//! Nothing here can touch a GPU: it only sees readings.

use crate::report::Check;
use citadel_common::config::{ComputeMode, Config, GpuPolicy};
use citadel_common::gpu::{GpuInfo, Snapshot};
use std::cmp::Ordering;

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

/// Compare dotted versions numerically, part by part (`580.159.04` > `550.54`, `12.10` > `12.4`);
/// a missing part counts as 0, non-digits after a part's leading digits are ignored.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |s: &str| -> Vec<u64> {
        s.trim()
            .split('.')
            .map(|p| {
                let digits: String = p.chars().take_while(|c| c.is_ascii_digit()).collect();
                digits.parse().unwrap_or(0)
            })
            .collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        match pa.get(i).unwrap_or(&0).cmp(pb.get(i).unwrap_or(&0)) {
            Ordering::Equal => continue,
            o => return o,
        }
    }
    Ordering::Equal
}

/// The config's spelling of a compute mode (what [`GpuInfo::compute_mode`] holds).
pub fn compute_mode_name(m: ComputeMode) -> &'static str {
    match m {
        ComputeMode::Default => "default",
        ComputeMode::ExclusiveProcess => "exclusive_process",
        ComputeMode::Prohibited => "prohibited",
    }
}

/// Bytes as GiB with one decimal.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB)
}

/// Milliwatts as watts.
pub fn watts(mw: u32) -> String {
    if mw % 1000 == 0 {
        format!("{} W", mw / 1000)
    } else {
        format!("{:.1} W", mw as f64 / 1000.0)
    }
}

/// Every check on one snapshot. `policy_is_applied`: the policy was just applied, so a setting
/// that differs from it is a failure (apply did not take); otherwise (`--check`) a warning.
pub fn verify(snap: &Snapshot, cfg: &Config, policy_is_applied: bool) -> Vec<Check> {
    let mut out = Vec::new();
    out.extend(driver_checks(snap, &cfg.gpu));
    out.push(gpu_count(snap, cfg));
    for g in &snap.gpus {
        out.extend(gpu_checks(g, cfg, policy_is_applied));
    }
    out
}

fn driver_checks(snap: &Snapshot, p: &GpuPolicy) -> Vec<Check> {
    let mut out = Vec::new();
    let cuda = snap.cuda_driver_version.as_deref().unwrap_or("unknown");
    let nvml = snap.nvml_version.as_deref().unwrap_or("unknown");
    let desc = format!("driver {}, CUDA {cuda}, NVML {nvml}", snap.driver_version);
    match &p.min_driver_version {
        Some(min) if compare_versions(&snap.driver_version, min) == Ordering::Less => {
            out.push(Check::fail(
                None,
                "driver",
                format!("{desc}: older than gpu.min_driver_version = {min:?}: upgrade the NVIDIA driver"),
            ))
        }
        Some(min) => out.push(Check::ok(None, "driver", format!("{desc} (minimum {min})"))),
        None => out.push(Check::ok(None, "driver", desc)),
    }
    if let Some(min) = &p.min_cuda_version {
        match &snap.cuda_driver_version {
            None => out.push(Check::warn(
                None,
                "cuda",
                format!("the driver did not report its CUDA version (gpu.min_cuda_version = {min:?})"),
            )),
            Some(v) if compare_versions(v, min) == Ordering::Less => out.push(Check::fail(
                None,
                "cuda",
                format!("driver supports CUDA {v}, older than gpu.min_cuda_version = {min:?}: upgrade the NVIDIA driver"),
            )),
            Some(v) => out.push(Check::ok(None, "cuda", format!("CUDA {v} (minimum {min})"))),
        }
    }
    out
}

fn gpu_count(snap: &Snapshot, cfg: &Config) -> Check {
    let n = snap.gpus.len();
    let names: Vec<String> = snap
        .gpus
        .iter()
        .map(|g| format!("{}: {}", g.index, g.name))
        .collect();
    match cfg.highest_gpu_index() {
        Some(hi) if (hi as usize) >= n => {
            let users: Vec<&str> = cfg
                .enabled_models()
                .filter(|m| m.gpus.contains(&hi))
                .map(|m| m.name.as_str())
                .collect();
            Check::fail(
                None,
                "gpu_count",
                format!(
                    "{n} GPU(s) found, but enabled model(s) {} use GPU {hi}: check `nvidia-smi -L` and the models' gpus",
                    users.join(", ")
                ),
            )
            .unavailable()
        }
        _ if n == 0 => Check::fail(
            None,
            "gpu_count",
            "the driver is loaded but reports no GPU: check `nvidia-smi -L` and `dmesg`",
        )
        .unavailable(),
        Some(hi) => Check::ok(
            None,
            "gpu_count",
            format!(
                "{n} GPU(s) [{}]; models use up to GPU {hi}",
                names.join(", ")
            ),
        ),
        None => Check::ok(
            None,
            "gpu_count",
            format!(
                "{n} GPU(s) [{}]; no enabled model uses a GPU",
                names.join(", ")
            ),
        ),
    }
}

fn gpu_checks(g: &GpuInfo, cfg: &Config, applied: bool) -> Vec<Check> {
    let i = Some(g.index);
    let p = &cfg.gpu;
    let mut out = Vec::new();

    // Temperature.
    out.push(match (g.temperature_c, g.temp_slowdown_c) {
        (Some(t), Some(slow)) => {
            let limit = slow.saturating_sub(p.temperature_margin_c);
            if t >= limit {
                Check::fail(
                    i,
                    "temperature",
                    format!("{t} C, at or above slowdown {slow} C - margin {} C = {limit} C: check cooling",
                        p.temperature_margin_c),
                )
            } else {
                Check::ok(i, "temperature", format!("{t} C (slowdown {slow} C, margin {} C)", p.temperature_margin_c))
            }
        }
        (Some(t), None) => Check::warn(i, "temperature", format!("{t} C; the slowdown threshold is not reported")),
        (None, _) => Check::warn(i, "temperature", "not reported by this GPU"),
    });

    // ECC and memory health.
    out.push(match g.ecc_uncorrected_volatile {
        Some(0) => Check::ok(i, "ecc", "no uncorrected volatile ECC errors"),
        Some(n) => Check::fail(
            i,
            "ecc",
            format!("{n} uncorrected volatile ECC error(s) since the driver loaded: drain the GPU and reset it (nvidia-smi -r), check `dmesg` for Xid 48/63/64"),
        ),
        None => Check::ok(i, "ecc", "ECC error counts not reported (ECC off or unsupported)"),
    });
    if g.retired_pages_pending == Some(true) {
        out.push(Check::fail(
            i,
            "retired_pages",
            "page retirement pending: reset the GPU (nvidia-smi -r) or reboot before starting models",
        ));
    }
    if g.remap_pending == Some(true) {
        out.push(Check::fail(
            i,
            "row_remap",
            "row remapping pending: reset the GPU (nvidia-smi -r) or reboot before starting models",
        ));
    }

    // MIG.
    let want = if p.mig { "enabled" } else { "disabled" };
    let onoff = |b: bool| if b { "enabled" } else { "disabled" };
    out.push(match (g.mig_current, g.mig_pending) {
        (Some(cur), _) if cur != p.mig => Check::fail(
            i,
            "mig",
            format!("MIG is {} but gpu.mig = {}: change it with `nvidia-smi -i {} -mig {}` and reset the GPU", onoff(cur), p.mig, g.index, u8::from(p.mig)),
        ),
        (Some(_), Some(pend)) if pend != p.mig => Check::warn(
            i,
            "mig",
            format!("MIG is {want} now but {} after the next GPU reset", onoff(pend)),
        ),
        (Some(_), _) => Check::ok(i, "mig", format!("MIG {want}")),
        (None, _) if p.mig => Check::fail(i, "mig", "gpu.mig = true but this GPU does not report MIG mode"),
        (None, _) => Check::ok(i, "mig", "MIG not supported (as expected: gpu.mig = false)"),
    });

    // Memory the enabled models will take, and who holds memory now.
    out.extend(memory_checks(g, cfg));

    // Drift from the policy.
    out.extend(policy_checks(g, p, applied));
    out
}

fn memory_checks(g: &GpuInfo, cfg: &Config) -> Vec<Check> {
    let i = Some(g.index);
    let mut out = Vec::new();
    let models: Vec<_> = cfg
        .enabled_models()
        .filter(|m| m.gpus.contains(&g.index))
        .collect();
    let our_units: Vec<String> = models.iter().map(|m| m.unit()).collect();
    let ours = |u: &Option<String>| u.as_ref().is_some_and(|u| our_units.contains(u));
    let share: f64 = models.iter().map(|m| m.gpu_memory_utilization).sum();
    let need = (share * g.memory_total_bytes as f64) as u64;
    // Memory our own model servers already hold counts as available to them.
    let held_by_ours: u64 = g
        .processes
        .iter()
        .filter(|p| ours(&p.unit))
        .filter_map(|p| p.used_memory_bytes)
        .sum();
    let available = g.memory_free_bytes.saturating_add(held_by_ours);
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    out.push(if models.is_empty() {
        Check::ok(
            i,
            "memory",
            format!("{} free of {}; no enabled model uses this GPU", gib(g.memory_free_bytes), gib(g.memory_total_bytes)),
        )
    } else if available < need {
        Check::fail(
            i,
            "memory",
            format!(
                "models {} need {:.2} x {} = {} but only {} is free: stop the processes holding GPU memory (see processes)",
                names.join(", "), share, gib(g.memory_total_bytes), gib(need), gib(available)
            ),
        )
    } else {
        Check::ok(
            i,
            "memory",
            format!("{} free of {}; models {} need {}", gib(available), gib(g.memory_total_bytes), names.join(", "), gib(need)),
        )
    });
    for p in &g.processes {
        let unit = p.unit.as_deref().unwrap_or("no unit");
        let mem = p.used_memory_bytes.map_or_else(
            || "memory unknown".to_string(),
            |b| format!("{:.0} MiB", b as f64 / MIB),
        );
        if ours(&p.unit) {
            out.push(Check::ok(
                i,
                "process",
                format!(
                    "PID {} {} ({unit}, {mem}): a Citadel model on its GPU",
                    p.pid, p.name
                ),
            ));
        } else {
            let stop = match &p.unit {
                Some(u) => format!("`systemctl stop {u}`"),
                None => format!("`kill {}`", p.pid),
            };
            out.push(Check::warn(
                i,
                "process",
                format!(
                    "PID {} {} ({unit}, {mem}) is using this GPU: leftovers from a crashed model server make the next start fail; stop it with {stop}",
                    p.pid, p.name
                ),
            ));
        }
    }
    out
}

fn policy_checks(g: &GpuInfo, p: &GpuPolicy, applied: bool) -> Vec<Check> {
    let i = Some(g.index);
    let mut out = Vec::new();
    let mut drift = |check: &str, want: String, have: Option<String>| {
        out.push(match have {
            Some(h) if h == want => Check::ok(i, check, h),
            Some(h) if applied => Check::fail(
                i,
                check,
                format!("{h}, policy wants {want}: the change did not take"),
            ),
            Some(h) => Check::warn(
                i,
                check,
                format!("{h}, policy wants {want} (run gpu-optimize to apply)"),
            ),
            None => Check::warn(
                i,
                check,
                format!("not reported by this GPU (policy wants {want})"),
            ),
        })
    };
    if let Some(on) = p.persistence_mode {
        let s = |b: bool| if b { "enabled" } else { "disabled" }.to_string();
        drift("persistence_mode", s(on), g.persistence_mode.map(s));
    }
    if let Some(w) = p.power_limit_watts {
        drift(
            "power_limit",
            watts(w.saturating_mul(1000)),
            g.power_limit_mw.map(watts),
        );
    }
    if let Some(m) = p.compute_mode {
        drift(
            "compute_mode",
            compute_mode_name(m).to_string(),
            g.compute_mode.clone(),
        );
    }
    if let (Some(mem), Some(gr)) = (p.app_memory_clock_mhz, p.app_graphics_clock_mhz) {
        let have = match (g.clocks.app_mem_mhz, g.clocks.app_graphics_mhz) {
            (Some(m), Some(gx)) => Some(format!("memory {m} MHz, graphics {gx} MHz")),
            _ => None,
        };
        drift(
            "app_clocks",
            format!("memory {mem} MHz, graphics {gr} MHz"),
            have,
        );
    }
    out
}

#[cfg(test)]
mod tests;
