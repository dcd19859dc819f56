//! The benchmarks that need a real systemd: one Debian 12 box (the `citadel-system-tests`
//! harness) with the .deb installed and the three-model test config. Crash and hang recovery
//! (2), the slow load (3), the monitor's footprint under systemd (4c, 4d), `status --json`
//! latency (5), the oneshots' own timestamps (6c-6f).
//!
//! Clocks: every "when" is CLOCK_MONOTONIC, which the box shares with the host: the fault is
//! injected from the host (SIGKILL by host PID; the hang request from a thread inside the box's
//! network namespace) and stamped there, and systemd's `*TimestampMonotonic` properties say
//! when the unit left active, when the new main process started and when it was ready again.
//!
//! Over 500 lines as one concern: the benchmarks that share one box, each with its fault
//! injection and its timestamps.

use crate::cleanup;
use crate::procs::{self, monotonic_us, netns_http};
use crate::report::{Row, Target};
use crate::stats::{Figure, Unit};
use citadel_common::paths::{model_unit, SYSTEMCTL, UNIT_GPU, UNIT_MONITOR, UNIT_STORAGE};
use citadel_system_tests::citadel::{Citadel, Setup, CITADEL_SERVICE, MODELS};
use citadel_system_tests::run::wait_for;
use citadel_system_tests::sdbox;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub const BOX: &str = "citadel-bench";
/// Where the bench binary goes inside the box (for its `time-argv` helper).
const BENCH_IN_BOX: &str = "/usr/local/bin/citadel-bench";
const SEC: Duration = Duration::from_secs(1);

/// What the container part runs.
pub struct Plan {
    pub recover_runs: usize,
    pub oneshot_runs: usize,
    pub status_runs: usize,
    pub slow_load: Duration,
    /// The steady-state window of the in-box monitor (4c, 4d).
    pub steady: Duration,
}

/// The rows of this part, each skipped with `why`.
pub fn run_skipped(why: &str) -> Vec<Row> {
    all_rows_without(why)
}

/// The rows this part fills, each failed or skipped with `why`.
fn all_rows_without(why: &str) -> Vec<Row> {
    let mut rows = vec![];
    for (id, what) in ROWS {
        let mut r = Row::new(id, *what, Err(why.to_string()));
        if let Some(t) = target_of(id) {
            r = r.target(t);
        }
        rows.push(r);
    }
    rows
}

const ROWS: &[(&str, &str)] = &[
    ("2a", "crash -> unit leaves active (detection)"),
    ("2b", "crash: left active -> new main process (restart)"),
    ("2c", "crash: new main process -> ready (load)"),
    ("2d", "crash -> serving again (total)"),
    ("2e", "hang -> unit leaves active (detection)"),
    ("2f", "hang: left active -> new main process (restart)"),
    ("2g", "hang: new main process -> ready (load)"),
    ("2h", "hang -> serving again (total)"),
    ("3", "monitor restarts during a slow load"),
    ("4c", "health-monitor CPU under systemd (with children)"),
    ("4d", "health-monitor VmRSS under systemd"),
    ("5", "citadel-service status --json, whole box"),
    ("6c", "storage-setup ExecMain start -> exit, in box"),
    ("6d", "gpu-optimize ExecMain start -> exit, in box"),
    ("6e", "citadel-storage.service activation, in box"),
    ("6f", "citadel-gpu.service activation, in box"),
];

fn target_of(id: &str) -> Option<Target> {
    match id {
        "3" => Some(Target::max_at_most("0", 0.0)),
        "4c" => Some(Target::median_at_most("< 1 % of one core", 1.0)),
        "4d" => Some(Target::max_at_most("< 10 MiB", 10.0)),
        "5" => Some(Target::median_at_most("< 100 ms", 100.0)),
        "6c" | "6d" | "6e" | "6f" => Some(Target::median_at_most("< 50 ms", 50.0)),
        _ => None,
    }
}

fn row(id: &str, fig: Result<Figure, String>) -> Row {
    let what = ROWS.iter().find(|(i, _)| *i == id).map_or("?", |(_, w)| *w);
    let mut r = Row::new(id, what, fig);
    if let Some(t) = target_of(id) {
        r = r.target(t);
    }
    r
}

/// The box, torn down on drop (and registered for cleanup on a panic or a signal meanwhile).
struct BoxGuard(Option<Citadel>);

impl Drop for BoxGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            eprintln!("citadel-bench: powering the box off");
            drop(c);
        }
        cleanup::remove_box(BOX);
    }
}

pub fn run(plan: &Plan, deb: Result<std::path::PathBuf, String>) -> Vec<Row> {
    if let Some(why) = sdbox::missing_prerequisite() {
        return all_rows_without(&format!("skipped: {why}"));
    }
    let deb = match deb {
        Ok(d) => d,
        Err(e) => return all_rows_without(&format!("failed: no .deb: {e}")),
    };
    std::env::set_var("CITADEL_DEB", &deb);
    let setup = Setup {
        restart_budget: 100,
        load_timeout_secs: plan.slow_load.as_secs() + 300,
        ..Setup::default()
    };
    cleanup::add_box(BOX);
    eprintln!(
        "citadel-bench: booting the box and installing {}",
        deb.display()
    );
    let t0 = Instant::now();
    let guard = match Citadel::install(BOX, setup) {
        Ok(c) => BoxGuard(Some(c)),
        Err(e) => {
            cleanup::remove_box(BOX);
            return all_rows_without(&format!("failed: box: {}", first_line(&e)));
        }
    };
    eprintln!(
        "citadel-bench: box ready in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let Some(c) = guard.0.as_ref() else {
        return all_rows_without("failed: no box");
    };
    match measure(c, plan) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("citadel-bench: container part failed: {e}");
            all_rows_without(&format!("failed: {}", first_line(&e)))
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(160).collect()
}

/// `systemctl show` properties as numbers (absent or unparsable: 0).
fn nums(c: &Citadel, unit: &str, props: &[&str]) -> BTreeMap<String, u64> {
    c.show(unit, props)
        .into_iter()
        .map(|(k, v)| {
            let n = v.parse().unwrap_or(0);
            (k, n)
        })
        .collect()
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn measure(c: &Citadel, plan: &Plan) -> Result<Vec<Row>, String> {
    let leader = c.sb.leader();
    // /proc/self/exe, not current_exe(): a rebuild may have replaced the file since we started.
    c.sb.install(std::path::Path::new("/proc/self/exe"), BENCH_IN_BOX)?;
    let mut rows = vec![];

    // 6c-6f: the oneshots, started and stopped by hand before anything else runs.
    eprintln!("citadel-bench: oneshot units x{}", plan.oneshot_runs);
    let mut exec: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut act: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..plan.oneshot_runs {
        c.sb.exec_t(&[SYSTEMCTL, "start", UNIT_STORAGE, UNIT_GPU], 60 * SEC)
            .ok()
            .map_err(|e| format!("starting the oneshots: {e}\n{}", c.journal_tail(40)))?;
        for u in [UNIT_STORAGE, UNIT_GPU] {
            let p = nums(
                c,
                u,
                &[
                    "ExecMainStartTimestampMonotonic",
                    "ExecMainExitTimestampMonotonic",
                    "InactiveExitTimestampMonotonic",
                    "ActiveEnterTimestampMonotonic",
                    "ExecMainStatus",
                ],
            );
            if p["ExecMainStatus"] != 0 {
                return Err(format!("{u} exited {}", p["ExecMainStatus"]));
            }
            let d = |a: &str, b: &str| ms(p[b].saturating_sub(p[a]));
            exec.entry(u).or_default().push(d(
                "ExecMainStartTimestampMonotonic",
                "ExecMainExitTimestampMonotonic",
            ));
            act.entry(u).or_default().push(d(
                "InactiveExitTimestampMonotonic",
                "ActiveEnterTimestampMonotonic",
            ));
        }
        c.sb.exec_t(&[SYSTEMCTL, "stop", UNIT_GPU, UNIT_STORAGE], 60 * SEC)
            .ok()
            .map_err(|e| format!("stopping the oneshots: {e}"))?;
    }
    // The same binaries run directly in the box (no unit sandbox), for the why of 6c-6f.
    let lib = citadel_common::paths::LIBEXEC_DIR;
    let direct_storage = time_in_box(c, plan.oneshot_runs, &[&format!("{lib}/storage-setup")]);
    let direct_gpu = time_in_box(c, plan.oneshot_runs, &[&format!("{lib}/gpu-optimize")]);
    let show = |f: &Result<Figure, String>| {
        f.as_ref()
            .map_or_else(|e| format!("unknown ({e})"), |f| f.show_median())
    };
    let oneshot_note = format!(
        "systemd's own timestamps of the unit in the box (`systemctl start {UNIT_STORAGE} \
         {UNIT_GPU}`, then stop, {} times, before any model runs; the first run creates the \
         directories, later runs find them); no GPU in the box and gpu.required = false; run \
         directly in the box, outside their units (fork+exec to exit), storage-setup takes {} \
         and gpu-optimize {}",
        plan.oneshot_runs,
        show(&direct_storage),
        show(&direct_gpu),
    );
    for (id, u, is_exec, direct) in [
        ("6c", UNIT_STORAGE, true, &direct_storage),
        ("6d", UNIT_GPU, true, &direct_gpu),
        ("6e", UNIT_STORAGE, false, &direct_storage),
        ("6f", UNIT_GPU, false, &direct_gpu),
    ] {
        let m = if is_exec { &exec } else { &act };
        let fig = Figure::new(Unit::Ms, m.get(u).cloned().unwrap_or_default());
        let what = if is_exec {
            "ExecMainStartTimestamp -> ExecMainExitTimestamp (systemd stamps the start when it \
             forks, so this includes setting up the unit's sandbox in the child before exec)"
        } else {
            "InactiveExitTimestamp -> ActiveEnterTimestamp: the whole activation of the oneshot"
        };
        let why = format!(
            "run directly in the box the binary takes {} of the {}; the rest is systemd's side: \
             forking from PID 1 and building the unit's sandbox in the child before exec: the namespaces and bind mounts \
             of PrivateNetwork=, PrivateDevices=, ProtectSystem=/ProtectHome=/ProtectKernel*= \
             (on this busy 2-core machine). Fix: nothing in the binary; fewer namespace-creating \
             options in the unit would trade hardening for milliseconds, once per boot.",
            show(direct),
            fig.show_median()
        );
        rows.push(
            row(id, Ok(fig))
                .note(format!("{what}; {oneshot_note}"))
                .if_missed(why),
        );
    }

    // Start the box as an operator does.
    eprintln!("citadel-bench: starting citadel-ai.target");
    c.start_all()?;
    c.wait_all_healthy(60 * SEC)?;
    wait_for(30 * SEC, SEC / 2, || {
        let o = c.sb.exec(&["cat", "/run/citadel/health.json"]);
        (o.stdout.matches("\"healthy\"").count() >= MODELS.len()).then_some(())
    })
    .ok_or_else(|| {
        format!(
            "the monitor never saw 3 healthy models\n{}",
            c.journal_tail(60)
        )
    })?;

    // 5: status --json latency, timed inside the box.
    eprintln!("citadel-bench: status --json x{}", plan.status_runs);
    let status = time_in_box(c, plan.status_runs, &[CITADEL_SERVICE, "status", "--json"]);
    let show = time_in_box(
        c,
        plan.status_runs.min(6),
        &[SYSTEMCTL, "show", "-p", "ActiveState", UNIT_MONITOR],
    );
    let show_note = show
        .as_ref()
        .map(|f| {
            format!(
                "a bare `systemctl show -p ActiveState` takes {} there",
                f.show_median()
            )
        })
        .unwrap_or_default();
    rows.push(
        row("5", status)
            .note(format!(
                "`{CITADEL_SERVICE} status --json` in the box with the 3 test models, the \
                 oneshots and the monitor up (9 units), reading the monitor's state file (no \
                 --probe); timed inside the box by `citadel-bench time-argv` (fork+exec to exit, \
                 output discarded), one warm-up run not counted; {show_note}"
            ))
            .if_missed(
                "status asks systemd for every unit (one `systemctl show` per call) and reads \
                 /proc; the figure is dominated by systemctl's own start and D-Bus round trip \
                 (see the bare systemctl figure in the note). Fix: one `systemctl show` for all \
                 units (already the case if the bare figure is close), or talk to systemd over \
                 D-Bus directly instead of spawning systemctl.",
            ),
    );

    // 4c, 4d: the monitor under systemd at steady state (3 healthy models).
    let mon_pid = procs::host_pid(leader, c.main_pid(UNIT_MONITOR) as i32)
        .ok_or("cannot find the monitor's host PID")?;
    let slices = 3u32;
    eprintln!(
        "citadel-bench: the monitor at steady state for {}s",
        plan.steady.as_secs()
    );
    let (mut pct, mut rss) = (vec![], vec![]);
    let (own0, kids0) = procs::cpu_secs(mon_pid)?;
    let t_mon0 = Instant::now();
    let mut prev = (own0 + kids0, t_mon0);
    for _ in 0..slices {
        for _ in 0..5 {
            std::thread::sleep(plan.steady / slices / 5);
            rss.push(procs::rss_kib(mon_pid)?.0 as f64 / 1024.0);
        }
        let (o, k) = procs::cpu_secs(mon_pid)?;
        let now = Instant::now();
        pct.push((o + k - prev.0) / (now - prev.1).as_secs_f64() * 100.0);
        prev = (o + k, now);
    }
    let (own1, kids1) = procs::cpu_secs(mon_pid)?;
    let window = t_mon0.elapsed().as_secs_f64();
    let (own, kids) = (own1 - own0, kids1 - kids0);
    let per_hour = (own + kids) / window * 3600.0;
    rows.push(
        row("4c", Ok(Figure::new(Unit::Percent, pct)))
            .note(format!(
                "the installed monitor in the box (citadel-monitor.service, 3 healthy models, \
                 interval 1 s, deep probe every 2 s: the harness's short values), read from the \
                 host at /proc/PID/stat: its own utime+stime plus its waited-for children's \
                 (cutime+cstime: any process it starts; it reads unit states over D-Bus), over {slices} slices of \
                 {window:.0} s: {own:.2} CPU-s itself + {kids:.2} CPU-s of children = \
                 {per_hour:.1} CPU-s per hour (extrapolated linearly)"
            ))
            .if_missed(format!(
                "the monitor itself used {own:.2} CPU-s ({:.2} % of one core) and the processes \
                 it started {kids:.2} CPU-s in {window:.0} s ({:.0} % of the figure). Fix \
                 (health-monitor): whatever it spawns per sweep (it should start none: unit \
                 states and jobs go over D-Bus), then its own loop; or keep the shipped 10 s \
                 interval, which costs a tenth of this.",
                own / window * 100.0,
                if own + kids > 0.0 {
                    kids / (own + kids) * 100.0
                } else {
                    0.0
                }
            )),
    );

    // 3: the slow load starts now; 2 runs meanwhile on the other models.
    let gamma = &MODELS[2];
    let gunit = model_unit(gamma.name);
    let load_secs = plan.slow_load.as_secs();
    eprintln!(
        "citadel-bench: {} loads for {load_secs}s from now",
        gamma.name
    );
    c.set_faults(gamma.name, &format!("LOAD_SECS={load_secs}\n"))?;
    c.sb.ok(&[SYSTEMCTL, "restart", "--no-block", &gunit])?;
    c.wait_state(&gunit, "activating", 30 * SEC)?;
    let load_pid = c.main_pid(&gunit);
    let nr0 = c.n_restarts(&gunit);
    let mon0 = monitor_restarts(c, gamma.name);
    let j0 = restart_lines(c, gamma.name);
    let t_load0 = Instant::now();

    // 2a-2d: crash (SIGKILL of the engine) on alpha.
    let alpha = &MODELS[0];
    let mut crash = vec![];
    for i in 0..plan.recover_runs {
        eprintln!("citadel-bench: crash run {}/{}", i + 1, plan.recover_runs);
        crash.push(recover(c, leader, alpha.name, alpha.port, || {
            let inner = c
                .engine_pid(alpha.name)
                .ok_or("no engine process for alpha")?;
            let host = procs::host_pid(leader, inner).ok_or("engine not found from the host")?;
            let t = monotonic_us();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(host),
                nix::sys::signal::Signal::SIGKILL,
            )
            .map_err(|e| format!("kill {host}: {e}"))?;
            Ok(t)
        })?);
    }
    // 2e-2h: hang (completions stop, /health stays 200) on beta.
    let beta = &MODELS[1];
    let mut hang = vec![];
    for i in 0..plan.recover_runs {
        eprintln!("citadel-bench: hang run {}/{}", i + 1, plan.recover_runs);
        hang.push(recover(c, leader, beta.name, beta.port, || {
            let code = netns_http(leader, beta.port, "POST", "/_standin/hang", "", 5 * SEC)?;
            let t = monotonic_us();
            if code != 200 {
                return Err(format!("POST /_standin/hang answered {code}"));
            }
            let h = netns_http(leader, beta.port, "GET", "/health", "", 5 * SEC)?;
            if h != 200 {
                return Err(format!("a hung stand-in answered /health {h}, not 200"));
            }
            Ok(t)
        })?);
    }
    let split = |v: &[[f64; 4]], k: usize, unit: Unit| {
        let div = if unit == Unit::Secs { 1000.0 } else { 1.0 };
        Figure::new(unit, v.iter().map(|r| r[k] / div).collect())
    };
    let monitor_values = "monitor in the box: interval_secs = 1, probe_timeout_secs = 1, \
        failure_threshold = 3, deep_probe_interval_secs = 2, deep_probe_timeout_secs = 2, \
        stall_secs = 4 (the harness's short test values; shipped: 10, 5, 3, 60, 30, 120); \
        engine.stop_grace_secs = 5, STANDIN_LOAD_SECS = 0.5; model unit as shipped \
        (Restart=always, RestartSec=5); load = the stand-in's 0.5 s plus up to one of \
        start-model's 500 ms /health polls (start_model::HEALTH_EVERY)";
    let crash_note = format!(
        "SIGKILL of alpha's engine (the stand-in, child of start-model) from the host, stamped \
         with CLOCK_MONOTONIC; the unit's ActiveExit/ExecMainStart/ActiveEnter \
         TimestampMonotonic (ActiveEnter = READY=1, which start-model sends once /health answers \
         200); after each run a 1-token completion must answer 200, then `systemctl \
         reset-failed` (StartLimitBurst=5 per 10 min would otherwise stop the runs); {} runs \
         while gamma loads slowly (3); {monitor_values}",
        plan.recover_runs
    );
    let hang_note = format!(
        "POST /_standin/hang to beta from a thread inside the box's network namespace, stamped \
         when the answer arrives (completions then never answer, /health stays 200, checked); \
         detection is the monitor's (deep probe timeout or stall) followed by its `systemctl \
         restart --no-block`, so it depends on the monitor values: with the shipped ones expect \
         up to deep_probe_interval + deep_probe_timeout + failure_threshold x interval = 60 + 30 \
         + 30 s; same timestamps as the crash runs; {monitor_values}"
    );
    for (k, (id_c, id_h)) in [("2a", "2e"), ("2b", "2f"), ("2c", "2g"), ("2d", "2h")]
        .into_iter()
        .enumerate()
    {
        let unit = if k == 0 || k == 2 {
            Unit::Ms
        } else {
            Unit::Secs
        };
        rows.push(row(id_c, Ok(split(&crash, k, unit))).note(crash_note.clone()));
        rows.push(row(id_h, Ok(split(&hang, k, unit))).note(hang_note.clone()));
    }

    // 3: wait for the end of the slow load.
    let left = plan.slow_load.saturating_sub(t_load0.elapsed()).as_secs();
    eprintln!("citadel-bench: waiting for gamma's load (up to {left}s more)");
    while c.active_state(&gunit) == "activating" {
        std::thread::sleep(2 * SEC);
        if t_load0.elapsed() > plan.slow_load + 240 * SEC {
            break;
        }
    }
    let hwm = procs::host_pid(leader, c.main_pid(UNIT_MONITOR) as i32)
        .and_then(|p| procs::rss_kib(p).ok())
        .map(|(_, h)| h);
    let end_state = c.active_state(&gunit);
    let gp = nums(
        c,
        &gunit,
        &[
            "ExecMainStartTimestampMonotonic",
            "ActiveEnterTimestampMonotonic",
        ],
    );
    let took =
        ms(gp["ActiveEnterTimestampMonotonic"]
            .saturating_sub(gp["ExecMainStartTimestampMonotonic"]))
            / 1000.0;
    let pid_changed = c.main_pid(&gunit) != load_pid;
    let nr = c.n_restarts(&gunit).saturating_sub(nr0);
    let mon = monitor_restarts(c, gamma.name).saturating_sub(mon0);
    let j = restart_lines(c, gamma.name).saturating_sub(j0);
    let count = mon.max(j).max(u64::from(pid_changed && nr == 0));
    let quick = if load_secs < 300 {
        format!(" (--quick: {load_secs} s instead of the issue's 300 s)")
    } else {
        String::new()
    };
    let fig = if end_state == "active" {
        Ok(Figure::one(Unit::Count, count as f64))
    } else {
        Err(format!("failed: gamma ended {end_state}, not active"))
    };
    rows.push(
        row("3", fig)
            .note(format!(
                "STANDIN_LOAD_SECS = {load_secs} for gamma{quick} (a faults file, then `systemctl \
                 restart`), its load_timeout_secs = {}; the monitor at the short test values \
                 (interval 1 s, failure_threshold 3: a restart would need 3 s of failures, 100 x \
                 less than the load); one run (it takes the whole load); restarts counted from \
                 the monitor's state file (monitor_restarts {mon}), its journal ({j} \
                 \"restarting\" lines) and the main PID ({}); systemd NRestarts +{nr}; load \
                 measured {took:.1} s (ExecMainStart -> ActiveEnter)",
                load_secs + 300,
                if pid_changed { "changed" } else { "unchanged" },
            ))
            .if_missed(
                "the monitor restarted a unit that was still activating: the decision must treat \
                 `activating` as Starting and never probe it (see health-monitor decide.rs).",
            ),
    );
    rows.push(
        row("4d", Ok(Figure::new(Unit::MiB, rss)))
            .note(format!(
                "VmRSS of the same monitor, sampled 5 times per slice of the 4c window; its peak \
                 VmHWM at the end of the box run (after the recovery runs and the slow load): {}",
                hwm.map_or("unknown".into(), |h| format!(
                    "{:.2} MiB",
                    h as f64 / 1024.0
                ))
            ))
            .if_missed("see 4a; the in-box figure adds the probe threads of the deep probe."),
    );
    let order: Vec<&str> = ROWS.iter().map(|(i, _)| *i).collect();
    rows.sort_by_key(|r| order.iter().position(|i| *i == r.id).unwrap_or(99));
    Ok(rows)
}

/// One recovery run: inject (returns the fault's CLOCK_MONOTONIC µs), wait until the unit is
/// active again after it, check a completion works; [detection, restart, load, total] in ms.
fn recover(
    c: &Citadel,
    leader: i32,
    model: &str,
    port: u16,
    inject: impl FnOnce() -> Result<u64, String>,
) -> Result<[f64; 4], String> {
    let unit = model_unit(model);
    c.wait_state(&unit, "active", 60 * SEC)?;
    let t0 = inject()?;
    let props = [
        "ActiveExitTimestampMonotonic",
        "ExecMainStartTimestampMonotonic",
        "ActiveEnterTimestampMonotonic",
    ];
    let p = wait_for(90 * SEC, SEC / 10, || {
        let state = c.active_state(&unit);
        let p = nums(c, &unit, &props);
        (state == "active" && p["ActiveEnterTimestampMonotonic"] > t0).then_some(p)
    })
    .ok_or_else(|| {
        format!(
            "{unit} not active again within 90 s\n{}",
            c.journal_tail(60)
        )
    })?;
    let (exit, start, enter) = (
        p["ActiveExitTimestampMonotonic"],
        p["ExecMainStartTimestampMonotonic"],
        p["ActiveEnterTimestampMonotonic"],
    );
    if !(t0 <= exit && exit <= start && start <= enter) {
        return Err(format!(
            "{unit}: timestamps out of order: fault {t0} exit {exit} start {start} enter {enter}"
        ));
    }
    let body = format!(r#"{{"model":"{model}","prompt":"hello","max_tokens":1}}"#);
    let code = netns_http(leader, port, "POST", "/v1/completions", &body, 10 * SEC)?;
    if code != 200 {
        return Err(format!(
            "{model}: completion answered {code} after the restart"
        ));
    }
    c.sb.ok(&[SYSTEMCTL, "reset-failed", &unit])?;
    // Let the monitor see it healthy again before the next fault.
    std::thread::sleep(2 * SEC);
    Ok([
        ms(exit - t0),
        ms(start - exit),
        ms(enter - start),
        ms(enter - t0),
    ])
}

/// `citadel-bench time-argv` inside the box: one warm-up run, then `runs` timed runs.
fn time_in_box(c: &Citadel, runs: usize, argv: &[&str]) -> Result<Figure, String> {
    let n = (runs + 1).to_string();
    let mut a = vec![BENCH_IN_BOX, "time-argv", "--runs", &n, "--"];
    a.extend_from_slice(argv);
    let out = c.sb.exec_t(&a, 120 * SEC).ok()?;
    let mut v = vec![];
    for l in out.lines().skip(1) {
        let (ns, code) = l.split_once(' ').ok_or(format!("bad line {l:?}"))?;
        if code != "0" {
            return Err(format!("{} exited {code}", argv.join(" ")));
        }
        v.push(ns.parse::<f64>().map_err(|e| format!("{l:?}: {e}"))? / 1e6);
    }
    Ok(Figure::new(Unit::Ms, v))
}

/// The monitor's `monitor_restarts` for `model` in its state file.
fn monitor_restarts(c: &Citadel, model: &str) -> u64 {
    let o = c.sb.exec(&["cat", "/run/citadel/health.json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap_or_default();
    v["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == model))
        .and_then(|m| m["monitor_restarts"].as_u64())
        .unwrap_or(0)
}

/// Monitor journal lines saying it restarts `model`.
fn restart_lines(c: &Citadel, model: &str) -> u64 {
    c.unit_log(UNIT_MONITOR)
        .lines()
        .filter(|l| l.contains(&format!("{model}:")) && l.contains("restarting"))
        .count() as u64
}
