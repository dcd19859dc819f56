//! Signals: SIGTERM / SIGINT (stop) and SIGHUP (reload) raise common's process-wide flags
//! ([`citadel_common::signals`]); a relay thread copies the stop into the monitor's own stop
//! flag, which every wait checks, and [`sleep_until`] wakes for a reload.

use citadel_common::{notify, signals};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
        if now >= until || signals::reload_pending() {
            return true;
        }
        if pet.is_some_and(|p| now.duration_since(last_pet) >= p) {
            notify::watchdog();
            last_pet = now;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}
