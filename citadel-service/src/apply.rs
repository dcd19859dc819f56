//! `citadel-service apply [--dry-run] [--json]`: validate the edited config, compare it with
//! the running snapshot, print the plan, and (without `--dry-run`) carry it out one step at a
//! time: daemon-reload (the generator re-reads the config), storage re-run, GPU policy
//! re-apply, stops, then restarts and starts one model at a time (each waits until it
//! serves), then the monitor's reload, then the new snapshot. Units the plan does not name are
//! never touched, so they keep their main PID.
//!
//! Exit codes: 0 applied (or nothing to do, or a dry run); 78 invalid config or a plan refused
//! before anything was touched (a GPU over-committed during the transition); 1 a step failed
//! (the message names it; the steps before it stay done); 2 usage.

use crate::changes::{self, Action, ModelAction, Plan, Step};
use crate::control::bring_up;
use crate::services::{Kind, Member, Service};
use crate::snapshot;
use crate::systemd::{ActiveState, Host, Job};
use crate::wait::{self, stop_phase, WaitOptions};
use citadel_common::config::{Config, ConfigError};
use citadel_common::output::table;
use citadel_common::{paths, Exit, Failure};
use std::io::Write;
use std::path::Path;

pub struct ApplyOptions {
    pub dry_run: bool,
    pub json: bool,
    pub wait: WaitOptions,
}

/// The JSON document `apply --json` prints: the plan, or the validation errors.
pub fn json_report(
    file: &Path,
    result: &Result<(Option<String>, Plan), ConfigError>,
    dry_run: bool,
) -> serde_json::Value {
    match result {
        Ok((snap, plan)) => {
            let mut v = serde_json::to_value(plan).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("valid".into(), true.into());
                o.insert("config".into(), file.display().to_string().into());
                o.insert("snapshot".into(), snap.clone().into());
                o.insert("dry_run".into(), dry_run.into());
            }
            v
        }
        Err(e) => serde_json::json!({
            "valid": false,
            "config": e.file.display().to_string(),
            "errors": e.issues,
            "messages": e.lines(),
        }),
    }
}

/// The plan as text: one row per model, then the box-wide parts and the steps.
pub fn render(plan: &Plan, snapshot: Option<&str>) -> String {
    let mut rows = vec![vec!["MODEL".to_string(), "ACTION".into(), "WHY".into()]];
    for m in &plan.models {
        let action = match m.action {
            ModelAction::Start => "start",
            ModelAction::Stop => "stop",
            ModelAction::Restart => "restart",
            ModelAction::Unchanged => "unchanged",
        };
        rows.push(vec![m.name.clone(), action.into(), m.reasons.join("; ")]);
    }
    let word = |a: Action| match a {
        Action::Unchanged => "unchanged",
        Action::Reload => "reload",
        Action::Restart => "restart",
        Action::Rerun => "re-run",
        Action::Reapply => "re-apply",
        Action::Start => "start",
        Action::Stop => "stop",
    };
    for (name, c) in [
        ("monitor", &plan.monitor),
        ("gateway", &plan.gateway),
        ("storage", &plan.storage),
        ("gpu policy", &plan.gpu_policy),
    ] {
        rows.push(vec![
            format!("({name})"),
            word(c.action).into(),
            c.reasons.join("; "),
        ]);
    }
    let mut s = format!(
        "running config: {}\n",
        snapshot.unwrap_or("none recorded (no snapshot in state_dir)")
    );
    s.push_str(&table(&rows));
    for n in &plan.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    if let Some(r) = &plan.refused {
        s.push_str(&format!("refused: {r}\n"));
    } else if plan.nothing_to_do() {
        s.push_str("nothing to do: the box runs this config\n");
    } else {
        s.push_str("steps:\n");
        for (i, st) in plan.steps.iter().enumerate() {
            s.push_str(&format!("  {}. {}\n", i + 1, st.describe()));
        }
    }
    s
}

/// Validate, plan, print; carry the plan out unless `--dry-run`.
pub fn run(
    host: &dyn Host,
    file: &Path,
    opts: &ApplyOptions,
    out: &mut dyn Write,
) -> Result<Exit, Failure> {
    let loaded = Config::load(file);
    let planned = match &loaded {
        Ok(cfg) => {
            let snap = snapshot::load(cfg)?;
            let plan = changes::plan(snap.as_ref().map(|(_, c)| c), cfg);
            Ok((snap.map(|(p, _)| p.display().to_string()), plan))
        }
        Err(e) => Err(e.clone()),
    };
    if opts.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json_report(file, &planned, opts.dry_run))
                .unwrap_or_default()
        );
    }
    let (cfg, (snap, plan)) = match (loaded, planned) {
        (Ok(c), Ok(p)) => (c, p),
        (Err(e), _) | (_, Err(e)) => {
            return Err(Failure::config(format!(
                "{e}\n{}: {} found; nothing applied",
                e.file.display(),
                citadel_common::text::count(e.issues.len(), "problem")
            )));
        }
    };
    if !opts.json {
        let _ = write!(out, "{}", render(&plan, snap.as_deref()));
    }
    if let Some(r) = &plan.refused {
        return Err(Failure::config(format!(
            "apply refused, nothing was touched: {r}"
        )));
    }
    if opts.dry_run || plan.nothing_to_do() {
        return Ok(Exit::Ok);
    }
    crate::control::require_root("apply")?;
    let mut progress: Box<dyn Write> = if opts.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    execute(host, &cfg, &plan, &opts.wait, &mut *progress)?;
    let _ = writeln!(progress, "applied: {}", cfg.file.display());
    Ok(Exit::Ok)
}

fn model_member(name: &str) -> Member {
    Member {
        service: name.to_string(),
        unit: paths::model_unit(name),
        kind: Kind::Model,
        enabled: true,
        port: None,
        listen: None,
    }
}

/// The monitor or the gateway as `citadel-service start/stop NAME` sees it.
fn member(service: Service, cfg: &Config) -> Member {
    service.members(cfg).remove(0)
}

/// Whether `unit` is active now (a reload of a stopped unit is pointless: it reads the config
/// when it starts).
pub(crate) fn running(
    host: &dyn Host,
    unit: &str,
    what: &str,
    out: &mut dyn Write,
) -> Result<bool, Failure> {
    let state = host.units(&[unit.to_string()])?;
    let active = state
        .first()
        .is_some_and(|u| u.active_state == ActiveState::Active);
    if !active {
        let _ = writeln!(
            out,
            "  {what} not running: it reads the config when it starts"
        );
    }
    Ok(active)
}

/// Queue stop jobs for `units` and wait until `m` has stopped.
pub(crate) fn stop_and_wait(
    host: &dyn Host,
    units: &[String],
    m: Member,
    wait_opts: &WaitOptions,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    host.queue(Job::Stop, units)?;
    let unit = m.unit.clone();
    let o = wait::wait(host, &[m], stop_phase, wait_opts, out)?;
    if o.timed_out {
        return Err(Failure::other(format!(
            "{unit} did not stop within {}s",
            o.elapsed.as_secs()
        )));
    }
    Ok(())
}

/// Carry the steps out in order; the first failure stops the apply and names the step.
pub fn execute(
    host: &dyn Host,
    cfg: &Config,
    plan: &Plan,
    wait_opts: &WaitOptions,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let n = plan.steps.len();
    for (i, step) in plan.steps.iter().enumerate() {
        let _ = writeln!(out, "[{}/{n}] {}", i + 1, step.describe());
        if let Err(e) = one_step(host, cfg, step, wait_opts, out) {
            let left: Vec<String> = plan.steps[i + 1..].iter().map(Step::describe).collect();
            return Err(Failure::other(format!(
                "apply stopped at step {}/{n} ({}): {}; not done: {}; models the plan did not name were not touched",
                i + 1,
                step.describe(),
                e.message,
                if left.is_empty() { "nothing".to_string() } else { left.join(", ") }
            )));
        }
    }
    Ok(())
}

fn helper(host: &dyn Host, cfg: &Config, name: &str) -> Result<(), Failure> {
    let args = vec!["--config".to_string(), cfg.file.display().to_string()];
    let (code, text) = host.run_helper(name, &args)?;
    if code == 0 {
        Ok(())
    } else {
        let last = text.lines().last().unwrap_or("").trim().to_string();
        Err(Failure::other(format!(
            "{name} exited with {code}: {}",
            citadel_common::text::escape_controls(&last)
        )))
    }
}

fn one_step(
    host: &dyn Host,
    cfg: &Config,
    step: &Step,
    wait_opts: &WaitOptions,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    match step {
        Step::DaemonReload => host.daemon_reload(),
        Step::StorageRerun => helper(host, cfg, "storage-setup"),
        Step::GpuReapply => helper(host, cfg, "gpu-optimize"),
        Step::Stop(name) => {
            let units = [paths::model_unit(name)];
            stop_and_wait(host, &units, model_member(name), wait_opts, out)
        }
        Step::Restart(name) | Step::Start(name) => {
            let verb = if matches!(step, Step::Restart(_)) {
                Job::Restart
            } else {
                Job::Start
            };
            bring_up(host, verb, &[model_member(name)], Some(wait_opts), out).map(|_| ())
        }
        Step::MonitorReload | Step::MonitorRestart => {
            let mon = member(Service::Monitor, cfg);
            if !running(host, &mon.unit, "monitor", out)? {
                return Ok(());
            }
            if matches!(step, Step::MonitorReload) {
                host.reload(&mon.unit)
            } else {
                bring_up(host, Job::Restart, &[mon], Some(wait_opts), out).map(|_| ())
            }
        }
        Step::GatewayReload => {
            if !running(host, paths::UNIT_GATEWAY, "gateway", out)? {
                return Ok(());
            }
            host.reload(paths::UNIT_GATEWAY)
        }
        Step::GatewayStop => {
            let units = [
                paths::UNIT_GATEWAY.to_string(),
                paths::SOCKET_GATEWAY.to_string(),
            ];
            stop_and_wait(host, &units, member(Service::Gateway, cfg), wait_opts, out)
        }
        Step::GatewayRestart | Step::GatewayStart => {
            let verb = if matches!(step, Step::GatewayRestart) {
                Job::Restart
            } else {
                Job::Start
            };
            // The socket first: a new listen address is bound before the gateway asks for it.
            host.queue(verb, &[paths::SOCKET_GATEWAY.to_string()])?;
            bring_up(
                host,
                verb,
                &[member(Service::Gateway, cfg)],
                Some(wait_opts),
                out,
            )
            .map(|_| ())
        }
        Step::Snapshot => snapshot::save(cfg).map(|p| {
            let _ = writeln!(out, "  running snapshot: {}", p.display());
        }),
    }
}

#[cfg(test)]
mod tests;
