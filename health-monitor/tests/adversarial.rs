//! Adversarial suite for health-monitor (issue #14): a misbehaving engine whose `/metrics`
//! hangs or answers garbage while `/health` is fine must not be reported as a hung `/health`
//! nor restarted; `/health` alone (and the deep probe) decide liveness.

mod support;

use citadel_common::health::ModelState;
use health_monitor::Monitor;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// A server routing by request path: `/health` gets `health`, `/metrics` gets `metrics`
/// after `metrics_delay`.
fn engine(health: &'static [u8], metrics: &'static [u8], metrics_delay: Duration) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                if head.starts_with("GET /metrics") {
                    std::thread::sleep(metrics_delay);
                    let _ = s.write_all(metrics);
                } else {
                    let _ = s.write_all(health);
                }
            });
        }
    });
    port
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const FAIL: &[u8] =
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const GARBAGE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 21\r\nConnection: close\r\n\r\nvllm:\x1b[2J garbage {{{";

fn sweeps(targets: Vec<health_monitor::Target>, n: usize) -> (Monitor, Arc<FakeSystemd>) {
    let sd = fake_systemd();
    for t in &targets {
        sd.set(&t.name, "active", 1);
    }
    let mut s = settings();
    s.failure_threshold = 1;
    let mut m = Monitor::supervisor(
        s,
        targets,
        sd.clone(),
        None,
        Arc::new(AtomicBool::new(false)),
    );
    let mut now = Instant::now();
    for _ in 0..n {
        now += Duration::from_secs(10);
        m.sweep(now).expect("not stopped");
    }
    (m, sd)
}

#[test]
fn adversarial_a_hung_metrics_endpoint_is_not_a_hung_health() {
    let hung_metrics = engine(OK, OK, Duration::from_secs(30));
    let garbage_metrics = engine(OK, GARBAGE, Duration::ZERO);
    let sick = engine(FAIL, OK, Duration::from_secs(30));
    let t0 = Instant::now();
    let (m, sd) = sweeps(
        vec![
            target("hungmetrics", hung_metrics),
            target("garbage", garbage_metrics),
            target("sick", sick),
        ],
        3,
    );
    // Three sweeps, each bounded by one probe timeout (1 s) plus slack, hung /metrics or not.
    assert!(
        t0.elapsed() < Duration::from_secs(3 * 2),
        "{:?}",
        t0.elapsed()
    );
    for name in ["hungmetrics", "garbage"] {
        let r = m.record(name).unwrap();
        assert_eq!(r.state, ModelState::Healthy, "{name}: {r:?}");
    }
    assert!(
        !sd.restarts()
            .iter()
            .any(|u| u.contains("hungmetrics") || u.contains("garbage")),
        "{:?}",
        sd.restarts()
    );
    // /health decides: a 500 there is a failure whatever /metrics does.
    let r = m.record("sick").unwrap();
    assert_ne!(r.state, ModelState::Healthy, "{r:?}");
    assert!(
        sd.restarts().iter().any(|u| u.contains("sick")),
        "{:?}",
        sd.restarts()
    );
}

/// `--json` prints exactly one JSON document, errors included (a bad config, a usage error).
#[test]
fn adversarial_json_errors_are_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[monitor]\ninterval_secs = 4294967295\n").unwrap();
    for (args, exit) in [
        (vec!["--once", "--json"], 78),
        (vec!["--once", "--json", "--no-such-flag"], 2),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_health-monitor"))
            .args(&args)
            .arg("--config")
            .arg(&bad)
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(exit),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not one JSON document ({e}): {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert_eq!(v["error"]["exit"], exit, "{v}");
    }
}
