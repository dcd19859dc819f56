//! Signals of the blocking helpers (start-model, health-monitor; the gateway is tokio and
//! keeps tokio's): one handler, process-wide flags, read by the loops.
//!
//! - SIGTERM / SIGINT: stop. [`stop_signal`] says which one (the latest).
//! - SIGHUP: reload the config (health-monitor's `ExecReload=`): [`reload_pending`],
//!   [`take_reload`].
//! - [`NO_DRAIN_SIGNAL`] (SIGUSR1): the monitor sends it to start-model right before it
//!   restarts a broken model; start-model's next stop skips the drain ([`drain_skipped`]).
//!
//! The handler only stores into atomics (async-signal-safe). Handlers revert to the default
//! in a child at exec, so an engine start-model spawns gets normal signals.

use crate::Failure;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The signal the monitor sends to start-model (`systemctl kill --kill-whom=main`) right
/// before it restarts a broken model: the stop that follows kills the engine at once instead
/// of draining requests that will never finish.
pub const NO_DRAIN_SIGNAL: Signal = Signal::SIGUSR1;

/// The signals that stop a helper.
pub const STOP_SIGNALS: [Signal; 2] = [Signal::SIGTERM, Signal::SIGINT];

/// The latest stop signal received, 0 = none.
static STOP: AtomicI32 = AtomicI32::new(0);
/// Raised by SIGHUP, lowered by [`take_reload`].
static RELOAD: AtomicBool = AtomicBool::new(false);
/// Raised by [`NO_DRAIN_SIGNAL`].
static NO_DRAIN: AtomicBool = AtomicBool::new(false);

const HUP: nix::libc::c_int = Signal::SIGHUP as nix::libc::c_int;
const NO_DRAIN_NUMBER: nix::libc::c_int = NO_DRAIN_SIGNAL as nix::libc::c_int;

/// Only ever installed for the signals of a [`Meaning`]: anything else is a stop signal.
extern "C" fn on_signal(sig: nix::libc::c_int) {
    match sig {
        HUP => RELOAD.store(true, Ordering::SeqCst),
        NO_DRAIN_NUMBER => NO_DRAIN.store(true, Ordering::SeqCst),
        s => STOP.store(s, Ordering::SeqCst),
    }
}

/// What a caught signal means to a helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// SIGTERM, SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
    /// [`NO_DRAIN_SIGNAL`].
    NoDrain,
}

impl Meaning {
    fn signals(self) -> &'static [Signal] {
        match self {
            Meaning::Stop => &STOP_SIGNALS,
            Meaning::Reload => &[Signal::SIGHUP],
            Meaning::NoDrain => &[NO_DRAIN_SIGNAL],
        }
    }
}

/// Catch the signals of each meaning in `what` (they only raise the flags this module reads).
pub fn install(what: &[Meaning]) -> Result<(), Failure> {
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in what.iter().flat_map(|m| m.signals()) {
        // SAFETY: the handler only stores into atomics, which is async-signal-safe.
        unsafe { sigaction(*sig, &act) }
            .map_err(|e| Failure::other(format!("cannot install a {sig} handler: {e}")))?;
    }
    Ok(())
}

/// The stop signal received so far (the latest), if any.
pub fn stop_signal() -> Option<Signal> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        s => Signal::try_from(s).ok(),
    }
}

/// A stop signal has been received.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst) != 0
}

/// A reload (SIGHUP) was asked for and not yet taken.
pub fn reload_pending() -> bool {
    RELOAD.load(Ordering::SeqCst)
}

/// Take the pending reload request, if any.
pub fn take_reload() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}

/// Whether [`NO_DRAIN_SIGNAL`] has been received.
pub fn drain_skipped() -> bool {
    NO_DRAIN.load(Ordering::SeqCst)
}

/// Copy the process-wide stop into `stop` (a small thread that polls every 20 ms), for code
/// that takes its own stop flag (the monitor's, which tests raise by hand). Ends when either
/// is raised.
pub fn spawn_stop_relay(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || loop {
        if stop_requested() {
            stop.store(true, Ordering::SeqCst);
            return;
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_no_drain_signal_is_sigusr1() {
        assert_eq!(NO_DRAIN_SIGNAL.as_str(), "SIGUSR1");
    }

    #[test]
    fn caught_signals_raise_their_flags() {
        install(&[Meaning::Stop, Meaning::Reload, Meaning::NoDrain]).unwrap();
        assert!(!take_reload());
        nix::sys::signal::raise(Signal::SIGHUP).unwrap();
        assert!(reload_pending());
        assert!(take_reload() && !reload_pending());
        nix::sys::signal::raise(NO_DRAIN_SIGNAL).unwrap();
        assert!(drain_skipped());
        let relayed = Arc::new(AtomicBool::new(false));
        let relay = spawn_stop_relay(relayed.clone());
        nix::sys::signal::raise(Signal::SIGINT).unwrap();
        assert_eq!(stop_signal(), Some(Signal::SIGINT));
        nix::sys::signal::raise(Signal::SIGTERM).unwrap();
        assert_eq!(stop_signal(), Some(Signal::SIGTERM));
        relay.join().unwrap();
        assert!(relayed.load(Ordering::SeqCst));
    }
}
