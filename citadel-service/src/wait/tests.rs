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
        listen: None,
    }
}

fn opts(tty: bool) -> WaitOptions {
    WaitOptions {
        timeout: Duration::from_secs(60),
        poll: Duration::from_secs(1),
        tty,
        color: false,
        attempts: true,
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
    u.sub_state = "auto-restart".into();
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
             [    5s] b: failed (citadel-model@b.service): result exit-code\n\
             [    5s] b: attempt 1 failed (exit status 0): no error line from start-model in the journal\n"
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
    loading.status_text = "loading a on GPU 0".into();
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

fn attempt(name: &str, state: &str, sub: &str, restarts: u32, status: i32) -> Unit {
    let mut u = unit(name, state, false);
    u.sub_state = sub.into();
    u.n_restarts = restarts;
    u.exec_main_status = status;
    u
}

#[test]
fn each_failed_attempt_is_shown_with_its_cause_and_a_repeat_stops_the_wait() {
    let c = "citadel-model@c.service";
    let mut host = FakeHost::new().with(
        c,
        vec![
            attempt(c, "activating", "start", 0, 0),
            attempt(c, "activating", "auto-restart", 0, 1),
            attempt(c, "activating", "start", 1, 1),
            // The second failure and its restart fall between two polls.
            attempt(c, "activating", "start", 2, 1),
            attempt(c, "activating", "start", 2, 1),
        ],
    );
    let said = "engine of c (PID 7) exited with status 1 while loading, without a stop being asked; the engine said: ValueError: max_model_len (4096) > 512";
    host.causes.insert(c.into(), vec![said.into()]);
    let mut out = vec![];
    let o = wait(&host, &[member("c")], start_phase, &opts(false), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains(
            "[    1s] c: attempt 1 failed (exit status 1): ValueError: max_model_len (4096) > 512"
        ),
        "{text}"
    );
    assert!(text.contains("[    3s] c: attempt 2 failed"), "{text}");
    assert!(text.contains("the same failure twice in a row"), "{text}");
    assert!(!o.timed_out);
    assert_eq!(o.elapsed, Duration::from_secs(3));
    let w = &o.gave_up()[0];
    assert_eq!(w.failed_attempts, 2);
    assert_eq!(
        w.gave_up.as_deref(),
        Some("ValueError: max_model_len (4096) > 512")
    );
}

#[test]
fn different_failures_and_temporary_ones_keep_the_wait_going() {
    let c = "citadel-model@c.service";
    let mut host = FakeHost::new().with(
        c,
        vec![
            attempt(c, "activating", "auto-restart", 0, 75),
            attempt(c, "activating", "start", 1, 75),
            attempt(c, "activating", "auto-restart", 1, 75),
            attempt(c, "activating", "start", 2, 75),
            attempt(c, "activating", "auto-restart", 2, 1),
            attempt(c, "activating", "start", 3, 1),
            attempt(c, "active", "running", 3, 0),
        ],
    );
    host.causes.insert(
        c.into(),
        vec![
            "port 18203 is busy".into(),
            "port 18203 is busy".into(),
            "port 18203 is busy".into(),
            "port 18203 is busy".into(),
            "x; the engine said: OSError: one".into(),
        ],
    );
    let mut out = vec![];
    let o = wait(&host, &[member("c")], start_phase, &opts(false), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("failed (exit status").count(), 3, "{text}");
    assert!(!text.contains("same failure"), "{text}");
    assert_eq!(o.in_phase(Phase::Ready).len(), 1);
    assert!(o.gave_up().is_empty());
}
