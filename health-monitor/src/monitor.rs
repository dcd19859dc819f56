//! The monitor and one sweep: unit states from systemd, parallel probes, the decision per
//! model, restarts, the state file and textfile.

use crate::budget::Budget;
use crate::decide::{self, Action, Observation, Record};
use crate::deep::DeepSlot;
use crate::output;
use crate::settings::{Authority, Settings, StatusOnly, Target};
use crate::sweep;
use crate::transitions::log_change;
use citadel_common::health::{GpuHealth, HealthState, ModelHealth, ModelState, SCHEMA};
use citadel_common::systemd::{ActiveState, Systemd, UnitStatus};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What one sweep produced.
#[derive(Debug, Clone)]
pub struct SweepReport {
    pub state: HealthState,
    /// Units the sweep restarted.
    pub restarted: Vec<String>,
}

/// The monitor: settings, targets, systemd, and what it remembers between sweeps.
pub struct Monitor {
    pub(crate) settings: Settings,
    pub(crate) targets: Vec<Target>,
    pub(crate) systemd: Arc<dyn Systemd>,
    pub(crate) authority: Authority,
    pub(crate) api_key: Option<String>,
    pub(crate) stop: Arc<AtomicBool>,
    records: BTreeMap<String, Record>,
    pub(crate) deep: BTreeMap<String, DeepSlot>,
    pub(crate) watch: crate::incidents::Watch,
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
        let supervise = authority == Authority::Supervise;
        let sink = sink_of(&settings, supervise);
        let watch =
            crate::incidents::Watch::new(settings.state_dir.clone().filter(|_| supervise), sink);
        Monitor {
            settings,
            targets,
            systemd,
            authority,
            api_key,
            stop,
            records: BTreeMap::new(),
            deep: BTreeMap::new(),
            watch,
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

    /// Swap in a reloaded config: new settings and models; what the monitor remembers about
    /// models still present (failures, restart budget, deep-probe schedule) is kept.
    pub fn reconfigure(
        &mut self,
        settings: Settings,
        targets: Vec<Target>,
        api_key: Option<String>,
    ) {
        let names: std::collections::BTreeSet<&str> =
            targets.iter().map(|t| t.name.as_str()).collect();
        self.records.retain(|n, _| names.contains(n.as_str()));
        self.deep.retain(|n, _| names.contains(n.as_str()));
        let supervise = self.authority == Authority::Supervise;
        self.watch.set_outputs(
            settings.state_dir.clone().filter(|_| supervise),
            sink_of(&settings, supervise),
        );
        self.settings = settings;
        self.targets = targets;
        self.api_key = api_key;
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Watch the GPUs for faults (Xid lines, NVML health) and quarantine on fatal ones.
    pub fn with_gpu_faults(
        mut self,
        kernel: Box<dyn citadel_common::gpufault::KernelLog + Send>,
        gpus: crate::incidents::GpuSnap,
    ) -> Monitor {
        self.watch = self.watch.with_gpu_faults(kernel, gpus);
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
        let mut units: Vec<String> = enabled
            .iter()
            .map(|&i| self.targets[i].unit.clone())
            .collect();
        // citadel-storage and citadel-gpu too, in the same call: their failure alerts.
        units.extend(crate::incidents::INFRA_UNITS.iter().map(|u| u.to_string()));
        let statuses = match self.systemd.sweep(&units) {
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
        if let Some(s) = &statuses {
            let named: Vec<(Option<&str>, &UnitStatus)> = s
                .iter()
                .enumerate()
                .map(|(k, u)| (enabled.get(k).map(|&i| self.targets[i].name.as_str()), u))
                .collect();
            self.watch.on_units(&named);
        }
        if self.authority == Authority::Supervise {
            self.act_on_gpu_faults();
        }

        let unit_of = |k: usize| statuses.as_ref().map(|s| s[k].clone());
        let observe = self.authority == Authority::Observe;
        let deep_enabled = self.settings.deep_interval.is_some();

        // Probe every model whose unit is up (or unknown).
        let mut to_probe = vec![];
        for (k, &i) in enabled.iter().enumerate() {
            let probe = unit_of(k).map_or(true, |u| !u.not_found() && u.active_state.is_up());
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
                Action::Restart => match self.systemd.restart_no_drain(&t.unit) {
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
            self.watch
                .on_health(&t.name, rec.state == ModelState::Healthy);
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
                        unit_state: (u.active_state != ActiveState::Unknown)
                            .then(|| u.active_state.to_string()),
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
                    reason: t.enabled.then(|| "not swept yet".to_string()),
                    since_unix: unix,
                    ..ModelHealth::new(&t.name, &t.unit, t.port, ModelState::Disabled)
                },
            })
            .collect();
        HealthState {
            schema: SCHEMA,
            updated_unix: unix,
            sweep_ms: took.as_millis() as u64,
            models,
            quarantined_gpus: self.watch.quarantined().iter().map(|q| q.gpu).collect(),
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

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where alerts go: the webhook of the settings, for the service only.
fn sink_of(settings: &Settings, supervise: bool) -> Option<citadel_common::alert::Sink> {
    settings
        .webhook_url
        .clone()
        .filter(|_| supervise)
        .map(|url| citadel_common::alert::Sink {
            url,
            format: settings.webhook_format,
            timeout: settings.webhook_timeout,
        })
}
