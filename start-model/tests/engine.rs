//! Black-box tests of start-model running the stand-in engine (`citadel-standin`, see
//! tests/support/mod.rs for how it is found) with a fake `NOTIFY_SOCKET`.
//!
//! The stand-in's knobs reach it through the config's `[engine.env]`: start-model gives the
//! engine a clean environment, so variables of the test process never leak into it.

mod support;

use std::time::{Duration, Instant};
use support::{engine_pid, group_members, sigterm, wait_exit, Setup, TestBox};

const LONG: Duration = Duration::from_secs(30);

fn health(port: u16) -> Option<u16> {
    citadel_common::probe::Prober::new(Duration::from_secs(2))
        .get(&format!("http://127.0.0.1:{port}/health"), None)
        .ok()
        .map(|r| r.status)
}

/// No process of the engine's group remains (zombies included).
fn assert_group_gone(pgrp: u32) {
    let left = group_members(pgrp);
    assert!(
        left.is_empty(),
        "processes of group {pgrp} survived: {left:?}"
    );
}

#[test]
fn ready_only_after_health_answers_then_sigterm_stops_cleanly() {
    let b = TestBox::new(Setup::default().env("STANDIN_LOAD_SECS", "2"));
    let t0 = Instant::now();
    let mut sm = b.spawn(&[]);
    let engine = engine_pid(sm.id());
    // Loading: the engine runs, nothing answers, no READY yet.
    assert!(b
        .notify
        .wait_for("STATUS=loading m", Duration::from_secs(5))
        .is_some());
    assert_eq!(health(b.port), None, "the stand-in answered while loading");
    assert!(
        !b.notify.all().iter().any(|m| m.contains("READY=1")),
        "READY at spawn"
    );
    let ready = b.notify.wait_for("READY=1", LONG).unwrap_or_else(|| {
        panic!(
            "no READY; notify {:?}; stderr:\n{}",
            b.notify.all(),
            b.stderr()
        )
    });
    assert!(
        ready.duration_since(t0) >= Duration::from_millis(1800),
        "READY after {:?}, before the 2 s load ended",
        ready.duration_since(t0)
    );
    assert_eq!(health(b.port), Some(200));
    let msgs = b.notify.all();
    let r = msgs.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(
        r.contains(&format!("STATUS=serving m on {}", b.port)),
        "{r}"
    );
    // The GPU lock was released at READY: a second taker gets it at once.
    let lock = citadel_common::paths::gpu_lock_file(&b.paths().runtime_dir, 0);
    let f = std::fs::File::open(&lock).unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("GPU lock still held after READY");

    let t1 = Instant::now();
    sigterm(sm.id());
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(0)), "{}", b.stderr());
    assert!(
        t1.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t1.elapsed()
    );
    assert!(b
        .notify
        .wait_for("STOPPING=1", Duration::from_secs(1))
        .is_some());
    assert_group_gone(engine);
}

#[test]
fn load_timeout_kills_the_engine_and_exits_non_zero() {
    let b = TestBox::new(
        Setup {
            model_extra: "load_timeout_secs = 2\n".into(),
            ..Setup::default()
        }
        .env("STANDIN_LOAD_SECS", "60")
        .env("STANDIN_ENGINE_CORE", "1"),
    );
    let t0 = Instant::now();
    let mut sm = b.spawn(&[]);
    let engine = engine_pid(sm.id());
    let code = wait_exit(&mut sm, LONG).expect("start-model did not give up");
    assert_eq!(code, Some(1), "{}", b.stderr());
    assert!(t0.elapsed() >= Duration::from_secs(2));
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    let err = b.stderr();
    assert!(
        err.contains("within 2 s") && err.contains("load_timeout_secs"),
        "{err}"
    );
    assert!(!b.notify.all().iter().any(|m| m.contains("READY=1")));
    assert_group_gone(engine);
}

#[test]
fn engine_crash_is_a_failure_and_its_surviving_child_is_killed() {
    let b = TestBox::new(
        Setup::default()
            .env("STANDIN_CRASH_AFTER_SECS", "1")
            .env("STANDIN_ENGINE_CORE", "1"),
    );
    let (mut sm, engine) = b.start_ready();
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(1)), "{}", b.stderr());
    let err = b.stderr();
    assert!(err.contains("was killed by signal SIGABRT"), "{err}");
    assert!(
        err.contains("Fatal Python error: Aborted"),
        "last stderr lines quoted: {err}"
    );
    assert_group_gone(engine);
}

#[test]
fn engine_exit_0_is_still_a_failure() {
    let b = TestBox::new(
        Setup::default()
            .env("STANDIN_EXIT_AFTER_SECS", "1")
            .env("STANDIN_EXIT_CODE", "0"),
    );
    let (mut sm, engine) = b.start_ready();
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(1)), "{}", b.stderr());
    let err = b.stderr();
    assert!(
        err.contains("exited with status 0") && err.contains("48966"),
        "{err}"
    );
    assert_group_gone(engine);
}

#[test]
fn engine_exit_non_zero_is_a_failure() {
    let b = TestBox::new(
        Setup::default()
            .env("STANDIN_EXIT_AFTER_SECS", "2")
            .env("STANDIN_EXIT_CODE", "7"),
    );
    let (mut sm, _) = b.start_ready();
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(1)), "{}", b.stderr());
    assert!(
        b.stderr().contains("exited with status 7"),
        "{}",
        b.stderr()
    );
}

#[test]
fn engine_killed_by_a_signal_is_a_failure() {
    let b = TestBox::new(Setup::default());
    let (mut sm, engine) = b.start_ready();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(engine as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(1)), "{}", b.stderr());
    assert!(
        b.stderr().contains("was killed by signal SIGKILL"),
        "{}",
        b.stderr()
    );
    assert_group_gone(engine);
}

#[test]
fn engine_failing_at_start_is_a_failure_with_its_stderr() {
    let b = TestBox::new(Setup::default().env("STANDIN_FAIL_AT_START", "1"));
    let mut sm = b.spawn(&[]);
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(1)), "{}", b.stderr());
    let err = b.stderr();
    assert!(err.contains("while loading"), "{err}");
    assert!(err.contains("Engine core initialization failed"), "{err}");
    assert!(!b.notify.all().iter().any(|m| m.contains("READY=1")));
}

/// SIGTERM with an engine child that ignores SIGTERM: start-model waits the grace, then
/// SIGKILLs the group, exits 0, and nothing of the group survives.
#[test]
fn sigterm_escalates_to_sigkill_and_leaves_no_process_of_the_group() {
    let b = TestBox::new(Setup {
        engine_extra: "stop_grace_secs = 2\nport_wait_secs = 1\n".into(),
        ..Setup::default()
            .env("STANDIN_LEAVE_CHILD", "1")
            .env("STANDIN_CHILD_IGNORE_TERM", "1")
    });
    let (mut sm, engine) = b.start_ready();
    let members = group_members(engine);
    assert!(
        members.len() >= 2,
        "the stand-in left no child: {members:?}"
    );
    let t0 = Instant::now();
    sigterm(sm.id());
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(0)), "{}", b.stderr());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "did not wait the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "stop took {took:?}");
    assert!(b.stderr().contains("was killed"), "{}", b.stderr());
    assert_group_gone(engine);
}

/// SIGTERM while the engine still loads: a clean stop too (exit 0, no READY, group gone).
#[test]
fn sigterm_while_loading_stops_cleanly() {
    let b = TestBox::new(Setup::default().env("STANDIN_LOAD_SECS", "30"));
    let mut sm = b.spawn(&[]);
    let engine = engine_pid(sm.id());
    assert!(b
        .notify
        .wait_for("STATUS=loading", Duration::from_secs(5))
        .is_some());
    sigterm(sm.id());
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(0)), "{}", b.stderr());
    assert!(!b.notify.all().iter().any(|m| m.contains("READY=1")));
    assert_group_gone(engine);
}

#[test]
fn the_api_key_is_in_the_engine_environment_and_on_no_command_line() {
    let b = TestBox::new(Setup::default());
    let secret = format!("sk-citadel-test-{}", std::process::id());
    let creds = b.path("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("api-key"), format!("{secret}\n")).unwrap();
    let mut sm = b.spawn(&[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())]);
    let engine = engine_pid(sm.id());
    assert!(
        b.notify.wait_for("READY=1", LONG).is_some(),
        "{}",
        b.stderr()
    );
    let environ = std::fs::read(format!("/proc/{engine}/environ")).unwrap();
    let vars: Vec<String> = environ
        .split(|c| *c == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(vars.contains(&format!("VLLM_API_KEY={secret}")), "{vars:?}");
    assert!(vars
        .iter()
        .all(|v| !v.starts_with("CREDENTIALS_DIRECTORY=") && !v.starts_with("NOTIFY_SOCKET=")));
    for pid in support::all_pids() {
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmd).contains(&secret),
                "the key is on the command line of PID {pid}"
            );
        }
    }
    // The engine enforces it: /v1 needs the key.
    let p = citadel_common::probe::Prober::new(Duration::from_secs(2));
    let url = format!("http://127.0.0.1:{}/v1/models", b.port);
    assert_eq!(p.get(&url, None).unwrap().status, 401);
    assert_eq!(p.get(&url, Some(&secret)).unwrap().status, 200);
    sigterm(sm.id());
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(0)));
}

/// Two models on one GPU initialise one at a time: the second spawns its engine only after the
/// first is ready, and says whose lock it waits for.
#[test]
fn models_sharing_a_gpu_load_one_at_a_time() {
    let port2 = support::free_port();
    let b = TestBox::new(Setup {
        tail: format!(
            "[models.n]\npath = \"m\"\nport = {port2}\ngpus = [0]\ngpu_memory_utilization = 0.4\n"
        ),
        ..Setup::default().env("STANDIN_LOAD_SECS", "2")
    });
    let mut first = b.spawn(&[]);
    engine_pid(first.id());
    // The second one, with its own notify socket.
    std::fs::create_dir(b.path("n2")).unwrap();
    let n2 = support::Notify::bind(&b.path("n2"));
    let log2 = std::fs::File::create(b.path("n.log")).unwrap();
    let mut second = b.command(&["n"]);
    second
        .env("NOTIFY_SOCKET", &n2.path)
        .stdout(std::process::Stdio::null())
        .stderr(log2);
    let mut second = second.spawn().unwrap();
    let waiting = n2.wait_for(
        "waiting for GPU 0 lock held by m pid",
        Duration::from_secs(10),
    );
    assert!(
        waiting.is_some(),
        "{:?} / {}",
        n2.all(),
        std::fs::read_to_string(b.path("n.log")).unwrap()
    );
    assert!(
        support::children(second.id()).is_empty(),
        "spawned while the lock was held"
    );
    let ready1 = b.notify.wait_for("READY=1", LONG).expect("first READY");
    let ready2 = n2.wait_for("READY=1", LONG).expect("second READY");
    assert!(
        ready2.duration_since(ready1) >= Duration::from_millis(1800),
        "the second loaded while the first did"
    );
    sigterm(first.id());
    sigterm(second.id());
    assert_eq!(wait_exit(&mut first, LONG), Some(Some(0)));
    assert_eq!(wait_exit(&mut second, LONG), Some(Some(0)));
}

#[test]
fn sigint_stops_like_sigterm() {
    let b = TestBox::new(Setup::default());
    let (mut sm, engine) = b.start_ready();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sm.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(0)), "{}", b.stderr());
    assert!(b.stderr().contains("SIGINT"), "{}", b.stderr());
    assert_group_gone(engine);
}
