//! `status`: one row per unit (service, unit, state, PID, uptime, restarts, port, health, GPU
//! memory), as a table or as JSON. Building the report and rendering it are pure functions.

use crate::output::{self, paint, tone_of};
use crate::probes::ProbeResult;
use crate::services::{Kind, Member};
use crate::systemd::{ActiveState, Unit};
use citadel_common::health::HealthState;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One model's health, from the monitor or from a live probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCell {
    /// Monitor: healthy, starting, failing, restarting, gave_up, stopped, failed, disabled.
    /// Probe: healthy, http NNN, refused, timeout, error.
    pub health: String,
    pub reason: Option<String>,
    pub latency_ms: Option<u64>,
}

/// Where the HEALTH column came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthSource {
    /// `monitor`, `probe` or `none`.
    pub kind: String,
    /// The monitor's state file.
    pub state_file: Option<String>,
    /// Unix time of the monitor's last sweep.
    pub updated_unix: Option<u64>,
    /// The last sweep is older than three monitor intervals.
    pub stale: bool,
    /// Why there is no health (no state file yet, unreadable ...).
    pub note: Option<String>,
}

/// One row of `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub service: String,
    pub kind: Kind,
    pub unit: String,
    /// Models: `enabled` in the config; everything else true.
    pub enabled: bool,
    pub load_state: String,
    /// systemd ActiveState.
    pub state: String,
    pub sub_state: String,
    pub pid: Option<u32>,
    pub uptime_secs: Option<u64>,
    pub restarts: u32,
    pub port: Option<u16>,
    /// The gateway: its listen address.
    pub listen: Option<String>,
    pub health: Option<String>,
    pub health_reason: Option<String>,
    pub latency_ms: Option<u64>,
    /// Sum of the GPU memory of the unit's processes, when known.
    pub gpu_memory_bytes: Option<u64>,
    /// The service's `STATUS=` text.
    pub status_text: String,
    /// systemd's Result of the last run: success, exit-code, signal, start-limit-hit ...
    pub result: String,
    /// The last exit status, when the last run ended with a non-zero exit (Result=exit-code).
    pub exit_status: Option<i32>,
    /// What that exit status means in the Citadel contract (78: invalid configuration ...).
    pub exit_meaning: Option<String>,
    /// The class of the model's open incident (`citadel-service why NAME`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_class: Option<String>,
    /// ActiveState is `active`.
    pub up: bool,
}

/// The whole `status` report (`status --json` prints exactly this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    pub config: String,
    /// Every enabled unit shown is active.
    pub all_up: bool,
    pub health_source: HealthSource,
    /// GPU memory per process could be read (NVML).
    pub gpu_memory_known: bool,
    pub services: Vec<Row>,
}

/// Health cells from the monitor's state file.
pub fn cells_from_state(state: &HealthState) -> BTreeMap<String, HealthCell> {
    state
        .models
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                HealthCell {
                    health: m.state.as_str().to_string(),
                    reason: m.reason.clone(),
                    latency_ms: m.latency_ms,
                },
            )
        })
        .collect()
}

/// Health cells from live probes.
pub fn cells_from_probes(probes: &[ProbeResult]) -> BTreeMap<String, HealthCell> {
    probes
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                HealthCell {
                    health: p.word(),
                    reason: if p.healthy() { None } else { p.error() },
                    latency_ms: p.latency_ms(),
                },
            )
        })
        .collect()
}

/// Put the report together. `now` is CLOCK_MONOTONIC (for uptimes).
pub fn build(
    config: &str,
    members: &[Member],
    units: &[Unit],
    now: Duration,
    health: &BTreeMap<String, HealthCell>,
    health_source: HealthSource,
    gpu_memory: Option<&BTreeMap<String, u64>>,
) -> StatusReport {
    let now_us = now.as_micros() as u64;
    let services: Vec<Row> = members
        .iter()
        .zip(units)
        .map(|(m, u)| {
            let s = u;
            let up = s.active_state == ActiveState::Active;
            let cell = (m.kind == Kind::Model)
                .then(|| health.get(&m.service))
                .flatten();
            Row {
                service: m.service.clone(),
                kind: m.kind,
                unit: m.unit.clone(),
                enabled: m.enabled,
                load_state: s.load_state.clone(),
                state: s.active_state.to_string(),
                sub_state: s.sub_state.clone(),
                pid: (s.main_pid != 0).then_some(s.main_pid),
                uptime_secs: (up && s.active_enter_monotonic_usec > 0)
                    .then(|| now_us.saturating_sub(s.active_enter_monotonic_usec) / 1_000_000),
                restarts: s.n_restarts,
                port: m.port,
                listen: m.listen.clone(),
                health: cell.map(|c| c.health.clone()),
                health_reason: cell.and_then(|c| c.reason.clone()),
                latency_ms: cell.and_then(|c| c.latency_ms),
                gpu_memory_bytes: (m.kind == Kind::Model)
                    .then(|| gpu_memory.and_then(|g| g.get(&m.service).copied()))
                    .flatten(),
                status_text: s.status_text.clone(),
                result: s.result.clone(),
                exit_status: (s.result == "exit-code" && s.exec_main_status != 0)
                    .then_some(s.exec_main_status),
                exit_meaning: (s.result == "exit-code" && s.exec_main_status != 0)
                    .then(|| citadel_common::Exit::from_code(i64::from(s.exec_main_status)))
                    .flatten()
                    .map(|e| e.meaning().to_string()),
                incident_class: None,
                up,
            }
        })
        .collect();
    StatusReport {
        config: config.to_string(),
        all_up: services.iter().filter(|r| r.enabled).all(|r| r.up),
        health_source,
        gpu_memory_known: gpu_memory.is_some(),
        services,
    }
}

/// Put the class of each model's open incident in its "why not healthy" line:
/// `[max_model_len] <reason>; citadel-service why NAME`, and give a down model with no
/// monitor reason a line of its own.
pub fn add_incident_classes(r: &mut StatusReport, classes: &BTreeMap<String, String>) {
    for s in &mut r.services {
        let Some(class) = classes.get(&s.service) else {
            continue;
        };
        if s.up && s.health.as_deref().map_or(true, |h| h == "healthy") {
            continue;
        }
        let why = format!("citadel-service why {}", s.service);
        s.health_reason = Some(match s.health_reason.take() {
            Some(r) => format!("[{class}] {r}; {why}"),
            None => format!(
                "[{class}] {}; {why}",
                if s.up { "not healthy" } else { "not running" }
            ),
        });
        s.incident_class = Some(class.clone());
    }
}

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The STATE word of a unit, the one vocabulary of `status`, `top` and `health`: systemd's
/// ActiveState (`active`, `activating`, `failed`, `inactive` ...), or `not-installed` when
/// systemd has no such unit (LoadState=not-found; its ActiveState would say `inactive`).
pub fn state_word(load_state: &str, active_state: &str) -> String {
    if load_state == "not-found" {
        "not-installed".into()
    } else {
        active_state.to_string()
    }
}

/// The STATE cell: [`state_word`], then `(disabled)` or `(auto-restart)`. `status` and `top`
/// show a unit's state with this one function.
pub fn state_cell(s: &Row, color: bool) -> String {
    use citadel_common::text::escape_controls as esc;
    let word = state_word(&s.load_state, &s.state);
    let mut state = paint(&esc(&word), tone_of(&word), color);
    if s.load_state == "not-found" {
        // Nothing more to say about a unit systemd does not have.
    } else if !s.enabled {
        state.push_str(" (disabled)");
    } else if s.sub_state == "auto-restart" {
        state.push_str(" (auto-restart)");
    }
    state
}

/// The HEALTH cell: the health word, with the probe latency when healthy; `-` when unknown.
pub fn health_cell(s: &Row, color: bool) -> String {
    use citadel_common::text::escape_controls as esc;
    match &s.health {
        Some(h) => {
            let mut cell = paint(&esc(h), tone_of(h), color);
            if let Some(l) = s.latency_ms.filter(|_| h == "healthy") {
                cell.push_str(&format!(" ({})", output::latency_ms(l)));
            }
            cell
        }
        None => "-".into(),
    }
}

/// The UPTIME cell.
pub fn uptime_cell(s: &Row) -> String {
    dash(s.uptime_secs.map(output::duration))
}

/// The GPU MEM cell.
pub fn gpu_memory_cell(s: &Row) -> String {
    dash(s.gpu_memory_bytes.map(output::bytes))
}

/// The table, with a footer saying where health came from and how many services are up.
/// `now_unix` dates the monitor's sweep. Every text from the state file (which the service
/// account can write) or from systemd is printed with its control characters escaped; only
/// the table's own colours are escape sequences.
pub fn render_table(r: &StatusReport, now_unix: u64, color: bool) -> String {
    use citadel_common::text::escape_controls as esc;
    let mut rows = vec![[
        "SERVICE", "UNIT", "STATE", "PID", "UPTIME", "RESTARTS", "PORT", "HEALTH", "GPU MEM",
    ]
    .map(String::from)
    .to_vec()];
    for s in &r.services {
        rows.push(vec![
            esc(&s.service).into_owned(),
            esc(&s.unit).into_owned(),
            state_cell(s, color),
            dash(s.pid),
            uptime_cell(s),
            s.restarts.to_string(),
            s.listen.clone().unwrap_or_else(|| dash(s.port)),
            health_cell(s, color),
            gpu_memory_cell(s),
        ]);
    }
    let mut out = output::table(&rows);
    let reasons: Vec<String> = r
        .services
        .iter()
        .filter_map(|s| {
            s.health_reason
                .as_ref()
                .map(|x| format!("  {}: {}", esc(&s.service), esc(x)))
        })
        .collect();
    if !reasons.is_empty() {
        out.push_str("\nwhy not healthy:\n");
        out.push_str(&reasons.join("\n"));
        out.push('\n');
    }
    let down = why_down(r);
    if !down.is_empty() {
        out.push_str("\nwhy not running:\n");
        out.push_str(&down.join("\n"));
        out.push('\n');
    }
    out.push('\n');
    let h = &r.health_source;
    out.push_str(&match h.kind.as_str() {
        "monitor" => format!(
            "health: from the monitor ({}), last sweep {} ago{}\n",
            h.state_file.as_deref().unwrap_or("?"),
            output::duration(now_unix.saturating_sub(h.updated_unix.unwrap_or(now_unix))),
            if h.stale {
                paint(
                    " (stale: is citadel-monitor running?)",
                    output::Tone::Warn,
                    color,
                )
            } else {
                String::new()
            }
        ),
        "probe" => "health: live /health probes\n".to_string(),
        _ => format!(
            "health: {}; use --probe for a live check\n",
            h.note.as_deref().unwrap_or("unknown")
        ),
    });
    if !r.gpu_memory_known {
        out.push_str("GPU MEM: per-process GPU memory is not available\n");
    }
    let enabled: Vec<&Row> = r.services.iter().filter(|s| s.enabled).collect();
    let up = enabled.iter().filter(|s| s.up).count();
    let summary = format!("{up} of {} enabled units up", enabled.len());
    out.push_str(&paint(
        &summary,
        if r.all_up {
            output::Tone::Good
        } else {
            output::Tone::Bad
        },
        color,
    ));
    out.push('\n');
    out
}

/// One line per unit whose last run failed: the exit status and what it means, and the
/// `reset-failed` step when systemd's start limit was hit.
fn why_down(r: &StatusReport) -> Vec<String> {
    let mut v = vec![];
    for s in r.services.iter().filter(|s| !s.up) {
        if s.result == "start-limit-hit" {
            v.push(format!(
                "  {}: systemd's start limit was hit; after fixing the cause: systemctl reset-failed {} && citadel-service start {}",
                s.service, s.unit, s.service
            ));
        } else if let Some(code) = s.exit_status {
            v.push(format!(
                "  {}: exited {code}: {}",
                s.service,
                s.exit_meaning
                    .as_deref()
                    .unwrap_or("not a Citadel exit status")
            ));
        } else if !s.result.is_empty() && s.result != "success" && s.state == "failed" {
            v.push(format!("  {}: {}", s.service, s.result));
        }
    }
    v
}

/// `status --json`.
pub fn to_json(r: &StatusReport) -> Result<String, citadel_common::Failure> {
    citadel_common::output::to_json(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::{tests::cfg, Service};
    use crate::systemd::fake::unit;

    #[test]
    fn a_unit_systemd_does_not_have_is_not_installed() {
        // The word health's STATE column and JSON take too (lib.rs health_command).
        assert_eq!(state_word("not-found", "inactive"), "not-installed");
        assert_eq!(state_word("loaded", "activating"), "activating");
        let c = cfg();
        let members = Service::Models.members(&c);
        let mut units: Vec<Unit> = members
            .iter()
            .map(|m| unit(&m.unit, "active", false))
            .collect();
        units[1].active_state = "inactive".into();
        units[1].load_state = "not-found".into();
        let src = HealthSource {
            kind: "none".into(),
            state_file: None,
            updated_unix: None,
            stale: false,
            note: None,
        };
        let r = build(
            "c",
            &members,
            &units,
            Duration::ZERO,
            &BTreeMap::new(),
            src,
            None,
        );
        assert_eq!(state_cell(&r.services[1], false), "not-installed");
        assert_eq!(state_cell(&r.services[0], false), "active");
    }

    #[test]
    fn uptime_restarts_and_all_up() {
        let c = cfg();
        let members = Service::Models.members(&c);
        let mut units: Vec<Unit> = members
            .iter()
            .map(|m| unit(&m.unit, "active", false))
            .collect();
        units[1].active_enter_monotonic_usec = 5_000_000;
        units[1].n_restarts = 2;
        units[1].main_pid = 77;
        units[3] = unit("citadel-model@vision.service", "inactive", false);
        let src = HealthSource {
            kind: "none".into(),
            state_file: None,
            updated_unix: None,
            stale: false,
            note: Some("no monitor state file".into()),
        };
        let r = build(
            "c.toml",
            &members,
            &units,
            Duration::from_secs(125),
            &BTreeMap::new(),
            src,
            None,
        );
        assert_eq!(r.services[1].uptime_secs, Some(120));
        assert_eq!(r.services[1].pid, Some(77));
        assert_eq!(r.services[0].pid, None);
        // vision is disabled: it being down does not count.
        assert!(r.all_up);
        let t = render_table(&r, 0, false);
        assert!(t.contains("inactive (disabled)"), "{t}");
        assert!(t.contains("3 of 3 enabled units up"), "{t}");
        units[2] = unit("citadel-model@phi3.service", "failed", false);
        let r = build(
            "c.toml",
            &members,
            &units,
            Duration::from_secs(125),
            &BTreeMap::new(),
            r.health_source.clone(),
            None,
        );
        assert!(!r.all_up);
        // A failed run: the exit status and its meaning; the start limit: reset-failed.
        units[2].result = "exit-code".into();
        units[2].exec_main_status = 78;
        units[1] = unit("citadel-model@coder.service", "failed", false);
        units[1].result = "start-limit-hit".into();
        let r = build(
            "c.toml",
            &members,
            &units,
            Duration::from_secs(125),
            &BTreeMap::new(),
            r.health_source.clone(),
            None,
        );
        assert_eq!(r.services[2].exit_status, Some(78));
        let t = render_table(&r, 0, false);
        assert!(
            t.contains("  phi3: exited 78: invalid configuration (run citadel-service check)\n"),
            "{t}"
        );
        assert!(
            t.contains("  coder: systemd's start limit was hit; after fixing the cause: systemctl reset-failed citadel-model@coder.service && citadel-service start coder\n"),
            "{t}"
        );
    }
}
