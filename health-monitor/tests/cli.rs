//! Black-box tests of the built binary: `--once`, the service loop's sd_notify and files,
//! SIGTERM.

mod support;

use citadel_common::systemd::{Client, Systemd};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn config(dir: &Path, port: u16, monitor_extra: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[engine]
command = ["/usr/bin/false"]
[monitor]
interval_secs = 10
probe_timeout_secs = 1
deep_probe_interval_secs = 0
state_file = "{state}"
{monitor_extra}
[models.m1]
path = "/srv/m1"
port = {port}
gpus = [0]
"#,
        state = dir.join("health.json").display()
    );
    let p = dir.join("citadel.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Whether this machine has a working systemd (then real unit states apply: a test model's
/// unit is not installed, so it cannot be healthy).
fn real_systemd() -> bool {
    Client::default()
        .units(&["citadel-model@m1.service".to_string()])
        .is_ok()
}

#[test]
fn once_json_reports_a_healthy_model_and_exits_0() {
    let port = free_port();
    let _e = start_engine("m1", port, &[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), port, "");
    let out = Command::new(HEALTH_MONITOR)
        .args(["--once", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let st: citadel_common::health::HealthState =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let m = st.model("m1").unwrap();
    if !real_systemd() {
        assert_eq!(
            m.state,
            citadel_common::health::ModelState::Healthy,
            "{m:?}"
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // --once writes no state file.
    assert!(!dir.path().join("health.json").exists());
}

#[test]
fn once_table_reports_a_dead_model_and_exits_1() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), port, "");
    let t0 = Instant::now();
    let out = Command::new(HEALTH_MONITOR)
        .args(["--once", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("MODEL"), "{stdout}");
    assert!(stdout.contains("m1"), "{stdout}");
    assert!(stdout.contains("0/1 healthy"), "{stdout}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn json_needs_once_and_a_bad_config_is_78() {
    let out = Command::new(HEALTH_MONITOR).arg("--json").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), free_port(), "failure_threshold = \"three\"");
    let out = Command::new(HEALTH_MONITOR)
        .args(["--once", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("monitor.failure_threshold"), "{err}");
}

fn recv_until(sock: &UnixDatagram, want: &str, limit: Duration) -> Vec<String> {
    let mut got = vec![];
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while t0.elapsed() < limit {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.contains(want);
            got.push(msg);
            if done {
                break;
            }
        }
    }
    got
}

#[test]
fn the_service_notifies_writes_its_files_and_stops_on_sigterm() {
    let port = free_port();
    let _e = start_engine("m1", port, &[]);
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("citadel.prom");
    let cfg = config(
        dir.path(),
        port,
        &format!("textfile = \"{}\"", prom.display()),
    );
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let fixture = workspace().join("common/data/h200-nvml-readings.json");
    let mut child = Command::new(HEALTH_MONITOR)
        .args(["--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("CITADEL_FAKE_GPU", &fixture)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let msgs = recv_until(&sock, "READY=1", Duration::from_secs(10));
    let ready = msgs.iter().find(|m| m.contains("READY=1"));
    assert!(ready.is_some(), "{msgs:?}");
    if !real_systemd() {
        assert!(ready.unwrap().contains("STATUS=1/1 healthy"), "{msgs:?}");
    }
    let msgs = recv_until(&sock, "WATCHDOG=1", Duration::from_secs(2));
    assert!(msgs.iter().any(|m| m == "WATCHDOG=1"), "{msgs:?}");
    let st = citadel_common::health::HealthState::read(&dir.path().join("health.json"))
        .unwrap()
        .expect("state file written");
    assert_eq!(st.models.len(), 1);
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("citadel_model_up{model=\"m1\"}"), "{text}");
    if fixture.exists() {
        assert!(
            text.contains("citadel_gpu_temperature_celsius{gpu=\"0\"}"),
            "{text}"
        );
        assert!(
            text.contains("citadel_gpu_memory_used_bytes{gpu=\"0\"}"),
            "{text}"
        );
        assert!(!st.gpus.is_empty());
    }
    let t0 = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    // Transitions only: the healthy model is logged once, not once per sweep.
    assert_eq!(err.matches("m1: healthy").count(), 1, "{err}");
}

#[test]
fn sigterm_abandons_a_sweep_stuck_on_a_hung_server() {
    // On a port the config accepts (outside the ephemeral range).
    let hung = TinyServer::start_on(free_port(), |_s| {
        std::thread::sleep(Duration::from_secs(30))
    });
    let dir = tempfile::tempdir().unwrap();
    // probe_timeout 5 s: a finished sweep would take 5 s.
    let cfg = config(dir.path(), hung.port, "")
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("probe_timeout_secs = 1", "probe_timeout_secs = 5");
    std::fs::write(&cfg, text).unwrap();
    let mut child = Command::new(HEALTH_MONITOR)
        .args(["--config", &cfg])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while hung.connections.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "never probed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t1 = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(t1.elapsed() < Duration::from_secs(2), "{:?}", t1.elapsed());
    assert!(
        !dir.path().join("health.json").exists(),
        "an abandoned sweep writes nothing"
    );
}
