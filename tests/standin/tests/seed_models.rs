//! Every argv the seed's models produce (built as start-model builds it, from the shipped
//! config) is accepted by the stand-in's vLLM 0.33 parser, and one of them really serves.

mod common;

use citadel_common::config::{Config, Limits};
use citadel_standin::cli::{self, Command};
use common::*;
use std::time::Duration;

/// The engine argv for a model, in start-model's documented order.
fn argv(cfg: &Config, m: &citadel_common::config::Model, port: u16) -> Vec<String> {
    let mut a = vec![
        m.resolved_path(&cfg.paths).display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--served-model-name".into(),
        m.served_model_name.clone(),
        "--tensor-parallel-size".into(),
        m.tensor_parallel_size.to_string(),
        "--gpu-memory-utilization".into(),
        m.gpu_memory_utilization.to_string(),
    ];
    if let Some(len) = m.max_model_len {
        a.extend(["--max-model-len".into(), len.to_string()]);
    }
    a.extend(m.extra_args.iter().cloned());
    a
}

fn shipped() -> Config {
    let file = shipped_config();
    let text = std::fs::read_to_string(&file).expect("packaging/citadel.toml");
    Config::parse_with(&text, &file, &Limits::default()).expect("shipped config is valid")
}

#[test]
fn every_seed_model_argv_is_accepted() {
    let cfg = shipped();
    assert_eq!(cfg.models.len(), 7, "the seed has seven models");
    for m in &cfg.models {
        let mut full = vec!["citadel-standin".to_string(), "serve".to_string()];
        full.extend(argv(&cfg, m, m.port));
        match cli::parse(&full) {
            Ok(Command::Serve(s)) => {
                assert_eq!(s.port, m.port);
                assert_eq!(s.served_model_names, vec![m.served_model_name.clone()]);
                assert_eq!(s.max_model_len, m.max_model_len.map(u64::from));
            }
            other => panic!("{}: {full:?} -> {other:?}", m.name),
        }
    }
}

#[test]
fn the_mixtral_argv_serves() {
    let cfg = shipped();
    let m = cfg.model("mixtral").expect("mixtral in the seed");
    let port = free_port();
    let mut a = argv(&cfg, m, port);
    let model = a.remove(0);
    // Standin::start adds --host/--port; drop ours (the first four after the path).
    let extra: Vec<&str> = a[4..].iter().map(String::as_str).collect();
    let mut s = Standin::start(&model, &extra, &[]);
    s.wait_ready(Duration::from_secs(20));
    let (st, body) = get(&s.url("/v1/models"), None, Duration::from_secs(5)).unwrap();
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], "mixtral");
    assert_eq!(v["data"][0]["max_model_len"], 32768);
    assert!(s.stdout().contains("Application startup complete."));
}
