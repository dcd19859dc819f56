use super::*;
use crate::systemd::fake::{unit, FakeHost};
use citadel_common::config::testing::A_B as MODELS;
use citadel_common::config::Paths;

struct Box_ {
    dir: tempfile::TempDir,
    file: std::path::PathBuf,
}

/// A config in a temp dir with its state dir, and `running` saved as the snapshot.
fn setup(running: &str) -> Box_ {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::under(dir.path()).to_toml();
    std::fs::create_dir_all(Paths::under(dir.path()).state_dir).unwrap();
    let file = dir.path().join("citadel.toml");
    std::fs::write(&file, format!("{paths}{running}")).unwrap();
    let cfg = Config::load(&file).unwrap();
    snapshot::save(&cfg).unwrap();
    Box_ { dir, file }
}

fn edit(b: &Box_, text: &str) {
    let paths = Paths::under(b.dir.path()).to_toml();
    std::fs::write(&b.file, format!("{paths}{text}")).unwrap();
}

fn opts(dry_run: bool) -> ApplyOptions {
    ApplyOptions {
        dry_run,
        json: false,
        wait: WaitOptions::for_tests(),
    }
}

fn host_all_active() -> FakeHost {
    let mut h = FakeHost::new();
    for u in ["citadel-model@a.service", "citadel-model@b.service"] {
        h = h.with(
            u,
            vec![
                unit(u, "active", false),
                unit(u, "activating", false),
                unit(u, "active", false),
            ],
        );
    }
    h.with(
        "citadel-monitor.service",
        vec![unit("citadel-monitor.service", "active", false)],
    )
}

#[test]
fn a_dry_run_touches_nothing() {
    let b = setup(MODELS);
    edit(
        &b,
        &MODELS.replace("port = 11402\n", "port = 11402\nmax_model_len = 8\n"),
    );
    let host = host_all_active();
    let mut out = vec![];
    assert_eq!(
        run(&host, &b.file, &opts(true), &mut out).unwrap(),
        Exit::Ok
    );
    assert!(host.recorded().is_empty(), "{:?}", host.recorded());
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("restart"), "{text}");
    assert!(text.contains("max_model_len: null -> 8"), "{text}");
}

#[test]
fn apply_restarts_the_changed_model_only_and_saves_the_snapshot() {
    if nix::unistd::geteuid().as_raw() != 0 {
        // execute() is what needs testing here; run() refuses non-root before it.
        let b = setup(MODELS);
        edit(
            &b,
            &MODELS.replace("port = 11402\n", "port = 11402\nmax_model_len = 8\n"),
        );
        let e = run(&host_all_active(), &b.file, &opts(false), &mut vec![]).unwrap_err();
        assert!(e.message.contains("must be run as root"), "{e}");
    }
    let b = setup(MODELS);
    let new = MODELS.replace("port = 11402\n", "port = 11402\nmax_model_len = 8\n");
    edit(&b, &new);
    let cfg = Config::load(&b.file).unwrap();
    let old = snapshot::load(&cfg).unwrap().unwrap().1;
    let plan = changes::plan(Some(&old), &cfg);
    let host = host_all_active();
    execute(&host, &cfg, &plan, &WaitOptions::for_tests(), &mut vec![]).unwrap();
    let calls = host.recorded();
    assert_eq!(
        calls,
        [
            "daemon-reload",
            "restart --no-block citadel-model@b.service",
        ],
        "the monitor probes the same models on the same ports: no reload"
    );
    // The new config is the running one now: nothing left to do.
    let again = changes::plan(snapshot::load(&cfg).unwrap().map(|s| s.1).as_ref(), &cfg);
    assert!(again.nothing_to_do(), "{again:?}");
}

#[test]
fn a_failed_step_stops_the_apply_and_names_it() {
    let b = setup(MODELS);
    let new = MODELS
        .replace("port = 11401\n", "port = 11401\nmax_model_len = 8\n")
        .replace("port = 11402\n", "port = 11402\nmax_model_len = 8\n");
    edit(&b, &new);
    let cfg = Config::load(&b.file).unwrap();
    let old = snapshot::load(&cfg).unwrap().unwrap().1;
    let plan = changes::plan(Some(&old), &cfg);
    let a = "citadel-model@a.service";
    let host = host_all_active().with(a, vec![unit(a, "active", true), unit(a, "failed", false)]);
    let e = execute(&host, &cfg, &plan, &WaitOptions::for_tests(), &mut vec![]).unwrap_err();
    assert!(
        e.message
            .starts_with("apply stopped at step 2/4 (restart a)"),
        "{e}"
    );
    assert!(e.message.contains("not done: restart b"), "{e}");
    assert!(
        !host.recorded().iter().any(|c| c.contains("model@b")),
        "b untouched"
    );
    // The snapshot still holds the old config.
    assert_eq!(snapshot::load(&cfg).unwrap().unwrap().1, old);
}

#[test]
fn an_invalid_config_is_78_and_nothing_is_touched() {
    let b = setup(MODELS);
    edit(&b, &format!("{MODELS}\n[bogus]\n"));
    let host = host_all_active();
    let e = run(&host, &b.file, &opts(false), &mut vec![]).unwrap_err();
    assert_eq!(e.exit(), Exit::Config);
    assert!(e.message.contains("bogus"), "{e}");
    assert!(host.recorded().is_empty());
}

#[test]
fn an_alias_or_limit_change_reloads_the_gateway_and_restarts_no_engine() {
    let b = setup(MODELS);
    let new = MODELS.replace(
        "port = 11402\n",
        "port = 11402\naliases = [\"bee\"]\nmax_concurrent = 2\n",
    );
    edit(&b, &format!("[gateway]\nqueue_limit = 9\n{new}"));
    let cfg = Config::load(&b.file).unwrap();
    let old = snapshot::load(&cfg).unwrap().unwrap().1;
    let plan = changes::plan(Some(&old), &cfg);
    assert!(
        plan.models
            .iter()
            .all(|m| m.action == changes::ModelAction::Unchanged),
        "{plan:?}"
    );
    let host = host_all_active().with(
        paths::UNIT_GATEWAY,
        vec![unit(paths::UNIT_GATEWAY, "active", false)],
    );
    execute(&host, &cfg, &plan, &WaitOptions::for_tests(), &mut vec![]).unwrap();
    assert_eq!(
        host.recorded(),
        ["daemon-reload", "reload citadel-gateway.service"]
    );
    // A stopped gateway is not started by a reload step: it reads the config when it starts.
    let b = setup(MODELS);
    edit(&b, &format!("[gateway]\nqueue_limit = 9\n{MODELS}"));
    let cfg = Config::load(&b.file).unwrap();
    let old = snapshot::load(&cfg).unwrap().unwrap().1;
    let plan = changes::plan(Some(&old), &cfg);
    let host = host_all_active().with(
        paths::UNIT_GATEWAY,
        vec![unit(paths::UNIT_GATEWAY, "inactive", false)],
    );
    let mut out = vec![];
    execute(&host, &cfg, &plan, &WaitOptions::for_tests(), &mut out).unwrap();
    assert_eq!(host.recorded(), ["daemon-reload"]);
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("gateway not running"));
}
