//! # citadel-bench: what operators feel, measured
//!
//! A command, not a test:
//!
//! ```text
//! cargo run --release -p citadel-bench -- [--quick] [--out BENCHMARKS.md]
//! ```
//!
//! It builds the release binaries it measures (and the .deb when it is older than them), runs
//! the benchmarks of issue 10, prints a table and writes `BENCHMARKS.md` (machine, date, git
//! commit, the command). Every figure is the median of its runs with the spread (min - max),
//! judged against its target where the issue sets one; a missed target gets its reason and a
//! fix in the file.
//!
//! - On the host (no systemd needed): the health sweep over seven stand-in engines (1), the
//!   monitor's memory and CPU at a 1 s interval (4a, 4b), storage-setup and gpu-optimize in
//!   boot mode (6a, 6b), sizes (7).
//! - In one real-systemd box (root and systemd-nspawn; the `citadel-system-tests` harness):
//!   crash and hang recovery split into detection, restart and load (2), monitor restarts during
//!   a slow load (3), the monitor under systemd (4c, 4d), `status --json` latency (5), the
//!   oneshot units' own timestamps (6c-6f). Without root or nspawn these rows say
//!   "skipped: why".
//!
//! A default run takes about 12 minutes (the slow load is 5 minutes); `--quick` about 5
//! (fewer runs, a 60 s slow load, a 30 s footprint window) and says so in the file.
//! Everything it starts (stand-ins, monitors, the box) is killed or torn down on exit, on a
//! panic and on SIGINT/SIGTERM.

pub mod boxbench;
pub mod callgrind;
pub mod cleanup;
pub mod gateway;
pub mod host;
pub mod machine;
pub mod procs;
pub mod report;
pub mod stats;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "Benchmark Citadel (stand-in engine, real systemd in a box) and write BENCHMARKS.md"
)]
pub struct Args {
    /// Fewer runs, a 60 s slow load instead of 300 s and a 30 s footprint window (about 5
    /// minutes in all); the file says so.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the report (default: BENCHMARKS.md at the workspace root).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Do not build: use the release binaries and the .deb already under target/.
    #[arg(long)]
    pub no_build: bool,
    /// Skip the real-systemd box (its rows say so).
    #[arg(long)]
    pub no_container: bool,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cmd {
    /// Helper run inside the box: run ARGV RUNS times, print "NANOSECONDS EXITCODE" per run.
    #[command(hide = true)]
    TimeArgv {
        /// How many times.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// The program (absolute path) and its arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

/// Install the cleanup hooks (panic, SIGINT/SIGTERM/SIGHUP). First thing in `main`.
pub fn install_cleanup() {
    cleanup::install();
}

/// The workspace root (tests/bench/../..).
pub fn workspace() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

/// The release binaries measured.
#[derive(Debug, Clone)]
pub struct Bins {
    pub storage_setup: PathBuf,
    pub gpu_optimize: PathBuf,
    pub start_model: PathBuf,
    pub health_monitor: PathBuf,
    pub citadel_service: PathBuf,
    pub standin: PathBuf,
}

impl Bins {
    pub fn in_dir(d: &Path) -> Bins {
        Bins {
            storage_setup: d.join("storage-setup"),
            gpu_optimize: d.join("gpu-optimize"),
            start_model: d.join("start-model"),
            health_monitor: d.join("health-monitor"),
            citadel_service: d.join("citadel-service"),
            standin: d.join("citadel-standin"),
        }
    }

    /// The five packaged ones.
    fn packaged(&self) -> [&PathBuf; 5] {
        [
            &self.storage_setup,
            &self.gpu_optimize,
            &self.start_model,
            &self.health_monitor,
            &self.citadel_service,
        ]
    }

    fn missing(&self) -> Option<&PathBuf> {
        self.packaged()
            .into_iter()
            .chain([&self.standin])
            .find(|p| !p.is_file())
    }
}

fn cargo() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO").map(PathBuf::from))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or("/root".into())).join(".cargo/bin/cargo")
        })
}

fn mtime(p: &Path) -> Option<SystemTime> {
    p.metadata().and_then(|m| m.modified()).ok()
}

/// Build the release binaries; returns a line for the report.
fn build(ws: &Path) -> Result<String, String> {
    let mut c = Command::new(cargo());
    c.args(["build", "--release"]);
    for p in [
        "storage-setup",
        "gpu-optimize",
        "start-model",
        "health-monitor",
        "citadel-service",
        "citadel-standin",
    ] {
        c.args(["-p", p]);
    }
    eprintln!("citadel-bench: cargo build --release (the measured binaries)");
    let st = c
        .current_dir(ws)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if st.success() {
        Ok("release binaries built by this run (cargo build --release)".into())
    } else {
        Err(format!("cargo build --release failed ({st})"))
    }
}

/// The .deb under target/debian: reused when newer than every packaged binary, else built by
/// packaging/build-deb.sh (unless `no_build`).
fn deb(ws: &Path, bins: &Bins, no_build: bool) -> Result<(PathBuf, String), String> {
    let dir = ws.join("target/debian");
    let newest_bin = bins.packaged().iter().filter_map(|p| mtime(p)).max();
    let existing = std::fs::read_dir(&dir).ok().and_then(|rd| {
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .max_by_key(|p| mtime(p))
    });
    if let Some(d) = &existing {
        if no_build || mtime(d) >= newest_bin {
            return Ok((
                d.clone(),
                format!("{} reused (newer than the binaries)", d.display()),
            ));
        }
    }
    if no_build {
        return Err("no .deb under target/debian and --no-build".into());
    }
    eprintln!("citadel-bench: packaging/build-deb.sh");
    let out = Command::new("/bin/bash")
        .arg(ws.join("packaging/build-deb.sh"))
        .current_dir(ws)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("build-deb.sh: {e}"))?;
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    if out.status.success() && Path::new(&path).is_file() {
        Ok((
            PathBuf::from(&path),
            format!("{path} built by packaging/build-deb.sh"),
        ))
    } else {
        Err(format!("packaging/build-deb.sh failed ({})", out.status))
    }
}

/// The `time-argv` helper.
pub fn time_argv(runs: usize, argv: &[String]) -> ExitCode {
    let Some((prog, rest)) = argv.split_first() else {
        return ExitCode::from(2);
    };
    for _ in 0..runs {
        let t0 = Instant::now();
        let st = Command::new(prog)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let ns = t0.elapsed().as_nanos();
        let code = st.ok().and_then(|s| s.code()).unwrap_or(-1);
        println!("{ns} {code}");
    }
    ExitCode::SUCCESS
}

/// The benchmark run.
pub fn run(args: &Args) -> Result<ExitCode, String> {
    if let Some(Cmd::TimeArgv { runs, argv }) = &args.cmd {
        return Ok(time_argv(*runs, argv));
    }
    let started = Instant::now();
    let ws = workspace();
    let mut preamble = vec![];
    if args.no_build {
        preamble.push("binaries: used as found under target/release (--no-build)".to_string());
    } else {
        preamble.push(build(&ws)?);
    }
    let bins = Bins::in_dir(&ws.join("target/release"));
    if let Some(p) = bins.missing() {
        return Err(format!(
            "{} is missing (build without --no-build)",
            p.display()
        ));
    }
    let deb = deb(&ws, &bins, args.no_build);
    match &deb {
        Ok((_, line)) => preamble.push(format!(".deb: {line}")),
        Err(e) => preamble.push(format!(".deb: {e}")),
    }
    let m = machine::Machine::probe(&ws);
    let quick = args.quick;
    let (runs, footprint, slow) = if quick {
        (5, Duration::from_secs(30), Duration::from_secs(60))
    } else {
        (9, Duration::from_secs(120), Duration::from_secs(300))
    };
    preamble.push(if quick {
        format!(
            "mode: --quick (fewer runs, footprint window {} s, slow load {} s instead of 300 s)",
            footprint.as_secs(),
            slow.as_secs()
        )
    } else {
        format!(
            "mode: full (footprint window {} s, slow load {} s)",
            footprint.as_secs(),
            slow.as_secs()
        )
    });

    let mut rows = vec![];
    eprintln!("citadel-bench: 1 health sweep ({runs} runs each)");
    rows.extend(host::sweep(&bins, runs));
    eprintln!(
        "citadel-bench: 4 monitor footprint ({} s)",
        footprint.as_secs()
    );
    rows.extend(host::footprint(&bins, footprint));
    eprintln!("citadel-bench: 6 boot overhead on the host");
    rows.extend(host::boot_overhead(&bins, runs));
    if args.no_container {
        rows.extend(boxbench::run_skipped("skipped: --no-container"));
    } else {
        let plan = boxbench::Plan {
            recover_runs: if quick { 3 } else { 5 },
            oneshot_runs: if quick { 3 } else { 5 },
            status_runs: if quick { 10 } else { 15 },
            slow_load: slow,
            steady: Duration::from_secs(if quick { 15 } else { 30 }),
        };
        rows.extend(boxbench::run(
            &plan,
            deb.as_ref().map(|d| d.0.clone()).map_err(Clone::clone),
        ));
    }
    rows.extend(host::sizes(&bins, deb.as_ref().ok().map(|d| d.0.as_path())));
    let order = |id: &str| {
        let n: String = id.chars().take_while(char::is_ascii_digit).collect();
        n.parse::<u32>().unwrap_or(99)
    };
    rows.sort_by_key(|r| order(&r.id)); // stable: keeps each item's own order

    preamble.push(format!(
        "load average at the end: {}; the run took {:.1} min",
        machine::loadavg(),
        started.elapsed().as_secs_f64() / 60.0
    ));
    let mut command = String::from("cargo run --release -p citadel-bench --");
    if quick {
        command.push_str(" --quick");
    }
    command.push_str("   (as root, for the systemd box)");
    let table = report::text_table(&rows);
    println!("{table}");
    let mut md = report::markdown(&rows, &m, &command, &preamble);
    let out = args.out.clone().unwrap_or_else(|| ws.join("BENCHMARKS.md"));
    // The real-engine section comes from the engine tier (tests/system/tests/engine.rs), not
    // from this run: kept as it is.
    if let Some(kept) = std::fs::read_to_string(&out)
        .ok()
        .and_then(|old| old.find(REAL_ENGINE_SECTION).map(|i| old[i..].to_string()))
    {
        md.push('\n');
        md.push_str(&kept);
    }
    std::fs::write(&out, md).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!("citadel-bench: wrote {}", out.display());
    let missed = rows.iter().filter(|r| r.verdict() == Some(false)).count();
    let failed = rows
        .iter()
        .filter(|r| matches!(&r.figure, Err(e) if e.starts_with("failed")))
        .count();
    eprintln!("citadel-bench: {missed} target(s) missed, {failed} measurement(s) failed");
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The heading of BENCHMARKS.md's section written from the engine tier's figures; a bench run
/// keeps it.
pub const REAL_ENGINE_SECTION: &str = "## Real engine (vLLM CPU build)";
