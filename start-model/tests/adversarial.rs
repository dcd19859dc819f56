//! Adversarial suite for start-model (issue #14): a misbehaving engine. A grandchild that calls
//! `setsid` leaves the process group; it must still be killed and reaped on stop and must not
//! keep the port. An endless stderr line must not grow start-model's memory.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{sigterm, standin, wait_exit, Setup, TestBox};

const LONG: Duration = Duration::from_secs(30);

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name)
        .display()
        .to_string()
}

fn alive(pid: i32) -> bool {
    // Gone or a zombie nobody reaps counts as dead only when gone: a zombie is still a pid.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok()
}

/// Kills the escaped process if the test fails, so nothing leaks.
struct Reap(i32);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn read_pid(file: &PathBuf) -> i32 {
    let t0 = Instant::now();
    loop {
        if let Some(p) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return p;
        }
        assert!(t0.elapsed() < LONG, "no pid in {}", file.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn adversarial_a_setsid_grandchild_is_killed_reaped_and_frees_the_port() {
    let pid_dir = tempfile::tempdir().unwrap();
    let pid_file = pid_dir.path().join("escaped.pid");
    let b = TestBox::new(Setup {
        engine_command: vec![
            "/bin/sh".into(),
            script("setsid-engine.sh"),
            standin().display().to_string(),
            "serve".into(),
        ],
        engine_extra: "stop_grace_secs = 2\nport_wait_secs = 1\n".into(),
        ..Setup::default().env("ESCAPED_PID_FILE", &pid_file.display().to_string())
    });
    let mut sm = b.spawn(&[]);
    assert!(
        b.notify.wait_for("READY=1", LONG).is_some(),
        "no READY; stderr:\n{}",
        b.stderr()
    );
    let escaped = read_pid(&pid_file);
    let _reap = Reap(escaped);
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(escaped))).unwrap();
    assert_eq!(
        sid.as_raw(),
        escaped,
        "the server did not leave the session"
    );
    sigterm(sm.id());
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(0)), "{}", b.stderr());
    assert!(
        !alive(escaped),
        "the setsid'ed grandchild {escaped} survived the stop"
    );
    std::net::TcpListener::bind(("127.0.0.1", b.port))
        .unwrap_or_else(|e| panic!("port {} still held after the stop: {e}", b.port));
}

#[test]
fn adversarial_an_endless_stderr_line_is_capped_keeping_its_tail() {
    let b = TestBox::new(Setup {
        engine_command: vec!["/bin/sh".into(), script("long-stderr-line.sh")],
        ..Setup::default()
    });
    let mut sm = b.spawn(&[]);
    let pid = sm.id();
    let mut peak_kib = 0u64;
    let t0 = Instant::now();
    let code = loop {
        if let Some(st) = sm.try_wait().unwrap() {
            break st.code();
        }
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "start-model hung");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, Some(1), "{}", b.stderr().len());
    // 64 MiB went through the pipe; start-model kept a bounded line.
    assert!(peak_kib < 32 * 1024, "start-model grew to {peak_kib} KiB");
    let err = b.stderr();
    assert!(err.len() < 1 << 20, "{} bytes of stderr", err.len());
    assert!(
        err.contains("bytes cut]"),
        "{}",
        &err[err.len().saturating_sub(2000)..]
    );
    assert!(err.contains("THE-END\\u{1b}[2J"), "tail kept, escaped");
    assert!(!err.contains('\u{1b}'), "a raw escape reached stderr");
}
