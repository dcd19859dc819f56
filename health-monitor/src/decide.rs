//! The monitor's decision, as one pure function: (previous record, what this sweep saw, policy,
//! now) -> (new record, action). No I/O here; [`crate::Monitor`] gathers the observation and
//! carries out the action.
//!
//! States ([`ModelState`]) and how a model moves between them:
//!
//! | unit (systemd)                    | probes                        | state                     |
//! |-----------------------------------|-------------------------------|---------------------------|
//! | LoadState=not-found               | -                             | Failed (not installed)    |
//! | activating                        | not probed                    | Starting (never restarted)|
//! | inactive / deactivating           | not probed                    | Stopped (left alone)      |
//! | failed                            | not probed                    | Failed (reported only)    |
//! | active, restart queued, same PID  | not judged                    | Restarting                |
//! | active                            | /health 200, no hang evidence | Healthy                   |
//! | active                            | any failure (below)           | Failing, count + 1        |
//! | active, count >= threshold        | failure, budget left          | Restarting (+ restart)    |
//! | active, count >= threshold        | failure, budget spent         | GaveUp (+ one error line) |
//!
//! A failure is any of: `/health` not 200 (503, refused while the unit is active, timed out,
//! malformed); requests running while the generated-token counter has not moved for `stall`
//! (from `/metrics`); the last deep probe (one-token completion) answered 5xx, failed, or timed
//! out while no token was generated during it. Not failures: a deep probe or `/health` timing
//! out while the token counter is moving (busy), a deep probe refused with 4xx (a key or name
//! problem a restart cannot fix: reported as a warning).
//!
//! After a restart the model is followed: the unit goes deactivating/activating (Restarting,
//! then Starting), then active with a new main PID (judged again: Healthy). If the old process
//! is still the unit's main process after `restart_follow`, it is judged again as usual.
//!
//! Restart budget and GaveUp: at most `budget` monitor restarts per model in a sliding window.
//! When the threshold is reached and the budget is spent the model is GaveUp, a latch: no
//! restart while it lasts, whatever the window says. It is released when (a) the model passes
//! a sweep with no failure (Healthy; the restarts already made stay in the window, so a model
//! that flaps cannot loop), or (b) an operator (or systemd) takes over: the unit's main PID
//! changes or the unit leaves `active` (stop, start, restart by hand). (b) also clears the
//! budget: the operator's action starts a fresh window.

use crate::budget::Budget;
use crate::metrics::Metrics;
use citadel_common::health::ModelState;
use citadel_common::probe::ProbeError;
use citadel_common::systemd::{ActiveState, UnitStatus};
use std::time::{Duration, Instant};

/// An HTTP answer: status and latency (the one type, from common's probe).
pub use citadel_common::probe::Answer;

/// What one deep probe (one-token completion) got, with `/metrics` read just before and just
/// after it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepOutcome {
    pub result: Result<Answer, ProbeError>,
    pub before: Option<Metrics>,
    pub after: Option<Metrics>,
    /// The deep probe's timeout (for the message).
    pub timeout: Duration,
}

impl DeepOutcome {
    /// Tokens were generated while the probe waited (the engine is busy, not hung).
    pub fn progressed(&self) -> bool {
        match (self.before, self.after) {
            (Some(b), Some(a)) => a.generation_tokens > b.generation_tokens,
            _ => false,
        }
    }
}

/// Everything one sweep saw of one model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// `None`: systemd could not be asked this sweep (then nothing is restarted).
    pub unit: Option<UnitStatus>,
    /// `None`: not probed (the unit is not active).
    pub health: Option<Result<Answer, ProbeError>>,
    /// `None`: not read, or not vLLM metrics.
    pub metrics: Option<Metrics>,
    /// A deep probe that finished since the last sweep.
    pub deep: Option<DeepOutcome>,
}

/// The knobs the decision needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub failure_threshold: u32,
    pub stall: Duration,
    pub probe_timeout: Duration,
    /// How long a queued restart is followed before the old process is judged again.
    pub restart_follow: Duration,
    /// `false` for `--once`: the decision never asks for a restart.
    pub may_restart: bool,
}

/// A restart the monitor issued and is following.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PendingRestart {
    pub at: Instant,
    /// The main PID when it was issued (0 if none).
    pub main_pid: u32,
    /// Consecutive failures that led to it.
    pub after_failures: u32,
}

/// What the monitor remembers about one model between sweeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub state: ModelState,
    /// When `state` last changed.
    pub since: Instant,
    pub consecutive_failures: u32,
    /// Why it is not healthy (one line).
    pub reason: Option<String>,
    /// A remark that is not a failure (busy), logged at debug level.
    pub note: Option<String>,
    /// A problem a restart cannot fix (deep probe refused), logged once when it appears.
    pub warning: Option<String>,
    /// Latency of the last `/health` answer.
    pub latency: Option<Duration>,
    pub budget: Budget,
    /// Restarts issued by this monitor since it started.
    pub monitor_restarts: u32,
    pub restart: Option<PendingRestart>,
    /// Main PID when the monitor gave up (`Some` only in GaveUp).
    pub gave_up_pid: Option<u32>,
    /// Last generated-token counter seen, and when it last moved (or the engine was idle).
    pub tokens: Option<f64>,
    pub progress_at: Instant,
    /// The last deep probe failed; counts as a failure every sweep until a deep probe passes.
    pub deep_failure: Option<String>,
    /// The unit as last seen.
    pub unit: Option<UnitStatus>,
}

/// What the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    /// `systemctl restart --no-block UNIT` (the budget is already taken).
    Restart,
    /// The budget is spent: log one error line, send the webhook.
    GiveUp,
}

impl Record {
    pub fn new(budget: Budget, now: Instant) -> Record {
        Record {
            state: ModelState::Starting,
            since: now,
            consecutive_failures: 0,
            reason: None,
            note: None,
            warning: None,
            latency: None,
            budget,
            monitor_restarts: 0,
            restart: None,
            gave_up_pid: None,
            tokens: None,
            progress_at: now,
            deep_failure: None,
            unit: None,
        }
    }

    /// A state decided by the unit alone: no probe, no failure count, nothing pending.
    fn settle(&mut self, state: ModelState, reason: impl Into<String>) {
        self.state = state;
        self.reason = Some(reason.into());
        self.consecutive_failures = 0;
        self.deep_failure = None;
        self.latency = None;
        self.restart = None;
        self.gave_up_pid = None;
        self.tokens = None;
    }

    /// Feed a `/metrics` reading; true when the token counter moved since the last one.
    fn track_progress(&mut self, m: Option<Metrics>, now: Instant) -> bool {
        let Some(m) = m else { return false };
        let moved = matches!(self.tokens, Some(t) if t != m.generation_tokens);
        if moved || self.tokens.is_none() || m.running <= 0.0 {
            // The stall clock only runs while requests are running and nothing moves.
            self.progress_at = now;
        }
        self.tokens = Some(m.generation_tokens);
        moved
    }

    /// The restart could not be issued (systemctl refused): back to Failing, budget returned,
    /// the failure count kept so that the next sweep tries again.
    pub fn restart_failed(&mut self, error: &str) {
        self.state = ModelState::Failing;
        self.budget.give_back();
        self.monitor_restarts = self.monitor_restarts.saturating_sub(1);
        self.consecutive_failures = self.restart.take().map_or(0, |r| r.after_failures);
        let last = self.reason.take().unwrap_or_default();
        self.reason = Some(format!("restart could not be issued: {error}; {last}"));
    }
}

/// The decision. `prev` is `None` on the first sweep.
pub fn decide(
    prev: Option<&Record>,
    obs: &Observation,
    p: &Policy,
    budget: Budget,
    now: Instant,
) -> (Record, Action) {
    let mut r = prev.cloned().unwrap_or_else(|| Record::new(budget, now));
    let before = r.state;
    let action = step(&mut r, obs, p, now);
    if prev.is_none() || r.state != before {
        r.since = now;
    }
    if obs.unit.is_some() {
        r.unit = obs.unit.clone();
    }
    (r, action)
}

fn step(r: &mut Record, obs: &Observation, p: &Policy, now: Instant) -> Action {
    use ModelState::*;
    r.note = None;
    if let Some(u) = &obs.unit {
        // An operator (or systemd) took over a model the monitor gave up on.
        if r.state == GaveUp
            && (Some(u.main_pid) != r.gave_up_pid || u.active_state != ActiveState::Active)
        {
            r.budget.clear();
            r.gave_up_pid = None;
            r.state = Failing;
            r.consecutive_failures = 0;
            r.deep_failure = None;
            r.tokens = None;
        }
        if u.load_state == "not-found" {
            r.settle(
                Failed,
                format!("{} is not installed (LoadState=not-found)", u.unit),
            );
            return Action::None;
        }
        let following = r
            .restart
            .filter(|pr| now.saturating_duration_since(pr.at) < p.restart_follow);
        match u.active_state {
            ActiveState::Activating => {
                r.settle(Starting, "loading (unit activating)");
                return Action::None;
            }
            ActiveState::Deactivating | ActiveState::Inactive if following.is_some() => {
                r.state = Restarting;
                r.reason = Some(format!("restart in progress (unit {})", u.active_state));
                return Action::None;
            }
            ActiveState::Deactivating => {
                r.settle(Stopped, "stopping (unit deactivating)");
                return Action::None;
            }
            ActiveState::Inactive => {
                r.settle(Stopped, "stopped (unit inactive)");
                return Action::None;
            }
            ActiveState::Failed => {
                r.settle(
                    Failed,
                    format!(
                        "unit failed (result {}, exit status {}); systemd's Restart= policy or an operator decides what next",
                        u.result, u.exec_main_status
                    ),
                );
                return Action::None;
            }
            _ => {}
        }
        if let Some(pr) = following {
            if u.main_pid == pr.main_pid {
                r.state = Restarting;
                r.reason = Some(format!(
                    "restart queued; old main process {} still running",
                    u.main_pid
                ));
                return Action::None;
            }
        }
        r.restart = None;
    }

    let Some(health) = &obs.health else {
        // Not probed (sweep abandoned): nothing new to conclude.
        return Action::None;
    };
    let progressed = r.track_progress(obs.metrics, now);
    let mut failures: Vec<String> = vec![];
    let mut health_ok = false;
    match health {
        Ok(a) if a.status == 200 => {
            health_ok = true;
            r.latency = Some(a.latency);
        }
        Ok(a) => {
            r.latency = Some(a.latency);
            failures.push(format!("/health answered HTTP {}", a.status));
        }
        Err(ProbeError::Timeout) if progressed => {
            health_ok = true;
            r.latency = None;
            r.note = Some("/health timed out while tokens are being generated: busy".into());
        }
        Err(e) => {
            r.latency = None;
            failures.push(match e {
                ProbeError::Refused => {
                    "/health: connection refused while the unit is active".to_string()
                }
                ProbeError::Timeout => {
                    format!(
                        "/health: no answer within {}s",
                        p.probe_timeout.as_secs_f64()
                    )
                }
                ProbeError::Other(m) => format!("/health: {m}"),
            });
        }
    }

    if let Some(m) = obs.metrics {
        let frozen = now.saturating_duration_since(r.progress_at);
        if m.running > 0.0 && frozen >= p.stall {
            failures.push(format!(
                "hung: {} requests running and no token generated for {}s",
                m.running,
                frozen.as_secs()
            ));
        }
    }

    if let Some(d) = &obs.deep {
        r.deep_failure = None;
        r.warning = None;
        match &d.result {
            Ok(a) if (200..300).contains(&a.status) => {}
            Ok(a) if a.status >= 500 => {
                r.deep_failure = Some(format!(
                    "deep probe (1-token completion) answered HTTP {}",
                    a.status
                ))
            }
            Ok(a) => {
                r.warning = Some(format!(
                    "deep probe (1-token completion) refused with HTTP {}: check the API key and served_model_name (not counted as a failure)",
                    a.status
                ))
            }
            Err(ProbeError::Timeout) if d.progressed() => {
                r.note = Some(
                    "deep probe timed out while tokens are being generated: busy, not hung".into(),
                )
            }
            Err(ProbeError::Timeout) => {
                let running = d.after.or(d.before).map(|m| m.running);
                r.deep_failure = Some(format!(
                    "deep probe (1-token completion) got no answer within {}s and no token was generated meanwhile ({})",
                    d.timeout.as_secs_f64(),
                    match running {
                        Some(n) => format!("{n} requests running"),
                        None => "metrics unavailable".into(),
                    }
                ))
            }
            Err(e) => r.deep_failure = Some(format!("deep probe (1-token completion): {e}")),
        }
    }
    if let Some(f) = &r.deep_failure {
        failures.push(f.clone());
    }

    if failures.is_empty() {
        if health_ok {
            r.state = Healthy;
            r.consecutive_failures = 0;
            r.reason = None;
            r.gave_up_pid = None;
        }
        return Action::None;
    }

    r.consecutive_failures += 1;
    let reason = failures.join("; ");
    if r.state == GaveUp {
        r.reason = Some(format!("gave up (restart budget spent); {reason}"));
        return Action::None;
    }
    r.reason = Some(reason.clone());
    let unit = match &obs.unit {
        Some(u) if p.may_restart && r.consecutive_failures >= p.failure_threshold => u,
        // Below the threshold, read-only (--once), or systemd unknown: never restart blind.
        _ => {
            r.state = Failing;
            return Action::None;
        }
    };
    if r.budget.take(now) {
        r.state = Restarting;
        r.monitor_restarts += 1;
        r.restart = Some(PendingRestart {
            at: now,
            main_pid: unit.main_pid,
            after_failures: r.consecutive_failures,
        });
        r.consecutive_failures = 0;
        r.deep_failure = None;
        r.tokens = None;
        Action::Restart
    } else {
        r.state = GaveUp;
        r.gave_up_pid = Some(unit.main_pid);
        r.reason = Some(format!(
            "restart budget spent ({} monitor restarts within {}s); not restarting until it recovers or an operator restarts it; last failure: {reason}",
            r.budget.limit(),
            r.budget.window().as_secs()
        ));
        Action::GiveUp
    }
}

#[cfg(test)]
mod tests;
