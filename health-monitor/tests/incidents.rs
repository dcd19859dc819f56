//! Incidents, GPU quarantine and alerts of the monitor, with a fake systemd, the kernel-log
//! test hook (a file of kernel lines) and fake NVML health.

mod support;

use citadel_common::alert::Format;
use citadel_common::classify::Class;
use citadel_common::gpu::GpuInfo;
use citadel_common::gpufault::FileLog;
use citadel_common::incident::{Event, Store};
use health_monitor::Monitor;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

fn gpu(index: u32, pci: &str) -> GpuInfo {
    serde_json::from_value(serde_json::json!({
        "index": index, "name": "NVIDIA H200", "uuid": format!("GPU-{index}"), "pci_bus_id": pci,
        "memory_total_bytes": 1, "memory_used_bytes": 0, "memory_free_bytes": 1,
        "clocks": {}, "processes": [], "refused": {}
    }))
    .unwrap()
}

fn on_gpu(name: &str, port: u16, gpus: &[u32]) -> health_monitor::Target {
    let mut t = target(name, port);
    t.gpus = gpus.to_vec();
    t
}

#[test]
fn a_fixture_xid_79_on_gpu_1_quarantines_gpu_1s_models_only_and_gpu_clear_lifts_it() {
    let state = tempfile::tempdir().unwrap();
    let kmsg = state.path().join("kmsg");
    let sd = fake_systemd();
    for n in ["a", "b", "c"] {
        sd.set(n, "active", 100);
    }
    let mut s = settings();
    s.state_dir = Some(state.path().to_path_buf());
    // No engines answer: the probes fail, but never often enough for a restart here.
    s.failure_threshold = 100;
    // Fake NVML health: two GPUs, GPU 1 at PCI 3b.
    let health = Arc::new(Mutex::new(vec![
        gpu(0, "00000000:1A:00.0"),
        gpu(1, "00000000:3B:00.0"),
    ]));
    let h = health.clone();
    let m = Monitor::supervisor(
        s,
        vec![
            on_gpu("a", free_port(), &[0]),
            on_gpu("b", free_port(), &[1]),
            on_gpu("c", free_port(), &[0, 1]),
        ],
        sd.clone(),
        None,
        Arc::new(AtomicBool::new(false)),
    )
    .with_gpu_faults(
        Box::new(FileLog::new(kmsg.clone())),
        Box::new(move || Ok(h.lock().unwrap().clone())),
    );
    let mut m = m;
    let mut now = Instant::now();
    now += Duration::from_secs(10);
    m.sweep(now).unwrap();
    assert!(sd.stops().is_empty(), "nothing happened yet");
    std::fs::write(
        &kmsg,
        "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  580.95.05\nNVRM: Xid (PCI:0000:3b:00): 79, pid=4711, name=python3, GPU has fallen off the bus.\n",
    )
    .unwrap();
    now += Duration::from_secs(10);
    let r = m.sweep(now).unwrap();
    let mut stops = sd.stops();
    stops.sort();
    assert_eq!(
        stops,
        vec!["citadel-model@b.service", "citadel-model@c.service"]
    );
    assert_eq!(r.state.quarantined_gpus, vec![1]);
    let q = citadel_common::quarantine::list(state.path()).unwrap();
    assert_eq!((q.len(), q[0].gpu, q[0].xid), (1, 1, Some(79)));
    let store = Store::open(state.path()).unwrap();
    for n in ["b", "c"] {
        let i = store.latest(n).unwrap().expect("incident");
        assert_eq!(
            (i.class, i.event, i.gpu, i.xid),
            (Class::GpuFault, Event::GpuQuarantine, Some(1), Some(79))
        );
        assert!(i.fix.contains("gpu clear 1"), "{}", i.fix);
        assert!(i.summary.contains("Xid 79"), "{}", i.summary);
    }
    assert!(
        store.latest("a").unwrap().is_none(),
        "GPU 0's model got an incident"
    );
    // The same line is not read twice; GPU 0's model stays untouched.
    now += Duration::from_secs(10);
    m.sweep(now).unwrap();
    assert_eq!(sd.stops().len(), 2);
    assert!(sd.restarts().is_empty());
    // The textfile says so.
    let t = health_monitor::output::textfile(&r.state);
    assert!(t.contains("citadel_gpu_quarantined{gpu=\"1\"} 1"), "{t}");
    // `gpu clear 1` lifts it.
    assert!(citadel_common::quarantine::clear(state.path(), 1)
        .unwrap()
        .is_some());
    now += Duration::from_secs(10);
    let r = m.sweep(now).unwrap();
    assert!(r.state.quarantined_gpus.is_empty());
}

#[test]
fn nvml_health_quarantines_too_and_a_contained_xid_restarts_only_that_gpus_model() {
    let state = tempfile::tempdir().unwrap();
    let kmsg = state.path().join("kmsg");
    let sd = fake_systemd();
    for n in ["a", "b"] {
        sd.set(n, "active", 100);
    }
    let mut s = settings();
    s.state_dir = Some(state.path().to_path_buf());
    s.failure_threshold = 100;
    let health = Arc::new(Mutex::new(vec![
        gpu(0, "00000000:1A:00.0"),
        gpu(1, "00000000:3B:00.0"),
    ]));
    let h = health.clone();
    let mut m = Monitor::supervisor(
        s,
        vec![
            on_gpu("a", free_port(), &[0]),
            on_gpu("b", free_port(), &[1]),
        ],
        sd.clone(),
        None,
        Arc::new(AtomicBool::new(false)),
    )
    .with_gpu_faults(
        Box::new(FileLog::new(kmsg.clone())),
        Box::new(move || Ok(h.lock().unwrap().clone())),
    );
    let mut now = Instant::now() + Duration::from_secs(10);
    m.sweep(now).unwrap();
    // Xid 94 (contained ECC error) on GPU 0: restart a only.
    std::fs::write(
        &kmsg,
        "NVRM: Xid (PCI:0000:1a:00): 94, pid=1, Contained: SM (0x1). RST: No, D-RST: No\n",
    )
    .unwrap();
    now += Duration::from_secs(10);
    m.sweep(now).unwrap();
    assert_eq!(sd.restarts(), vec!["citadel-model@a.service"]);
    assert!(sd.stops().is_empty());
    // A new uncorrected ECC error on GPU 1 (NVML): quarantine GPU 1.
    health.lock().unwrap()[1].ecc_uncorrected_volatile = Some(2);
    now += Duration::from_secs(10);
    m.sweep(now).unwrap();
    assert_eq!(sd.stops(), vec!["citadel-model@b.service"]);
    // GPU 1 stops answering NVML: already quarantined, nothing more is stopped.
    health.lock().unwrap().pop();
    now += Duration::from_secs(10);
    m.sweep(now).unwrap();
    assert_eq!(sd.stops().len(), 1);
}

fn failed_unit_alert(format: Format) -> Vec<String> {
    let hook = TinyServer::replying(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let state = tempfile::tempdir().unwrap();
    let sd = fake_systemd();
    sd.set("a", "activating", 100);
    let mut s = settings();
    s.state_dir = Some(state.path().to_path_buf());
    s.webhook_url = Some(format!("http://127.0.0.1:{}/api/v2/alerts", hook.port));
    s.webhook_format = format;
    // start-model left an incident for the failed start.
    let store = Store::create(state.path()).unwrap();
    let d = citadel_common::classify::word(Class::MaxModelLen, "ValueError: User-specified max_model_len (100000) is greater than the derived max_model_len (max_position_embeddings=512.0 ...)", &citadel_common::classify::Context { model: "a".into(), ..Default::default() }, None);
    store
        .record(citadel_common::incident::Incident::new(
            "a",
            "citadel-model@a.service",
            "start-model",
            Event::StartFailure,
            &d,
        ))
        .unwrap();
    let mut m = Monitor::supervisor(
        s,
        vec![target("a", free_port())],
        sd.clone(),
        None,
        Arc::new(AtomicBool::new(false)),
    );
    let mut now = Instant::now() + Duration::from_secs(10);
    m.sweep(now).unwrap();
    // The model's unit and citadel-storage fail (systemd gave up / the oneshot failed at boot).
    sd.set("a", "failed", 0);
    sd.put(citadel_common::systemd::fake::unit(
        citadel_common::paths::UNIT_STORAGE,
        "failed",
        false,
    ));
    now += Duration::from_secs(10);
    m.sweep(now).unwrap();
    // Said once, not every sweep.
    now += Duration::from_secs(10);
    m.sweep(now).unwrap();
    let t0 = Instant::now();
    let want = if format == Format::Json { 2 } else { 1 };
    while hook.requests.lock().unwrap().len() < want && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let reqs = hook.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), want, "{reqs:?}");
    reqs
}

fn body(req: &str) -> serde_json::Value {
    let b = req.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(b).unwrap_or_else(|e| panic!("{e}: {b}"))
}

#[test]
fn a_failed_unit_alert_reaches_the_webhook_as_json() {
    let reqs = failed_unit_alert(Format::Json);
    let bodies: Vec<serde_json::Value> = reqs.iter().map(|r| body(r)).collect();
    let model = bodies
        .iter()
        .find(|b| b["unit"] == "citadel-model@a.service")
        .expect("model alert");
    assert_eq!(model["event"], "unit_failed");
    assert_eq!(model["model"], "a");
    assert_eq!(model["class"], "max_model_len");
    assert_eq!(model["severity"], "critical");
    assert!(
        model["fix"]
            .as_str()
            .unwrap()
            .contains("models.a.max_model_len = 512"),
        "{model}"
    );
    let storage = bodies
        .iter()
        .find(|b| b["unit"] == citadel_common::paths::UNIT_STORAGE)
        .expect("storage alert");
    assert_eq!(storage["event"], "unit_failed");
}

#[test]
fn a_failed_unit_alert_reaches_the_webhook_in_alertmanager_shape() {
    let reqs = failed_unit_alert(Format::Alertmanager);
    assert!(reqs[0].starts_with("POST /api/v2/alerts "), "{}", reqs[0]);
    let b = body(&reqs[0]);
    let alerts = b.as_array().expect("an array of alerts");
    assert_eq!(alerts.len(), 2);
    let a = alerts
        .iter()
        .find(|a| a["labels"]["model"] == "a")
        .expect("model alert");
    assert_eq!(a["labels"]["alertname"], "CitadelUnitFailed");
    assert_eq!(a["labels"]["class"], "max_model_len");
    assert_eq!(a["labels"]["severity"], "critical");
    assert!(a["startsAt"].as_str().unwrap().ends_with('Z'));
    assert!(alerts.iter().all(|a| a["labels"]
        .as_object()
        .unwrap()
        .values()
        .all(|v| v.is_string())));
}
