use super::*;
use ModelState::*;

const S: fn(u64) -> Duration = Duration::from_secs;

fn unit(active: &str, pid: u32) -> Option<UnitStatus> {
    let active: ActiveState = active.into();
    Some(UnitStatus {
        unit: "citadel-model@m.service".into(),
        load_state: "loaded".into(),
        active_state: active,
        main_pid: pid,
        result: "success".into(),
        ..Default::default()
    })
}

fn ok() -> Option<Result<Answer, ProbeError>> {
    Some(Ok(Answer {
        status: 200,
        latency: Duration::from_millis(3),
    }))
}

fn err(e: ProbeError) -> Option<Result<Answer, ProbeError>> {
    Some(Err(e))
}

fn m(running: f64, tokens: f64) -> Option<Metrics> {
    Some(Metrics {
        running,
        generation_tokens: tokens,
    })
}

fn obs(
    unit: Option<UnitStatus>,
    health: Option<Result<Answer, ProbeError>>,
    metrics: Option<Metrics>,
) -> Observation {
    Observation {
        unit,
        health,
        metrics,
        deep: None,
    }
}

fn policy() -> Policy {
    Policy {
        failure_threshold: 3,
        stall: S(30),
        probe_timeout: S(5),
        restart_follow: S(60),
        may_restart: true,
    }
}

/// Drives decide() like the monitor does, one sweep every 10 s of fake time.
struct Sim {
    rec: Option<Record>,
    t: Instant,
    p: Policy,
    budget: Budget,
    actions: Vec<Action>,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            rec: None,
            t: Instant::now(),
            p: policy(),
            budget: Budget::new(3, S(3600)),
            actions: vec![],
        }
    }
    fn sweep(&mut self, o: Observation) -> Action {
        self.t += S(10);
        let (r, a) = decide(self.rec.as_ref(), &o, &self.p, self.budget.clone(), self.t);
        self.rec = Some(r);
        self.actions.push(a);
        a
    }
    fn state(&self) -> ModelState {
        self.rec.as_ref().unwrap().state
    }
    fn rec(&self) -> &Record {
        self.rec.as_ref().unwrap()
    }
    fn restarts(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| **a == Action::Restart)
            .count()
    }
}

#[test]
fn a_loading_model_is_never_restarted() {
    let mut s = Sim::new();
    for _ in 0..500 {
        assert_eq!(
            s.sweep(obs(unit("activating", 7), None, None)),
            Action::None
        );
        assert_eq!(s.state(), Starting);
        assert_eq!(s.rec().consecutive_failures, 0);
    }
    assert_eq!(s.sweep(obs(unit("active", 7), ok(), None)), Action::None);
    assert_eq!(s.state(), Healthy);
    assert_eq!(s.rec().latency, Some(Duration::from_millis(3)));
}

#[test]
fn stopped_failed_and_missing_units_are_left_alone() {
    for (u, want) in [
        (unit("inactive", 0), Stopped),
        (unit("deactivating", 9), Stopped),
        (unit("failed", 0), Failed),
    ] {
        let mut s = Sim::new();
        // Failing right up to the threshold first: leaving active must not restart.
        s.sweep(obs(unit("active", 9), err(ProbeError::Refused), None));
        s.sweep(obs(unit("active", 9), err(ProbeError::Refused), None));
        for _ in 0..20 {
            assert_eq!(s.sweep(obs(u.clone(), None, None)), Action::None);
            assert_eq!(s.state(), want);
        }
        assert_eq!(s.restarts(), 0);
    }
    let mut gone = unit("inactive", 0).unwrap();
    gone.load_state = "not-found".into();
    let mut s = Sim::new();
    s.sweep(obs(Some(gone), None, None));
    assert_eq!(s.state(), Failed);
    assert!(s.rec().reason.as_deref().unwrap().contains("not-found"));
}

#[test]
fn a_crashed_server_is_restarted_after_the_threshold_and_followed_back_to_healthy() {
    let mut s = Sim::new();
    s.sweep(obs(unit("active", 10), ok(), None));
    assert_eq!(s.state(), Healthy);
    assert_eq!(
        s.sweep(obs(unit("active", 10), err(ProbeError::Refused), None)),
        Action::None
    );
    assert_eq!((s.state(), s.rec().consecutive_failures), (Failing, 1));
    s.sweep(obs(unit("active", 10), err(ProbeError::Refused), None));
    assert_eq!(s.state(), Failing);
    assert_eq!(
        s.sweep(obs(unit("active", 10), err(ProbeError::Refused), None)),
        Action::Restart
    );
    assert_eq!(s.state(), Restarting);
    assert!(s
        .rec()
        .reason
        .as_deref()
        .unwrap()
        .contains("connection refused"));
    assert_eq!(s.rec().monitor_restarts, 1);
    // The job is queued: same PID still there, then stopping, then loading.
    s.sweep(obs(unit("active", 10), err(ProbeError::Refused), None));
    assert_eq!(s.state(), Restarting);
    s.sweep(obs(unit("deactivating", 10), None, None));
    assert_eq!(s.state(), Restarting);
    s.sweep(obs(unit("inactive", 0), None, None));
    assert_eq!(s.state(), Restarting);
    for _ in 0..30 {
        s.sweep(obs(unit("activating", 11), None, None));
        assert_eq!(s.state(), Starting);
    }
    s.sweep(obs(unit("active", 11), ok(), None));
    assert_eq!(s.state(), Healthy);
    assert_eq!(s.restarts(), 1);
    assert_eq!(s.rec().monitor_restarts, 1);
}

#[test]
fn http_503_and_odd_answers_are_failures() {
    for h in [
        Some(Ok(Answer {
            status: 503,
            latency: S(0),
        })),
        err(ProbeError::Timeout),
        err(ProbeError::Other("malformed".into())),
    ] {
        let mut s = Sim::new();
        s.sweep(obs(unit("active", 1), h, None));
        assert_eq!(s.state(), Failing, "{:?}", s.rec().reason);
    }
}

#[test]
fn the_budget_stops_a_restart_loop_with_one_give_up() {
    let mut s = Sim::new();
    let mut pid = 100;
    let mut give_ups = 0;
    'rounds: for _round in 0..6 {
        // Loads, is healthy once, then dies (refused) until the monitor acts.
        s.sweep(obs(unit("activating", pid), None, None));
        s.sweep(obs(unit("active", pid), ok(), None));
        for _ in 0..10 {
            match s.sweep(obs(unit("active", pid), err(ProbeError::Refused), None)) {
                Action::Restart => {
                    pid += 1;
                    continue 'rounds;
                }
                Action::GiveUp => give_ups += 1,
                Action::None => {}
            }
        }
        break;
    }
    // Nobody acts: it stays dead, and the monitor stays quiet.
    for _ in 0..50 {
        assert_eq!(
            s.sweep(obs(unit("active", pid), err(ProbeError::Refused), None)),
            Action::None
        );
    }
    assert_eq!(s.restarts(), 3);
    assert_eq!(give_ups, 1, "one give-up, not one per sweep");
    assert_eq!(s.state(), GaveUp);
    let why = s.rec().reason.clone().unwrap();
    assert!(why.contains("restart budget spent"), "{why}");
}

#[test]
fn gave_up_is_released_by_recovery_or_by_an_operator() {
    let mut s = Sim::new();
    s.budget = Budget::new(0, S(3600));
    let dead = |pid| obs(unit("active", pid), err(ProbeError::Refused), None);
    s.sweep(dead(5));
    s.sweep(dead(5));
    assert_eq!(s.sweep(dead(5)), Action::GiveUp);
    assert_eq!(s.sweep(dead(5)), Action::None);
    assert_eq!(s.state(), GaveUp);
    // Recovery: healthy again.
    s.sweep(obs(unit("active", 5), ok(), None));
    assert_eq!(s.state(), Healthy);
    // Budget 0 still: at the threshold it gives up again (no restart ever).
    s.sweep(dead(5));
    s.sweep(dead(5));
    assert_eq!(s.sweep(dead(5)), Action::GiveUp);

    // With a budget: spent, then an operator restarts the unit (new main PID): fresh budget.
    let mut s = Sim::new();
    s.budget = Budget::new(1, S(3600));
    s.sweep(dead(5));
    s.sweep(dead(5));
    assert_eq!(s.sweep(dead(5)), Action::Restart);
    s.sweep(obs(unit("activating", 6), None, None));
    s.sweep(dead(6));
    s.sweep(dead(6));
    assert_eq!(s.sweep(dead(6)), Action::GiveUp);
    s.sweep(dead(6));
    s.sweep(dead(6));
    assert_eq!(s.state(), GaveUp);
    s.sweep(dead(7)); // `systemctl restart` by hand: new PID, still broken
    assert_eq!(s.state(), Failing);
    s.sweep(dead(7));
    assert_eq!(s.sweep(dead(7)), Action::Restart);
}

#[test]
fn restarts_age_out_of_the_window() {
    let mut s = Sim::new();
    s.budget = Budget::new(1, S(100));
    let dead = |pid| obs(unit("active", pid), err(ProbeError::Refused), None);
    for _ in 0..2 {
        s.sweep(dead(1));
    }
    assert_eq!(s.sweep(dead(1)), Action::Restart);
    s.sweep(obs(unit("active", 2), ok(), None));
    // Healthy for long enough that the restart leaves the window.
    for _ in 0..12 {
        s.sweep(obs(unit("active", 2), ok(), None));
    }
    s.sweep(dead(2));
    s.sweep(dead(2));
    assert_eq!(s.sweep(dead(2)), Action::Restart);
}

#[test]
fn a_restart_that_cannot_be_issued_is_tried_again() {
    let mut s = Sim::new();
    let dead = || obs(unit("active", 1), err(ProbeError::Refused), None);
    s.sweep(dead());
    s.sweep(dead());
    assert_eq!(s.sweep(dead()), Action::Restart);
    s.rec
        .as_mut()
        .unwrap()
        .restart_failed("Interactive authentication required.");
    assert_eq!(s.state(), Failing);
    assert_eq!(s.rec().monitor_restarts, 0);
    assert!(s
        .rec()
        .reason
        .as_deref()
        .unwrap()
        .contains("authentication"));
    assert_eq!(s.sweep(dead()), Action::Restart);
    assert_eq!(s.rec().budget.clone().used(s.t), 1);
}

#[test]
fn a_queued_restart_that_never_happens_is_judged_again() {
    let mut s = Sim::new();
    let dead = || obs(unit("active", 1), err(ProbeError::Refused), None);
    for _ in 0..3 {
        s.sweep(dead());
    }
    assert_eq!(s.state(), Restarting);
    for _ in 0..5 {
        s.sweep(dead()); // 50 s < restart_follow
        assert_eq!(s.state(), Restarting);
    }
    s.sweep(dead()); // 60 s: judged again
    assert_eq!((s.state(), s.rec().consecutive_failures), (Failing, 1));
}

#[test]
fn running_requests_with_frozen_tokens_are_a_hang_and_moving_tokens_are_busy() {
    let mut s = Sim::new();
    for i in 0..30 {
        s.sweep(obs(unit("active", 1), ok(), m(4.0, 1000.0 + i as f64)));
        assert_eq!(s.state(), Healthy);
    }
    // Idle with a frozen counter is fine too.
    for _ in 0..30 {
        s.sweep(obs(unit("active", 1), ok(), m(0.0, 5000.0)));
        assert_eq!(s.state(), Healthy);
    }
    // Requests running, counter frozen: hung once stall (30 s) has passed.
    s.sweep(obs(unit("active", 1), ok(), m(2.0, 5000.0)));
    s.sweep(obs(unit("active", 1), ok(), m(2.0, 5000.0)));
    assert_eq!(s.state(), Healthy);
    s.sweep(obs(unit("active", 1), ok(), m(2.0, 5000.0)));
    assert_eq!(s.state(), Failing);
    assert!(s
        .rec()
        .reason
        .as_deref()
        .unwrap()
        .contains("hung: 2 requests running"));
    s.sweep(obs(unit("active", 1), ok(), m(2.0, 5000.0)));
    assert_eq!(s.rec().consecutive_failures, 2);
    assert_eq!(
        s.sweep(obs(unit("active", 1), ok(), m(2.0, 5000.0))),
        Action::Restart
    );
}

#[test]
fn a_slow_health_answer_while_generating_is_not_a_failure() {
    let mut s = Sim::new();
    s.sweep(obs(unit("active", 1), ok(), m(8.0, 10.0)));
    s.sweep(obs(
        unit("active", 1),
        err(ProbeError::Timeout),
        m(8.0, 50.0),
    ));
    assert_eq!(s.state(), Healthy);
    assert!(s.rec().note.is_some());
    s.sweep(obs(unit("active", 1), err(ProbeError::Timeout), None));
    assert_eq!(s.state(), Failing);
}

fn deep(result: Result<Answer, ProbeError>, before: f64, after: f64, running: f64) -> DeepOutcome {
    DeepOutcome {
        result,
        before: m(running, before),
        after: m(running, after),
        timeout: S(30),
    }
}

#[test]
fn deep_probe_busy_vs_hung() {
    let mut s = Sim::new();
    s.sweep(obs(unit("active", 1), ok(), m(0.0, 0.0)));
    // Timed out, tokens moving: busy.
    let mut o = obs(unit("active", 1), ok(), m(3.0, 90.0));
    o.deep = Some(deep(Err(ProbeError::Timeout), 10.0, 90.0, 3.0));
    s.sweep(o);
    assert_eq!(s.state(), Healthy);
    assert!(s.rec().note.as_deref().unwrap().contains("busy"));
    // Timed out, idle and nothing generated: a failure, which sticks until a deep probe
    // passes.
    let mut o = obs(unit("active", 1), ok(), m(0.0, 90.0));
    o.deep = Some(deep(Err(ProbeError::Timeout), 90.0, 90.0, 0.0));
    s.sweep(o);
    assert_eq!(s.state(), Failing);
    assert!(s.rec().reason.as_deref().unwrap().contains("deep probe"));
    s.sweep(obs(unit("active", 1), ok(), m(0.0, 90.0)));
    assert_eq!((s.state(), s.rec().consecutive_failures), (Failing, 2));
    let mut o = obs(unit("active", 1), ok(), m(0.0, 91.0));
    o.deep = Some(deep(
        Ok(Answer {
            status: 200,
            latency: S(1),
        }),
        90.0,
        91.0,
        0.0,
    ));
    s.sweep(o);
    assert_eq!(s.state(), Healthy);
    // Timed out with running requests and no progress (the engine hung): failure, restart
    // at the threshold.
    for i in 0..3 {
        let mut o = obs(unit("active", 1), ok(), m(1.0, 91.0));
        o.deep = Some(deep(Err(ProbeError::Timeout), 91.0, 91.0, 1.0));
        let a = s.sweep(o);
        assert_eq!(a == Action::Restart, i == 2, "sweep {i}");
    }
}

#[test]
fn deep_probe_answers() {
    let mut s = Sim::new();
    let mut o = obs(unit("active", 1), ok(), None);
    o.deep = Some(deep(
        Ok(Answer {
            status: 401,
            latency: S(0),
        }),
        0.0,
        0.0,
        0.0,
    ));
    s.sweep(o);
    assert_eq!(s.state(), Healthy);
    assert!(s.rec().warning.as_deref().unwrap().contains("HTTP 401"));
    let mut o = obs(unit("active", 1), ok(), None);
    o.deep = Some(deep(
        Ok(Answer {
            status: 500,
            latency: S(0),
        }),
        0.0,
        0.0,
        0.0,
    ));
    s.sweep(o);
    assert_eq!(s.state(), Failing);
    assert_eq!(s.rec().warning, None);
}

#[test]
fn read_only_or_blind_never_restarts() {
    let mut s = Sim::new();
    s.p.may_restart = false;
    for _ in 0..20 {
        assert_eq!(
            s.sweep(obs(unit("active", 1), err(ProbeError::Refused), None)),
            Action::None
        );
    }
    assert_eq!((s.state(), s.rec().consecutive_failures), (Failing, 20));
    let mut s = Sim::new();
    for _ in 0..20 {
        assert_eq!(
            s.sweep(obs(None, err(ProbeError::Refused), None)),
            Action::None
        );
    }
    assert_eq!(s.state(), Failing);
    s.sweep(obs(None, ok(), None));
    assert_eq!(s.state(), Healthy);
}

#[test]
fn since_moves_only_on_a_change() {
    let mut s = Sim::new();
    s.sweep(obs(unit("active", 1), ok(), None));
    let since = s.rec().since;
    s.sweep(obs(unit("active", 1), ok(), None));
    assert_eq!(s.rec().since, since);
    s.sweep(obs(unit("active", 1), err(ProbeError::Refused), None));
    assert!(s.rec().since > since);
}
