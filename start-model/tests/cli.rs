//! Black-box tests of start-model that need no engine: `--dry-run`, and every refusal before
//! spawn with its exit code (78 config, 69 missing, 75 busy).

mod support;

use citadel_common::vllm::{flags, option_name};
use std::process::Output;
use std::time::{Duration, Instant};
use support::{Setup, TestBox};

const NO_ENGINE: &str = "/nonexistent/citadel/vllm";

fn no_engine() -> Setup {
    Setup {
        engine_command: vec![NO_ENGINE.into(), "serve".into()],
        ..Setup::default()
    }
}

fn run(b: &TestBox, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = b.command(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn dry_run_prints_one_json_document_and_touches_nothing() {
    let b = TestBox::new(
        Setup {
            model_extra: "extra_args = [\"--chat-template\", \"{{ 'x y' }} ☃\"]\n".into(),
            ..no_engine()
        }
        .env("HF_HUB_OFFLINE", "1"),
    );
    std::fs::write(b.path("key"), "sk-dry\n").unwrap();
    let text = std::fs::read_to_string(&b.config).unwrap().replace(
        "[engine.env]",
        &format!("api_key_file = {:?}\n[engine.env]", b.path("key")),
    );
    std::fs::write(&b.config, text).unwrap();
    let o = run(&b, &["--dry-run", "m"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model"], "m");
    assert_eq!(v["port"], b.port);
    assert_eq!(v["gpus"], serde_json::json!([0]));
    let argv: Vec<&str> = v["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(argv[0], NO_ENGINE);
    assert_eq!(argv[2], b.model_dir().to_str().unwrap());
    assert_eq!(argv.last().copied(), Some("{{ 'x y' }} ☃"));
    assert_eq!(v["env"]["CUDA_VISIBLE_DEVICES"], "0");
    assert_eq!(v["env"]["HF_HUB_OFFLINE"], "1");
    assert_eq!(v["env"]["VLLM_API_KEY"], "<redacted>");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("sk-dry"));
    assert!(
        !b.paths().runtime_dir.exists(),
        "dry run created the runtime dir"
    );
    assert!(b.notify.all().is_empty(), "dry run talked to systemd");
}

/// Each of the shipped config's seven models gives argv whose every flag vLLM 0.33 accepts.
#[test]
fn dry_run_of_the_shipped_models_uses_only_flags_vllm_accepts() {
    let cfg = support::workspace().join("packaging/citadel.toml");
    let names = [
        "mixtral", "hermes", "openchat", "phi3", "yi34b", "coder", "vision",
    ];
    for name in names {
        let o = std::process::Command::new(support::START_MODEL)
            .args(["--config", cfg.to_str().unwrap(), "--dry-run", name])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let argv: Vec<String> = serde_json::from_value(v["argv"].clone()).unwrap();
        assert_eq!(
            &argv[..2],
            ["/opt/citadel/venv/bin/vllm", "serve"],
            "{name}"
        );
        assert!(
            !argv[2].starts_with('-'),
            "{name}: model path first: {argv:?}"
        );
        let mut n_flags = 0;
        for tok in &argv[3..] {
            if let Some(opt) = option_name(tok) {
                assert!(
                    flags().contains_key(opt.as_str()),
                    "{name}: {tok} not accepted by vLLM 0.33"
                );
                assert!(!["--model", "--swap-space", "--disable-log-stats"].contains(&opt.as_str()));
                n_flags += 1;
            }
        }
        assert!(n_flags >= 5, "{name}: {argv:?}");
        assert_eq!(v["model"], name);
    }
}

#[test]
fn unknown_model_is_78_naming_the_known_ones() {
    let b = TestBox::new(no_engine());
    for args in [&["nope"][..], &["--dry-run", "nope"][..]] {
        let o = run(&b, args, &[]);
        assert_eq!(o.status.code(), Some(78));
        assert!(
            stderr(&o).contains("no model named \"nope\" (models: m)"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn disabled_model_is_78() {
    let b = TestBox::new(Setup {
        model_extra: "enabled = false\n".into(),
        ..no_engine()
    });
    let o = run(&b, &["m"], &[]);
    assert_eq!(o.status.code(), Some(78));
    assert!(stderr(&o).contains("disabled"), "{}", stderr(&o));
}

#[test]
fn invalid_config_is_78_with_the_reason() {
    let b = TestBox::new(Setup {
        model_extra: "extra_args = [\"--swap-space\", \"4\"]\n".into(),
        ..no_engine()
    });
    let o = run(&b, &["--dry-run", "m"], &[]);
    assert_eq!(o.status.code(), Some(78));
    assert!(stderr(&o).contains("--swap-space"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

#[test]
fn missing_model_directory_is_69() {
    let b = TestBox::new(Setup {
        write_model: false,
        ..no_engine()
    });
    let o = run(&b, &["m"], &[]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert!(stderr(&o).contains(b.model_dir().to_str().unwrap()));
}

#[test]
fn incomplete_model_directory_is_69_naming_the_shard() {
    let b = TestBox::new(no_engine());
    std::fs::remove_file(b.model_dir().join("model-00001-of-00002.safetensors")).unwrap();
    let o = run(&b, &["m"], &[]);
    assert_eq!(o.status.code(), Some(69));
    assert!(
        stderr(&o).contains("model-00001-of-00002.safetensors"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn missing_api_key_file_is_69_and_empty_is_78() {
    let b = TestBox::new(no_engine());
    let key = b.path("key");
    let text = std::fs::read_to_string(&b.config).unwrap().replace(
        "[engine.env]",
        &format!("api_key_file = {key:?}\n[engine.env]"),
    );
    std::fs::write(&b.config, text).unwrap();
    let o = run(&b, &["m"], &[]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert!(stderr(&o).contains(key.to_str().unwrap()));
    std::fs::write(&key, "\n").unwrap();
    let o = run(&b, &["m"], &[]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
}

#[test]
fn busy_port_is_75_after_port_wait_secs() {
    let b = TestBox::new(no_engine());
    let _hold = std::net::TcpListener::bind(("127.0.0.1", b.port)).unwrap();
    let t0 = Instant::now();
    let o = run(&b, &["m"], &[]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "did not wait port_wait_secs"
    );
    assert!(
        stderr(&o).contains(&format!("port {}", b.port)),
        "{}",
        stderr(&o)
    );
    assert!(b
        .notify
        .all()
        .iter()
        .any(|m| m.contains("waiting up to 1 s for port")));
}

#[test]
fn missing_engine_program_is_69() {
    let b = TestBox::new(no_engine());
    let o = run(&b, &["m"], &[]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert!(stderr(&o).contains(NO_ENGINE), "{}", stderr(&o));
}

fn fake_gpus(b: &TestBox, processes: serde_json::Value) -> String {
    let dev = |i: u32, p: serde_json::Value| {
        serde_json::json!({"index": i, "name": "H200",
            "memory": {"total": 150_000_000_000u64, "used": 2_000_000_000u64, "free": 148_000_000_000u64},
            "processes": p})
    };
    let v = serde_json::json!({"driver": "580.1", "devices": [dev(0, processes)]});
    let p = b.path("gpus.json");
    std::fs::write(&p, v.to_string()).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn leftover_gpu_process_is_75_naming_its_pid() {
    let b = TestBox::new(no_engine());
    let f = fake_gpus(
        &b,
        serde_json::json!([{"pid": 987654, "used_memory": 2147483648u64, "name": "VLLM::EngineCore"}]),
    );
    let o = run(&b, &["m"], &[("CITADEL_FAKE_GPU", &f)]);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(stderr(&o).contains("PID 987654"), "{}", stderr(&o));
}

#[test]
fn a_gpu_that_does_not_exist_is_69() {
    let b = TestBox::new(Setup {
        tail: String::new(),
        ..no_engine()
    });
    let text = std::fs::read_to_string(&b.config)
        .unwrap()
        .replace("gpus = [0]", "gpus = [3]");
    std::fs::write(&b.config, text).unwrap();
    let f = fake_gpus(&b, serde_json::json!([]));
    let o = run(&b, &["m"], &[("CITADEL_FAKE_GPU", &f)]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert!(stderr(&o).contains("GPU 3"), "{}", stderr(&o));
}

/// Issue 16 (rollout): `--surge` runs the rollout record's path on its surge port; without a
/// record it is 78. The main instance takes the record's path only once the rollout switched.
#[test]
fn surge_reads_the_rollout_record_and_the_main_follows_it_once_switched() {
    use citadel_common::rollout::{Phase, Record, SCHEMA};
    let b = TestBox::new(no_engine());
    let o = run(&b, &["--dry-run", "--surge", "m"], &[]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no surge rollout of m in progress"),
        "{}",
        stderr(&o)
    );
    let runtime = b.paths().runtime_dir;
    let mut r = Record {
        schema: SCHEMA,
        name: "m".into(),
        phase: Phase::SurgeStarting,
        path: "/srv/m-v2".into(),
        resolved_path: "/srv/m-v2".into(),
        surge_port: Some(b.port + 1),
        started_unix: 0,
    };
    r.write(&runtime).unwrap();
    let argv_port = |o: &Output| {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            v["argv"][2].as_str().unwrap().to_string(),
            v["port"].as_u64().unwrap(),
        )
    };
    let surge = argv_port(&run(&b, &["--dry-run", "--surge", "m"], &[]));
    assert_eq!(surge, ("/srv/m-v2".into(), u64::from(b.port + 1)));
    let main_dir = b.model_dir().to_str().unwrap().to_string();
    let main = argv_port(&run(&b, &["--dry-run", "m"], &[]));
    assert_eq!(
        main,
        (main_dir.clone(), u64::from(b.port)),
        "surge starting: the old path"
    );
    r.phase = Phase::Switched;
    r.write(&runtime).unwrap();
    let main = argv_port(&run(&b, &["--dry-run", "m"], &[]));
    assert_eq!(main, ("/srv/m-v2".into(), u64::from(b.port)));
    r.phase = Phase::Restoring;
    r.write(&runtime).unwrap();
    let main = argv_port(&run(&b, &["--dry-run", "m"], &[]));
    assert_eq!(
        main,
        (main_dir, u64::from(b.port)),
        "restoring: the config's path"
    );
}
