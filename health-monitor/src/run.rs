//! The run loop: `--once`, or the service (`READY=1` after the first sweep, `WATCHDOG=1`,
//! `STATUS=`).

use crate::args::Args;
use crate::monitor::{GpuReader, Monitor};
use crate::output;
use crate::reload;
use crate::settings::{Settings, Target};
use crate::signals::sleep_until;
use citadel_common::config::Config;
use citadel_common::health::GpuHealth;
use citadel_common::signals::{self, spawn_stop_relay, Meaning};
use citadel_common::systemd::{Client, Systemd};
use citadel_common::{notify, Exit, Failure};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
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
        Ok(s) => GpuHealth::of(&s),
        Err(e) => {
            log::debug!("GPU readings: {e}");
            vec![]
        }
    }))
}

/// Full GPU snapshots for the fault checks: NVML opened once, or (the test hook) the readings
/// file of `CITADEL_FAKE_GPU` read again at every sweep, so a test can change it.
pub fn gpu_snapshots() -> crate::incidents::GpuSnap {
    let fake = std::env::var_os(citadel_common::gpu::FAKE_GPU_ENV).is_some();
    let mut source = citadel_common::gpu::open();
    Box::new(move || {
        if fake {
            source = citadel_common::gpu::open();
        }
        source.snapshot().map(|s| s.gpus).map_err(|e| e.to_string())
    })
}

fn api_key_for(cfg: &Config, settings: &Settings) -> Option<String> {
    match citadel_common::apikey::read(cfg) {
        Ok(k) => k,
        Err(e) if settings.deep_interval.is_some() => {
            log::error!("{e}; deep probes go without an API key");
            None
        }
        Err(_) => None,
    }
}

/// How long `--reload` waits for the monitor: a sweep in progress finishes first.
fn reload_wait(cfg: &Config) -> Duration {
    Duration::from_secs(cfg.monitor.probe_timeout_secs + cfg.monitor.deep_probe_timeout_secs + 10)
}

/// SIGHUP taken: reload, or keep the running config and say why. Always ends with `READY=1`.
fn reload_now(args: &Args, m: &mut Monitor, runtime_dir: &mut PathBuf) {
    match reload::reload_config(&args.common.config) {
        Ok(cfg) => {
            let settings = Settings::from_config(&cfg);
            let key = api_key_for(&cfg, &settings);
            log::info!(
                "reloaded {}: watching {} models every {}s",
                cfg.file.display(),
                cfg.enabled_models().count(),
                settings.interval.as_secs()
            );
            m.reconfigure(settings, Target::from_config(&cfg), key);
            reload::Loaded::of(&cfg, None).write(runtime_dir);
            *runtime_dir = cfg.paths.runtime_dir.clone();
        }
        Err(e) => {
            log::error!("reload refused, the running config stays in use: {e}");
            let mut l = reload::Loaded::read(&reload::ack_file(runtime_dir)).unwrap_or_else(|| {
                reload::Loaded {
                    pid: std::process::id(),
                    loaded_unix_ms: 0,
                    config: args.common.config.display().to_string(),
                    models: vec![],
                    interval_secs: m.settings().interval.as_secs(),
                    error: None,
                }
            });
            l.pid = std::process::id();
            l.loaded_unix_ms = reload::unix_ms();
            l.error = Some(e);
            l.write(runtime_dir);
        }
    }
    notify::ready("reloaded");
}

/// The binary: `--once`, `--reload PID` or the service loop.
pub fn run(args: &Args) -> Result<Exit, Failure> {
    let cfg = args.common.load_config()?;
    if let Some(pid) = args.reload {
        return reload::signal_and_wait(pid, &cfg.paths.runtime_dir, reload_wait(&cfg));
    }
    let settings = Settings::from_config(&cfg);
    let targets = Target::from_config(&cfg);
    let api_key = api_key_for(&cfg, &settings);
    signals::install(&[Meaning::Stop])?;
    let stop = Arc::new(AtomicBool::new(false));
    let systemd: Arc<dyn Systemd> = Arc::new(Client::with_timeout(settings.probe_timeout));

    if args.once {
        let mut m = Monitor::observer(settings, targets, systemd, api_key, stop.clone());
        let relay = spawn_stop_relay(stop);
        let report = m.sweep(Instant::now());
        drop(relay);
        let Some(report) = report else {
            // Stopped during the sweep: with --json still one document.
            if args.json {
                println!("{}", serde_json::json!({"stopped": true, "models": []}));
            }
            return Ok(Exit::Ok);
        };
        if args.json {
            citadel_common::output::print_json(&report.state)?;
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
        let kernel = citadel_common::gpufault::kernel_log(Some(
            cfg.paths.runtime_dir.join("kernel-log.cursor"),
        ));
        m = m.with_gpu_faults(kernel, gpu_snapshots());
    }
    let _relay = spawn_stop_relay(stop.clone());
    signals::install(&[Meaning::Reload])?;
    let mut runtime_dir = cfg.paths.runtime_dir.clone();
    reload::Loaded::of(&cfg, None).write(&runtime_dir);
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
        if !sleep_until(start + m.settings().interval, &stop) {
            break;
        }
        if signals::take_reload() {
            reload_now(args, &mut m, &mut runtime_dir);
        }
    }
    notify::stopping("stopping");
    log::info!("stopping (signal)");
    Ok(Exit::Ok)
}
