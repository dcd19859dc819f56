//! What the monitor tells the world: the state file (citadel-service reads it), the Prometheus
//! textfile (node_exporter's textfile collector), the `STATUS=` line, the `--once` table, and
//! the webhook.

use citadel_common::health::{HealthState, ModelState};
use std::fmt::Write as _;
use std::path::Path;

/// Every state, in the order the textfile lists them.
pub const STATES: &[ModelState] = &[
    ModelState::Healthy,
    ModelState::Starting,
    ModelState::Failing,
    ModelState::Restarting,
    ModelState::GaveUp,
    ModelState::Stopped,
    ModelState::Failed,
    ModelState::Disabled,
];

/// The `STATUS=` summary, e.g. `6/7 healthy, 1 loading`.
pub fn summary(s: &HealthState) -> String {
    let enabled: Vec<_> = s
        .models
        .iter()
        .filter(|m| m.state != ModelState::Disabled)
        .collect();
    if enabled.is_empty() {
        return "no models enabled".into();
    }
    let count = |st: ModelState| enabled.iter().filter(|m| m.state == st).count();
    let mut out = format!("{}/{} healthy", count(ModelState::Healthy), enabled.len());
    for (st, word) in [
        (ModelState::Starting, "loading"),
        (ModelState::Failing, "failing"),
        (ModelState::Restarting, "restarting"),
        (ModelState::GaveUp, "gave up"),
        (ModelState::Stopped, "stopped"),
        (ModelState::Failed, "failed"),
    ] {
        let n = count(st);
        if n > 0 {
            let _ = write!(out, ", {n} {word}");
        }
    }
    out
}

/// Every enabled model is healthy.
pub fn all_healthy(s: &HealthState) -> bool {
    s.models
        .iter()
        .all(|m| matches!(m.state, ModelState::Healthy | ModelState::Disabled))
}

/// The `--once` table.
pub fn table(s: &HealthState) -> String {
    let mut rows = vec![[
        "MODEL", "STATE", "UNIT", "PORT", "FAILS", "RESTARTS", "LATENCY", "REASON",
    ]
    .map(String::from)
    .to_vec()];
    for m in &s.models {
        rows.push(vec![
            m.name.clone(),
            m.state.as_str().into(),
            m.unit_state.clone().unwrap_or_else(|| "-".into()),
            m.port.to_string(),
            m.consecutive_failures.to_string(),
            m.monitor_restarts.to_string(),
            m.latency_ms
                .map_or("-".into(), citadel_common::text::latency_ms),
            m.reason.clone().unwrap_or_default(),
        ]);
    }
    let mut out = citadel_common::output::table(&rows);
    let _ = writeln!(out, "{}", summary(s));
    out
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The node_exporter textfile.
pub fn textfile(s: &HealthState) -> String {
    let mut o = String::new();
    let mut family = |name: &str, kind: &str, help: &str, lines: Vec<String>| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for l in lines {
            let _ = writeln!(o, "{name}{l}");
        }
    };
    let per_model = |f: &dyn Fn(&citadel_common::health::ModelHealth) -> Option<String>| {
        s.models
            .iter()
            .filter_map(|m| f(m).map(|v| format!("{{model=\"{}\"}} {v}", label(&m.name))))
            .collect::<Vec<_>>()
    };
    family(
        "citadel_model_up",
        "gauge",
        "1 when the model answered its health checks in the last sweep.",
        per_model(&|m| Some(u8::from(m.state == ModelState::Healthy).to_string())),
    );
    let mut state_lines = vec![];
    for m in &s.models {
        for st in STATES {
            state_lines.push(format!(
                "{{model=\"{}\",state=\"{}\"}} {}",
                label(&m.name),
                st.as_str(),
                u8::from(m.state == *st)
            ));
        }
    }
    family(
        "citadel_model_state",
        "gauge",
        "The monitor's state of the model (1 for the current state).",
        state_lines,
    );
    family(
        "citadel_model_consecutive_failures",
        "gauge",
        "Failed sweeps in a row.",
        per_model(&|m| Some(m.consecutive_failures.to_string())),
    );
    family(
        "citadel_model_monitor_restarts_total",
        "counter",
        "Restarts issued by the health monitor since it started.",
        per_model(&|m| Some(m.monitor_restarts.to_string())),
    );
    family(
        "citadel_model_probe_latency_seconds",
        "gauge",
        "Latency of the last /health probe.",
        per_model(&|m| m.latency_ms.map(|l| format!("{}", l as f64 / 1000.0))),
    );
    if !s.gpus.is_empty() {
        family(
            "citadel_gpu_temperature_celsius",
            "gauge",
            "GPU temperature.",
            s.gpus
                .iter()
                .filter_map(|g| {
                    g.temperature_c
                        .map(|t| format!("{{gpu=\"{}\"}} {t}", g.index))
                })
                .collect(),
        );
        family(
            "citadel_gpu_memory_used_bytes",
            "gauge",
            "GPU memory in use.",
            s.gpus
                .iter()
                .map(|g| format!("{{gpu=\"{}\"}} {}", g.index, g.memory_used_bytes))
                .collect(),
        );
    }
    // Every GPU the monitor knows (read by NVML or quarantined): 1 when quarantined.
    let mut gpus: Vec<u32> = s.gpus.iter().map(|g| g.index).collect();
    gpus.extend(&s.quarantined_gpus);
    gpus.sort_unstable();
    gpus.dedup();
    if !gpus.is_empty() {
        family(
            "citadel_gpu_quarantined",
            "gauge",
            "1 when the GPU is quarantined after a fatal fault (citadel-service gpu clear N lifts it).",
            gpus.iter()
                .map(|g| format!("{{gpu=\"{g}\"}} {}", u8::from(s.quarantined_gpus.contains(g))))
                .collect(),
        );
    }
    o
}

/// Write the textfile atomically (mode 0644).
pub fn write_textfile(path: &Path, s: &HealthState) -> std::io::Result<()> {
    citadel_common::fsutil::write_atomic(path, textfile(s).as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use citadel_common::health::{testing, GpuHealth, ModelHealth};

    fn model(name: &str, state: ModelState) -> ModelHealth {
        ModelHealth {
            unit_state: Some("active".into()),
            main_pid: 1,
            monitor_restarts: 2,
            consecutive_failures: 1,
            latency_ms: Some(12),
            ..testing::model(name, state)
        }
    }

    fn state(models: Vec<ModelHealth>) -> HealthState {
        HealthState {
            updated_unix: 0,
            sweep_ms: 0,
            quarantined_gpus: vec![1],
            gpus: vec![GpuHealth {
                index: 0,
                temperature_c: Some(41),
                memory_used_bytes: 1024,
                memory_total_bytes: 2048,
            }],
            ..testing::state(models)
        }
    }

    #[test]
    fn summary_counts_like_status_wants() {
        let mut ms: Vec<_> = (0..6)
            .map(|i| model(&format!("m{i}"), ModelState::Healthy))
            .collect();
        ms.push(model("big", ModelState::Starting));
        ms.push(model("off", ModelState::Disabled));
        let s = state(ms);
        assert_eq!(summary(&s), "6/7 healthy, 1 loading");
        assert!(!all_healthy(&s));
        assert_eq!(summary(&state(vec![])), "no models enabled");
        assert!(all_healthy(&state(vec![model("a", ModelState::Healthy)])));
    }

    #[test]
    fn textfile_has_every_family_and_one_state_set() {
        let t = textfile(&state(vec![model("a\"b", ModelState::GaveUp)]));
        assert!(t.contains("citadel_model_up{model=\"a\\\"b\"} 0\n"), "{t}");
        assert!(
            t.contains("citadel_model_state{model=\"a\\\"b\",state=\"gave_up\"} 1\n"),
            "{t}"
        );
        assert_eq!(t.matches("citadel_model_state{").count(), STATES.len());
        assert_eq!(
            t.lines()
                .filter(|l| l.starts_with("citadel_model_state") && l.ends_with(" 1"))
                .count(),
            1
        );
        assert!(t.contains("citadel_model_consecutive_failures{model=\"a\\\"b\"} 1\n"));
        assert!(t.contains("# TYPE citadel_model_monitor_restarts_total counter\n"));
        assert!(t.contains("citadel_model_monitor_restarts_total{model=\"a\\\"b\"} 2\n"));
        assert!(t.contains("citadel_model_probe_latency_seconds{model=\"a\\\"b\"} 0.012\n"));
        assert!(t.contains("citadel_gpu_temperature_celsius{gpu=\"0\"} 41\n"));
        assert!(t.contains("citadel_gpu_memory_used_bytes{gpu=\"0\"} 1024\n"));
        assert!(t.contains("citadel_gpu_quarantined{gpu=\"0\"} 0\n"), "{t}");
        assert!(t.contains("citadel_gpu_quarantined{gpu=\"1\"} 1\n"), "{t}");
        // Every sample line parses as name{labels} value.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }

    #[test]
    fn the_table_names_every_model() {
        let t = table(&state(vec![model("phi3", ModelState::Failing)]));
        assert!(t.lines().next().unwrap().starts_with("MODEL"));
        assert!(
            t.contains("phi3") && t.contains("failing") && t.contains("12 ms"),
            "{t}"
        );
        assert!(t.ends_with("0/1 healthy, 1 failing\n"), "{t}");
    }
}
