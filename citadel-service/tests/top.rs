//! `citadel-service top` in a real terminal: tmux runs the `top_fake` example (the real `top`
//! code against a fake systemd and stand-in vLLM `/metrics`, see examples/top_fake.rs), the
//! test reads the screen with `capture-pane`, asserts the rows, sends `q` and checks that the
//! program exited 0 and its pane is dead. Without a terminal the same table is printed once. Needs tmux
//! (tests/run.sh installs it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const TMUX: &str = "/usr/bin/tmux";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The example binary: cargo test builds examples next to the test binaries' `deps/`.
fn top_fake() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/top_fake");
    assert!(p.is_file(), "{} is missing: cargo test -p citadel-service builds it (a --test filter does not: cargo build -p citadel-service --example top_fake)", p.display());
    p
}

/// A port outside the ephemeral range (config validation refuses those), free now.
fn free_port(after: u16) -> u16 {
    (after..12_700)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port")
}

/// A config with two enabled models on free ports from `base` (each test its own range: the
/// tests run side by side and the example binds the ports itself) and a disabled one, and a
/// fresh monitor state file: phi3 healthy (4 ms), coder failing.
fn setup(d: &Path, base: u16) -> (PathBuf, u16, u16) {
    let p1 = free_port(base);
    let p2 = free_port(p1 + 1);
    let state = d.join("health.json");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let model = |name: &str, port: u16, st: &str, lat: &str, reason: &str| {
        format!(
            r#"{{"name":"{name}","unit":"citadel-model@{name}.service","port":{port},"state":"{st}","unit_state":"active","main_pid":1,"systemd_restarts":0,"monitor_restarts":0,"consecutive_failures":0,"latency_ms":{lat},"reason":{reason},"since_unix":{now}}}"#
        )
    };
    std::fs::write(
        &state,
        format!(
            r#"{{"schema":1,"updated_unix":{now},"sweep_ms":3,"models":[{},{}],"gpus":[]}}"#,
            model("phi3", p1, "healthy", "4", "null"),
            model("coder", p2, "failing", "null", "\"GET /health: timeout\""),
        ),
    )
    .unwrap();
    let cfg = d.join("citadel.toml");
    std::fs::write(
        &cfg,
        format!(
            "[monitor]\nstate_file = \"{}\"\n\
             [models.phi3]\npath = \"a\"\nport = {p1}\ngpus = [0]\ngpu_memory_utilization = 0.3\n\
             [models.coder]\npath = \"b\"\nport = {p2}\ngpus = [1]\ngpu_memory_utilization = 0.3\n\
             [models.vision]\npath = \"c\"\nport = {}\ngpus = [1]\ngpu_memory_utilization = 0.3\nenabled = false\n",
            state.display(),
            p2 + 1
        ),
    )
    .unwrap();
    (cfg, p1, p2)
}

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> String {
        let o = Command::new(TMUX)
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{TMUX}: {e} (apt-get install tmux)"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "top"])
    }
    /// Poll the screen until `done` holds; the last screen either way.
    fn wait_screen(&self, within: Duration, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if done(&s) || start.elapsed() > within {
                return s;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.cmd(&["kill-server"]);
    }
}

fn line_of<'a>(screen: &'a str, name: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} row:\n{screen}"))
}

#[test]
fn top_draws_one_row_per_model_refreshes_and_quits_on_q() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, _, _) = setup(d.path(), 11_800);
    let t = Tmux {
        socket: format!("citadel-top-test-{}", std::process::id()),
    };
    let exe = top_fake();
    let gpu = format!(
        "CITADEL_FAKE_GPU={}",
        fixture("gpu-readings.json").display()
    );
    // The exit code, written by top_fake itself (tmux does not always reap it promptly).
    let exit_file = d.path().join("exit-code");
    let exit_env = format!("TOP_FAKE_EXIT_FILE={}", exit_file.display());
    t.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "150",
        "-y",
        "30",
        "-e",
        "NO_COLOR=1",
        "-e",
        &gpu,
        "-e",
        &exit_env,
        exe.to_str().unwrap(),
        cfg.to_str().unwrap(),
        ";",
        "set-option",
        "-t",
        "top",
        "remain-on-exit",
        "on",
    ]);
    // tokens/s needs two readings: wait for a number in phi3's TOK/S column.
    let tokens_shown = |s: &str| {
        s.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.first() == Some(&"phi3") && w.get(7).is_some_and(|t| t.parse::<f64>().is_ok())
        })
    };
    let screen = t.wait_screen(Duration::from_secs(30), tokens_shown);
    for col in [
        "MODEL", "STATE", "HEALTH", "RUN", "WAIT", "TOK/S", "KV", "GPU MEM", "GPU TEMP",
        "RESTARTS", "UPTIME",
    ] {
        assert!(screen.contains(col), "no {col} column:\n{screen}");
    }
    assert!(screen.contains("citadel top, every 1s"), "{screen}");
    assert!(screen.contains("q quits"), "{screen}");
    let phi3: Vec<&str> = line_of(&screen, "phi3").split_whitespace().collect();
    // MODEL STATE HEALTH (4 ms) RUN WAIT TOK/S KV GPU-MEM(2 words) TEMP(2) RESTARTS UPTIME
    assert_eq!(
        &phi3[..6],
        ["phi3", "active", "healthy", "(4", "ms)", "2"],
        "{screen}"
    );
    assert_eq!(phi3[6], "1", "{screen}");
    let tps: f64 = phi3[7]
        .parse()
        .unwrap_or_else(|_| panic!("TOK/S {:?}:\n{screen}", phi3[7]));
    assert!(
        (20.0..80.0).contains(&tps),
        "about 40 tokens/s: {tps}\n{screen}"
    );
    assert_eq!(phi3[8], "25%", "{screen}");
    // GPU 0: phi3's process holds memory in the fixture; 41 C.
    assert!(line_of(&screen, "phi3").contains("  41 C  "), "{screen}");
    assert!(
        line_of(&screen, "phi3").ends_with("3m05s")
            || line_of(&screen, "phi3").trim_end().ends_with("3m05s"),
        "{screen}"
    );
    let coder = line_of(&screen, "coder");
    assert!(
        coder.contains("failing") && coder.contains("  47 C  "),
        "{screen}"
    );
    let vision = line_of(&screen, "vision");
    assert!(vision.contains("inactive (disabled)"), "{screen}");
    // Not running: no engine numbers, no GPU temperature of its own.
    assert!(!vision.contains(" C ") && !vision.contains('%'), "{screen}");
    assert!(
        screen.contains("storage active") && screen.contains("monitor active"),
        "{screen}"
    );
    // The clock in the title moves: the view is redrawn.
    let clock = |s: &str| {
        s.lines()
            .next()
            .and_then(|l| l.split(" at ").nth(1))
            .map(str::to_string)
    };
    let first = clock(&screen);
    let later = t.wait_screen(Duration::from_secs(10), |s| clock(s) != first);
    assert_ne!(clock(&later), first, "not redrawn:\n{later}");
    t.cmd(&["send-keys", "-t", "top", "q"]);
    let start = Instant::now();
    while !exit_file.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = std::fs::read_to_string(&exit_file).unwrap_or_default();
    assert_eq!(code, "0", "q did not end top with 0:\n{}", t.screen());
    let dead = || t.cmd(&["display-message", "-p", "-t", "top", "#{pane_dead}"]);
    let start = Instant::now();
    while dead().trim() != "1" && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        dead().trim(),
        "1",
        "top still runs after q:\n{}",
        t.screen()
    );
    // The alternate screen is left: the table is gone from the terminal.
    assert!(!t.screen().contains("TOK/S"), "{}", t.screen());
}

#[test]
fn without_a_terminal_top_prints_the_table_once() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, _, _) = setup(d.path(), 12_200);
    let o = Command::new(top_fake())
        .arg(&cfg)
        .env("NO_COLOR", "1")
        .env("CITADEL_FAKE_GPU", fixture("gpu-readings.json"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    // Every enabled unit is up (vision is disabled): exit 0, as status.
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.lines().nth(1).unwrap_or("").starts_with("MODEL "),
        "{out}"
    );
    assert_eq!(out.matches("TOK/S").count(), 1, "{out}");
    assert!(line_of(&out, "phi3").contains("25%"), "{out}");
    assert!(line_of(&out, "coder").contains("failing"), "{out}");
    assert!(!out.contains('\x1b'), "escape codes in a pipe: {out:?}");
    assert!(
        err.contains("stdout is not a terminal, printed once"),
        "{err}"
    );
}
