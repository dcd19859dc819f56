//! The one fake systemd, for tests (this crate's, and other crates' through the `testing`
//! feature): each unit follows a script of states, one step per [`FakeSystemd::advance`];
//! jobs, enable calls and journal reads are recorded; a hook may act on each queued job.

use super::{ActiveState, Job, Systemd, UnitStatus};
use crate::Failure;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Called for each unit a job is queued for (e.g. to make a restarted unit `activating`).
pub type QueueHook = Box<dyn FnMut(&FakeSystemd, Job, &str) + Send>;

/// A scripted systemd.
#[derive(Default)]
pub struct FakeSystemd {
    script: Mutex<BTreeMap<String, Vec<UnitStatus>>>,
    step: AtomicUsize,
    journal: Mutex<BTreeMap<String, String>>,
    calls: Mutex<Vec<String>>,
    hook: Mutex<Option<QueueHook>>,
    /// How many times [`Systemd::units`] was asked.
    pub status_calls: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loaded unit in a given state, with the sub-state and result systemd would show.
pub fn unit(name: &str, state: impl Into<ActiveState>, job_pending: bool) -> UnitStatus {
    let state = state.into();
    UnitStatus {
        unit: name.to_string(),
        load_state: "loaded".into(),
        active_state: state,
        sub_state: match state {
            ActiveState::Active => "running",
            ActiveState::Activating => "start",
            ActiveState::Failed => "failed",
            _ => "dead",
        }
        .into(),
        result: if state == ActiveState::Failed {
            "exit-code"
        } else {
            "success"
        }
        .into(),
        job_pending,
        control_group: format!("/system.slice/{name}"),
        ..UnitStatus::default()
    }
}

impl FakeSystemd {
    pub fn new() -> FakeSystemd {
        FakeSystemd::default()
    }

    /// Shared, for code that holds an `Arc<dyn Systemd>`.
    pub fn shared() -> Arc<FakeSystemd> {
        Arc::new(FakeSystemd::default())
    }

    /// Script a unit's states (builder form).
    pub fn with(self, name: &str, states: Vec<UnitStatus>) -> FakeSystemd {
        self.script(name, states);
        self
    }

    /// Script a unit's states: one per step, the last one stays.
    pub fn script(&self, name: &str, states: Vec<UnitStatus>) {
        lock(&self.script).insert(name.to_string(), states);
    }

    /// Put a unit in this state from now on (its restart count is kept).
    pub fn put(&self, status: UnitStatus) {
        let mut s = lock(&self.script);
        let mut status = status;
        if let Some(prev) = s.get(&status.unit).and_then(|v| v.last()) {
            status.n_restarts = prev.n_restarts;
        }
        s.insert(status.unit.clone(), vec![status]);
    }

    /// Set a unit `state` with main PID `pid`.
    pub fn set_state(&self, name: &str, state: ActiveState, pid: u32) {
        let mut u = unit(name, state, false);
        u.sub_state = "running".into();
        u.main_pid = pid;
        self.put(u);
    }

    /// What [`Systemd::units`] answers for `name` now.
    pub fn get(&self, name: &str) -> UnitStatus {
        let step = self.steps();
        match lock(&self.script).get(name) {
            Some(states) if !states.is_empty() => {
                let mut u = states[step.min(states.len() - 1)].clone();
                u.unit = name.to_string();
                u
            }
            _ => UnitStatus {
                load_state: "not-found".into(),
                ..unit(name, ActiveState::Inactive, false)
            },
        }
    }

    /// The journal `journal_tail` returns for a unit.
    pub fn set_journal(&self, name: &str, text: &str) {
        lock(&self.journal).insert(name.to_string(), text.to_string());
    }

    /// Run `hook` for each unit a job is queued for.
    pub fn on_queue(&self, hook: QueueHook) {
        *lock(&self.hook) = Some(hook);
    }

    /// One step of every script.
    pub fn advance(&self) {
        self.step.fetch_add(1, Ordering::SeqCst);
    }

    /// Steps so far.
    pub fn steps(&self) -> usize {
        self.step.load(Ordering::SeqCst)
    }

    /// Every call, as `systemctl` words: `restart --no-block A B`, `enable A`, `journal A 50`.
    pub fn recorded(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// The units restart jobs were queued for, in order.
    pub fn restarts(&self) -> Vec<String> {
        self.jobs(Job::Restart)
    }

    /// The units stop jobs were queued for, in order.
    pub fn stops(&self) -> Vec<String> {
        self.jobs(Job::Stop)
    }

    fn jobs(&self, job: Job) -> Vec<String> {
        let prefix = format!("{} --no-block ", job.as_str());
        self.recorded()
            .iter()
            .filter_map(|c| c.strip_prefix(prefix.as_str()))
            .flat_map(|units| units.split(' ').map(str::to_string))
            .collect()
    }

    /// Record a call made outside this trait, in order with the rest (a fake host's
    /// `daemon-reload`, helpers ...).
    pub fn note(&self, call: String) {
        self.record(call);
    }

    fn record(&self, s: String) {
        lock(&self.calls).push(s);
    }
}

impl Systemd for FakeSystemd {
    fn units(&self, names: &[String]) -> Result<Vec<UnitStatus>, Failure> {
        self.status_calls.fetch_add(1, Ordering::SeqCst);
        Ok(names.iter().map(|n| self.get(n)).collect())
    }

    fn queue(&self, job: Job, names: &[String]) -> Result<(), Failure> {
        self.record(format!("{} --no-block {}", job.as_str(), names.join(" ")));
        let hook = lock(&self.hook).take();
        if let Some(mut h) = hook {
            for n in names {
                h(self, job, n);
            }
            *lock(&self.hook) = Some(h);
        }
        Ok(())
    }

    fn signal_main(&self, name: &str, signal: super::Signal) -> Result<(), Failure> {
        self.record(format!("kill --kill-whom=main --signal={signal} {name}"));
        Ok(())
    }

    fn set_enabled(&self, enable: bool, names: &[String]) -> Result<String, Failure> {
        let v = if enable { "enable" } else { "disable" };
        self.record(format!("{v} {}", names.join(" ")));
        Ok(String::new())
    }

    fn journal_tail(&self, name: &str, lines: u32) -> Result<String, Failure> {
        self.record(format!("journal {name} {lines}"));
        Ok(lock(&self.journal).get(name).cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_step_and_jobs_are_recorded() {
        let sd = FakeSystemd::new().with(
            "a.service",
            vec![
                unit("a.service", ActiveState::Activating, true),
                unit("a.service", ActiveState::Active, false),
            ],
        );
        let names = vec!["a.service".to_string(), "b.service".to_string()];
        let now = sd.units(&names).unwrap();
        assert_eq!(now[0].active_state, ActiveState::Activating);
        assert!(now[1].not_found());
        sd.advance();
        sd.advance();
        assert_eq!(
            sd.units(&names).unwrap()[0].active_state,
            ActiveState::Active
        );
        sd.on_queue(Box::new(|sd, job, name| {
            assert_eq!(job, Job::Restart);
            sd.set_state(name, ActiveState::Activating, 0);
        }));
        sd.queue(Job::Restart, &names[..1]).unwrap();
        assert_eq!(sd.restarts(), ["a.service"]);
        assert_eq!(sd.get("a.service").active_state, ActiveState::Activating);
        assert_eq!(sd.status_calls.load(Ordering::SeqCst), 2);
    }
}
