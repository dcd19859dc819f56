//! Everything a run starts is registered here, so that it is cleaned up even when the run does
//! not get to its `Drop` guards: a panic (the release profile aborts on panic, so no unwinding
//! and no `Drop`), or SIGINT/SIGTERM/SIGHUP. The guards unregister on a normal drop.

use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;
use std::sync::atomic::{AtomicI32, Ordering};
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

/// SIGKILL the process group `pid` leads (every process the bench starts leads one).
pub fn kill_group(pid: i32) {
    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
}

/// Kill every registered process with its group (SIGKILL) and tear down every registered box.
pub fn all() {
    let (pids, boxes) = {
        let mut r = reg();
        (std::mem::take(&mut r.pids), std::mem::take(&mut r.boxes))
    };
    for p in pids {
        kill_group(p);
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

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: std::ffi::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// A panic hook, and handlers for SIGINT/SIGTERM/SIGHUP that only raise a flag, which a
/// watcher thread turns into [`all`] and exit 130. (Handlers, not a blocked mask and `sigwait`:
/// `std::process` children inherit the signal mask, and a monitor that has SIGTERM blocked
/// never stops.) Call first thing in `main`.
pub fn install() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        prev(info);
        all();
    }));
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(s, &action) } {
            eprintln!("citadel-bench: cannot handle {s:?}: {e}");
        }
    }
    std::thread::spawn(|| loop {
        let sig = SIGNALLED.load(Ordering::SeqCst);
        if sig != 0 {
            eprintln!("citadel-bench: signal {sig}: cleaning up");
            all();
            std::process::exit(130);
        }
        std::thread::sleep(Duration::from_millis(100));
    });
}
