use super::*;
use crate::systemd::fake::{unit, FakeHost};
use citadel_common::config::Paths;
use citadel_common::systemd::ActiveState;
use std::sync::{Arc, Mutex};

/// a fits a second instance on GPU 0 (0.3 + 0.3); b does not on GPU 1 (0.6 + 0.6).
const MODELS: &str = r#"
[models.a]
path = "a"    # v1
port = 11401
gpus = [0]
gpu_memory_utilization = 0.3
[models.b]
path = "b"
port = 11402
gpus = [1]
gpu_memory_utilization = 0.6
"#;

struct Box_ {
    dir: tempfile::TempDir,
    cfg: Config,
    text: String,
    new: PathBuf,
}

/// A config in a temp dir (service account nobody, so the readable check passes as root),
/// its snapshot, and a complete new version under staging.
fn setup() -> Box_ {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let paths = Paths::under(dir.path());
    std::fs::create_dir_all(&paths.state_dir).unwrap();
    let text = format!(
        "# the box\n{}[service]\nuser = \"nobody\"\ngroup = \"nogroup\"\n{MODELS}",
        paths.to_toml()
    );
    let file = dir.path().join("citadel.toml");
    std::fs::write(&file, &text).unwrap();
    let cfg = Config::load(&file).unwrap();
    crate::snapshot::save(&cfg).unwrap();
    let new = paths.staging_dir.join("a-v2");
    citadel_common::modelfiles::write_fake_model(&new, 2).unwrap();
    for d in [
        dir.path().join("mnt"),
        dir.path().join("mnt/citadel-models"),
        paths.staging_dir.clone(),
    ] {
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755));
    }
    Box_ {
        dir,
        cfg,
        text,
        new,
    }
}

fn opts(b: &Box_, name: &str, dry_run: bool, json: bool) -> RolloutOptions {
    RolloutOptions {
        name: name.into(),
        path: b.new.clone(),
        dry_run,
        json,
        wait: WaitOptions::for_tests(),
        golden: None,
    }
}

/// Verifies every port except `bad`.
struct FakeVerify {
    bad: Vec<u16>,
    asked: Mutex<Vec<u16>>,
}

impl FakeVerify {
    fn failing(bad: &[u16]) -> FakeVerify {
        FakeVerify {
            bad: bad.to_vec(),
            asked: Mutex::new(vec![]),
        }
    }
}

impl Verify for FakeVerify {
    fn verify(&self, _: &str, port: u16, _: Option<&(String, String)>) -> Result<(), String> {
        self.asked.lock().unwrap().push(port);
        if self.bad.contains(&port) {
            Err(format!(
                "deep probe (1-token completion): port {port} answered HTTP 500"
            ))
        } else {
            Ok(())
        }
    }
}

/// A host where each job on a unit lands at once: start/restart -> active (or, the first time,
/// failed for the units in `fail`), stop -> inactive. Each job is logged with the rollout record's phase at
/// that moment.
fn host(b: &Box_, fail: &[&str]) -> (FakeHost, Arc<Mutex<Vec<String>>>) {
    let h = FakeHost::new();
    for u in [
        "citadel-model@a.service",
        "citadel-model@b.service",
        "citadel-gateway.service",
    ] {
        h.systemd.set_state(u, ActiveState::Active, 10);
    }
    h.systemd
        .set_state("citadel-model-next@a.service", ActiveState::Inactive, 0);
    let log = Arc::new(Mutex::new(vec![]));
    let l = Arc::clone(&log);
    let mut fail: Vec<String> = fail.iter().map(|s| s.to_string()).collect();
    let runtime = b.cfg.paths.runtime_dir.clone();
    h.systemd.on_queue(Box::new(move |s, job, name| {
        let phase = Record::read(&runtime, "a")
            .unwrap()
            .map_or("none", |r| r.phase.as_str());
        l.lock()
            .unwrap()
            .push(format!("{} {name} ({phase})", job.as_str()));
        let state = match job {
            Job::Stop => ActiveState::Inactive,
            _ if fail.iter().any(|f| f == name) => {
                // Fails once: the next start of the old version works.
                fail.retain(|f| f != name);
                ActiveState::Failed
            }
            _ => ActiveState::Active,
        };
        s.put(unit(name, state, false));
    }));
    (h, log)
}

fn rollout<'a>(
    h: &'a FakeHost,
    v: &'a FakeVerify,
    b: &'a Box_,
    plan: &'a Plan,
    o: &'a RolloutOptions,
) -> Rollout<'a> {
    Rollout {
        host: h,
        verify: v,
        cfg: &b.cfg,
        plan,
        opts: o,
    }
}

#[test]
fn the_plan_says_the_mode_and_why_and_a_dry_run_touches_nothing() {
    let b = setup();
    let (h, log) = host(&b, &[]);
    let v = FakeVerify::failing(&[]);
    let mut out = vec![];
    let o = opts(&b, "a", true, false);
    assert_eq!(
        run(&h, &v, &b.cfg, &o, &|_| true, &mut out).unwrap(),
        Exit::Ok
    );
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("mode: surge (a second instance on port 11403)"),
        "{text}"
    );
    assert!(
        text.contains("why: room for a second instance (GPU 0: 0.30 + 0.30 <= 1.00) and spare port 11403 is free"),
        "{text}"
    );
    assert!(
        text.contains("1. start citadel-model-next@a.service on port 11403"),
        "{text}"
    );
    assert!(h.recorded().is_empty(), "{:?}", h.recorded());
    assert!(log.lock().unwrap().is_empty());
    assert_eq!(std::fs::read_to_string(&b.cfg.file).unwrap(), b.text);

    // b has no room: replace, and the constraint is named.
    std::fs::create_dir_all(b.new.with_file_name("b-v2")).unwrap();
    citadel_common::modelfiles::write_fake_model(&b.new.with_file_name("b-v2"), 1).unwrap();
    let p = plan(&b.cfg, "b", &b.new.with_file_name("b-v2"), false, &|_| true).unwrap();
    assert_eq!(p.decision.mode, Mode::Replace);
    let text = p.render();
    assert!(text.contains("mode: replace"), "{text}");
    assert!(
        text.contains("why: no room for a second instance on GPU 1: its planned share 0.60 + 0.60"),
        "{text}"
    );
    assert!(text.contains("503 with Retry-After"), "{text}");
    // No free port: replace too.
    let p = plan(&b.cfg, "a", &b.new, false, &|_| false).unwrap();
    assert_eq!(p.decision.mode, Mode::Replace);
    assert!(
        p.decision.why.contains("no spare port"),
        "{}",
        p.decision.why
    );
}

#[test]
fn the_dry_run_json_is_the_plan() {
    let b = setup();
    let p = plan(&b.cfg, "a", &b.new, true, &|_| true).unwrap();
    let v = serde_json::to_value(Report {
        plan: &p,
        dry_run: true,
        result: "planned",
        error: None,
    })
    .unwrap();
    assert_eq!(v["model"], "a");
    assert_eq!(v["mode"], "surge");
    assert_eq!(v["port"], 11401);
    assert_eq!(v["surge_port"], 11403);
    assert_eq!(v["old_path"], "a");
    assert_eq!(v["new_path"], b.new.display().to_string());
    assert_eq!(v["result"], "planned");
    assert!(v["why"].as_str().unwrap().contains("spare port 11403"));
    assert!(v["steps"][0].as_str().unwrap().contains("golden prompt"));
}

#[test]
fn refusals_before_anything_is_touched() {
    let b = setup();
    let e = plan(&b.cfg, "zz", &b.new, false, &|_| true).unwrap_err();
    assert_eq!(e.exit(), Exit::Config);
    assert!(
        e.message.contains("no model named \"zz\" (models: a, b)"),
        "{e}"
    );
    let e = plan(&b.cfg, "a", Path::new("a"), false, &|_| true).unwrap_err();
    assert_eq!(e.exit(), Exit::Usage);
    assert!(e.message.contains("already a"), "{e}");
    // Incomplete files: 69, every problem named.
    let half = b.new.with_file_name("a-half");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::write(half.join("config.json"), "{}").unwrap();
    let e = plan(&b.cfg, "a", &half, false, &|_| true).unwrap_err();
    assert_eq!(e.exit(), Exit::Unavailable);
    assert!(e.message.starts_with("new version refused: "), "{e}");
    assert!(e.message.contains("no tokenizer"), "{e}");
    assert!(!e.message.contains('\n'), "{e}");
    // A path the config would refuse: 78, with the key.
    let e = plan(&b.cfg, "a", Path::new("/etc"), false, &|_| true).unwrap_err();
    assert!(matches!(e.exit(), Exit::Config | Exit::Unavailable), "{e}");
    // A rollout in progress.
    let p = plan(&b.cfg, "a", &b.new, false, &|_| true).unwrap();
    let (h, _) = host(&b, &[]);
    let v = FakeVerify::failing(&[]);
    let o = opts(&b, "a", false, false);
    rollout(&h, &v, &b, &p, &o)
        .write_record(Phase::SurgeStarting, &mut vec![])
        .unwrap();
    let e = plan(&b.cfg, "a", &b.new, false, &|_| true).unwrap_err();
    assert_eq!(e.exit(), Exit::Failure);
    assert!(
        e.message
            .contains("in progress already (phase surge-starting"),
        "{e}"
    );
}

#[test]
fn surge_starts_switches_restarts_writes_the_config_and_stops_the_surge() {
    let b = setup();
    let (h, log) = host(&b, &[]);
    let v = FakeVerify::failing(&[]);
    let o = opts(&b, "a", false, false);
    let p = plan(&b.cfg, "a", &b.new, false, &|_| true).unwrap();
    let mut out = vec![];
    rollout(&h, &v, &b, &p, &o).execute(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "start citadel-model-next@a.service (surge-starting)",
            "restart citadel-model@a.service (switched)",
            "stop citadel-model-next@a.service (none)",
        ],
        "{text}"
    );
    let reloads: Vec<String> = h
        .recorded()
        .into_iter()
        .filter(|c| c.starts_with("reload"))
        .collect();
    assert_eq!(
        reloads.len(),
        2,
        "switch and switch back: {:?}",
        h.recorded()
    );
    assert_eq!(*v.asked.lock().unwrap(), [11403, 11401]);
    // The config: that one value changed, every other byte kept.
    let new = b.new.display().to_string();
    assert_eq!(
        std::fs::read_to_string(&b.cfg.file).unwrap(),
        b.text
            .replace("path = \"a\"    # v1", &format!("path = \"{new}\"    # v1"))
    );
    assert_eq!(Record::read(&b.cfg.paths.runtime_dir, "a").unwrap(), None);
    // The running snapshot follows, so apply does not restart a again.
    let snap = std::fs::read_to_string(crate::snapshot::path(&b.cfg)).unwrap();
    assert!(snap.contains(&new), "{snap}");
    assert!(
        text.contains("[6/6] stop citadel-model-next@a.service"),
        "{text}"
    );
    let _ = b.dir.path();
}

#[test]
fn a_surge_that_fails_to_start_is_stopped_and_the_old_one_never_touched() {
    let b = setup();
    let (h, log) = host(&b, &["citadel-model-next@a.service"]);
    let mut h = h;
    h.causes.insert(
        "citadel-model-next@a.service".into(),
        vec![
            "engine of a exited with status 1 while loading; the engine said: OSError: bad shard\n"
                .into(),
        ],
    );
    let v = FakeVerify::failing(&[]);
    let o = opts(&b, "a", false, false);
    let p = plan(&b.cfg, "a", &b.new, false, &|_| true).unwrap();
    let e = rollout(&h, &v, &b, &p, &o)
        .execute(&mut vec![])
        .unwrap_err();
    assert_eq!(e.exit(), Exit::Failure);
    assert!(
        e.message
            .starts_with("rollout of a failed at step 1/6 (start citadel-model-next@a.service"),
        "{e}"
    );
    assert!(
        e.message
            .contains("rolled back: a serves the old version (a) on port 11401"),
        "{e}"
    );
    assert!(
        e.message.contains("OSError: bad shard"),
        "the engine's cause: {e}"
    );
    assert_eq!(
        *log.lock().unwrap(),
        [
            "start citadel-model-next@a.service (surge-starting)",
            "stop citadel-model-next@a.service (none)",
        ]
    );
    assert_eq!(std::fs::read_to_string(&b.cfg.file).unwrap(), b.text);
    assert_eq!(Record::read(&b.cfg.paths.runtime_dir, "a").unwrap(), None);
}

#[test]
fn a_surge_that_fails_the_deep_probe_is_rolled_back() {
    let b = setup();
    let (h, log) = host(&b, &[]);
    let v = FakeVerify::failing(&[11403]);
    let o = opts(&b, "a", false, false);
    let p = plan(&b.cfg, "a", &b.new, false, &|_| true).unwrap();
    let e = rollout(&h, &v, &b, &p, &o)
        .execute(&mut vec![])
        .unwrap_err();
    assert!(e.message.contains("step 1/6"), "{e}");
    assert!(e.message.contains("port 11403 answered HTTP 500"), "{e}");
    assert_eq!(log.lock().unwrap().len(), 2, "{:?}", log.lock().unwrap());
    assert_eq!(std::fs::read_to_string(&b.cfg.file).unwrap(), b.text);
}

#[test]
fn a_main_that_fails_on_the_new_path_is_restored_while_the_surge_serves() {
    let b = setup();
    let (h, log) = host(&b, &[]);
    let v = FakeVerify::failing(&[11401]);
    let o = opts(&b, "a", false, false);
    let p = plan(&b.cfg, "a", &b.new, false, &|_| true).unwrap();
    let e = rollout(&h, &v, &b, &p, &o)
        .execute(&mut vec![])
        .unwrap_err();
    assert!(
        h.recorded()
            .contains(&"reset-failed citadel-model@a.service".to_string()),
        "{:?}",
        h.recorded()
    );
    assert!(
        e.message
            .contains("step 3/6 (restart citadel-model@a.service"),
        "{e}"
    );
    assert_eq!(
        *log.lock().unwrap(),
        [
            "start citadel-model-next@a.service (surge-starting)",
            "restart citadel-model@a.service (switched)",
            "stop citadel-model@a.service (restoring)",
            "start citadel-model@a.service (restoring)",
            "stop citadel-model-next@a.service (none)",
        ]
    );
    assert_eq!(std::fs::read_to_string(&b.cfg.file).unwrap(), b.text);
    assert_eq!(Record::read(&b.cfg.paths.runtime_dir, "a").unwrap(), None);
}

#[test]
fn replace_stops_starts_on_the_new_path_and_a_failure_restores_the_old_one() {
    let b = setup();
    let v = FakeVerify::failing(&[]);
    let o = opts(&b, "a", false, false);
    let p = plan(&b.cfg, "a", &b.new, false, &|_| false).unwrap();
    assert_eq!(p.decision.mode, Mode::Replace);
    let (h, log) = host(&b, &[]);
    rollout(&h, &v, &b, &p, &o).execute(&mut vec![]).unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "stop citadel-model@a.service (replacing)",
            "start citadel-model@a.service (replacing)",
        ]
    );
    assert!(std::fs::read_to_string(&b.cfg.file)
        .unwrap()
        .contains(&b.new.display().to_string()));
    assert_eq!(Record::read(&b.cfg.paths.runtime_dir, "a").unwrap(), None);

    // The new version crashes: the old path is started again.
    let b = setup();
    let p = plan(&b.cfg, "a", &b.new, false, &|_| false).unwrap();
    let (h, log) = host(&b, &["citadel-model@a.service"]);
    let e = rollout(&h, &v, &b, &p, &o)
        .execute(&mut vec![])
        .unwrap_err();
    assert!(
        e.message
            .contains("step 3/5 (start citadel-model@a.service"),
        "{e}"
    );
    assert!(
        e.message
            .contains("rolled back: a serves the old version (a)"),
        "{e}"
    );
    assert_eq!(
        *log.lock().unwrap(),
        [
            "stop citadel-model@a.service (replacing)",
            "start citadel-model@a.service (replacing)",
            "stop citadel-model@a.service (restoring)",
            "start citadel-model@a.service (restoring)",
        ]
    );
    assert_eq!(std::fs::read_to_string(&b.cfg.file).unwrap(), b.text);
    assert_eq!(Record::read(&b.cfg.paths.runtime_dir, "a").unwrap(), None);
}

#[test]
fn the_gateway_goes_back_to_the_main_only_once_the_monitor_lets_requests_through() {
    use citadel_common::health::{testing, HealthState, ModelHealth, ModelState};
    let b = setup();
    let (h, _) = host(&b, &[]);
    let v = FakeVerify::failing(&[]);
    let o = opts(&b, "a", false, false);
    let p = plan(&b.cfg, "a", &b.new, false, &|_| true).unwrap();
    let r = rollout(&h, &v, &b, &p, &o);
    let write = |state: ModelState, updated: u64| {
        HealthState {
            updated_unix: updated,
            ..testing::state(vec![ModelHealth {
                port: 11401,
                ..testing::model("a", state)
            }])
        }
        .write(&b.cfg.monitor.state_file)
        .unwrap();
    };
    std::fs::create_dir_all(b.cfg.monitor.state_file.parent().unwrap()).unwrap();
    let t0 = h.monotonic();
    let mut out = vec![];
    r.wait_monitor(&mut out);
    assert_eq!(h.monotonic(), t0, "no state file: no wait");
    write(ModelState::Healthy, crate::now_unix());
    r.wait_monitor(&mut out);
    assert_eq!(h.monotonic(), t0, "healthy: no wait");
    write(ModelState::Starting, 1);
    r.wait_monitor(&mut out);
    assert_eq!(h.monotonic(), t0, "a stale file (no monitor): no wait");
    write(ModelState::Starting, crate::now_unix());
    r.wait_monitor(&mut out);
    let waited = h.monotonic() - t0;
    assert!(waited >= std::time::Duration::from_secs(13), "{waited:?}");
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("the monitor still says starting for a"),
        "{text}"
    );
}
