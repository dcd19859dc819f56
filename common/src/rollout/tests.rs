use super::*;
use crate::config::testing::config;

const TWO: &str = r#"
[models.a]
path = "a"
port = 11400
gpus = [0]
gpu_memory_utilization = 0.4
[models.b]
path = "b"
port = 11401
gpus = [0, 1]
tensor_parallel_size = 2
gpu_memory_utilization = 0.3
"#;

#[test]
fn surge_when_every_gpu_has_room_and_a_port_is_free() {
    let c = config(TWO);
    // GPU 0: 0.4 + 0.3 planned; b again (0.3) fits, a again (0.4) does not... 0.7 + 0.4 > 1.
    let b = c.model("b").unwrap();
    let d = decide(&c, b, &|_| true);
    // 11401 + 1 = 11402 is free and no model's port.
    assert_eq!(d.mode, Mode::Surge { port: 11402 });
    assert!(d.why.contains("GPU 0: 0.70 + 0.30 <= 1.00"), "{}", d.why);
    assert!(d.why.contains("GPU 1: 0.30 + 0.30"), "{}", d.why);
    assert!(d.why.contains("spare port 11402 is free"), "{}", d.why);
    let a = c.model("a").unwrap();
    let d = decide(&c, a, &|_| true);
    assert_eq!(d.mode, Mode::Replace);
    assert_eq!(
        d.why,
        "no room for a second instance on GPU 0: its planned share 0.70 + 0.40 (models.a.gpu_memory_utilization) = 1.10 > 1.00"
    );
}

#[test]
fn the_spare_port_skips_model_ports_and_busy_ones_and_none_free_is_replace() {
    let c = config(TWO);
    let a = c.model("a").unwrap();
    let cand = spare_port_candidates(&c, a);
    assert_eq!(cand[0], 11402, "11401 is b's");
    assert!(!cand.contains(&11401));
    let b = c.model("b").unwrap();
    let d = decide(&c, b, &|p| p > 11404);
    assert_eq!(d.mode, Mode::Surge { port: 11405 });
    let d = decide(&c, b, &|_| false);
    assert_eq!(d.mode, Mode::Replace);
    assert!(d.why.starts_with("room on the GPUs (GPU 0"), "{}", d.why);
    assert!(
        d.why
            .ends_with("no spare port: none of the 100 ports above 11401 is free"),
        "{}",
        d.why
    );
    // JSON: the mode, its port, the reason.
    let d = decide(&c, b, &|_| true);
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["mode"], "surge");
    assert_eq!(v["surge_port"], 11402);
    assert!(v["why"].as_str().unwrap().contains("room"));
}

#[test]
fn a_disabled_models_share_does_not_count() {
    let c = config(&format!(
        "{TWO}[models.off]\npath = \"off\"\nport = 11410\ngpus = [0]\ngpu_memory_utilization = 0.2\nenabled = false\n"
    ));
    let b = c.model("b").unwrap();
    assert!(matches!(decide(&c, b, &|_| true).mode, Mode::Surge { .. }));
}

#[test]
fn the_record_round_trips_and_is_gone_when_removed() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(Record::read(d.path(), "a").unwrap(), None);
    let r = Record {
        schema: SCHEMA,
        name: "a".into(),
        phase: Phase::SurgeStarting,
        path: "/mnt/citadel-models/staging/a-v2".into(),
        resolved_path: "/mnt/citadel-models/staging/a-v2".into(),
        surge_port: Some(11402),
        started_unix: 5,
    };
    let p = r.write(d.path()).unwrap();
    assert_eq!(p, d.path().join("rollout/a.json"));
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains("\"phase\": \"surge-starting\""), "{text}");
    assert_eq!(Record::read(d.path(), "a").unwrap().as_ref(), Some(&r));
    assert_eq!(r.main_path(), None, "the main keeps the config's path");
    let mut s = r.clone();
    s.phase = Phase::Switched;
    s.write(d.path()).unwrap();
    assert_eq!(
        Record::read(d.path(), "a").unwrap().unwrap().main_path(),
        Some(Path::new("/mnt/citadel-models/staging/a-v2"))
    );
    std::fs::write(d.path().join("rollout/bad.json"), "{").unwrap();
    let (ok, bad) = Record::read_all(d.path());
    assert_eq!(ok, vec![s]);
    assert_eq!(bad.len(), 1);
    assert!(bad[0].contains("bad.json"), "{bad:?}");
    Record::remove(d.path(), "a").unwrap();
    Record::remove(d.path(), "a").unwrap();
    assert_eq!(Record::read(d.path(), "a").unwrap(), None);
}

#[test]
fn the_config_edit_changes_one_value_and_nothing_else() {
    let text = "# box config\n[engine]\nhost = \"127.0.0.1\"   # loopback\n\n[models.a]\npath = \"a\"    # v1, 2026-11\nport = 11400\n\n[models.b]\npath='b'\nport = 11401\n";
    let out = set_model_path(text, "a", "/mnt/citadel-models/staging/a-v2").unwrap();
    assert_eq!(
        out,
        text.replace(
            "path = \"a\"    # v1",
            "path = \"/mnt/citadel-models/staging/a-v2\"    # v1"
        )
    );
    let out = set_model_path(text, "b", "b \"2\"").unwrap();
    // The toml crate's quoting (a literal string needs no escapes); it reads back as given.
    assert_eq!(out, text.replace("path='b'", "path='b \"2\"'"));
    // A header with quotes and a comment, a path line with a comment after a literal string.
    let quoted =
        "[models.\"c\"] # third\n  path = '/x/c' # v1\nport = 1\n[models.cc]\npath = \"cc\"\n";
    assert_eq!(
        set_model_path(quoted, "c", "/x/c2").unwrap(),
        quoted.replace("'/x/c' # v1", "\"/x/c2\" # v1")
    );
    // Dotted keys and inline tables are refused (nothing is guessed).
    let dotted = "models.c.path = \"c\" # x\nmodels.c.port = 11402\n";
    assert!(set_model_path(dotted, "c", "c2")
        .unwrap_err()
        .contains("is not a `path = \"...\"` line"));
    let inline = "[models]\nd = { path = \"d\", port = 11403 }\n";
    assert!(set_model_path(inline, "d", "d2").is_err());
    let multi = "[models.e]\npath = \"\"\"e\"\"\"\n";
    assert!(set_model_path(multi, "e", "e2")
        .unwrap_err()
        .contains("not a one-line string"));
    assert_eq!(
        set_model_path(text, "zz", "x").unwrap_err(),
        "no [models.zz] table"
    );
    assert!(set_model_path("[models.a]\nport = 1\n", "a", "x")
        .unwrap_err()
        .contains("models.a.path is not a `path"));
    assert!(set_model_path("[models.a\n", "a", "x")
        .unwrap_err()
        .starts_with("cannot parse"));
}
