//! The run loop: `--once`, or the service (`READY=1` after the first sweep, `WATCHDOG=1`,
//! `STATUS=`).

use crate::args::Args;
use crate::monitor::{GpuReader, Monitor};
use crate::output;
use crate::settings::{Settings, Target};
use crate::signals::{install_signal_handlers, sleep_until, spawn_stop_relay};
use citadel_common::health::GpuHealth;
use citadel_common::systemctl::{Systemctl, Systemd};
use citadel_common::{notify, Exit, Failure};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// Per-GPU readings through `citadel_common::gpu` (NVML, or `CITADEL_FAKE_GPU`); `None` when
/// no GPU can be read at start (then the textfile has no GPU metrics).
pub fn gpu_reader() -> Option<GpuReader> {
    let source = citadel_common::gpu::open();
    if let Err(e) = source.snapshot() {
        log::info!("no GPU metrics: {e}");
        return None;
    }
    Some(Box::new(move || match source.snapshot() {
        Ok(s) => s
            .gpus
            .iter()
            .map(|g| GpuHealth {
                index: g.index,
                temperature_c: g.temperature_c,
                memory_used_bytes: g.memory_used_bytes,
                memory_total_bytes: g.memory_total_bytes,
            })
            .collect(),
        Err(e) => {
            log::debug!("GPU readings: {e}");
            vec![]
        }
    }))
}

/// The binary: `--once` or the service loop.
pub fn run(args: &Args) -> Result<Exit, Failure> {
    let cfg = args.common.load_config()?;
    let settings = Settings::from_config(&cfg);
    let targets = Target::from_config(&cfg);
    let api_key = match citadel_common::apikey::read(&cfg) {
        Ok(k) => k,
        Err(e) if settings.deep_interval.is_some() => {
            log::error!("{e}; deep probes go without an API key");
            None
        }
        Err(_) => None,
    };
    install_signal_handlers()?;
    let stop = Arc::new(AtomicBool::new(false));
    let systemd: Arc<dyn Systemd> = Arc::new(Systemctl::default());

    if args.once {
        let mut m = Monitor::observer(settings, targets, systemd, api_key, stop.clone());
        let relay = spawn_stop_relay(stop);
        let report = m.sweep(Instant::now());
        drop(relay);
        let Some(report) = report else {
            return Ok(Exit::Ok);
        };
        if args.json {
            let text = serde_json::to_string_pretty(&report.state)
                .map_err(|e| Failure::other(format!("cannot encode the state: {e}")))?;
            println!("{text}");
        } else {
            print!("{}", output::table(&report.state));
        }
        return Ok(if output::all_healthy(&report.state) {
            Exit::Ok
        } else {
            Exit::Failure
        });
    }

    let mut m = Monitor::supervisor(settings.clone(), targets, systemd, api_key, stop.clone());
    if let Some(g) = gpu_reader() {
        m = m.with_gpu(g);
    }
    let _relay = spawn_stop_relay(stop.clone());
    log::info!(
        "watching {} models every {}s (probe timeout {}s, restart after {} failures, at most {} restarts per {}s)",
        cfg.enabled_models().count(),
        settings.interval.as_secs(),
        settings.probe_timeout.as_secs(),
        settings.failure_threshold,
        settings.restart_budget,
        settings.restart_window.as_secs()
    );
    let mut ready = false;
    loop {
        let start = Instant::now();
        let Some(report) = m.sweep(start) else { break };
        let status = output::summary(&report.state);
        if ready {
            notify::status(&status);
        } else {
            notify::ready(&status);
            ready = true;
        }
        notify::watchdog();
        if !sleep_until(start + settings.interval, &stop) {
            break;
        }
    }
    notify::stopping("stopping");
    log::info!("stopping (signal)");
    Ok(Exit::Ok)
}
