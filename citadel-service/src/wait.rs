//! Waiting for units to come up (or go down), with progress: on a terminal one line per unit,
//! redrawn in place; otherwise one plain line per change.
//!
//! A model is up when its unit is `active`: start-model sends `READY=1` only once the model
//! answers `/health`, so `activating` means "loading weights".

use crate::output::{self, paint, tone_of};
use crate::services::Member;
use crate::systemd::{ActiveState, Host, Unit};
use citadel_common::Failure;
use std::io::Write;
use std::time::Duration;

/// Where a unit is on its way up or down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A job is queued (waiting for its dependencies, or a restart in progress).
    Queued,
    /// Activating: for a model, loading weights.
    Loading,
    /// Failed and waiting for systemd's automatic restart (`Restart=`).
    Restarting,
    Ready,
    Stopping,
    Stopped,
    Failed,
}

impl Phase {
    pub fn word(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Loading => "loading",
            Phase::Restarting => "restarting",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        }
    }
    /// Nothing more will happen without someone acting.
    pub fn terminal(self) -> bool {
        matches!(self, Phase::Ready | Phase::Stopped | Phase::Failed)
    }
}

/// The phase of a unit we asked to start (or restart).
pub fn start_phase(u: &Unit) -> Phase {
    match u.active_state {
        ActiveState::Active | ActiveState::Reloading if u.job_pending => Phase::Queued,
        ActiveState::Active | ActiveState::Reloading => Phase::Ready,
        ActiveState::Failed if u.job_pending => Phase::Queued,
        ActiveState::Failed => Phase::Failed,
        ActiveState::Activating if u.sub_state == "auto-restart" => Phase::Restarting,
        ActiveState::Activating => Phase::Loading,
        ActiveState::Deactivating => Phase::Queued,
        // Inactive with no job left: the start job ended without starting it (a dependency
        // failed, or someone stopped it).
        ActiveState::Inactive if !u.job_pending => Phase::Failed,
        ActiveState::Inactive | ActiveState::Unknown => Phase::Queued,
    }
}

/// The phase of a unit we asked to stop.
pub fn stop_phase(u: &Unit) -> Phase {
    match u.active_state {
        ActiveState::Inactive if !u.job_pending => Phase::Stopped,
        ActiveState::Failed if !u.job_pending => Phase::Failed,
        _ => Phase::Stopping,
    }
}

/// One line of why a unit is where it is: `Result=` and exit status for failures, the
/// service's `STATUS=` text otherwise.
pub fn detail(u: &Unit, phase: Phase) -> String {
    let s = u;
    match phase {
        Phase::Failed if s.active_state == ActiveState::Inactive => {
            "inactive with no job left: a dependency failed or the job was cancelled".into()
        }
        Phase::Failed | Phase::Restarting => {
            let mut d = format!(
                "result {}",
                if s.result.is_empty() { "?" } else { &s.result }
            );
            if s.exec_main_status != 0 {
                d.push_str(&format!(", exit status {}", s.exec_main_status));
            }
            if s.n_restarts > 0 {
                d.push_str(&format!(", {} restarts", s.n_restarts));
            }
            d
        }
        _ => s.status_text.clone(),
    }
}

/// How to wait.
#[derive(Debug, Clone)]
pub struct WaitOptions {
    pub timeout: Duration,
    pub poll: Duration,
    /// Redraw progress lines in place (stdout is a terminal).
    pub tty: bool,
    pub color: bool,
    /// Report each failed start attempt as it happens (with the engine's cause line) and stop
    /// waiting for a unit whose attempts fail the same way twice in a row.
    pub attempts: bool,
}

#[cfg(test)]
impl WaitOptions {
    /// What the other modules' tests wait with: 100 s per unit, 1 s polls (the fakes do not
    /// sleep), no terminal, no colour, attempts reported.
    pub(crate) fn for_tests() -> WaitOptions {
        WaitOptions {
            timeout: Duration::from_secs(100),
            poll: Duration::from_secs(1),
            tty: false,
            color: false,
            attempts: true,
        }
    }
}

/// One watched unit at the end (or now).
#[derive(Debug, Clone)]
pub struct Watched {
    pub member: Member,
    pub unit: Unit,
    pub phase: Phase,
    /// When it entered `phase`, since the wait began.
    pub since: Duration,
    /// Failed start attempts seen during the wait.
    pub failed_attempts: u32,
    /// Set when the same failure repeated and the wait stopped for this unit: the cause.
    pub gave_up: Option<String>,
}

impl Watched {
    /// Nothing more to wait for: a terminal phase, or the same failure twice.
    pub fn settled(&self) -> bool {
        self.phase.terminal() || self.gave_up.is_some()
    }
}

/// Per unit, what the attempt tracking remembers between polls.
#[derive(Debug, Clone, Default)]
struct Attempts {
    /// NRestarts already accounted for (including the restart an auto-restart will make).
    counted: u32,
    in_failure: bool,
    /// (exit status, cause) of the last failed attempt.
    last: Option<(i32, Option<String>)>,
}

/// How a wait ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub watched: Vec<Watched>,
    pub elapsed: Duration,
    pub timed_out: bool,
}

impl Outcome {
    pub fn in_phase(&self, p: Phase) -> Vec<&Watched> {
        self.watched.iter().filter(|w| w.phase == p).collect()
    }
    /// Units that did not reach a terminal phase before the timeout.
    pub fn pending(&self) -> Vec<&Watched> {
        self.watched.iter().filter(|w| !w.settled()).collect()
    }
    /// Units whose attempts failed the same way twice (the wait stopped for them).
    pub fn gave_up(&self) -> Vec<&Watched> {
        self.watched
            .iter()
            .filter(|w| w.gave_up.is_some())
            .collect()
    }
}

/// A progress line: `phi3     loading     1m05s  Loading weights`.
pub fn progress_line(w: &Watched, now: Duration, width: usize, color: bool) -> String {
    let elapsed = if w.phase.terminal() { w.since } else { now };
    let word = format!("{:<10}", w.phase.word());
    let mut line = format!(
        "  {:<width$}  {}  {:>6}",
        w.member.service,
        paint(&word, tone_of(w.phase.word()), color),
        output::duration(elapsed.as_secs()),
    );
    let d = detail(&w.unit, w.phase);
    if !d.is_empty() {
        line.push_str("  ");
        line.push_str(&d);
    }
    line
}

/// A plain line for one change: `[  1m05s] phi3: ready (citadel-model@phi3.service)`.
pub fn change_line(w: &Watched, now: Duration) -> String {
    let d = detail(&w.unit, w.phase);
    format!(
        "[{:>6}] {}: {} ({}){}",
        output::duration(now.as_secs()),
        w.member.service,
        w.phase.word(),
        w.member.unit,
        if d.is_empty() {
            String::new()
        } else {
            format!(": {d}")
        }
    )
}

/// Count a unit's failed start attempts (a failed or auto-restart phase, or NRestarts moving
/// past what was seen); for each new one a line with the cause, and when it failed exactly like
/// the one before (same exit status and cause; 75 = temporary excepted) the wait gives up on it.
fn track_attempts(
    host: &dyn Host,
    w: &mut Watched,
    a: &mut Attempts,
    now: Duration,
) -> Vec<String> {
    let failing = matches!(w.phase, Phase::Restarting | Phase::Failed);
    let restarts = w.unit.n_restarts;
    let new = if failing && !a.in_failure {
        a.counted = restarts + u32::from(w.phase == Phase::Restarting);
        1
    } else if !failing && restarts > a.counted {
        // A whole failure and restart happened between two polls.
        let n = restarts - a.counted;
        a.counted = restarts;
        n
    } else {
        0
    };
    a.in_failure = failing;
    if new == 0 {
        return vec![];
    }
    w.failed_attempts += new;
    let status = w.unit.exec_main_status;
    let cause = host.last_cause(&w.member.unit);
    let mut lines = vec![format!(
        "[{:>6}] {}: attempt {} failed (exit status {status}): {}",
        output::duration(now.as_secs()),
        w.member.service,
        w.failed_attempts,
        cause
            .as_deref()
            .unwrap_or("no error line from start-model in the journal")
    )];
    let key = (status, cause);
    if status != 75 && new == 1 && a.last.as_ref() == Some(&key) && w.phase != Phase::Failed {
        let why = key
            .1
            .clone()
            .unwrap_or_else(|| format!("exit status {status}"));
        lines.push(format!(
            "[{:>6}] {}: the same failure twice in a row; not waiting for systemd's start limit (it retries until StartLimitBurst): stop it with citadel-service stop {}",
            output::duration(now.as_secs()),
            w.member.service,
            w.member.service
        ));
        w.gave_up = Some(why);
    }
    a.last = Some(key);
    lines
}

/// The units to watch: everything but targets (they follow their members), unless there is
/// nothing else.
pub fn watch_list(members: &[Member]) -> Vec<Member> {
    let v: Vec<Member> = members
        .iter()
        .filter(|m| m.kind != crate::services::Kind::Target)
        .cloned()
        .collect();
    if v.is_empty() {
        members.to_vec()
    } else {
        v
    }
}

/// Poll until every member reaches a terminal phase (per `classify`) or the timeout passes,
/// writing progress to `out`.
pub fn wait(
    host: &dyn Host,
    members: &[Member],
    classify: fn(&Unit) -> Phase,
    opts: &WaitOptions,
    out: &mut dyn Write,
) -> Result<Outcome, Failure> {
    let names: Vec<String> = members.iter().map(|m| m.unit.clone()).collect();
    let width = members
        .iter()
        .map(|m| m.service.chars().count())
        .max()
        .unwrap_or(0);
    let t0 = host.monotonic();
    let mut watched: Vec<Watched> = vec![];
    let mut attempts: Vec<Attempts> = vec![];
    let mut drawn = 0usize;
    loop {
        let units = host.units(&names)?;
        let now = host.monotonic().saturating_sub(t0);
        let mut changes = vec![];
        for (i, (m, u)) in members.iter().zip(units).enumerate() {
            let phase = classify(&u);
            match watched.get_mut(i) {
                Some(w) => {
                    if w.phase != phase {
                        w.phase = phase;
                        w.since = now;
                        changes.push(i);
                    }
                    w.unit = u;
                }
                None => {
                    attempts.push(Attempts {
                        counted: u.n_restarts,
                        ..Attempts::default()
                    });
                    watched.push(Watched {
                        member: m.clone(),
                        unit: u,
                        phase,
                        since: now,
                        failed_attempts: 0,
                        gave_up: None,
                    });
                    changes.push(i);
                }
            }
        }
        let mut notes = vec![];
        if opts.attempts {
            for (w, a) in watched.iter_mut().zip(attempts.iter_mut()) {
                if w.gave_up.is_none() {
                    notes.extend(track_attempts(host, w, a, now));
                }
            }
        }
        let done = watched.iter().all(Watched::settled);
        let timed_out = !done && now >= opts.timeout;
        if opts.tty {
            let mut block = String::new();
            if drawn > 0 {
                block.push_str(&format!("\x1b[{drawn}A"));
            }
            for w in &watched {
                block.push_str("\x1b[2K");
                block.push_str(&progress_line(w, now, width, opts.color));
                block.push('\n');
            }
            drawn = watched.len();
            let _ = out.write_all(block.as_bytes());
        } else {
            for i in changes {
                let _ = writeln!(out, "{}", change_line(&watched[i], now));
            }
        }
        if !notes.is_empty() {
            // On a terminal the block is redrawn below them.
            drawn = 0;
            for n in &notes {
                let _ = writeln!(out, "{n}");
            }
        }
        let _ = out.flush();
        if done || timed_out {
            return Ok(Outcome {
                watched,
                elapsed: now,
                timed_out,
            });
        }
        host.sleep(opts.poll);
    }
}

#[cfg(test)]
mod tests;
