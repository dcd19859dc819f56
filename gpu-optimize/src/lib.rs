//! gpu-optimize: prepare and verify the NVIDIA GPUs through NVML before the models start, and
//! put the settings back when they stop. Run as `citadel-gpu.service` (`Type=oneshot`,
//! `RemainAfterExit=yes`): `ExecStart=gpu-optimize`, `ExecStop=gpu-optimize --restore`.
//!
//! NVML (`libnvidia-ml.so.1`) is loaded at run time, so the binary runs on a box without a
//! driver; there it exits 69 (`gpu.required = true`) or warns and exits 0 (`false`).
//!
//! # Modes
//! - `gpu-optimize` (apply): read every GPU, validate the whole `[gpu]` policy against every
//!   card (a value outside a card's limits is refused, exit 78, nothing changed, nothing
//!   saved), save the current values of the settings about to change to
//!   `paths.state_dir/gpu-saved.json` (atomic write), change them, read back and verify.
//! - `gpu-optimize --check`: read and verify only. This path is handed nothing but a
//!   [`GpuSource`] (the read trait), so it has no way to reach a setter ([`control::GpuControl`]).
//! - `gpu-optimize --restore`: put back what `gpu-saved.json` holds; a no-op with a message when
//!   there is none. After a complete restore the file is renamed to `gpu-saved.restored.json`,
//!   so the next apply saves fresh values.
//! - `--json` on any mode: the whole report on stdout (driver, per-GPU readings, changes,
//!   checks, exit code); otherwise a table on stdout. Logs go to stderr.
//!
//! # Settings it can change, and how `--restore` undoes each
//! Only the settings the policy names, and only on GPUs where the value differs; the saved
//! file holds the value each had before the first apply (a second apply without a restore
//! keeps those originals). GPUs are matched by UUID on restore.
//!
//! | `[gpu]` key | NVML call | saved | `--restore` |
//! |---|---|---|---|
//! | `persistence_mode` | `nvmlDeviceSetPersistenceMode` | previous mode | sets the previous mode |
//! | `compute_mode` | `nvmlDeviceSetComputeMode` | previous mode | sets the previous mode |
//! | `power_limit_watts` (must lie in the card's min/max constraints) | `nvmlDeviceSetPowerManagementLimit` (mW) | previous limit, mW | sets the previous limit |
//! | `app_memory_clock_mhz` + `app_graphics_clock_mhz` | `nvmlDeviceSetApplicationsClocks` | previous application clocks | sets the previous application clocks |
//! | `locked_graphics_clock_min_mhz` + `_max_mhz` | `nvmlDeviceSetGpuLockedClocks` | "were locked" (NVML cannot read locked clocks) | `nvmlDeviceResetGpuLockedClocks` (driver default: unlocked) |
//!
//! All of these need root (`NVML_ERROR_NO_PERMISSION` otherwise) and, except persistence
//! mode, are lost when the driver unloads or the box reboots, which is why the unit applies them
//! at every boot. MIG mode and ECC mode are verified, never changed (both need a GPU reset).
//! NVML's persistence mode is the legacy mechanism; where `nvidia-persistenced` runs (NVIDIA's
//! recommendation), leave `persistence_mode` unset and let the daemon keep the driver loaded.
//!
//! # Checks
//! driver loads (versions vs `min_driver_version` / `min_cuda_version`, compared numerically
//! by dotted parts); enough GPUs for the highest index an enabled model uses (else exit 69);
//! per GPU: temperature below slowdown minus `temperature_margin_c`; no uncorrected volatile
//! ECC errors; no pending page retirement or row remap; MIG mode as `gpu.mig`; free memory
//! against the memory the enabled models on that GPU will take (sum of their
//! `gpu_memory_utilization` x total; memory held by their own units counts as theirs); every
//! compute process already on the GPU, with PID, name and systemd unit (leftovers from a crashed
//! model server are the usual reason the next start fails); the policy's settings (drift is a
//! warning in `--check`, a failure right after apply).
//!
//! Exit codes: 0 ok or warnings; 1 a check failed; 69 no driver / no or too few GPUs
//! (`required = true`); 78 invalid config or a policy value the card refuses.
//!
//! Test and demo hook: `CITADEL_FAKE_GPU=/path/readings.json` serves the GPUs from a readings
//! file (see `citadel_common::gpu`) instead of NVML, read-only (`--check`). In apply and
//! restore mode only test builds (feature `testing`) have a fake card, which writes the changes
//! back to that file; the shipped binary refuses the hook there (exit 69) and never touches a
//! real GPU through it.

pub mod apply;
pub mod control;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod report;
pub mod verify;

use crate::control::{Card, NvmlCard};
use crate::report::{Check, Report, Status};
use citadel_common::cli::CommonArgs;
use citadel_common::config::Config;
use citadel_common::gpu::{GpuSource, GpuUnavailable, Snapshot, FAKE_GPU_ENV};
use citadel_common::{Exit, Failure};
use clap::Parser;
use std::path::Path;

/// Prepare and verify the NVIDIA GPUs (persistence, power limit, clocks, compute mode), or
/// restore the settings it changed.
#[derive(Debug, Clone, Parser)]
#[command(
    version,
    about,
    after_help = "Examples:
  /usr/lib/citadel/gpu-optimize --check
      verify the driver, the GPUs and the policy; never changes a setting
  /usr/lib/citadel/gpu-optimize --check --json
      the same report as one JSON document"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Verify and report only: never changes a setting.
    #[arg(long, conflicts_with = "restore")]
    pub check: bool,
    /// Put back the settings saved by the last apply (ExecStop of citadel-gpu.service).
    #[arg(long)]
    pub restore: bool,
    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    Check,
    Restore,
}

impl Args {
    pub fn mode(&self) -> Mode {
        if self.check {
            Mode::Check
        } else if self.restore {
            Mode::Restore
        } else {
            Mode::Apply
        }
    }
}

/// Entry point of the binary.
pub fn run(args: &Args) -> Result<Exit, Failure> {
    let cfg = args.common.load_config()?;
    let report = match args.mode() {
        // The check path gets a reader only.
        Mode::Check => check_mode(&*citadel_common::gpu::open(), &cfg),
        Mode::Apply => {
            let mut slot = None;
            apply_mode(|| open_card(&mut slot), &cfg)?
        }
        Mode::Restore => {
            let mut slot = None;
            restore_mode(|| open_card(&mut slot), &cfg)?
        }
    };
    finish(&report, args.json)
}

/// Open the read-write backend: NVML, or (test builds) the fake card under `CITADEL_FAKE_GPU`.
fn open_card(slot: &mut Option<Box<dyn Card>>) -> Result<&mut dyn Card, GpuUnavailable> {
    let card: Box<dyn Card> = match std::env::var_os(FAKE_GPU_ENV) {
        Some(p) if !p.is_empty() => fake_card(Path::new(&p))?,
        _ => Box::new(NvmlCard::init()?),
    };
    Ok(slot.insert(card).as_mut())
}

#[cfg(any(test, feature = "testing"))]
fn fake_card(p: &Path) -> Result<Box<dyn Card>, GpuUnavailable> {
    Ok(Box::new(fake::FakeCard::load_persistent(p)?))
}

#[cfg(not(any(test, feature = "testing")))]
fn fake_card(p: &Path) -> Result<Box<dyn Card>, GpuUnavailable> {
    Err(GpuUnavailable {
        message: format!(
            "{FAKE_GPU_ENV}={}: this build has no fake GPU to change (only --check reads a readings file); unset it to use NVML",
            p.display()
        ),
    })
}

/// Print the report and turn it into the exit code.
fn finish(report: &Report, json: bool) -> Result<Exit, Failure> {
    if json {
        citadel_common::output::print_json(report)?;
    } else {
        print!("{}", report.table());
    }
    for c in report.checks.iter().chain(&report.changes) {
        if c.status == Status::Warn {
            log::warn!("{}", c.line());
        }
    }
    match report.outcome() {
        Exit::Ok => Ok(Exit::Ok),
        exit => {
            let f = Failure::new(exit, report.failure_lines().join("\n"));
            Err(if json { f.with_document_printed() } else { f })
        }
    }
}

/// The entry for "no driver / no GPU", per `gpu.required`.
fn no_gpu(cfg: &Config, e: &GpuUnavailable) -> Check {
    if cfg.gpu.required {
        Check::fail(None, "driver", e.message.clone()).unavailable()
    } else {
        Check::warn(
            None,
            "driver",
            format!(
                "{} (gpu.required = false: continuing without GPUs)",
                e.message
            ),
        )
    }
}

/// `gpu.required = false`: "no usable GPU" failures become warnings.
fn soften(cfg: &Config, checks: &mut [Check]) {
    if cfg.gpu.required {
        return;
    }
    for c in checks
        .iter_mut()
        .filter(|c| c.unavailable && c.status == Status::Fail)
    {
        c.status = Status::Warn;
        c.unavailable = false;
        c.detail.push_str(" (gpu.required = false)");
    }
}

/// `--check`: read and verify. Takes a reader only, so it cannot change a setting.
pub fn check_mode(src: &dyn GpuSource, cfg: &Config) -> Report {
    let mut r = Report::new("check");
    match src.snapshot() {
        Err(e) => r.checks.push(no_gpu(cfg, &e)),
        Ok(snap) => {
            r.set_snapshot(&snap);
            r.checks = verify::verify(&snap, cfg, false);
            soften(cfg, &mut r.checks);
        }
    }
    r.exit = r.outcome().code();
    r
}

/// Open the read-write backend and read every GPU once.
fn open_and_read<'c>(
    open: impl FnOnce() -> Result<&'c mut dyn Card, GpuUnavailable>,
) -> Result<(&'c mut dyn Card, Snapshot), GpuUnavailable> {
    let card = open()?;
    let snap = card.snapshot()?;
    Ok((card, snap))
}

/// `r` ended where the GPUs could not be opened or read: that check, and the exit it makes.
fn without_gpu(mut r: Report, cfg: &Config, e: &GpuUnavailable) -> Report {
    r.checks.push(no_gpu(cfg, e));
    r.exit = r.outcome().code();
    r
}

/// Apply the policy, then verify. `open` gives the read-write backend.
pub fn apply_mode<'c>(
    open: impl FnOnce() -> Result<&'c mut dyn Card, GpuUnavailable>,
    cfg: &Config,
) -> Result<Report, Failure> {
    let mut r = Report::new("apply");
    let (card, before) = match open_and_read(open) {
        Ok(x) => x,
        Err(e) => return Ok(without_gpu(r, cfg, &e)),
    };
    // Too few GPUs: change nothing.
    let mut pre = verify::verify(&before, cfg, false);
    pre.retain(|c| c.unavailable);
    soften(cfg, &mut pre);
    if pre.iter().any(|c| c.status == Status::Fail) {
        r.set_snapshot(&before);
        r.checks = pre;
        r.exit = r.outcome().code();
        return Ok(r);
    }
    let changes = apply::plan(&before, &cfg.gpu)
        .map_err(|errs| Failure::config(errs.join("\n")).context(cfg.file.display()))?;
    let saved = apply::saved_path(&cfg.paths.state_dir);
    r.changes = apply::apply(card, &before, &changes, &saved).map_err(Failure::other)?;
    for c in &r.changes {
        if c.status == Status::Ok {
            log::info!("{}", c.line());
        }
    }
    match card.snapshot() {
        Ok(after) => {
            r.set_snapshot(&after);
            r.checks = verify::verify(&after, cfg, true);
            soften(cfg, &mut r.checks);
        }
        Err(e) => r.checks.push(no_gpu(cfg, &e)),
    }
    r.exit = r.outcome().code();
    Ok(r)
}

/// Restore what the last apply saved. The backend is only opened when something was saved.
pub fn restore_mode<'c>(
    open: impl FnOnce() -> Result<&'c mut dyn Card, GpuUnavailable>,
    cfg: &Config,
) -> Result<Report, Failure> {
    let mut r = Report::new("restore");
    let file = apply::saved_path(&cfg.paths.state_dir);
    let saved = match apply::Saved::read(&file).map_err(Failure::other)? {
        None => {
            let msg = format!("nothing saved in {}: nothing to restore", file.display());
            log::info!("{msg}");
            r.checks.push(Check::ok(None, "restore", msg));
            return Ok(r);
        }
        Some(s) => s,
    };
    let (card, before) = match open_and_read(open) {
        Ok(x) => x,
        Err(e) => return Ok(without_gpu(r, cfg, &e)),
    };
    r.changes = apply::restore(card, &before, &saved);
    for c in r.changes.iter().filter(|c| c.status == Status::Ok) {
        log::info!("{}", c.line());
    }
    match card.snapshot() {
        Ok(after) => {
            r.set_snapshot(&after);
            r.checks = apply::verify_restored(&after, &saved);
        }
        Err(e) => r.checks.push(no_gpu(cfg, &e)),
    }
    if r.outcome() == Exit::Ok {
        let done = cfg.paths.state_dir.join(apply::RESTORED_FILE);
        std::fs::rename(&file, &done).map_err(|e| {
            Failure::other(format!(
                "settings restored, but {} could not be renamed to {}: {e}",
                file.display(),
                done.display()
            ))
        })?;
        r.checks.push(Check::ok(
            None,
            "restore",
            format!("restored; {} renamed to {}", file.display(), done.display()),
        ));
    } else {
        r.checks.push(Check::fail(
            None,
            "restore",
            format!("incomplete: {} kept for another --restore", file.display()),
        ));
    }
    r.exit = r.outcome().code();
    Ok(r)
}

#[cfg(test)]
mod tests;
