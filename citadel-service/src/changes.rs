//! What `apply` would do: the difference between the config the box runs (the snapshot in
//! `state_dir`) and the edited one, as a plan per model and per component.
//!
//! Pure: no systemd, no files. A model restarts only when something it is started with
//! changed; keys that start-model reads only while starting or stopping (`load_timeout_secs`,
//! the engine's waits and grace) are noted and take effect at the model's next start.
//!
//! Over 500 lines as one concern: the plan of each key that can change; tests are in
//! `changes/tests.rs`.

use citadel_common::config::{Config, Model};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Share sums above this are over-committed (float noise allowed, as in validation).
const FULL: f64 = 1.0 + 1e-9;

/// What happens to one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelAction {
    Start,
    Stop,
    Restart,
    Unchanged,
}

/// What happens to the monitor, the gateway, storage or the GPU policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Unchanged,
    /// Config re-read in place (SIGHUP through `systemctl reload`).
    Reload,
    Restart,
    /// storage-setup run again (its checks and directories; no unit restart).
    Rerun,
    /// gpu-optimize run again (it changes only what differs).
    Reapply,
    /// Started (the gateway, once enabled).
    Start,
    /// Stopped (the gateway, once disabled).
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelChange {
    pub name: String,
    pub action: ModelAction,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub action: Action,
    pub reasons: Vec<String>,
}

impl Change {
    fn of(action: Action, reasons: Vec<String>) -> Change {
        let action = if reasons.is_empty() {
            Action::Unchanged
        } else {
            action
        };
        Change { action, reasons }
    }
}

/// One step of carrying the plan out, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", content = "target", rename_all = "snake_case")]
pub enum Step {
    DaemonReload,
    StorageRerun,
    GpuReapply,
    Stop(String),
    Restart(String),
    Start(String),
    MonitorReload,
    MonitorRestart,
    GatewayReload,
    GatewayRestart,
    GatewayStart,
    GatewayStop,
    Snapshot,
}

impl Step {
    /// How the step is named in progress and error lines.
    pub fn describe(&self) -> String {
        match self {
            Step::DaemonReload => "daemon-reload (the generator re-reads the config)".into(),
            Step::StorageRerun => "storage: re-run storage-setup".into(),
            Step::GpuReapply => "gpu: re-apply the GPU policy (gpu-optimize)".into(),
            Step::Stop(m) => format!("stop {m}"),
            Step::Restart(m) => format!("restart {m}"),
            Step::Start(m) => format!("start {m}"),
            Step::MonitorReload => "monitor: reload its config".into(),
            Step::MonitorRestart => "monitor: restart".into(),
            Step::GatewayReload => "gateway: reload its config (routes, keys, limits)".into(),
            Step::GatewayRestart => {
                "gateway: restart it and its socket (a new listen address)".into()
            }
            Step::GatewayStart => "gateway: start it and its socket".into(),
            Step::GatewayStop => "gateway: stop it and its socket".into(),
            Step::Snapshot => "save the applied config as the running snapshot".into(),
        }
    }
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub models: Vec<ModelChange>,
    pub monitor: Change,
    pub gateway: Change,
    pub storage: Change,
    pub gpu_policy: Change,
    /// Changes that need no action now (effective at each model's next start).
    pub notes: Vec<String>,
    /// In order; empty when nothing changed.
    pub steps: Vec<Step>,
    /// Why the plan cannot be carried out (nothing is touched).
    pub refused: Option<String>,
}

impl Plan {
    pub fn nothing_to_do(&self) -> bool {
        self.steps.is_empty()
    }
}

/// `section.key: old -> new` for every key that differs (values as JSON).
fn diff(prefix: &str, old: &impl Serialize, new: &impl Serialize, skip: &[&str]) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(old).unwrap_or(Value::Null),
        serde_json::to_value(new).unwrap_or(Value::Null),
    );
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| !skip.contains(&k.as_str()))
        .filter_map(|k| {
            let (x, y) = (
                a.get(k).unwrap_or(&Value::Null),
                b.get(k).unwrap_or(&Value::Null),
            );
            (x != y).then(|| format!("{prefix}{k}: {x} -> {y}"))
        })
        .collect()
}

/// Engine keys start-model reads only while starting or stopping a model.
const ENGINE_NEXT_START: &[&str] = &["stop_grace_secs", "port_wait_secs", "gpu_release_wait_secs"];
/// Model keys read only while the model starts.
const MODEL_NEXT_START: &[&str] = &["load_timeout_secs"];
/// Model keys only the gateway reads (a change reloads the gateway, the engine keeps running).
const MODEL_GATEWAY: &[&str] = &["aliases", "max_concurrent"];
/// Paths no running model or monitor uses (storage-setup's business only).
const PATHS_STORAGE_ONLY: &[&str] = &["staging_dir", "state_dir", "backup_mount"];

/// The plan from the running config (`None`: no snapshot, nothing known to run) to `new`.
pub fn plan(old: Option<&Config>, new: &Config) -> Plan {
    let mut notes = vec![];
    // What every running model is started with, beyond its own table.
    let mut common = vec![];
    if let Some(o) = old {
        common.extend(diff("engine.", &o.engine, &new.engine, ENGINE_NEXT_START));
        common.extend(diff("paths.", &o.paths, &new.paths, PATHS_STORAGE_ONLY));
        common.extend(diff("service.", &o.service, &new.service, &[]));
        for n in diff("engine.", &o.engine, &new.engine, &[]) {
            if !common.contains(&n) {
                notes.push(format!("{n} (takes effect at each model's next start)"));
            }
        }
    }
    let enabled = |c: Option<&Config>| -> BTreeMap<String, Model> {
        c.map(|c| {
            c.enabled_models()
                .map(|m| (m.name.clone(), m.clone()))
                .collect()
        })
        .unwrap_or_default()
    };
    let (was, now) = (enabled(old), enabled(Some(new)));
    let mut names: BTreeSet<String> = was.keys().chain(now.keys()).cloned().collect();
    names.extend(new.models.iter().map(|m| m.name.clone()));
    if let Some(o) = old {
        names.extend(o.models.iter().map(|m| m.name.clone()));
    }
    let mut models = vec![];
    for name in names {
        let (a, b) = (was.get(&name), now.get(&name));
        let in_new = new.model(&name).is_some();
        let (action, reasons) = match (a, b) {
            (None, Some(_)) => (
                ModelAction::Start,
                vec![match old.and_then(|o| o.model(&name)) {
                    Some(_) => "enabled in the config".to_string(),
                    None if old.is_none() => "no snapshot of the running config".to_string(),
                    None => "new in the config".to_string(),
                }],
            ),
            (Some(_), None) => (
                ModelAction::Stop,
                vec![if in_new {
                    "disabled in the config (enabled = false)".to_string()
                } else {
                    "removed from the config".to_string()
                }],
            ),
            (Some(a), Some(b)) => {
                let mut r = diff(
                    "",
                    a,
                    b,
                    &[&["name"], MODEL_NEXT_START, MODEL_GATEWAY].concat(),
                );
                r.extend(common.iter().cloned());
                for n in diff("", a, b, &[&["name"], MODEL_GATEWAY].concat()) {
                    if !r.contains(&n) {
                        notes.push(format!(
                            "models.{name}.{n} (takes effect at its next start)"
                        ));
                    }
                }
                if r.is_empty() {
                    (ModelAction::Unchanged, vec![])
                } else {
                    (ModelAction::Restart, r)
                }
            }
            (None, None) => (ModelAction::Unchanged, vec!["enabled = false".to_string()]),
        };
        models.push(ModelChange {
            name,
            action,
            reasons,
        });
    }

    let monitor = monitor_change(old, new, &models);
    let gateway = gateway_change(old, new);
    let storage = Change::of(
        Action::Rerun,
        old.map(|o| {
            let mut r = diff("paths.", &o.paths, &new.paths, &[]);
            r.extend(diff("storage.", &o.storage, &new.storage, &[]));
            r.extend(diff("service.", &o.service, &new.service, &[]));
            r
        })
        .unwrap_or_default(),
    );
    let gpu_policy = Change::of(
        Action::Reapply,
        old.map(|o| diff("gpu.", &o.gpu, &new.gpu, &[]))
            .unwrap_or_default(),
    );
    let (mut steps, refused) = steps(
        old,
        new,
        &models,
        [&monitor, &gateway, &storage, &gpu_policy],
    );
    if steps.is_empty() && refused.is_none() && !notes.is_empty() {
        // Nothing to restart, but the generator's drop-ins (stop timeout) follow the config and
        // the snapshot records it.
        steps = vec![Step::DaemonReload, Step::Snapshot];
    }
    Plan {
        models,
        monitor,
        gateway,
        storage,
        gpu_policy,
        notes,
        steps,
        refused,
    }
}

fn monitor_change(old: Option<&Config>, new: &Config, models: &[ModelChange]) -> Change {
    let Some(o) = old else {
        return Change::of(
            Action::Reload,
            vec!["no snapshot of the running config".into()],
        );
    };
    // Where it may write is fixed when the unit starts (the generator's ReadWritePaths=).
    let mut restart = diff(
        "monitor.",
        &o.monitor,
        &new.monitor,
        &[
            "interval_secs",
            "probe_timeout_secs",
            "failure_threshold",
            "deep_probe_interval_secs",
            "deep_probe_timeout_secs",
            "stall_secs",
            "restart_budget",
            "restart_window_secs",
            "webhook_url",
            "webhook_timeout_secs",
        ],
    );
    if o.paths.runtime_dir != new.paths.runtime_dir {
        restart.push(format!(
            "paths.runtime_dir: {} -> {} (its write paths are set at start)",
            o.paths.runtime_dir.display(),
            new.paths.runtime_dir.display()
        ));
    }
    if !restart.is_empty() {
        return Change::of(Action::Restart, restart);
    }
    let mut r = diff("monitor.", &o.monitor, &new.monitor, &[]);
    r.extend(engine_reach(o, new));
    let probed = |c: &Config| -> Vec<(String, u16, String)> {
        c.enabled_models()
            .map(|m| (m.name.clone(), m.port, m.served_model_name.clone()))
            .collect()
    };
    if probed(o) != probed(new) {
        let changed: Vec<&str> = models
            .iter()
            .filter(|m| m.action != ModelAction::Unchanged)
            .map(|m| m.name.as_str())
            .collect();
        r.push(format!(
            "the models it probes changed: {}",
            changed.join(", ")
        ));
    }
    Change::of(Action::Reload, r)
}

/// The engine keys the monitor and the gateway use to reach every model (`engine.host`,
/// `engine.api_key_file`), as `key: old -> new` lines.
fn engine_reach(o: &Config, new: &Config) -> Vec<String> {
    diff("engine.", &o.engine, &new.engine, &[])
        .into_iter()
        .filter(|l| l.starts_with("engine.host:") || l.starts_with("engine.api_key_file:"))
        .collect()
}

/// The gateway: started or stopped with `gateway.enabled`, restarted with its socket for a new
/// `listen` (the generator's socket drop-in binds it), else reloaded (SIGHUP: routes, aliases,
/// limits and client keys change in place) when anything it routes by or enforces changed.
fn gateway_change(old: Option<&Config>, new: &Config) -> Change {
    let Some(o) = old else {
        return Change::of(
            if new.gateway.enabled {
                Action::Reload
            } else {
                Action::Stop
            },
            vec!["no snapshot of the running config".into()],
        );
    };
    let (a, b) = (&o.gateway, &new.gateway);
    if a.enabled != b.enabled {
        let action = if b.enabled {
            Action::Start
        } else {
            Action::Stop
        };
        return Change::of(
            action,
            vec![format!("gateway.enabled: {} -> {}", a.enabled, b.enabled)],
        );
    }
    if !b.enabled {
        return Change::of(Action::Unchanged, vec![]);
    }
    if a.listen != b.listen {
        return Change::of(
            Action::Restart,
            vec![format!("gateway.listen: {} -> {}", a.listen, b.listen)],
        );
    }
    let mut r = diff("gateway.", a, b, &[]);
    r.extend(engine_reach(o, new));
    // What it routes by: each enabled model's served name, aliases, port and limit.
    let routes = |c: &Config| -> BTreeMap<String, Value> {
        c.enabled_models()
            .map(|m| {
                let v = serde_json::json!({
                    "served_model_name": m.served_model_name,
                    "aliases": m.aliases,
                    "port": m.port,
                    "max_concurrent": m.max_concurrent,
                });
                (m.name.clone(), v)
            })
            .collect()
    };
    let (ra, rb) = (routes(o), routes(new));
    let names: BTreeSet<&String> = ra.keys().chain(rb.keys()).collect();
    for n in names {
        match (ra.get(n), rb.get(n)) {
            (Some(x), Some(y)) => r.extend(diff(&format!("models.{n}."), x, y, &[])),
            (None, Some(_)) => r.push(format!("models.{n}: a new route")),
            (Some(_), None) => r.push(format!("models.{n}: its route goes")),
            (None, None) => {}
        }
    }
    Change::of(Action::Reload, r)
}

/// Per-GPU share sums of a set of (model, version) placements.
fn over_committed(live: &BTreeMap<String, Model>) -> Option<(u32, f64, Vec<String>)> {
    let mut per: BTreeMap<u32, (f64, Vec<String>)> = BTreeMap::new();
    for m in live.values() {
        for g in &m.gpus {
            let e = per.entry(*g).or_default();
            e.0 += m.gpu_memory_utilization;
            e.1.push(format!("{} ({})", m.name, m.gpu_memory_utilization));
        }
    }
    per.into_iter()
        .find(|(_, (sum, _))| *sum > FULL)
        .map(|(g, (sum, who))| (g, sum, who))
}

/// The steps in order, or why the transition cannot be made. Stops first (they free GPU
/// shares), then restarts and starts one at a time in an order that never over-commits a GPU
/// (the old version of a restarted model is gone before its new one starts).
fn steps(
    old: Option<&Config>,
    new: &Config,
    models: &[ModelChange],
    parts: [&Change; 4],
) -> (Vec<Step>, Option<String>) {
    let [monitor, gateway, storage, gpu] = parts;
    let changed = models.iter().any(|m| m.action != ModelAction::Unchanged)
        || parts.iter().any(|c| c.action != Action::Unchanged);
    if !changed && old.is_some() {
        return (vec![], None);
    }
    let mut steps = vec![Step::DaemonReload];
    if storage.action == Action::Rerun {
        steps.push(Step::StorageRerun);
    }
    if gpu.action == Action::Reapply {
        steps.push(Step::GpuReapply);
    }
    let mut live: BTreeMap<String, Model> = old
        .map(|o| {
            o.enabled_models()
                .map(|m| (m.name.clone(), m.clone()))
                .collect()
        })
        .unwrap_or_default();
    for m in models.iter().filter(|m| m.action == ModelAction::Stop) {
        steps.push(Step::Stop(m.name.clone()));
        live.remove(&m.name);
    }
    let mut pending: Vec<&ModelChange> = models
        .iter()
        .filter(|m| matches!(m.action, ModelAction::Restart | ModelAction::Start))
        .collect();
    let mut refused = None;
    while !pending.is_empty() {
        let pick = pending.iter().position(|m| {
            let mut next = live.clone();
            if let Some(nm) = new.model(&m.name) {
                next.insert(m.name.clone(), nm.clone());
            }
            over_committed(&next).is_none()
        });
        let Some(i) = pick else {
            // Name the first blocked change and the GPU it would over-commit.
            let m = pending[0];
            let mut next = live.clone();
            if let Some(nm) = new.model(&m.name) {
                next.insert(m.name.clone(), nm.clone());
            }
            let (g, sum, who) = over_committed(&next).unwrap_or_default();
            refused = Some(format!(
                "the transition would over-commit GPU {g}: after the {} of {}, {} = {:.2} > 1.0 while the other models still run their old config; apply it in two steps (first stop or move the model in the way)",
                match m.action {
                    ModelAction::Start => "start",
                    _ => "restart",
                },
                m.name,
                who.join(" + "),
                sum
            ));
            break;
        };
        let m = pending.remove(i);
        if let Some(nm) = new.model(&m.name) {
            live.insert(m.name.clone(), nm.clone());
        }
        steps.push(match m.action {
            ModelAction::Start => Step::Start(m.name.clone()),
            _ => Step::Restart(m.name.clone()),
        });
    }
    match monitor.action {
        Action::Restart => steps.push(Step::MonitorRestart),
        Action::Reload => steps.push(Step::MonitorReload),
        _ => {}
    }
    match gateway.action {
        Action::Reload => steps.push(Step::GatewayReload),
        Action::Restart => steps.push(Step::GatewayRestart),
        Action::Start => steps.push(Step::GatewayStart),
        Action::Stop => steps.push(Step::GatewayStop),
        _ => {}
    }
    steps.push(Step::Snapshot);
    if refused.is_some() {
        return (vec![], refused);
    }
    (steps, None)
}

#[cfg(test)]
mod tests;
