use super::*;
use citadel_common::config::testing::{config as cfg, A_B};

/// A monitor interval, then models a and b.
fn base() -> String {
    format!("\n[monitor]\ninterval_secs = 10\n{A_B}")
}

fn action(p: &Plan, name: &str) -> (ModelAction, Vec<String>) {
    let m = p.models.iter().find(|m| m.name == name).unwrap();
    (m.action, m.reasons.clone())
}

#[test]
fn the_same_config_is_nothing_to_do() {
    let c = cfg(&base());
    let p = plan(Some(&c), &c);
    assert!(p.nothing_to_do(), "{p:?}");
    assert_eq!(p.monitor.action, Action::Unchanged);
    assert!(p.refused.is_none());
}

#[test]
fn one_changed_key_restarts_that_model_only_and_says_why() {
    let new = base().replace("port = 11402\n", "port = 11402\nmax_model_len = 4096\n");
    let p = plan(Some(&cfg(&base())), &cfg(&new));
    assert_eq!(action(&p, "a").0, ModelAction::Unchanged);
    assert_eq!(
        action(&p, "b"),
        (
            ModelAction::Restart,
            vec!["max_model_len: null -> 4096".into()]
        )
    );
    assert_eq!(
        p.steps,
        [
            Step::DaemonReload,
            Step::Restart("b".into()),
            Step::Snapshot
        ]
    );
}

#[test]
fn load_timeout_is_a_note_not_a_restart() {
    let new = base().replace("port = 11402\n", "port = 11402\nload_timeout_secs = 60\n");
    let p = plan(Some(&cfg(&base())), &cfg(&new));
    assert_eq!(action(&p, "b").0, ModelAction::Unchanged);
    assert_eq!(p.steps, [Step::DaemonReload, Step::Snapshot]);
    assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
    assert!(
        p.notes[0].contains("models.b.load_timeout_secs: 1800 -> 60"),
        "{:?}",
        p.notes
    );
}

#[test]
fn a_monitor_interval_is_a_reload() {
    let new = base().replace("interval_secs = 10", "interval_secs = 20");
    let p = plan(Some(&cfg(&base())), &cfg(&new));
    assert_eq!(p.monitor.action, Action::Reload);
    assert_eq!(p.monitor.reasons, ["monitor.interval_secs: 10 -> 20"]);
    assert_eq!(
        p.steps,
        [Step::DaemonReload, Step::MonitorReload, Step::Snapshot]
    );
}

#[test]
fn a_swap_of_gpus_that_over_commits_midway_is_refused() {
    let new = base()
        .replace("gpus = [0]", "gpus = [X]")
        .replace("gpus = [1]", "gpus = [0]")
        .replace("gpus = [X]", "gpus = [1]");
    let p = plan(Some(&cfg(&base())), &cfg(&new));
    assert!(p.steps.is_empty());
    let r = p.refused.unwrap();
    assert!(r.contains("over-commit GPU 1"), "{r}");
    assert!(r.contains("a (0.6) + b (0.6) = 1.20"), "{r}");
}

#[test]
fn an_order_that_fits_is_found() {
    // a moves onto GPU 1 only after b has left it for GPU 2: b must go first.
    let new = base()
        .replace("gpus = [1]", "gpus = [2]")
        .replace("gpus = [0]", "gpus = [1]");
    let p = plan(Some(&cfg(&base())), &cfg(&new));
    assert!(p.refused.is_none(), "{p:?}");
    assert_eq!(
        p.steps,
        [
            Step::DaemonReload,
            Step::Restart("b".into()),
            Step::Restart("a".into()),
            Step::Snapshot
        ]
    );
}

#[test]
fn without_a_snapshot_every_enabled_model_is_started() {
    let p = plan(None, &cfg(&base()));
    assert_eq!(
        action(&p, "a"),
        (
            ModelAction::Start,
            vec!["no snapshot of the running config".into()]
        )
    );
    assert_eq!(p.monitor.action, Action::Reload);
}
