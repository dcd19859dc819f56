//! Shared helpers of health-monitor's integration tests: the stand-in engine (run directly, no
//! systemd), the one fake systemd (common's) with model-named states, tiny misbehaving HTTP servers, settings.
//!
//! The stand-in binary is found by `citadel_standin::testing::binary`.
#![allow(dead_code)]

pub use citadel_common::systemd::fake::FakeSystemd;
use citadel_common::systemd::{ActiveState, Job};
use health_monitor::{Settings, Target};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const HEALTH_MONITOR: &str = env!("CARGO_BIN_EXE_health-monitor");

#[allow(unused_imports)]
pub use citadel_standin::testing::{free_port, workspace, Engine};

/// The stand-in engine binary (see `citadel_standin::testing::binary` for how it is found).
pub fn standin() -> PathBuf {
    citadel_standin::testing::binary(Path::new(HEALTH_MONITOR))
}

/// A stand-in engine on `port` with `knobs` (see `citadel_standin::testing::Engine`).
pub fn start_engine(name: &str, port: u16, knobs: &[(&str, &str)]) -> Engine {
    Engine::start(&standin(), name, port, knobs, &[])
}

/// A target for an engine on `port`.
pub fn target(name: &str, port: u16) -> Target {
    Target {
        name: name.into(),
        unit: citadel_common::paths::model_unit(name),
        port,
        base_url: format!("http://127.0.0.1:{port}"),
        served_model_name: name.into(),
        enabled: true,
        gpus: vec![0],
    }
}

/// Test settings: second-scale probe timeouts, nothing written.
pub fn settings() -> Settings {
    Settings {
        interval: Duration::from_secs(1),
        probe_timeout: Duration::from_secs(1),
        failure_threshold: 3,
        deep_interval: None,
        deep_timeout: Duration::from_secs(1),
        stall: Duration::from_secs(3600),
        restart_budget: 3,
        restart_window: Duration::from_secs(3600),
        restart_follow: Duration::from_secs(60),
        state_file: None,
        textfile: None,
        webhook_url: None,
        webhook_timeout: Duration::from_secs(1),
        webhook_format: citadel_common::alert::Format::Json,
        state_dir: None,
    }
}

/// The one fake systemd (common's, feature `testing`) as these tests use it: a stop job makes
/// the unit inactive, as systemd would.
pub fn fake_systemd() -> Arc<FakeSystemd> {
    let sd = FakeSystemd::shared();
    sd.on_queue(Box::new(stop_makes_inactive));
    sd
}

/// The queue hook of [`fake_systemd`]: a stopped unit is inactive with no main process.
pub fn stop_makes_inactive(sd: &FakeSystemd, job: Job, unit: &str) {
    if job == Job::Stop {
        sd.set_state(unit, ActiveState::Inactive, 0);
    }
}

/// Model-named states on the fake.
pub trait ModelUnits {
    /// The model's unit in `active_state` with main PID `pid` (its restart count kept).
    fn set(&self, model: &str, active_state: &str, pid: u32);
}

impl ModelUnits for FakeSystemd {
    fn set(&self, model: &str, active_state: &str, pid: u32) {
        let unit = citadel_common::paths::model_unit(model);
        self.set_state(&unit, active_state.into(), pid);
    }
}

/// A tiny HTTP server: for each connection, read the request head, then run `answer` on the
/// stream. Counts connections.
pub struct TinyServer {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl TinyServer {
    pub fn start<F>(answer: F) -> TinyServer
    where
        F: Fn(&mut std::net::TcpStream) + Send + Sync + 'static,
    {
        Self::start_on(0, answer)
    }

    /// [`TinyServer::start`] on a given port (0: any).
    pub fn start_on<F>(port: u16, answer: F) -> TinyServer
    where
        F: Fn(&mut std::net::TcpStream) + Send + Sync + 'static,
    {
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = l.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(vec![]));
        let answer = Arc::new(answer);
        let (c, r) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (answer, r) = (answer.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = vec![0u8; 65536];
                    let mut got = 0;
                    while got < buf.len() {
                        match s.read(&mut buf[got..]) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got += n,
                        }
                        let text = String::from_utf8_lossy(&buf[..got]);
                        if let Some(head_end) = text.find("\r\n\r\n") {
                            let len = text[..head_end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .and_then(|v| v.trim().parse::<usize>().ok())
                                })
                                .unwrap_or(0);
                            if got >= head_end + 4 + len {
                                break;
                            }
                        }
                    }
                    r.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..got]).into_owned());
                    answer(&mut s);
                });
            }
        });
        TinyServer {
            port,
            connections,
            requests,
        }
    }

    /// A server that writes `reply` and closes.
    pub fn replying(reply: &'static [u8]) -> TinyServer {
        Self::start(move |s| {
            let _ = s.write_all(reply);
        })
    }
}
