//! Signals: SIGTERM / SIGINT raise one process-wide flag; a relay thread copies it into the
//! monitor's own stop flag, which every wait checks.

use citadel_common::{notify, Failure};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Raised by SIGTERM / SIGINT.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub(crate) fn install_signal_handlers() -> Result<(), Failure> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &act) }
            .map_err(|e| Failure::other(format!("cannot install a {sig} handler: {e}")))?;
    }
    Ok(())
}

/// Sleep until `until` (or a reload is asked for), in small steps, petting the watchdog;
/// false when stopped.
pub(crate) fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
    let pet = notify::watchdog_interval().map(|w| w / 2);
    let mut last_pet = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= until || crate::reload::pending() {
            return true;
        }
        if pet.is_some_and(|p| now.duration_since(last_pet) >= p) {
            notify::watchdog();
            last_pet = now;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

/// Copy the process-wide signal flag into the monitor's stop flag (a small thread).
pub(crate) fn spawn_stop_relay(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || loop {
        if STOP.load(Ordering::SeqCst) {
            stop.store(true, Ordering::SeqCst);
            return;
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    })
}
