//! Everything a run starts is registered here, so that it is cleaned up even when the run does
//! not get to its `Drop` guards: a panic (the release profile aborts on panic, so no unwinding
//! and no `Drop`), or SIGINT/SIGTERM/SIGHUP. The guards unregister on a normal drop.

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
struct Registry {
    pids: Vec<i32>,
    boxes: Vec<String>,
}

static REG: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    boxes: Vec::new(),
});

fn reg() -> std::sync::MutexGuard<'static, Registry> {
    REG.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn add_pid(pid: i32) {
    reg().pids.push(pid);
}

pub fn remove_pid(pid: i32) {
    reg().pids.retain(|&p| p != pid);
}

pub fn add_box(name: &str) {
    reg().boxes.push(name.to_string());
}

pub fn remove_box(name: &str) {
    reg().boxes.retain(|b| b != name);
}

/// Kill every registered process (SIGKILL) and tear down every registered box.
pub fn all() {
    let (pids, boxes) = {
        let mut r = reg();
        (std::mem::take(&mut r.pids), std::mem::take(&mut r.boxes))
    };
    for p in pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(p), None);
    }
    for b in boxes {
        eprintln!("citadel-bench: tearing down box {b}");
        citadel_system_tests::sdbox::teardown(
            &citadel_system_tests::sdbox::cache_dir(),
            &b,
            Duration::from_secs(30),
        );
    }
}

/// A panic hook and a signal thread that run [`all`]. Call first thing in `main`, before any
/// other thread exists (the signals are blocked in every thread and taken by the watcher;
/// children get a clean signal mask from `std::process`).
pub fn install() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        prev(info);
        all();
    }));
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_ok() {
        std::thread::spawn(move || {
            if let Ok(sig) = set.wait() {
                eprintln!("citadel-bench: {sig:?}: cleaning up");
                all();
                std::process::exit(130);
            }
        });
    }
}
