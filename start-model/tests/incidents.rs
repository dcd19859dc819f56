//! start-model's incidents, against the stand-in engine: the first failure of a series kept
//! across restarts (stdout and stderr both in the excerpt), a quarantined GPU refused with 69.

mod support;

use citadel_common::classify::Class;
use citadel_common::incident::{Event, Store};
use std::time::Duration;
use support::{wait_exit, Setup, TestBox};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn the_first_failure_is_kept_across_five_restarts() {
    let b = TestBox::new(Setup::default().env("STANDIN_FAIL_AT_START", "1"));
    // systemd's Restart=always, five times.
    for _ in 0..5 {
        let mut sm = b.spawn(&[]);
        assert_eq!(wait_exit(&mut sm, LONG), Some(Some(1)), "{}", b.stderr());
    }
    let state = b.paths().state_dir;
    let all = Store::open(&state).unwrap().list().unwrap();
    assert_eq!(all.len(), 1, "one series, not five files: {all:?}");
    let i = &all[0];
    assert_eq!(i.count, 5);
    assert_eq!(i.event, Event::StartFailure);
    assert_eq!(i.exit.as_ref().unwrap().code, Some(1));
    assert!(i.is_open());
    let last = i.last.as_ref().expect("the latest repeat");
    assert!(last.time_unix >= i.time_unix);
    // stdout and stderr of the engine are both in the excerpt.
    let ex = i.excerpt.join("\n");
    assert!(
        ex.contains("EngineCore failed to start"),
        "stdout missing: {ex}"
    );
    assert!(
        ex.contains("Engine core initialization failed"),
        "stderr missing: {ex}"
    );
    // The exit message names the class and the fix.
    assert!(b.stderr().contains("-- fix: "), "{}", b.stderr());
}

#[test]
fn a_quarantined_gpu_is_refused_with_69_and_an_incident() {
    let b = TestBox::new(Setup::default());
    let state = b.paths().state_dir;
    std::fs::create_dir_all(&state).unwrap();
    citadel_common::quarantine::set(
        &state,
        &citadel_common::quarantine::Quarantine {
            gpu: 0,
            xid: Some(79),
            what: "Xid 79 (GPU has fallen off the bus)".into(),
            time_unix: 1,
            models: vec!["m".into()],
        },
    )
    .unwrap();
    let mut sm = b.spawn(&[]);
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(69)), "{}", b.stderr());
    let err = b.stderr();
    assert!(err.contains("GPU 0 is quarantined"), "{err}");
    assert!(err.contains("citadel-service gpu clear 0"), "{err}");
    let i = Store::open(&state)
        .unwrap()
        .latest("m")
        .unwrap()
        .expect("incident");
    assert_eq!(
        (i.class, i.event, i.gpu, i.xid),
        (Class::GpuFault, Event::Refused, Some(0), Some(79))
    );
    // Cleared: it starts (and the stand-in serves).
    citadel_common::quarantine::clear(&state, 0).unwrap();
    let mut sm = b.spawn(&[]);
    assert!(
        b.notify.wait_for("READY=1", LONG).is_some(),
        "{}",
        b.stderr()
    );
    support::sigterm(sm.id());
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(0)));
    let i = Store::open(&state).unwrap().latest("m").unwrap().unwrap();
    assert!(!i.is_open(), "serving closed the incident");
}
