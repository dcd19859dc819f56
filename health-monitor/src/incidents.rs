//! What the monitor adds to the incident record, the GPU quarantine and the alerts:
//! - a monitor restart or a spent restart budget is an incident (the class of start-model's
//!   open incident when there is one) and an alert;
//! - a unit that becomes `failed` (a model, or citadel-storage / citadel-gpu at boot) is an
//!   alert, and an incident when start-model left none;
//! - GPU faults (Xid lines from the kernel log, NVML health) quarantine the GPU (its models
//!   stopped, an incident each, one alert) or restart the models on it;
//! - a model healthy again closes its incident series.

use citadel_common::alert::{Alert, Severity, Sink};
use citadel_common::classify::{self, Class, Context};
use citadel_common::gpu::GpuInfo;
use citadel_common::gpufault::{self, Action as FaultAction, Fault, KernelLog};
use citadel_common::incident::{Event, ExitInfo, Incident, Store};
use citadel_common::quarantine::{self, Quarantine};
use citadel_common::systemd::{ActiveState, Job, UnitStatus};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The units besides the models whose failure alerts.
pub const INFRA_UNITS: &[&str] = &[
    citadel_common::paths::UNIT_STORAGE,
    citadel_common::paths::UNIT_GPU,
];

/// Reads full GPU snapshots for the fault checks.
pub type GpuSnap = Box<dyn FnMut() -> Result<Vec<GpuInfo>, String>>;

/// The monitor's incident, quarantine and alert state.
pub struct Watch {
    state_dir: Option<PathBuf>,
    sink: Option<Sink>,
    kernel: Option<Box<dyn KernelLog + Send>>,
    gpus: Option<GpuSnap>,
    last_gpus: BTreeMap<u32, GpuInfo>,
    unit_states: BTreeMap<String, ActiveState>,
    healthy: BTreeSet<String>,
    said: BTreeSet<String>,
}

/// What the GPU checks ask the monitor to do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GpuActions {
    /// GPUs newly quarantined, with the fault.
    pub quarantine: Vec<Fault>,
    /// GPUs whose models should be restarted (a contained fault).
    pub restart: Vec<Fault>,
}

impl Watch {
    pub fn new(state_dir: Option<PathBuf>, sink: Option<Sink>) -> Watch {
        Watch {
            state_dir,
            sink,
            kernel: None,
            gpus: None,
            last_gpus: BTreeMap::new(),
            unit_states: BTreeMap::new(),
            healthy: BTreeSet::new(),
            said: BTreeSet::new(),
        }
    }

    /// A reloaded config: new incident directory and alert sink (GPU readings are kept).
    pub fn set_outputs(&mut self, state_dir: Option<PathBuf>, sink: Option<Sink>) {
        self.state_dir = state_dir;
        self.sink = sink;
    }

    /// Read GPU faults from this kernel log and these snapshots.
    pub fn with_gpu_faults(mut self, kernel: Box<dyn KernelLog + Send>, gpus: GpuSnap) -> Watch {
        self.kernel = Some(kernel);
        self.gpus = Some(gpus);
        self
    }

    fn store(&self) -> Option<Store> {
        let d = self.state_dir.as_ref()?;
        match Store::open(d).or_else(|_| Store::create(d)) {
            Ok(s) => Some(s),
            Err(e) => {
                log::warn!("incidents: {e}");
                None
            }
        }
    }

    fn record(&self, inc: Incident) -> Option<Incident> {
        let s = self.store()?;
        match s.record(inc) {
            Ok(i) => Some(i),
            Err(e) => {
                log::warn!("cannot record an incident in {}: {e}", s.path().display());
                None
            }
        }
    }

    /// The model's open incident (start-model's, usually).
    pub fn open_incident(&self, model: &str) -> Option<Incident> {
        self.store()?
            .latest(model)
            .ok()
            .flatten()
            .filter(|i| i.is_open())
    }

    fn send(&self, alerts: Vec<Alert>) {
        if let Some(s) = &self.sink {
            if !alerts.is_empty() {
                s.send(alerts);
            }
        }
    }

    /// GPUs quarantined now.
    pub fn quarantined(&self) -> Vec<Quarantine> {
        match &self.state_dir {
            Some(d) => quarantine::list(d).unwrap_or_else(|e| {
                log::warn!("GPU quarantine: {e}");
                vec![]
            }),
            None => vec![],
        }
    }

    /// A monitor restart or give-up of `model`: incident and alert.
    pub fn on_action(
        &self,
        model: &str,
        unit: &str,
        restart: bool,
        reason: &str,
        extra: serde_json::Map<String, serde_json::Value>,
    ) {
        let open = self.open_incident(model);
        let (class, summary, fix) = match &open {
            Some(i) => {
                let (c, s, _, _) = i.latest();
                (c, s.to_string(), i.fix.clone())
            }
            None => {
                let d = classify::word(Class::Unresponsive, reason, &ctx(model), None);
                (d.class, d.summary, d.fix)
            }
        };
        let event = if restart {
            Event::MonitorRestart
        } else {
            Event::GaveUp
        };
        let d = classify::Diagnosis {
            class,
            summary: summary.clone(),
            fix: fix.clone(),
            line: None,
        };
        self.record(Incident::new(model, unit, "health-monitor", event, &d));
        let (name, ev, sev) = if restart {
            ("CitadelModelRestarted", "restart", Severity::Warning)
        } else {
            (
                "CitadelRestartBudgetSpent",
                "restart_budget_spent",
                Severity::Critical,
            )
        };
        let mut a = Alert::new(name, ev, sev, format!("{model}: {reason}"));
        a.model = Some(model.into());
        a.unit = Some(unit.into());
        a.class = Some(class);
        a.fix = fix;
        a.extra = extra;
        self.send(vec![a]);
    }

    /// Unit states of this sweep (models with their names, infra units with `None`): a unit
    /// that became `failed` alerts (and gets an incident when none is open).
    pub fn on_units(&mut self, units: &[(Option<&str>, &UnitStatus)]) {
        let mut alerts = vec![];
        for (model, u) in units {
            let prev = self.unit_states.insert(u.unit.clone(), u.active_state);
            if u.active_state != ActiveState::Failed || prev == Some(ActiveState::Failed) {
                continue;
            }
            let result = if u.result.is_empty() {
                "failed".to_string()
            } else {
                u.result.clone()
            };
            let mut a = Alert::new(
                "CitadelUnitFailed",
                "unit_failed",
                Severity::Critical,
                format!("{} failed ({result})", u.unit),
            );
            a.unit = Some(u.unit.clone());
            match model {
                Some(m) => {
                    a.model = Some(m.to_string());
                    let inc = match self.open_incident(m) {
                        Some(i) => i,
                        None => {
                            let d = classify::word(
                                Class::Unknown,
                                &format!(
                                    "{} failed ({result}) with no incident from start-model",
                                    u.unit
                                ),
                                &ctx(m),
                                None,
                            );
                            match self.record(Incident::new(
                                m,
                                &u.unit,
                                "health-monitor",
                                Event::UnitFailed,
                                &d,
                            )) {
                                Some(i) => i,
                                None => Incident::new(
                                    m,
                                    &u.unit,
                                    "health-monitor",
                                    Event::UnitFailed,
                                    &d,
                                ),
                            }
                        }
                    };
                    let (class, summary, _, _) = inc.latest();
                    a.class = Some(class);
                    a.summary = format!("{} failed ({result}): {summary}", u.unit);
                    a.fix = inc.fix.clone();
                    a.gpu = inc.gpu;
                }
                None => {
                    a.fix = format!(
                        "journalctl -u {} -b shows why; every model waits for it",
                        u.unit
                    );
                }
            }
            log::error!("{}", a.summary);
            alerts.push(a);
        }
        self.send(alerts);
    }

    /// The model answered its health checks: close its incident series (once per recovery).
    pub fn on_health(&mut self, model: &str, healthy: bool) {
        if !healthy {
            self.healthy.remove(model);
            return;
        }
        if self.healthy.insert(model.to_string()) {
            if let Some(s) = self.store() {
                if let Err(e) = s.resolve(model) {
                    log::warn!("cannot close the incident of {model}: {e}");
                }
            }
        }
    }

    /// New GPU faults since the last sweep.
    pub fn gpu_faults(&mut self) -> GpuActions {
        let mut out = GpuActions::default();
        let (Some(kernel), Some(snap)) = (self.kernel.as_mut(), self.gpus.as_mut()) else {
            return out;
        };
        let now = match snap() {
            Ok(g) => Some(g),
            Err(e) => {
                if self.said.insert(format!("snap:{e}")) {
                    log::warn!("GPU health: {e}");
                }
                None
            }
        };
        let known: Vec<GpuInfo> = now
            .clone()
            .unwrap_or_else(|| self.last_gpus.values().cloned().collect());
        let mut faults = vec![];
        match kernel.new_lines() {
            Ok(lines) => {
                let (f, unknown) = gpufault::xid_faults(&lines, &known);
                faults.extend(f);
                for u in unknown {
                    log::warn!("{u}");
                }
            }
            Err(e) => {
                if self.said.insert(format!("kernel:{e}")) {
                    log::warn!("kernel log: {e}");
                }
            }
        }
        if let Some(now) = &now {
            for g in now {
                faults.extend(gpufault::health_faults(self.last_gpus.get(&g.index), g));
            }
            // A GPU that was read before and is missing now stopped answering.
            for idx in self.last_gpus.keys() {
                if !now.iter().any(|g| g.index == *idx) {
                    faults.push(gpufault::lost_gpu(*idx, "missing from NVML's device list"));
                }
            }
            self.last_gpus = now.iter().map(|g| (g.index, g.clone())).collect();
        }
        for f in faults {
            match f.action {
                FaultAction::Quarantine => out.quarantine.push(f),
                FaultAction::RestartModel => out.restart.push(f),
                FaultAction::Note => log::warn!("GPU {}: {}", f.gpu, f.what),
            }
        }
        out
    }

    /// Quarantine `f.gpu` (first reason kept); the models on it get an incident each and
    /// one alert goes out. True when it was not quarantined before.
    pub fn quarantine(&self, f: &Fault, models: &[(String, String)]) -> bool {
        let Some(d) = &self.state_dir else {
            return false;
        };
        let q = Quarantine {
            gpu: f.gpu,
            xid: f.xid,
            what: f.what.clone(),
            time_unix: citadel_common::incident::unix_now(),
            models: models.iter().map(|(m, _)| m.clone()).collect(),
        };
        match quarantine::set(d, &q) {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                log::error!("cannot quarantine GPU {}: {e}", f.gpu);
                return false;
            }
        }
        log::error!(
            "GPU {} quarantined: {}; stopping {}",
            f.gpu,
            f.what,
            if models.is_empty() {
                "nothing".to_string()
            } else {
                models
                    .iter()
                    .map(|(m, _)| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let summary = format!("GPU {} quarantined: {}", f.gpu, f.what);
        let mut alerts = vec![];
        for (m, unit) in models {
            let d = classify::word(Class::GpuFault, &summary, &ctx(m), None);
            let mut inc = Incident::new(m, unit, "health-monitor", Event::GpuQuarantine, &d)
                .with_exit(ExitInfo::default());
            inc.exit = None;
            inc.gpu = Some(f.gpu);
            inc.xid = f.xid;
            let fix = inc
                .fix
                .replace("gpu clear N", &format!("gpu clear {}", f.gpu));
            inc.fix = fix.clone();
            self.record(inc);
            let mut a = Alert::new(
                "CitadelGpuQuarantined",
                "gpu_quarantine",
                Severity::Critical,
                format!("{m}: {summary}"),
            );
            a.model = Some(m.clone());
            a.unit = Some(unit.clone());
            a.gpu = Some(f.gpu);
            a.class = Some(Class::GpuFault);
            a.fix = fix;
            if let Some(x) = f.xid {
                a.extra.insert("xid".into(), serde_json::json!(x));
            }
            alerts.push(a);
        }
        if models.is_empty() {
            let mut a = Alert::new(
                "CitadelGpuQuarantined",
                "gpu_quarantine",
                Severity::Critical,
                summary,
            );
            a.gpu = Some(f.gpu);
            a.class = Some(Class::GpuFault);
            alerts.push(a);
        }
        self.send(alerts);
        true
    }

    /// A contained fault: the models on the GPU are restarted; an incident each.
    pub fn contained(&self, f: &Fault, models: &[(String, String)]) {
        for (m, unit) in models {
            let d = classify::word(
                Class::GpuFault,
                &format!(
                    "GPU {}: {} (contained: restarting the model)",
                    f.gpu, f.what
                ),
                &ctx(m),
                None,
            );
            let mut inc = Incident::new(m, unit, "health-monitor", Event::MonitorRestart, &d);
            inc.gpu = Some(f.gpu);
            inc.xid = f.xid;
            self.record(inc);
        }
    }
}

fn ctx(model: &str) -> Context {
    Context {
        model: model.to_string(),
        ..Context::default()
    }
}

impl crate::monitor::Monitor {
    /// Faults found on the GPUs since the last sweep: quarantine (stop the GPU's models) or
    /// restart the models on it; other GPUs' models are untouched.
    pub(crate) fn act_on_gpu_faults(&mut self) {
        let actions = self.watch.gpu_faults();
        let on = |gpu: u32| -> Vec<(String, String)> {
            self.targets
                .iter()
                .filter(|t| t.enabled && t.gpus.contains(&gpu))
                .map(|t| (t.name.clone(), t.unit.clone()))
                .collect()
        };
        for f in &actions.quarantine {
            let models = on(f.gpu);
            if self.watch.quarantine(f, &models) {
                for (_, unit) in &models {
                    if let Err(e) = self.systemd.queue(Job::Stop, std::slice::from_ref(unit)) {
                        log::error!("cannot stop {unit} on quarantined GPU {}: {e}", f.gpu);
                    }
                }
            }
        }
        let quarantined: Vec<u32> = self.watch.quarantined().iter().map(|q| q.gpu).collect();
        for f in actions
            .restart
            .iter()
            .filter(|f| !quarantined.contains(&f.gpu))
        {
            let models = on(f.gpu);
            log::warn!("GPU {}: {}; restarting the models on it", f.gpu, f.what);
            self.watch.contained(f, &models);
            for (_, unit) in &models {
                if let Err(e) = self.systemd.restart_no_drain(unit) {
                    log::error!("cannot restart {unit}: {e}");
                }
            }
        }
    }
}
