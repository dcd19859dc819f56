//! Apply the `[gpu]` policy and restore what it changed.
//!
//! Order in apply: validate every change against every GPU (nothing is changed when one is
//! refused), save the current values (atomic write), then persistence, compute mode, power
//! limit, application clocks, locked clocks. Restore goes the other way.

use crate::control::{Card, GpuControl};
use crate::report::Check;
use crate::verify::{compute_mode_name, watts};
use citadel_common::config::GpuPolicy;
use citadel_common::gpu::Snapshot;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The saved-settings file under `paths.state_dir`.
pub const SAVED_FILE: &str = "gpu-saved.json";
/// What a successful restore renames it to (kept for the record; the next apply starts anew).
pub const RESTORED_FILE: &str = "gpu-saved.restored.json";

/// One setting to change on one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    Persistence(bool),
    ComputeMode(String),
    PowerLimitMw(u32),
    AppClocks { mem_mhz: u32, graphics_mhz: u32 },
    LockedClocks { min_mhz: u32, max_mhz: u32 },
}

/// A planned change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub gpu: u32,
    pub setting: Setting,
}

impl Change {
    fn name(&self) -> &'static str {
        match self.setting {
            Setting::Persistence(_) => "persistence_mode",
            Setting::ComputeMode(_) => "compute_mode",
            Setting::PowerLimitMw(_) => "power_limit",
            Setting::AppClocks { .. } => "app_clocks",
            Setting::LockedClocks { .. } => "locked_clocks",
        }
    }
    fn describe(&self) -> String {
        match &self.setting {
            Setting::Persistence(b) => format!("persistence mode -> {}", on_off(*b)),
            Setting::ComputeMode(m) => format!("compute mode -> {m}"),
            Setting::PowerLimitMw(mw) => format!("power limit -> {}", watts(*mw)),
            Setting::AppClocks {
                mem_mhz,
                graphics_mhz,
            } => format!("application clocks -> memory {mem_mhz} MHz, graphics {graphics_mhz} MHz"),
            Setting::LockedClocks { min_mhz, max_mhz } => {
                format!("graphics clocks locked to {min_mhz}-{max_mhz} MHz")
            }
        }
    }
    fn apply(&self, ctl: &mut dyn GpuControl) -> Result<(), String> {
        let g = self.gpu;
        match &self.setting {
            Setting::Persistence(b) => ctl.set_persistence(g, *b),
            Setting::ComputeMode(m) => ctl.set_compute_mode(g, m),
            Setting::PowerLimitMw(mw) => ctl.set_power_limit(g, *mw),
            Setting::AppClocks {
                mem_mhz,
                graphics_mhz,
            } => ctl.set_app_clocks(g, *mem_mhz, *graphics_mhz),
            Setting::LockedClocks { min_mhz, max_mhz } => {
                ctl.set_locked_clocks(g, *min_mhz, *max_mhz)
            }
        }
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "enabled"
    } else {
        "disabled"
    }
}

/// The changes the policy asks for, or every reason it cannot be applied (key, value, and the
/// card's limits). Settings already at the wanted value are left out, except locked clocks
/// (NVML cannot read them back).
pub fn plan(snap: &Snapshot, p: &GpuPolicy) -> Result<Vec<Change>, Vec<String>> {
    let mut changes = Vec::new();
    let mut errors = Vec::new();
    for g in &snap.gpus {
        let who = format!("GPU {} ({})", g.index, g.name);
        let mut push = |setting| {
            changes.push(Change {
                gpu: g.index,
                setting,
            })
        };
        if let Some(on) = p.persistence_mode {
            if g.persistence_mode != Some(on) {
                push(Setting::Persistence(on));
            }
        }
        if let Some(m) = p.compute_mode {
            let name = compute_mode_name(m);
            if g.compute_mode.as_deref() != Some(name) {
                push(Setting::ComputeMode(name.to_string()));
            }
        }
        if let Some(w) = p.power_limit_watts {
            let mw = w.saturating_mul(1000);
            match (g.power_limit_mw, g.power_limit_constraints_mw) {
                (Some(_), Some((lo, hi))) if mw < lo || mw > hi => errors.push(format!(
                    "gpu.power_limit_watts = {w}: outside {who} power limit constraints {}-{}",
                    watts(lo),
                    watts(hi)
                )),
                (Some(cur), Some(_)) => {
                    if cur != mw {
                        push(Setting::PowerLimitMw(mw));
                    }
                }
                _ => errors.push(format!(
                    "gpu.power_limit_watts = {w}: {who} does not report its power limit and constraints (power management not supported)"
                )),
            }
        }
        if let (Some(mem), Some(gr)) = (p.app_memory_clock_mhz, p.app_graphics_clock_mhz) {
            let c = &g.clocks;
            if c.app_graphics_mhz.is_none() || c.app_mem_mhz.is_none() {
                errors.push(format!(
                    "gpu.app_graphics_clock_mhz = {gr}: {who} does not report application clocks (not supported)"
                ));
            } else if let Some(max) = c.max_graphics_mhz.filter(|m| gr > *m) {
                errors.push(format!(
                    "gpu.app_graphics_clock_mhz = {gr}: above {who} maximum graphics clock {max} MHz"
                ));
            } else if let Some(max) = c.max_mem_mhz.filter(|m| mem > *m) {
                errors.push(format!(
                    "gpu.app_memory_clock_mhz = {mem}: above {who} maximum memory clock {max} MHz"
                ));
            } else if (c.app_mem_mhz, c.app_graphics_mhz) != (Some(mem), Some(gr)) {
                push(Setting::AppClocks {
                    mem_mhz: mem,
                    graphics_mhz: gr,
                });
            }
        }
        if let (Some(lo), Some(hi)) = (
            p.locked_graphics_clock_min_mhz,
            p.locked_graphics_clock_max_mhz,
        ) {
            match g.clocks.max_graphics_mhz {
                Some(max) if hi > max => errors.push(format!(
                    "gpu.locked_graphics_clock_max_mhz = {hi}: above {who} maximum graphics clock {max} MHz"
                )),
                _ => push(Setting::LockedClocks {
                    min_mhz: lo,
                    max_mhz: hi,
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok(changes)
    } else {
        Err(errors)
    }
}

/// The values a GPU had before gpu-optimize changed them (only the settings it changed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedGpu {
    pub index: u32,
    /// Restore finds the GPU by UUID (indexes can change when GPUs are added or removed).
    pub uuid: String,
    #[serde(default)]
    pub persistence_mode: Option<bool>,
    #[serde(default)]
    pub compute_mode: Option<String>,
    #[serde(default)]
    pub power_limit_mw: Option<u32>,
    /// `(memory, graphics)` MHz.
    #[serde(default)]
    pub app_clocks_mhz: Option<(u32, u32)>,
    /// Locked clocks were set: restore resets them (their earlier value cannot be read).
    #[serde(default)]
    pub locked_clocks: bool,
}

/// `paths.state_dir/gpu-saved.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub schema: u32,
    pub saved_unix: u64,
    pub driver_version: String,
    pub gpus: Vec<SavedGpu>,
}

impl Saved {
    /// Read the saved file; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<Saved>, String> {
        match std::fs::read_to_string(path) {
            Ok(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| format!("{}: invalid saved GPU settings: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Write atomically (mode 0644), creating the state directory if needed.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        citadel_common::fsutil::write_atomic(path, &text, 0o644)
            .map_err(|e| format!("{}: cannot save GPU settings: {e}", path.display()))
    }

    /// Add the current values of what `changes` will touch, keeping what is saved already: a
    /// second apply (service restarted without a restore) must not overwrite the originals.
    pub fn record(existing: Option<Saved>, snap: &Snapshot, changes: &[Change]) -> Saved {
        let mut s = existing.unwrap_or_else(|| Saved {
            schema: 1,
            saved_unix: 0,
            driver_version: snap.driver_version.clone(),
            gpus: Vec::new(),
        });
        s.saved_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for c in changes {
            let Some(g) = snap.gpu(c.gpu) else { continue };
            let pos = match s.gpus.iter().position(|x| x.uuid == g.uuid) {
                Some(p) => p,
                None => {
                    s.gpus.push(SavedGpu {
                        index: g.index,
                        uuid: g.uuid.clone(),
                        persistence_mode: None,
                        compute_mode: None,
                        power_limit_mw: None,
                        app_clocks_mhz: None,
                        locked_clocks: false,
                    });
                    s.gpus.len() - 1
                }
            };
            let e = &mut s.gpus[pos];
            match c.setting {
                Setting::Persistence(_) => {
                    e.persistence_mode = e.persistence_mode.or(g.persistence_mode)
                }
                Setting::ComputeMode(_) => {
                    e.compute_mode = e.compute_mode.take().or_else(|| g.compute_mode.clone())
                }
                Setting::PowerLimitMw(_) => {
                    e.power_limit_mw = e.power_limit_mw.or(g.power_limit_mw)
                }
                Setting::AppClocks { .. } => {
                    e.app_clocks_mhz = e
                        .app_clocks_mhz
                        .or(g.clocks.app_mem_mhz.zip(g.clocks.app_graphics_mhz))
                }
                Setting::LockedClocks { .. } => e.locked_clocks = true,
            }
        }
        s
    }
}

/// The saved-file path for a state directory.
pub fn saved_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SAVED_FILE)
}

/// Save, then apply `changes`. Returns one entry per change. `Err` = could not save: nothing
/// was changed.
pub fn apply(
    card: &mut dyn Card,
    snap: &Snapshot,
    changes: &[Change],
    saved_file: &Path,
) -> Result<Vec<Check>, String> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let existing = Saved::read(saved_file)?;
    Saved::record(existing, snap, changes).write(saved_file)?;
    Ok(changes
        .iter()
        .map(|c| match c.apply(card) {
            Ok(()) => Check::ok(Some(c.gpu), c.name(), c.describe()),
            Err(e) => Check::fail(Some(c.gpu), c.name(), format!("{}: {e}", c.describe())),
        })
        .collect())
}

/// Put back what `saved` holds. Returns one entry per setting; any `fail` means the file must
/// be kept.
pub fn restore(card: &mut dyn Card, snap: &Snapshot, saved: &Saved) -> Vec<Check> {
    let mut out = Vec::new();
    for s in &saved.gpus {
        let Some(g) = snap.gpus.iter().find(|g| g.uuid == s.uuid) else {
            out.push(Check::fail(
                Some(s.index),
                "restore",
                format!(
                    "GPU {} is no longer present: its saved settings cannot be restored",
                    s.uuid
                ),
            ));
            continue;
        };
        let i = g.index;
        let mut step = |name: &str, what: String, r: Result<(), String>| {
            out.push(match r {
                Ok(()) => Check::ok(Some(i), name, what),
                Err(e) => Check::fail(Some(i), name, format!("{what}: {e}")),
            })
        };
        if s.locked_clocks {
            step(
                "locked_clocks",
                "graphics clocks unlocked (reset to default)".into(),
                card.reset_locked_clocks(i),
            );
        }
        if let Some((mem, gr)) = s.app_clocks_mhz {
            step(
                "app_clocks",
                format!("application clocks -> memory {mem} MHz, graphics {gr} MHz"),
                card.set_app_clocks(i, mem, gr),
            );
        }
        if let Some(mw) = s.power_limit_mw {
            step(
                "power_limit",
                format!("power limit -> {}", watts(mw)),
                card.set_power_limit(i, mw),
            );
        }
        if let Some(m) = &s.compute_mode {
            step(
                "compute_mode",
                format!("compute mode -> {m}"),
                card.set_compute_mode(i, m),
            );
        }
        if let Some(b) = s.persistence_mode {
            step(
                "persistence_mode",
                format!("persistence mode -> {}", on_off(b)),
                card.set_persistence(i, b),
            );
        }
    }
    out
}

/// After a restore: does every saved value read back?
pub fn verify_restored(snap: &Snapshot, saved: &Saved) -> Vec<Check> {
    let mut out = Vec::new();
    for s in &saved.gpus {
        let Some(g) = snap.gpus.iter().find(|g| g.uuid == s.uuid) else {
            continue;
        };
        let i = Some(g.index);
        let mut cmp = |name: &str, want: String, have: Option<String>| {
            out.push(match have {
                Some(h) if h == want => Check::ok(i, name, format!("{h} (restored)")),
                Some(h) => Check::fail(
                    i,
                    name,
                    format!("reads {h} after restore, saved value was {want}"),
                ),
                None => Check::warn(i, name, format!("cannot be read back (saved value {want})")),
            })
        };
        if let Some(b) = s.persistence_mode {
            cmp(
                "persistence_mode",
                on_off(b).into(),
                g.persistence_mode.map(|x| on_off(x).into()),
            );
        }
        if let Some(m) = &s.compute_mode {
            cmp("compute_mode", m.clone(), g.compute_mode.clone());
        }
        if let Some(mw) = s.power_limit_mw {
            cmp("power_limit", watts(mw), g.power_limit_mw.map(watts));
        }
        if let Some((m, gr)) = s.app_clocks_mhz {
            let have = g
                .clocks
                .app_mem_mhz
                .zip(g.clocks.app_graphics_mhz)
                .map(|(a, b)| format!("memory {a} MHz, graphics {b} MHz"));
            cmp(
                "app_clocks",
                format!("memory {m} MHz, graphics {gr} MHz"),
                have,
            );
        }
    }
    out
}
