//! packaging/observability: the alert rules pass `promtool check rules`, and every metric name
//! a rule or a dashboard query uses is one that is exported: the monitor's textfile (rendered
//! here by the monitor's own code), the real vLLM 0.33's /metrics (captured from the CPU build,
//! common/data/incidents/real/vllm-metrics.txt) and citadel-gateway's /metrics.

use citadel_common::health::{testing, GpuHealth, HealthState, ModelHealth, ModelState};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Sample names of a Prometheus text exposition (`name{...} value` or `name value`).
fn exposition_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// The metric names of a PromQL expression: identifiers that are not functions, keywords,
/// label names (inside `{}` or `by (...)`), strings or durations.
fn promql_names(expr: &str) -> BTreeSet<String> {
    const WORDS: &[&str] = &[
        "sum",
        "max",
        "min",
        "avg",
        "count",
        "rate",
        "irate",
        "increase",
        "histogram_quantile",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "time",
        "abs",
        "clamp_min",
        "clamp_max",
        "label_values",
        "bool",
        "offset",
    ];
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    let (mut brace, mut in_str) = (0, false);
    let mut after_grouping = false;
    while i < b.len() {
        let c = b[i] as char;
        if in_str {
            if c == '"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' => brace += 1,
            '}' => brace -= 1,
            '[' => {
                while i < b.len() && b[i] != b']' {
                    i += 1;
                }
            }
            '(' if after_grouping => {
                while i < b.len() && b[i] != b')' {
                    i += 1;
                }
                after_grouping = false;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let s = i;
                while i < b.len()
                    && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let w = &expr[s..i];
                if brace == 0 && !WORDS.contains(&w) && !w.starts_with('$') {
                    out.insert(w.to_string());
                }
                after_grouping = matches!(
                    w,
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
                continue;
            }
            c if !c.is_whitespace() => after_grouping = false,
            _ => {}
        }
        i += 1;
    }
    out
}

fn textfile_names() -> BTreeSet<String> {
    let m = |name: &str, state| ModelHealth {
        unit_state: Some("active".into()),
        main_pid: 1,
        monitor_restarts: 1,
        latency_ms: Some(3),
        ..testing::model(name, state)
    };
    let s = HealthState {
        updated_unix: 0,
        quarantined_gpus: vec![1],
        gpus: vec![GpuHealth {
            index: 0,
            temperature_c: Some(40),
            memory_used_bytes: 1,
            memory_total_bytes: 2,
        }],
        ..testing::state(vec![
            m("a", ModelState::Healthy),
            m("b", ModelState::GaveUp),
        ])
    };
    exposition_names(&health_monitor::output::textfile(&s))
}

fn vllm_names() -> BTreeSet<String> {
    let p = repo().join("common/data/incidents/real/vllm-metrics.txt");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let n = exposition_names(&text);
    assert!(
        n.contains("vllm:num_requests_running"),
        "not a vLLM /metrics capture"
    );
    n
}

/// citadel-gateway's /metrics families: the gateway (#15) renders
/// citadel_gateway_requests_total{model,code} and the
/// citadel_gateway_request_duration_seconds histogram.
fn gateway_names() -> BTreeSet<String> {
    let f = repo().join("packaging/observability/gateway-metrics.txt");
    exposition_names(
        &std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display())),
    )
}

fn used_names() -> Vec<(String, String)> {
    let dir = repo().join("packaging/observability");
    let mut out = vec![];
    let rules = std::fs::read_to_string(dir.join("citadel-alerts.yml")).unwrap();
    for l in rules.lines() {
        let t = l.trim();
        if let Some(e) = t.strip_prefix("expr:") {
            let e = e.trim();
            if e == "|" {
                continue;
            }
            out.push(("rules".to_string(), e.to_string()));
        }
    }
    // multi-line exprs: the lines after "expr: |" up to the next key
    let mut in_block = false;
    let mut block = String::new();
    for l in rules.lines() {
        if l.trim() == "expr: |" {
            in_block = true;
            continue;
        }
        if in_block {
            if l.trim().contains(": ") || l.trim().ends_with(':') {
                out.push(("rules".into(), std::mem::take(&mut block)));
                in_block = false;
            } else {
                block.push_str(l);
                block.push(' ');
            }
        }
    }
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("citadel-dashboard.json")).unwrap())
            .unwrap();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        // label_values(METRIC, LABEL): the metric is the first argument.
        if let Some(q) = v["query"]
            .as_str()
            .and_then(|q| q.strip_prefix("label_values("))
        {
            out.push((
                "templating".into(),
                q.split(',').next().unwrap().to_string(),
            ));
        }
    }
    out
}

#[test]
fn the_promql_name_extractor_finds_metric_names_only() {
    let n = promql_names(
        r#"histogram_quantile(0.95, sum by (model_name, le) (rate(vllm:e2e_request_latency_seconds_bucket{instance=~"$instance",code=~"5.."}[5m]))) / max by (x) (citadel_model_up) == 1"#,
    );
    assert_eq!(
        n,
        BTreeSet::from([
            "vllm:e2e_request_latency_seconds_bucket".to_string(),
            "citadel_model_up".to_string()
        ])
    );
}

#[test]
fn every_rule_and_dashboard_metric_is_exported() {
    let mut exported = textfile_names();
    exported.extend(vllm_names());
    exported.extend(gateway_names());
    let used = used_names();
    assert!(used.len() >= 20, "{} queries", used.len());
    let mut missing = vec![];
    let mut seen = BTreeSet::new();
    for (where_, e) in &used {
        for n in promql_names(e) {
            if !exported.contains(&n) {
                missing.push(format!("{where_}: {n} (in {e})"));
            }
            seen.insert(n);
        }
    }
    assert!(
        missing.is_empty(),
        "metric names nobody exports:\n{}",
        missing.join("\n")
    );
    for prefix in [
        "citadel_model_",
        "citadel_gpu_quarantined",
        "vllm:",
        "citadel_gateway_",
    ] {
        assert!(
            seen.iter().any(|n| n.starts_with(prefix)),
            "no query uses {prefix}*"
        );
    }
}

#[test]
fn promtool_check_rules_passes() {
    let rules = repo().join("packaging/observability/citadel-alerts.yml");
    let out = std::process::Command::new("/usr/bin/promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool (Debian package prometheus; tests/run.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 6 rules found"), "{text}");
    // And it can fail: a broken rule file is refused.
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.yml");
    std::fs::write(
        &bad,
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(\n",
    )
    .unwrap();
    let out = std::process::Command::new("/usr/bin/promtool")
        .args(["check", "rules"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
