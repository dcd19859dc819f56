//! health-monitor: watch every enabled model, restart only what is really broken, never what
//! is loading or was stopped on purpose.
//!
//! One [`Monitor::sweep`] asks systemd for every model unit in one `systemctl show`, probes
//! every active model in parallel (`/health` + `/metrics`, each bounded by the probe timeout),
//! picks up finished deep probes, runs the pure decision ([`decide::decide`]) per model, issues
//! `systemctl restart --no-block` where it says so, logs transitions only, and writes the state
//! file and textfile. [`run`] loops it under systemd (`READY=1` after the first sweep,
//! `WATCHDOG=1` each loop, `STATUS=`), or runs one read-only sweep for `--once`.

pub mod budget;
pub mod decide;
pub mod metrics;
pub mod output;
pub mod sweep;

use budget::Budget;
use citadel_common::config::Config;
use citadel_common::health::{GpuHealth, HealthState, ModelHealth, ModelState, SCHEMA};
use citadel_common::systemctl::{Systemctl, Systemd, UnitStatus};
use citadel_common::{notify, Exit, Failure};
use decide::{Action, DeepOutcome, Observation, Policy, Record};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "Watch every enabled Citadel model: probe in parallel, restart only what is really broken (never a model that is loading or was stopped)",
    after_help = "Examples:
  /usr/lib/citadel/health-monitor --once
      one sweep now, as a table; restarts nothing, writes nothing
  /usr/lib/citadel/health-monitor --once --json
      the same in the state-file schema"
)]
pub struct Args {
    #[command(flatten)]
    pub common: citadel_common::cli::CommonArgs,
    /// Run one sweep, print the result and exit: 0 when every enabled model is healthy, 1
    /// otherwise. Never restarts anything and writes no state file. The sweep waits for the
    /// deep probe when one is configured (up to monitor.deep_probe_timeout_secs).
    #[arg(long)]
    pub once: bool,
    /// With --once: print the result as JSON (the state-file schema) instead of a table.
    #[arg(long, requires = "once")]
    pub json: bool,
}

/// The monitor's settings, as durations (built from `[monitor]`; tests use milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub interval: Duration,
    pub probe_timeout: Duration,
    pub failure_threshold: u32,
    /// `None`: no deep probe.
    pub deep_interval: Option<Duration>,
    pub deep_timeout: Duration,
    pub stall: Duration,
    pub restart_budget: u32,
    pub restart_window: Duration,
    /// How long a queued restart is followed before the old process is judged again.
    pub restart_follow: Duration,
    /// `None`: not written.
    pub state_file: Option<PathBuf>,
    pub textfile: Option<PathBuf>,
    pub webhook_url: Option<String>,
    pub webhook_timeout: Duration,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let m = &cfg.monitor;
        let s = Duration::from_secs;
        Settings {
            interval: s(m.interval_secs),
            probe_timeout: s(m.probe_timeout_secs),
            failure_threshold: m.failure_threshold.max(1),
            deep_interval: (m.deep_probe_interval_secs > 0).then(|| s(m.deep_probe_interval_secs)),
            deep_timeout: s(m.deep_probe_timeout_secs),
            stall: s(m.stall_secs),
            restart_budget: m.restart_budget,
            restart_window: s(m.restart_window_secs),
            // The old process may take stop_grace_secs to exit before the new one starts.
            restart_follow: s(cfg.engine.stop_grace_secs + 3 * m.interval_secs),
            state_file: Some(m.state_file.clone()),
            textfile: m.textfile.clone(),
            webhook_url: m.webhook_url.clone(),
            webhook_timeout: s(m.webhook_timeout_secs),
        }
    }

    fn policy(&self, may_restart: bool) -> Policy {
        Policy {
            failure_threshold: self.failure_threshold,
            stall: self.stall,
            probe_timeout: self.probe_timeout,
            restart_follow: self.restart_follow,
            may_restart,
        }
    }
}

/// One model as the monitor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub unit: String,
    pub port: u16,
    /// `http://HOST:PORT`.
    pub base_url: String,
    pub served_model_name: String,
    /// Disabled models are listed as such, never probed.
    pub enabled: bool,
}

impl Target {
    pub fn from_config(cfg: &Config) -> Vec<Target> {
        cfg.models
            .iter()
            .map(|m| Target {
                name: m.name.clone(),
                unit: m.unit(),
                port: m.port,
                base_url: citadel_common::probe::base_url(&cfg.engine.host, m.port),
                served_model_name: m.served_model_name.clone(),
                enabled: m.enabled,
            })
            .collect()
    }
}

/// Whether the monitor may restart units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// The service: restarts what the decision says.
    Supervise,
    /// `--once`: the decision is told it may not restart, and systemd is only reachable
    /// through [`StatusOnly`], which refuses restarts.
    Observe,
}

/// A [`Systemd`] that can read unit states and nothing else.
pub struct StatusOnly(pub Arc<dyn Systemd>);

impl Systemd for StatusOnly {
    fn status(&self, units: &[String]) -> Result<Vec<UnitStatus>, Failure> {
        self.0.status(units)
    }
    fn restart_no_block(&self, unit: &str) -> Result<(), Failure> {
        Err(Failure::other(format!(
            "refusing to restart {unit}: this monitor is read-only (--once)"
        )))
    }
}

/// What one sweep produced.
#[derive(Debug, Clone)]
pub struct SweepReport {
    pub state: HealthState,
    /// Units the sweep restarted.
    pub restarted: Vec<String>,
}

struct DeepSlot {
    rx: Option<Receiver<DeepOutcome>>,
    next_due: Option<Instant>,
}

/// The monitor: settings, targets, systemd, and what it remembers between sweeps.
pub struct Monitor {
    settings: Settings,
    targets: Vec<Target>,
    systemd: Arc<dyn Systemd>,
    authority: Authority,
    api_key: Option<String>,
    stop: Arc<AtomicBool>,
    records: BTreeMap<String, Record>,
    deep: BTreeMap<String, DeepSlot>,
    webhook: Option<output::Webhook>,
    systemd_error: Option<String>,
    output_error: Option<String>,
    gpu: Option<GpuReader>,
}

/// Reads the per-GPU part of the state (temperature, memory) at each sweep.
pub type GpuReader = Box<dyn Fn() -> Vec<GpuHealth>>;

impl Monitor {
    /// A monitor that restarts what is broken (the service).
    pub fn supervisor(
        settings: Settings,
        targets: Vec<Target>,
        systemd: Arc<dyn Systemd>,
        api_key: Option<String>,
        stop: Arc<AtomicBool>,
    ) -> Monitor {
        Self::build(
            settings,
            targets,
            systemd,
            Authority::Supervise,
            api_key,
            stop,
        )
    }

    /// A read-only monitor (`--once`): never restarts anything, writes nothing.
    pub fn observer(
        settings: Settings,
        targets: Vec<Target>,
        systemd: Arc<dyn Systemd>,
        api_key: Option<String>,
        stop: Arc<AtomicBool>,
    ) -> Monitor {
        let systemd: Arc<dyn Systemd> = Arc::new(StatusOnly(systemd));
        Self::build(
            settings,
            targets,
            systemd,
            Authority::Observe,
            api_key,
            stop,
        )
    }

    fn build(
        settings: Settings,
        targets: Vec<Target>,
        systemd: Arc<dyn Systemd>,
        authority: Authority,
        api_key: Option<String>,
        stop: Arc<AtomicBool>,
    ) -> Monitor {
        let webhook = match (&settings.webhook_url, authority) {
            (Some(url), Authority::Supervise) => Some(output::Webhook {
                url: url.clone(),
                timeout: settings.webhook_timeout,
            }),
            _ => None,
        };
        Monitor {
            settings,
            targets,
            systemd,
            authority,
            api_key,
            stop,
            records: BTreeMap::new(),
            deep: BTreeMap::new(),
            webhook,
            systemd_error: None,
            output_error: None,
            gpu: None,
        }
    }

    /// Add per-GPU readings to the state file and textfile.
    pub fn with_gpu(mut self, read: GpuReader) -> Monitor {
        self.gpu = Some(read);
        self
    }

    pub fn authority(&self) -> Authority {
        self.authority
    }

    /// The record of one model after the last sweep.
    pub fn record(&self, name: &str) -> Option<&Record> {
        self.records.get(name)
    }

    /// One sweep at `now` (the monitor's clock; probes themselves use real time). `None` when
    /// the stop flag was raised during it (the sweep is abandoned, nothing is written).
    pub fn sweep(&mut self, now: Instant) -> Option<SweepReport> {
        let started = Instant::now();
        let enabled: Vec<usize> = (0..self.targets.len())
            .filter(|&i| self.targets[i].enabled)
            .collect();
        let units: Vec<String> = enabled
            .iter()
            .map(|&i| self.targets[i].unit.clone())
            .collect();
        let statuses = match self.systemd.status(&units) {
            Ok(s) if s.len() == units.len() => {
                if let Some(e) = self.systemd_error.take() {
                    log::info!("systemd answers again (was: {e})");
                }
                Some(s)
            }
            Ok(s) => Some(self.note_systemd_error(format!(
                "systemd returned {} unit states for {} units",
                s.len(),
                units.len()
            ))),
            Err(e) => Some(self.note_systemd_error(e.message)),
        }
        .filter(|s| !s.is_empty());

        let unit_of = |k: usize| statuses.as_ref().map(|s| s[k].clone());
        let observe = self.authority == Authority::Observe;
        let deep_enabled = self.settings.deep_interval.is_some();

        // Probe every model whose unit is up (or unknown).
        let mut to_probe = vec![];
        for (k, &i) in enabled.iter().enumerate() {
            let probe = unit_of(k).map_or(true, |u| {
                u.load_state != "not-found"
                    && matches!(u.active_state.as_str(), "active" | "reloading")
            });
            if probe {
                to_probe.push((i, self.targets[i].base_url.clone()));
                if observe && deep_enabled {
                    self.start_deep(i, now);
                }
            }
        }
        let probed = sweep::probe_all(&to_probe, self.settings.probe_timeout, &self.stop)?;
        let mut results: BTreeMap<usize, sweep::ProbeResult> = probed.into_iter().collect();
        if observe && deep_enabled && !self.wait_deep() {
            return None;
        }

        let policy = self.settings.policy(self.authority == Authority::Supervise);
        let mut restarted = vec![];
        for (k, &i) in enabled.iter().enumerate() {
            let t = self.targets[i].clone();
            let probe = results.remove(&i);
            let obs = Observation {
                unit: unit_of(k),
                health: probe.as_ref().map(|p| p.health.clone()),
                metrics: probe.and_then(|p| p.metrics),
                deep: self.take_deep(&t.name),
            };
            let prev = self.records.get(&t.name);
            let budget = Budget::new(self.settings.restart_budget, self.settings.restart_window);
            let (mut rec, action) = decide::decide(prev, &obs, &policy, budget, now);
            match action {
                Action::Restart => match self.systemd.restart_no_block(&t.unit) {
                    Ok(()) => restarted.push(t.unit.clone()),
                    Err(e) => {
                        rec.restart_failed(&e.message);
                    }
                },
                Action::GiveUp | Action::None => {}
            }
            log_change(&t, prev, &rec, action, &self.settings);
            if matches!(action, Action::Restart | Action::GiveUp)
                && rec.state != ModelState::Failing
            {
                self.fire_webhook(&t, &rec, action);
            }
            let healthy_probe = matches!(
                obs.health, Some(Ok(a)) if a.status == 200
            );
            if !matches!(
                rec.state,
                ModelState::Healthy | ModelState::Failing | ModelState::GaveUp
            ) {
                // Whatever a deep probe in flight says is about a process that is going away.
                self.deep.remove(&t.name);
            } else if !observe && healthy_probe {
                let failing = rec.deep_failure.is_some();
                self.schedule_deep(i, now, failing);
            }
            self.records.insert(t.name.clone(), rec);
        }

        let state = self.health_state(now, started.elapsed());
        if !observe {
            self.write_outputs(&state);
        }
        Some(SweepReport { state, restarted })
    }

    fn note_systemd_error(&mut self, e: String) -> Vec<UnitStatus> {
        if self.systemd_error.as_deref() != Some(e.as_str()) {
            log::warn!(
                "cannot read unit states, judging by probes only and restarting nothing: {e}"
            );
        }
        self.systemd_error = Some(e);
        vec![]
    }

    fn start_deep(&mut self, i: usize, now: Instant) {
        let t = &self.targets[i];
        let rx = sweep::spawn_deep(
            &t.base_url,
            &t.served_model_name,
            self.api_key.as_deref(),
            self.settings.deep_timeout,
            self.settings.probe_timeout,
        );
        let next_due = self.settings.deep_interval.map(|d| now + d);
        self.deep.insert(
            t.name.clone(),
            DeepSlot {
                rx: Some(rx),
                next_due,
            },
        );
    }

    /// Start a deep probe when one is due (or at once while the last one failed).
    fn schedule_deep(&mut self, i: usize, now: Instant, failing: bool) {
        if self.settings.deep_interval.is_none() {
            return;
        }
        let name = &self.targets[i].name;
        let due = match self.deep.get(name) {
            None => true,
            Some(s) if s.rx.is_some() => false,
            Some(s) => failing || s.next_due.map_or(true, |d| now >= d),
        };
        if due {
            self.start_deep(i, now);
        }
    }

    /// `--once`: wait for every deep probe started by this sweep. False when stopped.
    fn wait_deep(&mut self) -> bool {
        let deadline = Instant::now()
            + self.settings.deep_timeout
            + 2 * self.settings.probe_timeout
            + sweep::MARGIN;
        let mut done: BTreeMap<String, DeepOutcome> = BTreeMap::new();
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            let mut waiting = false;
            for (name, slot) in &mut self.deep {
                if let Some(rx) = &slot.rx {
                    match rx.try_recv() {
                        Ok(o) => {
                            done.insert(name.clone(), o);
                            slot.rx = None;
                        }
                        Err(TryRecvError::Empty) => waiting = true,
                        Err(TryRecvError::Disconnected) => slot.rx = None,
                    }
                }
            }
            if !waiting || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(sweep::STOP_POLL);
        }
        for (name, o) in done {
            let (tx, rx) = std::sync::mpsc::channel();
            let _ = tx.send(o);
            if let Some(slot) = self.deep.get_mut(&name) {
                slot.rx = Some(rx);
            }
        }
        true
    }

    /// A deep probe outcome that has arrived, if any.
    fn take_deep(&mut self, name: &str) -> Option<DeepOutcome> {
        let slot = self.deep.get_mut(name)?;
        let rx = slot.rx.as_ref()?;
        match rx.try_recv() {
            Ok(o) => {
                slot.rx = None;
                Some(o)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                slot.rx = None;
                None
            }
        }
    }

    fn fire_webhook(&self, t: &Target, rec: &Record, action: Action) {
        let Some(w) = &self.webhook else { return };
        w.send(serde_json::json!({
            "event": if action == Action::Restart { "restart" } else { "restart_budget_spent" },
            "model": t.name,
            "unit": t.unit,
            "state": rec.state.as_str(),
            "reason": rec.reason,
            "monitor_restarts": rec.monitor_restarts,
            "restart_budget": self.settings.restart_budget,
            "restart_window_secs": self.settings.restart_window.as_secs(),
            "time_unix": unix_now(),
        }));
    }

    /// The state file's view of the last sweep.
    pub fn health_state(&self, now: Instant, took: Duration) -> HealthState {
        let unix = unix_now();
        let models = self
            .targets
            .iter()
            .map(|t| match self.records.get(&t.name).filter(|_| t.enabled) {
                Some(r) => {
                    let u = r.unit.clone().unwrap_or_default();
                    ModelHealth {
                        name: t.name.clone(),
                        unit: t.unit.clone(),
                        port: t.port,
                        state: r.state,
                        unit_state: u.active_state,
                        main_pid: u.main_pid,
                        systemd_restarts: u.n_restarts,
                        monitor_restarts: r.monitor_restarts,
                        consecutive_failures: r.consecutive_failures,
                        latency_ms: r.latency.map(|l| l.as_millis() as u64),
                        reason: r.reason.clone().or_else(|| r.warning.clone()),
                        since_unix: unix
                            .saturating_sub(now.saturating_duration_since(r.since).as_secs()),
                    }
                }
                None => ModelHealth {
                    name: t.name.clone(),
                    unit: t.unit.clone(),
                    port: t.port,
                    state: ModelState::Disabled,
                    unit_state: String::new(),
                    main_pid: 0,
                    systemd_restarts: 0,
                    monitor_restarts: 0,
                    consecutive_failures: 0,
                    latency_ms: None,
                    reason: t.enabled.then(|| "not swept yet".to_string()),
                    since_unix: unix,
                },
            })
            .collect();
        HealthState {
            schema: SCHEMA,
            updated_unix: unix,
            sweep_ms: took.as_millis() as u64,
            models,
            gpus: self.gpu.as_ref().map(|g| g()).unwrap_or_default(),
        }
    }

    fn write_outputs(&mut self, state: &HealthState) {
        let mut errors = vec![];
        if let Some(p) = &self.settings.state_file {
            if let Err(e) = state.write(p) {
                errors.push(format!("state file {}: {e}", p.display()));
            }
        }
        if let Some(p) = &self.settings.textfile {
            if let Err(e) = output::write_textfile(p, state) {
                errors.push(format!("textfile {}: {e}", p.display()));
            }
        }
        let now = (!errors.is_empty()).then(|| errors.join("; "));
        if now != self.output_error {
            match &now {
                Some(e) => log::error!("cannot write {e}"),
                None => log::info!("state written again"),
            }
        }
        self.output_error = now;
    }
}

/// One log line per change of state (with the reason), none while nothing changes.
fn log_change(t: &Target, prev: Option<&Record>, rec: &Record, action: Action, s: &Settings) {
    use ModelState::*;
    let name = &t.name;
    let reason = rec.reason.as_deref().unwrap_or("");
    if rec.warning.is_some() && rec.warning != prev.and_then(|p| p.warning.clone()) {
        log::warn!("{name}: {}", rec.warning.as_deref().unwrap_or(""));
    }
    if let Some(n) = &rec.note {
        log::debug!("{name}: {n}");
    }
    match action {
        Action::Restart if rec.state == Restarting => {
            log::warn!(
                "{name}: {} -> restarting: systemctl restart --no-block {} (monitor restart {} of {} allowed per {}s) after {} consecutive failures: {reason}",
                prev.map_or("unknown", |p| p.state.as_str()),
                t.unit,
                rec.budget.clone().used(rec.since),
                s.restart_budget,
                s.restart_window.as_secs(),
                rec.restart.map_or(s.failure_threshold, |r| r.after_failures),
            );
            return;
        }
        Action::Restart => {
            // systemctl refused (e.g. no permission): said once, tried again each sweep.
            let said = prev
                .and_then(|p| p.reason.as_deref())
                .is_some_and(|r| r.starts_with("restart could not be issued"));
            if !said {
                log::error!("{name}: {reason}");
            }
            return;
        }
        Action::GiveUp => {
            log::error!(
                "{name}: {} -> gave_up: {reason}",
                prev.map_or("unknown", |p| p.state.as_str())
            );
            return;
        }
        Action::None => {}
    }
    let Some(p) = prev else {
        let line = if reason.is_empty() {
            format!("{name}: {}", rec.state.as_str())
        } else {
            format!("{name}: {}: {reason}", rec.state.as_str())
        };
        match rec.state {
            Failed | GaveUp => log::error!("{line}"),
            Failing | Restarting => log::warn!("{line}"),
            _ => log::info!("{line}"),
        }
        return;
    };
    if p.state == rec.state {
        return;
    }
    let line = if reason.is_empty() {
        format!("{name}: {} -> {}", p.state.as_str(), rec.state.as_str())
    } else {
        format!(
            "{name}: {} -> {}: {reason}",
            p.state.as_str(),
            rec.state.as_str()
        )
    };
    match rec.state {
        Failed | GaveUp => log::error!("{line}"),
        Failing => log::warn!("{line}"),
        _ => log::info!("{line}"),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Raised by SIGTERM / SIGINT.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() -> Result<(), Failure> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &act) }
            .map_err(|e| Failure::other(format!("cannot install a {sig} handler: {e}")))?;
    }
    Ok(())
}

/// Sleep until `until`, in small steps, petting the watchdog; false when stopped.
fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
    let pet = notify::watchdog_interval().map(|w| w / 2);
    let mut last_pet = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        if pet.is_some_and(|p| now.duration_since(last_pet) >= p) {
            notify::watchdog();
            last_pet = now;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

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

/// Copy the process-wide signal flag into the monitor's stop flag (a small thread).
fn spawn_stop_relay(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || loop {
        if STOP.load(Ordering::SeqCst) {
            stop.store(true, Ordering::SeqCst);
            return;
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    })
}
