//! The one systemd client: what every helper asks of systemd, behind one trait ([`Systemd`]).
//!
//! - Unit states and jobs go over D-Bus ([`bus::Bus`], zbus, blocking): one connection,
//!   reused, and no process started per question (the monitor asks every sweep), on the
//!   system bus (dbus must run; without it, one error naming the address).
//! - `enable`/`disable` and the journal keep `systemctl` and `journalctl`
//!   ([`crate::systemctl`]): an operator expects their exact output.
//! - [`fake::FakeSystemd`] (feature `testing`, or this crate's own tests) is the one fake.

pub mod bus;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod state;

pub use nix::sys::signal::Signal;
pub use state::ActiveState;

use crate::systemctl::Systemctl;
use crate::{paths, Failure};
use std::process::Command;

/// The state of one unit, as the helpers need it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnitStatus {
    pub unit: String,
    /// loaded, not-found, masked ...
    pub load_state: String,
    pub active_state: ActiveState,
    pub sub_state: String,
    /// 0 when there is no main process.
    pub main_pid: u32,
    /// How many times systemd restarted it automatically.
    pub n_restarts: u32,
    /// success, exit-code, signal, watchdog, start-limit-hit ...
    pub result: String,
    /// Exit status of the last main process.
    pub exec_main_status: i32,
    /// CLOCK_MONOTONIC µs when it last entered `active` (0 if never).
    pub active_enter_monotonic_usec: u64,
    /// `STATUS=` text sent by the service.
    pub status_text: String,
    /// enabled, disabled, static ...
    pub unit_file_state: String,
    /// A job (start, stop, restart) is queued or running for the unit.
    #[serde(default)]
    pub job_pending: bool,
    /// The unit's cgroup (`/system.slice/...`), empty when it has none.
    #[serde(default)]
    pub control_group: String,
}

impl UnitStatus {
    /// systemd knows no such unit (no unit file).
    pub fn not_found(&self) -> bool {
        self.load_state == "not-found"
    }
}

/// A job to queue for a unit (what `systemctl VERB --no-block` queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Start,
    Stop,
    Restart,
    Reload,
}

impl Job {
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Start => "start",
            Job::Stop => "stop",
            Job::Restart => "restart",
            Job::Reload => "reload",
        }
    }
}

/// What the helpers ask of systemd. The real one is [`Client`]; tests use
/// [`fake::FakeSystemd`].
pub trait Systemd: Send + Sync {
    /// The state of each unit, in order.
    fn units(&self, names: &[String]) -> Result<Vec<UnitStatus>, Failure>;
    /// What the monitor reads every sweep, cheaply: load, active and sub state and the pending
    /// job of every unit, and of a service its `MainPID` and `NRestarts` (also `Result` and
    /// `ExecMainStatus` when it failed); the other fields are left empty. Defaults to
    /// [`Systemd::units`].
    fn sweep(&self, names: &[String]) -> Result<Vec<UnitStatus>, Failure> {
        self.units(names)
    }
    /// Queue `job` for each unit and return once systemd has queued it (mode `replace`).
    fn queue(&self, job: Job, names: &[String]) -> Result<(), Failure>;
    /// Send `signal` to the unit's main process only (`systemctl kill --kill-whom=main`).
    fn signal_main(&self, unit: &str, signal: Signal) -> Result<(), Failure>;
    /// `systemctl enable|disable UNITS...`; returns what systemctl printed.
    fn set_enabled(&self, enable: bool, names: &[String]) -> Result<String, Failure>;
    /// The last `lines` journal lines of a unit (`journalctl -u UNIT -n N -o cat`).
    fn journal_tail(&self, unit: &str, lines: u32) -> Result<String, Failure>;

    /// The monitor's restart of a broken model: [`crate::signals::NO_DRAIN_SIGNAL`] to its main
    /// process first (start-model's next stop kills the engine at once instead of draining
    /// requests that will never finish; best effort, a refusal is logged), then a restart job.
    fn restart_no_drain(&self, unit: &str) -> Result<(), Failure> {
        if let Err(e) = self.signal_main(unit, no_drain_signal()) {
            log::warn!("{unit}: could not ask for a stop without drain: {e}");
        }
        self.queue(Job::Restart, &[unit.to_string()])
    }
}

/// A type that is a [`Systemd`] by holding one, and adds methods of its own beside it
/// (citadel-service's hosts: the real client or the fake, plus its waits and helpers). Every
/// [`Systemd`] method, the defaulted ones included, goes to [`Through::systemd`]: one
/// forwarding, not one per holder. A type that changes what a method does (a read-only
/// view) implements [`Systemd`] itself instead.
pub trait Through: Send + Sync {
    fn systemd(&self) -> &dyn Systemd;
}

impl<T: Through> Systemd for T {
    fn units(&self, names: &[String]) -> Result<Vec<UnitStatus>, Failure> {
        self.systemd().units(names)
    }
    fn sweep(&self, names: &[String]) -> Result<Vec<UnitStatus>, Failure> {
        self.systemd().sweep(names)
    }
    fn queue(&self, job: Job, names: &[String]) -> Result<(), Failure> {
        self.systemd().queue(job, names)
    }
    fn signal_main(&self, unit: &str, signal: Signal) -> Result<(), Failure> {
        self.systemd().signal_main(unit, signal)
    }
    fn set_enabled(&self, enable: bool, names: &[String]) -> Result<String, Failure> {
        self.systemd().set_enabled(enable, names)
    }
    fn journal_tail(&self, unit: &str, lines: u32) -> Result<String, Failure> {
        self.systemd().journal_tail(unit, lines)
    }
    fn restart_no_drain(&self, unit: &str) -> Result<(), Failure> {
        self.systemd().restart_no_drain(unit)
    }
}

/// [`crate::signals::NO_DRAIN_SIGNAL`].
pub fn no_drain_signal() -> Signal {
    crate::signals::NO_DRAIN_SIGNAL
}

/// The real systemd: D-Bus for states and jobs, `systemctl`/`journalctl` for what operators
/// read.
#[derive(Default)]
pub struct Client {
    pub bus: bus::Bus,
    pub systemctl: Systemctl,
}

impl Client {
    /// A client whose D-Bus calls give up after `timeout` (the monitor: its probe timeout).
    pub fn with_timeout(timeout: std::time::Duration) -> Client {
        Client {
            bus: bus::Bus::with_timeout(timeout),
            systemctl: Systemctl::default(),
        }
    }
}

impl Systemd for Client {
    fn units(&self, names: &[String]) -> Result<Vec<UnitStatus>, Failure> {
        self.bus.units(names)
    }

    fn sweep(&self, names: &[String]) -> Result<Vec<UnitStatus>, Failure> {
        self.bus.sweep(names)
    }

    fn queue(&self, job: Job, names: &[String]) -> Result<(), Failure> {
        names.iter().try_for_each(|n| self.bus.queue(job, n))
    }

    fn signal_main(&self, unit: &str, signal: Signal) -> Result<(), Failure> {
        self.bus.signal_main(unit, signal)
    }

    fn set_enabled(&self, enable: bool, names: &[String]) -> Result<String, Failure> {
        if names.is_empty() {
            return Ok(String::new());
        }
        let mut args = vec![if enable { "enable" } else { "disable" }.to_string()];
        args.extend(names.iter().cloned());
        let out = self.systemctl.run_ok(&args)?;
        Ok(format!("{}{}", out.stdout, out.stderr))
    }

    fn journal_tail(&self, unit: &str, lines: u32) -> Result<String, Failure> {
        let n = lines.to_string();
        let out = Command::new(paths::JOURNALCTL)
            .args(["-u", unit, "-n", &n, "--no-pager", "-o", "cat"])
            .env("SYSTEMD_COLORS", "0")
            .output()
            .map_err(|e| Failure::unavailable(format!("cannot run {}: {e}", paths::JOURNALCTL)))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_no_drain_signal_is_the_launch_contract() {
        assert_eq!(no_drain_signal(), crate::signals::NO_DRAIN_SIGNAL);
    }

    /// The fake, with the two ways another [`Systemd`] differs from it in these tests: a
    /// `sweep` of its own, as the real client has (recorded), and, when `refuse`, a
    /// `signal_main` that is recorded and then refused.
    struct Other {
        sd: fake::FakeSystemd,
        refuse: bool,
    }

    impl Other {
        fn new(refuse: bool) -> Other {
            Other {
                sd: fake::FakeSystemd::new(),
                refuse,
            }
        }
    }

    impl Systemd for Other {
        fn units(&self, n: &[String]) -> Result<Vec<UnitStatus>, Failure> {
            self.sd.units(n)
        }
        fn sweep(&self, n: &[String]) -> Result<Vec<UnitStatus>, Failure> {
            self.sd.note(format!("sweep {}", n.join(" ")));
            self.sd.units(n)
        }
        fn queue(&self, job: Job, n: &[String]) -> Result<(), Failure> {
            self.sd.queue(job, n)
        }
        fn signal_main(&self, unit: &str, s: Signal) -> Result<(), Failure> {
            self.sd.signal_main(unit, s)?;
            if self.refuse {
                return Err(Failure::other("refused"));
            }
            Ok(())
        }
        fn set_enabled(&self, e: bool, n: &[String]) -> Result<String, Failure> {
            self.sd.set_enabled(e, n)
        }
        fn journal_tail(&self, unit: &str, l: u32) -> Result<String, Failure> {
            self.sd.journal_tail(unit, l)
        }
    }

    #[test]
    fn a_monitor_restart_asks_for_no_drain_first_and_survives_a_refused_signal() {
        let sd = Other::new(true);
        sd.restart_no_drain("citadel-model@a.service").unwrap();
        assert_eq!(
            sd.sd.recorded(),
            [
                "kill --kill-whom=main --signal=SIGUSR1 citadel-model@a.service",
                "restart --no-block citadel-model@a.service"
            ]
        );
    }

    #[test]
    fn a_holder_through_its_systemd_reaches_every_method_of_it_the_overridden_ones_too() {
        struct Holder(Other);
        impl Through for Holder {
            fn systemd(&self) -> &dyn Systemd {
                &self.0
            }
        }
        let h = Holder(Other::new(false));
        h.0.sd.set_journal("a.service", "a line\n");
        let a = vec!["a.service".to_string()];
        assert!(h.units(&a).unwrap()[0].not_found());
        assert!(h.sweep(&a).unwrap()[0].not_found());
        h.queue(Job::Stop, &a).unwrap();
        h.signal_main("a.service", Signal::SIGTERM).unwrap();
        h.set_enabled(true, &a).unwrap();
        assert_eq!(h.journal_tail("a.service", 5).unwrap(), "a line\n");
        h.restart_no_drain("a.service").unwrap();
        assert_eq!(
            h.0.sd.recorded(),
            [
                "sweep a.service",
                "stop --no-block a.service",
                "kill --kill-whom=main --signal=SIGTERM a.service",
                "enable a.service",
                "journal a.service 5",
                "kill --kill-whom=main --signal=SIGUSR1 a.service",
                "restart --no-block a.service",
            ]
        );
    }
}
