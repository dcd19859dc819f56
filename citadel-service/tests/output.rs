//! Output of `status` and `health` from fixtures (unit states, the monitor's state file, GPU
//! readings, probe results, resource readings), in table and JSON form, compared with the
//! expected files in tests/fixtures/. `CITADEL_BLESS=1 cargo test` rewrites the expected files
//! (review the diff before committing).

use citadel_common::config::Config;
use citadel_common::gpu::{FixtureGpu, GpuSource};
use citadel_common::health::HealthState;
use citadel_service::health::{self, Resources};
use citadel_service::probes::ProbeResult;
use citadel_service::services::Service;
use citadel_service::status::{self, HealthSource};
use citadel_service::systemd::Unit;
use citadel_service::{gpu, output};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_json<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn golden(name: &str, actual: &str) {
    let p = fixture(name);
    if std::env::var_os("CITADEL_BLESS").is_some() {
        std::fs::write(&p, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&p).unwrap_or_default();
    assert_eq!(
        actual,
        expected,
        "{} differs; actual:\n{actual}",
        p.display()
    );
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// serde_json::Value keeps object keys sorted.
fn sorted<'a>(keys: &[&'a str]) -> Vec<&'a str> {
    let mut v = keys.to_vec();
    v.sort_unstable();
    v
}

fn cfg() -> Config {
    Config::load(&fixture("citadel.toml")).unwrap()
}

/// The monitor's sweep is 5 s old.
const NOW_UNIX: u64 = 1_760_000_005;

fn status_report() -> status::StatusReport {
    let cfg = cfg();
    let members = Service::All.members(&cfg);
    let units: Vec<Unit> = read_json("units.json");
    assert_eq!(units.len(), members.len());
    let state = HealthState::read(&fixture("health-state.json"))
        .unwrap()
        .unwrap();
    let src = HealthSource {
        kind: "monitor".into(),
        state_file: Some("/run/citadel/health.json".into()),
        updated_unix: Some(state.updated_unix),
        stale: false,
        note: None,
    };
    let snap = FixtureGpu::load(&fixture("gpu-readings.json"))
        .unwrap()
        .snapshot()
        .unwrap();
    let mem = gpu::memory_by_model(&snap);
    status::build(
        "tests/fixtures/citadel.toml",
        &members,
        &units,
        Duration::from_secs(100_000),
        &status::cells_from_state(&state),
        src,
        Some(&mem),
    )
}

#[test]
fn status_table() {
    let r = status_report();
    let plain = status::render_table(&r, NOW_UNIX, false);
    golden("status.txt", &plain);
    assert!(!plain.contains('\x1b'));
    // Colour changes nothing but the escapes: columns stay aligned.
    let coloured = status::render_table(&r, NOW_UNIX, true);
    assert!(coloured.contains("\x1b[31m"));
    assert_eq!(strip_ansi(&coloured), plain);
}

#[test]
fn status_json() {
    let r = status_report();
    let text = status::to_json(&r).unwrap();
    golden("status.json", &format!("{text}\n"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["all_up"], false);
    assert_eq!(v["health_source"]["kind"], "monitor");
    let rows = v["services"].as_array().unwrap();
    assert_eq!(rows.len(), 9);
    let gw = rows.iter().find(|r| r["service"] == "gateway").unwrap();
    assert_eq!(gw["listen"], "127.0.0.1:8000");
    let coder = rows.iter().find(|r| r["service"] == "coder").unwrap();
    let keys: Vec<&str> = coder
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        sorted(&[
            "service",
            "kind",
            "unit",
            "enabled",
            "load_state",
            "state",
            "sub_state",
            "pid",
            "uptime_secs",
            "restarts",
            "port",
            "health",
            "health_reason",
            "latency_ms",
            "listen",
            "gpu_memory_bytes",
            "status_text",
            "result",
            "exit_status",
            "exit_meaning",
            "up"
        ])
    );
    assert_eq!(coder["uptime_secs"], 1000);
    assert_eq!(coder["gpu_memory_bytes"], 68_000_000_000u64);
    assert_eq!(coder["health"], "healthy");
    let phi3 = rows.iter().find(|r| r["service"] == "phi3").unwrap();
    assert_eq!(phi3["up"], false);
    assert_eq!(phi3["restarts"], 2);
    assert_eq!(phi3["health_reason"], "GET /health: connection refused");
    let vision = rows.iter().find(|r| r["service"] == "vision").unwrap();
    assert_eq!(vision["enabled"], false);
}

fn health_report() -> health::HealthReport {
    let cfg = cfg();
    let probes: Vec<ProbeResult> = read_json("probes.json");
    let resources: Resources = read_json("resources.json");
    let units: Vec<Unit> = read_json("units.json");
    let states: BTreeMap<String, String> = units
        .into_iter()
        .map(|u| (u.unit, u.active_state.to_string()))
        .collect();
    let snap = FixtureGpu::load(&fixture("gpu-readings.json"))
        .unwrap()
        .snapshot()
        .unwrap();
    // enabled_models() is sorted by name: coder, phi3 (the probes are in that order).
    health::assemble(
        &cfg,
        &probes,
        Some(&states),
        resources,
        citadel_common::health::GpuHealth::of(&snap),
        "nvml",
        vec![],
    )
}

#[test]
fn health_table() {
    let r = health_report();
    let plain = health::render_table(&r, false);
    golden("health.txt", &plain);
    assert_eq!(strip_ansi(&health::render_table(&r, true)), plain);
    assert_eq!(
        output::visible_len(plain.lines().next().unwrap()),
        plain.lines().next().unwrap().len()
    );
}

#[test]
fn health_json() {
    let r = health_report();
    let text = health::to_json(&r).unwrap();
    golden("health.json", &format!("{text}\n"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["healthy"], false);
    let top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        top,
        sorted(&[
            "healthy",
            "models",
            "resources",
            "gpus",
            "gpu_source",
            "warnings",
            "gateway"
        ])
    );
    assert_eq!(v["models"][0]["name"], "coder");
    assert_eq!(v["models"][0]["healthy"], true);
    assert_eq!(v["models"][1]["healthy"], false);
    assert_eq!(v["models"][1]["unit_state"], "activating");
    assert_eq!(v["gpus"][1]["temperature_c"], 47);
    // 15 GB free on the models mount is below the default storage.min_free_gib (20).
    assert!(v["warnings"][0]
        .as_str()
        .unwrap()
        .contains("below storage.min_free_gib = 20"));
}
