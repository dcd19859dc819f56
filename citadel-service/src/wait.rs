//! Waiting for units to come up (or go down), with progress: on a terminal one line per unit,
//! redrawn in place; otherwise one plain line per change.
//!
//! A model is up when its unit is `active`: start-model sends `READY=1` only once the model
//! answers `/health`, so `activating` means "loading weights".

use crate::output::{self, paint, tone_of};
use crate::services::Member;
use crate::systemd::{Host, Unit};
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
    let s = &u.status;
    match s.active_state.as_str() {
        "active" | "reloading" if u.job_pending => Phase::Queued,
        "active" | "reloading" => Phase::Ready,
        "failed" if u.job_pending => Phase::Queued,
        "failed" => Phase::Failed,
        "activating" if s.sub_state == "auto-restart" => Phase::Restarting,
        "activating" => Phase::Loading,
        "deactivating" => Phase::Queued,
        // Inactive with no job left: the start job ended without starting it (a dependency
        // failed, or someone stopped it).
        "inactive" if !u.job_pending => Phase::Failed,
        _ => Phase::Queued,
    }
}

/// The phase of a unit we asked to stop.
pub fn stop_phase(u: &Unit) -> Phase {
    match u.status.active_state.as_str() {
        "inactive" if !u.job_pending => Phase::Stopped,
        "failed" if !u.job_pending => Phase::Failed,
        _ => Phase::Stopping,
    }
}

/// One line of why a unit is where it is: `Result=` and exit status for failures, the
/// service's `STATUS=` text otherwise.
pub fn detail(u: &Unit, phase: Phase) -> String {
    let s = &u.status;
    match phase {
        Phase::Failed if s.active_state == "inactive" => {
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
}

/// One watched unit at the end (or now).
#[derive(Debug, Clone)]
pub struct Watched {
    pub member: Member,
    pub unit: Unit,
    pub phase: Phase,
    /// When it entered `phase`, since the wait began.
    pub since: Duration,
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
        self.watched
            .iter()
            .filter(|w| !w.phase.terminal())
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
                    watched.push(Watched {
                        member: m.clone(),
                        unit: u,
                        phase,
                        since: now,
                    });
                    changes.push(i);
                }
            }
        }
        let done = watched.iter().all(|w| w.phase.terminal());
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
mod tests {
    use super::*;
    use crate::services::Kind;
    use crate::systemd::fake::{unit, FakeHost};

    fn member(name: &str) -> Member {
        Member {
            service: name.into(),
            unit: format!("citadel-model@{name}.service"),
            kind: Kind::Model,
            enabled: true,
            port: Some(11400),
        }
    }

    fn opts(tty: bool) -> WaitOptions {
        WaitOptions {
            timeout: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            tty,
            color: false,
        }
    }

    #[test]
    fn start_phases() {
        assert_eq!(start_phase(&unit("a", "active", false)), Phase::Ready);
        assert_eq!(start_phase(&unit("a", "active", true)), Phase::Queued);
        assert_eq!(start_phase(&unit("a", "activating", false)), Phase::Loading);
        assert_eq!(start_phase(&unit("a", "failed", false)), Phase::Failed);
        assert_eq!(start_phase(&unit("a", "inactive", true)), Phase::Queued);
        assert_eq!(start_phase(&unit("a", "inactive", false)), Phase::Failed);
        let mut u = unit("a", "activating", false);
        u.status.sub_state = "auto-restart".into();
        assert_eq!(start_phase(&u), Phase::Restarting);
        assert_eq!(
            stop_phase(&unit("a", "deactivating", true)),
            Phase::Stopping
        );
        assert_eq!(stop_phase(&unit("a", "inactive", false)), Phase::Stopped);
        assert_eq!(stop_phase(&unit("a", "active", false)), Phase::Stopping);
    }

    #[test]
    fn waits_until_every_unit_is_ready_or_failed() {
        let a = "citadel-model@a.service";
        let b = "citadel-model@b.service";
        let host = FakeHost::new()
            .with(
                a,
                vec![
                    unit(a, "inactive", true),
                    unit(a, "activating", false),
                    unit(a, "activating", false),
                    unit(a, "active", false),
                ],
            )
            .with(
                b,
                vec![
                    unit(b, "activating", false),
                    unit(b, "activating", false),
                    unit(b, "activating", false),
                    unit(b, "activating", false),
                    unit(b, "activating", false),
                    unit(b, "failed", false),
                ],
            );
        let mut out = vec![];
        let o = wait(
            &host,
            &[member("a"), member("b")],
            start_phase,
            &opts(false),
            &mut out,
        )
        .unwrap();
        assert!(!o.timed_out);
        assert_eq!(o.elapsed, Duration::from_secs(5));
        assert_eq!(o.in_phase(Phase::Ready)[0].member.service, "a");
        assert_eq!(o.in_phase(Phase::Ready)[0].since, Duration::from_secs(3));
        assert_eq!(o.in_phase(Phase::Failed)[0].member.service, "b");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "[    0s] a: queued (citadel-model@a.service)\n\
             [    0s] b: loading (citadel-model@b.service)\n\
             [    1s] a: loading (citadel-model@a.service)\n\
             [    3s] a: ready (citadel-model@a.service)\n\
             [    5s] b: failed (citadel-model@b.service): result exit-code\n"
        );
    }

    #[test]
    fn gives_up_at_the_timeout() {
        let a = "citadel-model@a.service";
        let host = FakeHost::new().with(a, vec![unit(a, "activating", false)]);
        let mut o = opts(false);
        o.timeout = Duration::from_secs(10);
        let r = wait(&host, &[member("a")], start_phase, &o, &mut vec![]).unwrap();
        assert!(r.timed_out);
        assert_eq!(r.pending().len(), 1);
        assert_eq!(host.steps(), 10);
    }

    #[test]
    fn a_terminal_redraws_one_line_per_unit_in_place() {
        let a = "citadel-model@a.service";
        let mut loading = unit(a, "activating", false);
        loading.status.status_text = "loading a on GPU 0".into();
        let host = FakeHost::new().with(a, vec![loading, unit(a, "active", false)]);
        let mut out = vec![];
        wait(&host, &[member("a")], start_phase, &opts(true), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "\x1b[2K  a  loading         0s  loading a on GPU 0\n\
             \x1b[1A\x1b[2K  a  ready           1s\n"
        );
    }

    #[test]
    fn stopping_waits_for_inactive() {
        let a = "citadel-model@a.service";
        let host = FakeHost::new().with(
            a,
            vec![unit(a, "deactivating", true), unit(a, "inactive", false)],
        );
        let o = wait(&host, &[member("a")], stop_phase, &opts(false), &mut vec![]).unwrap();
        assert_eq!(o.in_phase(Phase::Stopped).len(), 1);
    }
}
