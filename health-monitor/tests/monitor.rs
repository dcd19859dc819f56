//! The monitor against real (stand-in) engines, run directly, with a fake systemd.

mod support;

use citadel_common::health::ModelState;
use health_monitor::Monitor;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

fn stop() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Sweep with a fake clock 10 s apart, `gap` of real time between sweeps.
struct Driver {
    m: Monitor,
    now: Instant,
}

impl Driver {
    fn new(m: Monitor) -> Driver {
        Driver {
            m,
            now: Instant::now(),
        }
    }
    fn sweep(&mut self) -> health_monitor::SweepReport {
        self.now += Duration::from_secs(10);
        self.m.sweep(self.now).expect("not stopped")
    }
    fn state(&self, name: &str) -> ModelState {
        self.m.record(name).expect("swept").state
    }
}

#[test]
fn seven_models_with_two_hung_finish_within_one_probe_timeout() {
    let names = ["a", "b", "c", "d", "e", "f", "g"];
    let engines: Vec<Engine> = names
        .iter()
        .map(|n| {
            let knobs: &[(&str, &str)] = if *n == "c" || *n == "f" {
                &[("STANDIN_HEALTH", "hang")]
            } else {
                &[]
            };
            start_engine(n, free_port(), knobs)
        })
        .collect();
    let sd = fake_systemd();
    for e in &engines {
        sd.set(&e.name, "active", e.pid());
    }
    let mut s = settings();
    s.probe_timeout = Duration::from_secs(2);
    s.deep_interval = Some(Duration::from_secs(60));
    let targets = engines.iter().map(|e| target(&e.name, e.port)).collect();
    let mut d = Driver::new(Monitor::supervisor(s, targets, sd.clone(), None, stop()));
    let t0 = Instant::now();
    let r = d.sweep();
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(2000 + 900),
        "a sweep over 7 models with 2 hung took {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "{took:?}: did it wait for the hung ones?"
    );
    assert_eq!(sd.status_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    for m in &r.state.models {
        let want = if m.name == "c" || m.name == "f" {
            ModelState::Failing
        } else {
            ModelState::Healthy
        };
        assert_eq!(m.state, want, "{m:?}");
    }
    let hung = r.state.model("c").unwrap();
    assert!(
        hung.reason
            .as_deref()
            .unwrap()
            .contains("/health: no answer within 2s"),
        "{hung:?}"
    );
    assert_eq!(
        health_monitor::output::summary(&r.state),
        "5/7 healthy, 2 failing"
    );
}

#[test]
fn a_slow_loader_is_never_restarted() {
    let port = free_port();
    let _e = start_engine("big", port, &[("STANDIN_LOAD_SECS", "60")]);
    let sd = fake_systemd();
    sd.set("big", "activating", 4242);
    let mut d = Driver::new(Monitor::supervisor(
        settings(),
        vec![target("big", port)],
        sd.clone(),
        None,
        stop(),
    ));
    // 40 sweeps = 400 s of monitor time: far past any threshold.
    for _ in 0..40 {
        let r = d.sweep();
        assert_eq!(r.state.models[0].state, ModelState::Starting);
        assert!(r.restarted.is_empty());
    }
    assert!(sd.restarts().is_empty());
    assert_eq!(d.m.record("big").unwrap().consecutive_failures, 0);
}

#[test]
fn a_crashed_engine_is_restarted_after_the_threshold_and_followed_back() {
    let port = free_port(); // nothing listens: the process is gone, the unit still active
    let sd = fake_systemd();
    sd.set("phi3", "active", 100);
    let mut d = Driver::new(Monitor::supervisor(
        settings(),
        vec![target("phi3", port)],
        sd.clone(),
        None,
        stop(),
    ));
    d.sweep();
    assert_eq!(d.state("phi3"), ModelState::Failing);
    d.sweep();
    assert!(sd.restarts().is_empty());
    let r = d.sweep();
    assert_eq!(r.restarted, vec!["citadel-model@phi3.service".to_string()]);
    assert_eq!(
        sd.restarts(),
        vec!["citadel-model@phi3.service".to_string()]
    );
    assert_eq!(d.state("phi3"), ModelState::Restarting);
    // systemd works on it: still the old PID, then loading, then a new server.
    d.sweep();
    assert_eq!(d.state("phi3"), ModelState::Restarting);
    sd.set("phi3", "activating", 101);
    let e = start_engine("phi3", port, &[]);
    d.sweep();
    assert_eq!(d.state("phi3"), ModelState::Starting);
    sd.set("phi3", "active", e.pid());
    let r = d.sweep();
    assert_eq!(d.state("phi3"), ModelState::Healthy);
    assert_eq!(r.state.models[0].monitor_restarts, 1);
    assert_eq!(sd.restarts().len(), 1);
}

#[test]
fn a_hung_engine_with_health_200_is_found_by_the_deep_probe_and_restarted() {
    let port = free_port();
    let e = start_engine("hung", port, &[("STANDIN_HANG_AFTER_SECS", "0")]);
    let sd = fake_systemd();
    sd.set("hung", "active", e.pid());
    let mut s = settings();
    s.deep_interval = Some(Duration::from_secs(60));
    s.deep_timeout = Duration::from_millis(800);
    // The stall detector is off (1 h) so that only the deep probe can find it.
    let mut d = Driver::new(Monitor::supervisor(
        s,
        vec![target("hung", port)],
        sd.clone(),
        None,
        stop(),
    ));
    d.sweep();
    assert_eq!(
        d.state("hung"),
        ModelState::Healthy,
        "/health alone says 200"
    );
    let t0 = Instant::now();
    let mut reason = String::new();
    while sd.restarts().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "never restarted");
        std::thread::sleep(Duration::from_millis(300));
        let r = d.sweep();
        if let Some(x) = &r.state.models[0].reason {
            reason = x.clone();
        }
    }
    assert_eq!(d.state("hung"), ModelState::Restarting);
    assert!(reason.contains("deep probe"), "{reason}");
    assert_eq!(sd.restarts().len(), 1);
}

#[test]
fn a_hung_engine_is_also_found_by_the_stall_detector() {
    let port = free_port();
    let e = start_engine("hung2", port, &[("STANDIN_HANG_AFTER_SECS", "0")]);
    // A client stuck in a completion: requests running, tokens frozen.
    let url = format!("{}/v1/completions", e.base_url());
    std::thread::spawn(move || {
        let _ = ureq_post(&url);
    });
    let sd = fake_systemd();
    sd.set("hung2", "active", e.pid());
    let mut s = settings();
    s.stall = Duration::from_secs(30);
    let mut d = Driver::new(Monitor::supervisor(
        s,
        vec![target("hung2", port)],
        sd.clone(),
        None,
        stop(),
    ));
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..10 {
        d.sweep();
        if !sd.restarts().is_empty() {
            break;
        }
    }
    assert_eq!(sd.restarts().len(), 1);
    let rec = d.m.record("hung2").unwrap();
    assert_eq!(rec.state, ModelState::Restarting);
    assert!(
        rec.reason
            .as_deref()
            .unwrap()
            .contains("hung: 1 requests running"),
        "{rec:?}"
    );
}

/// A completion that may never answer (plain TCP: the dev-dependencies have no HTTP client).
fn ureq_post(url: &str) -> std::io::Result<()> {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host)?;
    let body = r#"{"model":"hung2","prompt":"a b c","max_tokens":1000}"#;
    write!(
        s,
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut sink = vec![];
    std::io::Read::read_to_end(&mut s, &mut sink)?;
    Ok(())
}

#[test]
fn a_busy_engine_is_not_restarted() {
    let port = free_port();
    let e = start_engine("busy", port, &[("STANDIN_TOKEN_DELAY_MS", "1500")]);
    // Ten long generations, started 150 ms apart: a token every ~150 ms overall, while a
    // one-token deep probe takes 1.5 s and so times out (timeout 1 s).
    let mut load = vec![];
    for i in 0..10 {
        let url = format!("{}/v1/completions", e.base_url());
        load.push(std::thread::spawn(move || {
            let body = format!(r#"{{"model":"busy","prompt":"w{i}","max_tokens":1000}}"#);
            let rest = url.strip_prefix("http://").unwrap();
            let (host, path) = rest.split_once('/').unwrap();
            if let Ok(mut s) = std::net::TcpStream::connect(host) {
                let _ = write!(
                    s,
                    "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let mut sink = vec![];
                let _ = std::io::Read::read_to_end(&mut s, &mut sink);
            }
        }));
        std::thread::sleep(Duration::from_millis(150));
    }
    let sd = fake_systemd();
    sd.set("busy", "active", e.pid());
    let mut s = settings();
    s.deep_interval = Some(Duration::from_secs(10));
    s.deep_timeout = Duration::from_secs(1);
    s.stall = Duration::from_secs(20);
    let mut d = Driver::new(Monitor::supervisor(
        s,
        vec![target("busy", port)],
        sd.clone(),
        None,
        stop(),
    ));
    let mut busy_notes = 0;
    for _ in 0..12 {
        d.sweep();
        let rec = d.m.record("busy").unwrap();
        assert_eq!(rec.state, ModelState::Healthy, "{rec:?}");
        if rec
            .note
            .as_deref()
            .is_some_and(|n| n.contains("deep probe timed out"))
        {
            busy_notes += 1;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(sd.restarts().is_empty());
    assert!(
        busy_notes >= 1,
        "the deep probe never timed out: the test proves nothing"
    );
}

#[test]
fn the_restart_budget_stops_a_loop_and_says_so_once() {
    let port = free_port(); // never serves
    let hook = TinyServer::replying(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
    let sd = fake_systemd();
    sd.set("loop", "active", 1);
    // systemd restarts it each time; it comes back "active" and still broken.
    sd.on_queue(Box::new(|sd: &FakeSystemd, job, unit: &str| {
        if job == citadel_common::systemd::Job::Restart {
            let pid = sd.get(unit).main_pid + 1;
            sd.set("loop", "active", pid);
        }
    }));
    let mut s = settings();
    s.restart_budget = 2;
    s.webhook_url = Some(format!("http://127.0.0.1:{}/hook", hook.port));
    let mut d = Driver::new(Monitor::supervisor(
        s,
        vec![target("loop", port)],
        sd.clone(),
        None,
        stop(),
    ));
    for _ in 0..40 {
        d.sweep();
    }
    assert_eq!(sd.restarts().len(), 2);
    let rec = d.m.record("loop").unwrap();
    assert_eq!(rec.state, ModelState::GaveUp);
    assert!(
        rec.reason
            .as_deref()
            .unwrap()
            .contains("restart budget spent"),
        "{rec:?}"
    );
    // Webhook: one event per restart and one for the spent budget.
    let t0 = Instant::now();
    while hook.requests.lock().unwrap().len() < 3 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let reqs = hook.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(
        reqs.iter()
            .filter(|r| r.contains("\"event\":\"restart\""))
            .count(),
        2
    );
    // Each webhook is sent from its own thread: they may arrive in any order.
    let spent: Vec<&String> = reqs
        .iter()
        .filter(|r| r.contains("\"event\":\"restart_budget_spent\""))
        .collect();
    assert_eq!(spent.len(), 1, "{reqs:?}");
    assert!(spent[0].starts_with("POST /hook "), "{}", spent[0]);
    // An operator restarts it by hand (new PID): the budget starts afresh.
    sd.set("loop", "active", 999);
    for _ in 0..3 {
        d.sweep();
    }
    assert_eq!(sd.restarts().len(), 3);
}

#[test]
fn a_stopped_unit_is_left_alone_and_not_even_probed() {
    let probe = TinyServer::replying(b"HTTP/1.1 503 x\r\nContent-Length: 0\r\n\r\n");
    let sd = fake_systemd();
    sd.set("off", "inactive", 0);
    sd.set("bad", "failed", 0);
    let mut d = Driver::new(Monitor::supervisor(
        settings(),
        vec![target("off", probe.port), target("bad", probe.port)],
        sd.clone(),
        None,
        stop(),
    ));
    for _ in 0..10 {
        d.sweep();
    }
    assert_eq!(d.state("off"), ModelState::Stopped);
    assert_eq!(d.state("bad"), ModelState::Failed);
    assert!(sd.restarts().is_empty());
    assert_eq!(
        probe.connections.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn malformed_huge_and_slow_health_answers_are_handled_within_the_timeout() {
    let garbage = TinyServer::replying(b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
    let huge = TinyServer::start(|s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n");
        let chunk = vec![b'x'; 65536];
        while s.write_all(&chunk).is_ok() {}
    });
    let drip = TinyServer::start(|s| {
        for b in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" {
            std::thread::sleep(Duration::from_millis(300));
            if s.write_all(&[*b]).is_err() {
                return;
            }
        }
    });
    let silent = TinyServer::start(|_s| std::thread::sleep(Duration::from_secs(10)));
    let dropper = TinyServer::start(|s| {
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    let servers = [
        ("garbage", &garbage),
        ("huge", &huge),
        ("drip", &drip),
        ("silent", &silent),
        ("dropper", &dropper),
    ];
    let sd = fake_systemd();
    for (n, _) in &servers {
        sd.set(n, "active", 1);
    }
    let targets = servers.iter().map(|(n, s)| target(n, s.port)).collect();
    let mut d = Driver::new(Monitor::supervisor(
        settings(),
        targets,
        sd.clone(),
        None,
        stop(),
    ));
    let t0 = Instant::now();
    let r = d.sweep();
    assert!(
        t0.elapsed() < Duration::from_millis(1000 + 900),
        "{:?}",
        t0.elapsed()
    );
    for m in &r.state.models {
        // A 200 with a huge body is healthy (the status is what counts; the body is cut).
        let want = if m.name == "huge" {
            ModelState::Healthy
        } else {
            ModelState::Failing
        };
        assert_eq!(m.state, want, "{m:?}");
    }
}

#[test]
fn the_read_only_monitor_never_restarts() {
    let port = free_port();
    let sd = fake_systemd();
    sd.set("x", "active", 1);
    let m = Monitor::observer(
        settings(),
        vec![target("x", port)],
        sd.clone(),
        None,
        stop(),
    );
    assert_eq!(m.authority(), health_monitor::Authority::Observe);
    let mut d = Driver::new(m);
    for _ in 0..10 {
        let r = d.sweep();
        assert!(r.restarted.is_empty());
    }
    assert_eq!(d.state("x"), ModelState::Failing);
    assert_eq!(d.m.record("x").unwrap().consecutive_failures, 10);
    assert!(sd.restarts().is_empty());
}

#[test]
fn state_file_and_textfile_are_written_each_sweep() {
    let port = free_port();
    let e = start_engine("ok", port, &[]);
    let sd = fake_systemd();
    sd.set("ok", "active", e.pid());
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings();
    s.state_file = Some(dir.path().join("health.json"));
    s.textfile = Some(dir.path().join("citadel.prom"));
    let mut off = target("off", 1);
    off.enabled = false;
    let mut d = Driver::new(Monitor::supervisor(
        s,
        vec![target("ok", port), off],
        sd.clone(),
        None,
        stop(),
    ));
    d.sweep();
    let st = citadel_common::health::HealthState::read(&dir.path().join("health.json"))
        .unwrap()
        .unwrap();
    assert_eq!(st.model("ok").unwrap().state, ModelState::Healthy);
    assert_eq!(st.model("ok").unwrap().main_pid, e.pid());
    assert_eq!(st.model("off").unwrap().state, ModelState::Disabled);
    let prom = std::fs::read_to_string(dir.path().join("citadel.prom")).unwrap();
    assert!(
        prom.contains("citadel_model_up{model=\"ok\"} 1\n"),
        "{prom}"
    );
    assert!(
        prom.contains("citadel_model_probe_latency_seconds{model=\"ok\"} "),
        "{prom}"
    );
}

#[test]
fn one_read_only_sweep_waits_for_the_deep_probe_and_finds_a_hang() {
    let port = free_port();
    let e = start_engine("h", port, &[("STANDIN_HANG_AFTER_SECS", "0")]);
    let ok_port = free_port();
    let ok = start_engine("ok", ok_port, &[]);
    let sd = fake_systemd();
    sd.set("h", "active", e.pid());
    sd.set("ok", "active", ok.pid());
    let mut s = settings();
    s.deep_interval = Some(Duration::from_secs(60));
    s.deep_timeout = Duration::from_millis(800);
    let mut m = Monitor::observer(
        s,
        vec![target("h", port), target("ok", ok_port)],
        sd.clone(),
        None,
        stop(),
    );
    let t0 = Instant::now();
    let r = m.sweep(Instant::now()).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    let h = r.state.model("h").unwrap();
    assert_eq!(h.state, ModelState::Failing, "{h:?}");
    assert!(h.reason.as_deref().unwrap().contains("deep probe"), "{h:?}");
    assert_eq!(r.state.model("ok").unwrap().state, ModelState::Healthy);
    assert!(!health_monitor::output::all_healthy(&r.state));
    assert!(sd.restarts().is_empty());
}
