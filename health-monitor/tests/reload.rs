//! SIGHUP reload, end to end with the built binary: `health-monitor --reload PID` returns once
//! the running monitor uses the new config (same PID), and a broken edit is refused (78) while
//! the monitor keeps running on the old config.

use citadel_common::config::Paths;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn config(root: &Path, interval: u64, extra: &str) -> String {
    format!(
        "{}\n[gpu]\nrequired = false\n[monitor]\ninterval_secs = {interval}\nprobe_timeout_secs = 1\ndeep_probe_interval_secs = 0\n{extra}\n[models.a]\npath = \"a\"\nport = 11491\ngpus = [0]\n",
        Paths::under(root).to_toml()
    )
}

struct Monitor(Child);
impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ack(root: &Path) -> Option<serde_json::Value> {
    let f = Paths::under(root).runtime_dir.join("monitor-config.json");
    serde_json::from_str(&std::fs::read_to_string(f).ok()?).ok()
}

fn reload(file: &Path, pid: u32) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_health-monitor"))
        .arg("--config")
        .arg(file)
        .args(["--reload", &pid.to_string()])
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap()
}

#[test]
fn sighup_reloads_in_place_and_a_broken_config_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    std::fs::create_dir_all(Paths::under(root).runtime_dir).unwrap();
    let file = root.join("citadel.toml");
    std::fs::write(&file, config(root, 30, "")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_health-monitor"))
        .arg("--config")
        .arg(&file)
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _m = Monitor(child);
    let t0 = Instant::now();
    while ack(root).is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no acknowledgement file at start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ack(root).unwrap()["interval_secs"], 30);

    std::fs::write(&file, config(root, 45, "failure_threshold = 4")).unwrap();
    let o = reload(&file, pid);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let a = ack(root).unwrap();
    assert_eq!(a["interval_secs"], 45, "{a}");
    assert_eq!(a["pid"], pid, "same process: reloaded, not restarted");
    assert!(a["error"].is_null(), "{a}");

    std::fs::write(&file, config(root, 45, "bogus = 1")).unwrap();
    let o = reload(&file, pid);
    // The helper validates first: a broken file is 78 before the monitor is even signalled.
    assert_eq!(
        o.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("monitor.bogus"));
    assert_eq!(
        ack(root).unwrap()["interval_secs"],
        45,
        "old config still in use"
    );
    // A bare SIGHUP with the broken file: the monitor itself refuses it and says why.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let t0 = Instant::now();
    while ack(root).unwrap()["error"].is_null() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no refusal acknowledged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = ack(root).unwrap();
    assert!(
        a["error"].as_str().unwrap().contains("monitor.bogus"),
        "{a}"
    );
    assert_eq!(a["interval_secs"], 45, "old config still in use: {a}");
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok(),
        "the monitor still runs"
    );
}
