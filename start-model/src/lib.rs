//! start-model: run one model server (vLLM) and tell systemd the truth about it.
//!
//! `ExecStart=` of `citadel-model@.service` (`Type=notify`) runs `start-model NAME`. It reads
//! the config (`--config`, default `/etc/citadel/citadel.toml`), checks that the model can
//! start, spawns `engine.command MODEL_PATH --host .. --port .. --served-model-name ..
//! --tensor-parallel-size .. --gpu-memory-utilization .. [--max-model-len ..] EXTRA_ARGS..`
//! (an argv vector, no shell), sends `READY=1` when `GET /health` answers 200, and supervises
//! the engine until it exits or a stop is asked. systemd owns restarts.
//!
//! # Steps
//! 1. Config, model (unknown or disabled: 78). A rollout in progress
//!    (`runtime_dir/rollout/NAME.json`, see [`citadel_common::rollout`]): `--surge`
//!    (`citadel-model-next@NAME.service`) runs its new path on its surge port (no record: 78);
//!    the main instance runs its new path while it says switched or replacing. `--dry-run` prints
//!    `{"model", "argv", "env", "port", "gpus"}` (API key redacted) and exits 0 here.
//! 2. API key: `$CREDENTIALS_DIRECTORY/api-key` (`LoadCredential=api-key:...`), else
//!    `engine.api_key_file`, else none. Configured file missing: 69; empty: 78. It goes to the
//!    engine as `VLLM_API_KEY`, never on its command line.
//! 3. Preflight: model directory complete (69) and, when we run as root, readable by
//!    `service.user` (69); the per-GPU locks (`RUNTIME_DIR/locks/gpuN.lock`, ascending order;
//!    `STATUS=waiting for GPU N lock held by ...`); the model's GPUs exist (69) and no leftover
//!    process holds their memory (wait `engine.gpu_release_wait_secs`, naming PIDs; then 75;
//!    skipped without NVML; `CITADEL_FAKE_GPU` serves a readings file instead, see
//!    `citadel_common::gpu`); the port is free on `engine.host` (wait `engine.port_wait_secs`,
//!    then 75).
//! 4. Spawn in a new process group; stdout goes to the journal untouched, stderr is echoed
//!    line by line and its last 20 lines kept for the exit message.
//! 5. Loading: `GET /health` twice a second (connection refused = still loading),
//!    `STATUS=loading NAME ...: N s of T s` every 5 s; past `models.NAME.load_timeout_secs` the
//!    group is killed and start-model exits 1. On the first 200: GPU locks released,
//!    `READY=1`, `STATUS=serving NAME on PORT`.
//! 6. The engine exiting while no stop was asked is a failure (exit 1), even with status 0
//!    (vLLM issue 48966), logged with the status or signal and the last stderr lines.
//! 7. SIGTERM / SIGINT: `STOPPING=1`. While serving, with `engine.drain_secs` > 0 (vLLM runs
//!    with `--shutdown-timeout` = drain_secs): SIGTERM to the API server only, which refuses new
//!    requests, lets the running ones finish and exits with its children; up to drain_secs for
//!    the whole group to end. Then (or at once with drain_secs = 0, or while loading) SIGTERM to
//!    the group, until drain + `engine.stop_grace_secs`, then SIGKILL of the group. While it
//!    waits, start-model extends the unit's stop timeout (`EXTEND_TIMEOUT_USEC`, every 5 s, the
//!    time left + 15 s), so `TimeoutStopSec=` never cuts a drain short. After SIGUSR1 (sent by
//!    the monitor just before it restarts a broken model) the stop SIGKILLs the group at once.
//!    Exit 0 once no process of the group remains (start-model is the subreaper of the
//!    engine's orphans). Every other way out also kills the group.
//!
//! # The engine's argv and environment
//! Built by [`citadel_common::launch`] (shared with exports to other orchestrators): empty
//! environment plus a fixed list, the API key only as `VLLM_API_KEY`.
//!
//! # Exit codes
//! 0 stopped on request (or `--dry-run`); 1 engine exited or failed to load in time; 2 usage;
//! 69 model files, engine program or GPU missing; 75 port or GPU memory still busy (retry);
//! 78 invalid config, unknown or disabled model, empty API key.
//!
//! Over 500 lines as one concern: the steps above, in the order they run (the engine process itself
//! is in [`supervise`], its argv in [`citadel_common::launch`]).

pub mod incident;
pub mod lock;
pub mod preflight;
pub mod spec;
pub mod supervise;

use citadel_common::cli::CommonArgs;
use citadel_common::config::{Config, Model};
use citadel_common::gpu::GpuSource;
use citadel_common::incident::{Event, ExitInfo};
use citadel_common::probe::{base_url, ProbeError, Prober};
use citadel_common::signals;
use citadel_common::{launch, notify, Exit, Failure};
use clap::Parser;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use supervise::{Engine, StopHow, StopPlan};

/// Start one model server, report readiness to systemd, and stop it cleanly.
#[derive(Debug, Parser)]
#[command(
    name = "start-model",
    version,
    about,
    after_help = "Examples:
  /usr/lib/citadel/start-model --dry-run phi3
      the engine's argv and environment for phi3 as JSON (the API key redacted)
  systemctl start citadel-model@phi3.service
      how it normally runs: from the model unit, never by hand"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Print what would run, as one JSON document ({"model", "argv", "env", "port", "gpus"};
    /// the API key redacted), and exit without touching anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Run the surge instance of a rollout (`citadel-model-next@NAME.service`): the new path on
    /// the spare port, both from the rollout record (runtime_dir/rollout/NAME.json); no record
    /// is exit 78.
    #[arg(long)]
    pub surge: bool,
    /// The model to run: the NAME of a [models.NAME] table in the config.
    #[arg(value_name = "NAME")]
    pub name: String,
}

/// The model as this instance runs it, and its unit. A rollout in progress
/// ([`citadel_common::rollout`]) changes it: the surge instance runs the record's path on the
/// record's port; the main instance runs the record's path once the rollout has switched (or,
/// in replace mode, is replacing) and the config's otherwise.
pub fn instance(cfg: &Config, model: &Model, surge: bool) -> Result<(Model, String), Failure> {
    use citadel_common::rollout::Record;
    let name = &model.name;
    let record = match Record::read(&cfg.paths.runtime_dir, name) {
        Ok(r) => r,
        Err(e) if surge => return Err(Failure::config(format!("rollout record: {e}"))),
        Err(e) => {
            log::warn!("rollout record ignored, running the config's path: {e}");
            None
        }
    };
    let mut m = model.clone();
    if surge {
        let Some((r, port)) = record.as_ref().and_then(|r| Some((r, r.surge_port?))) else {
            return Err(Failure::config(format!(
                "no surge rollout of {name} in progress ({} has no surge port or is missing): the surge instance runs only during citadel-service rollout",
                citadel_common::rollout::file(&cfg.paths.runtime_dir, name).display()
            )));
        };
        m.path = r.resolved_path.clone();
        m.port = port;
        log::info!(
            "surge instance of {name}: {} on port {port} (rollout record)",
            citadel_common::text::escape_controls(&m.path.display().to_string())
        );
        return Ok((m, citadel_common::paths::surge_unit(name)));
    }
    if let Some(p) = record.as_ref().and_then(|r| r.main_path()) {
        log::info!(
            "rollout of {name} in progress: running {} instead of models.{name}.path",
            citadel_common::text::escape_controls(&p.display().to_string())
        );
        m.path = p.to_path_buf();
    }
    let unit = m.unit();
    Ok((m, unit))
}

/// How often `/health` is asked while the engine loads.
pub const HEALTH_EVERY: Duration = Duration::from_millis(500);
/// How long one `/health` probe may take.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the loading `STATUS=` is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// How a launch ends short of serving: a stop asked before anything was spawned (exit 0, the
/// line logged at info), or a failure with its exit status. A [`Failure`] never means success.
#[derive(Debug, thiserror::Error)]
pub enum Abort {
    #[error("stop requested while {0}; nothing was started")]
    Stopped(String),
    #[error(transparent)]
    Failed(#[from] Failure),
}

impl Abort {
    /// The failure, if it is one (tests).
    pub fn failure(self) -> Option<Failure> {
        match self {
            Abort::Failed(f) => Some(f),
            Abort::Stopped(_) => None,
        }
    }
}

pub(crate) fn stopped(what: &str) -> Abort {
    Abort::Stopped(what.to_string())
}

/// Run start-model.
pub fn run(cli: &Cli) -> Result<Exit, Failure> {
    let cfg = cli.common.load_config()?;
    let model = spec::find_model(&cfg, &cli.name)?;
    let (model, unit) = instance(&cfg, model, cli.surge)?;
    let model = &model;
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    if cli.dry_run {
        let has_key = cfg.engine.api_key_file.is_some()
            || creds
                .as_ref()
                .is_some_and(|d| d.join(citadel_common::paths::API_KEY_CREDENTIAL).exists());
        println!("{}", launch::dry_run_json(&cfg, model, has_key)?);
        return Ok(Exit::Ok);
    }
    let gpus = citadel_common::gpu::open();
    match launch(&cfg, model, &unit, creds.as_deref(), gpus.as_ref()) {
        Ok(exit) => Ok(exit),
        Err(Abort::Stopped(what)) => {
            log::info!("{}", Abort::Stopped(what));
            Ok(Exit::Ok)
        }
        Err(Abort::Failed(f)) => Err(f),
    }
}

fn gpu_list(m: &Model) -> String {
    launch::visible_devices(&m.gpus)
}

/// Everything after the config: preflight, spawn, readiness, supervision, stop.
pub fn launch(
    cfg: &Config,
    model: &Model,
    unit: &str,
    credentials_dir: Option<&std::path::Path>,
    gpu_source: &dyn GpuSource,
) -> Result<Exit, Abort> {
    // SIGTERM / SIGINT set a flag the loops read; the no-drain signal makes the next stop skip
    // the drain (handlers revert to the default in the engine at exec).
    signals::install(&[signals::Meaning::Stop, signals::Meaning::NoDrain])?;
    supervise::become_subreaper();
    let stop = signals::stop_requested;
    let name = &model.name;

    refuse_quarantined(cfg, model)?;
    let key = spec::read_key(cfg, credentials_dir)?;
    let dir = model.resolved_path(&cfg.paths);
    preflight::model_files(&dir)?;
    preflight::model_readable(&dir, &cfg.service.user)?;

    let locks = lock::acquire(
        &cfg.paths.runtime_dir,
        &model.gpus,
        name,
        preflight::RETRY,
        &stop,
        &mut |gpu, holder| {
            let msg = format!(
                "waiting for GPU {gpu} lock held by {}",
                holder.unwrap_or("another model")
            );
            log::info!("{msg}");
            notify::status(&msg);
        },
    )
    .map_err(|e| match e {
        lock::LockError::Stopped => stopped("waiting for a GPU lock"),
        lock::LockError::Io(m) => Failure::unavailable(m).into(),
    })?;
    preflight::gpus(
        gpu_source,
        model,
        unit,
        Duration::from_secs(cfg.engine.gpu_release_wait_secs),
        &stop,
    )?;
    preflight::port(
        &cfg.engine.host,
        model.port,
        Duration::from_secs(cfg.engine.port_wait_secs),
        &stop,
    )?;

    let spec = launch::build(cfg, model, key.as_deref());
    log::info!("starting {name}: {}", display_argv(&spec.argv));
    let mut engine = Engine::spawn(&spec)?;
    let run = Run {
        cfg,
        model,
        gpu_source,
        oom_kills: incident::oom_kills(),
    };
    let grace = Duration::from_secs(cfg.engine.stop_grace_secs);
    let t0 = Instant::now();
    if let Some(sig) = wait_ready(&mut engine, &run)? {
        // Nothing is in flight while loading: no drain.
        let plan = StopPlan {
            drain: Duration::ZERO,
            grace,
            skip_drain: signals::drain_skipped(),
        };
        return Ok(stop_engine(
            &mut engine,
            name,
            sig,
            plan,
            "while it was loading",
        ));
    }
    locks.release();
    incident::resolve(cfg, model);
    let serving = format!("serving {name} on {}", model.port);
    notify::ready(&serving);
    log::info!(
        "{name} is ready after {:.1} s: {serving} (PID {})",
        t0.elapsed().as_secs_f64(),
        engine.pid()
    );
    loop {
        if let Some(sig) = signals::stop_signal() {
            let plan = StopPlan {
                drain: Duration::from_secs(cfg.engine.drain_secs.into()),
                grace,
                skip_drain: signals::drain_skipped(),
            };
            return Ok(stop_engine(&mut engine, name, sig, plan, ""));
        }
        if let Some(end) = engine.poll() {
            return Err(died(&mut engine, &run, end, "while serving").into());
        }
        std::thread::sleep(supervise::TICK);
    }
}

/// Poll `/health` until it answers 200 (`Ok(None)`), a stop signal arrives (`Ok(Some(sig))`),
/// the engine ends (exit 1) or `load_timeout_secs` passes (group killed, exit 1).
fn wait_ready(
    engine: &mut Engine,
    run: &Run<'_>,
) -> Result<Option<nix::sys::signal::Signal>, Failure> {
    let (cfg, model) = (run.cfg, run.model);
    let name = &model.name;
    let t0 = Instant::now();
    let load_timeout = Duration::from_secs(model.load_timeout_secs);
    let url = format!("{}/health", base_url(&cfg.engine.host, model.port));
    let prober = Prober::new(HEALTH_TIMEOUT);
    let pid = engine.pid();
    let status = |elapsed: Duration| {
        notify::status(&format!(
            "loading {name} on GPU {} (PID {pid}): {} s of {} s",
            gpu_list(model),
            elapsed.as_secs(),
            load_timeout.as_secs()
        ));
    };
    status(Duration::ZERO);
    let mut next_status = t0 + STATUS_EVERY;
    let mut next_probe = t0;
    loop {
        if let Some(sig) = signals::stop_signal() {
            return Ok(Some(sig));
        }
        if let Some(end) = engine.poll() {
            return Err(died(engine, run, end, "while loading"));
        }
        let now = Instant::now();
        if now.duration_since(t0) >= load_timeout {
            engine.kill();
            let what = format!(
                "{name} did not answer {url} with 200 within {} s (models.{name}.load_timeout_secs); killed its process group",
                load_timeout.as_secs()
            );
            let mut ctx = run.context();
            ctx.load_timed_out = true;
            let d = run.record(
                engine,
                Event::StartFailure,
                ExitInfo {
                    code: Some(1),
                    signal: None,
                },
                ctx,
            );
            return Err(Failure::other(format!(
                "{what}\n{}: {} -- fix: {}",
                d.class, d.summary, d.fix
            ))
            .with_tail(engine));
        }
        if now >= next_probe {
            match prober.get(&url, None) {
                Ok(r) if r.status == 200 => return Ok(None),
                Ok(r) => log::debug!("{url}: {} while loading", r.status),
                // Connection refused: vLLM does not listen until the model is loaded.
                Err(ProbeError::Refused) => {}
                Err(e) => log::debug!("{url}: {e} while loading"),
            }
            next_probe = Instant::now() + HEALTH_EVERY;
        }
        if now >= next_status {
            status(now.duration_since(t0));
            next_status = now + STATUS_EVERY;
        }
        std::thread::sleep(supervise::TICK);
    }
}

/// An argv for a log line: words with spaces, quotes or nothing in them are single-quoted.
pub fn display_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && !a.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Put before the engine's cause line in a failure message (`citadel-service start` looks for
/// it in the journal).
pub const CAUSE_MARK: &str = citadel_common::vllm::CAUSE_MARK;

trait WithTail {
    fn with_tail(self, engine: &Engine) -> Self;
}

impl WithTail for Failure {
    /// Append the engine's own cause line to the first line of the message (what
    /// `citadel-service start` shows per failed attempt), and its last stderr lines below.
    fn with_tail(mut self, engine: &Engine) -> Failure {
        let lines = engine.last_lines();
        if let Some(cause) = engine.cause() {
            let first = self.message.find('\n').unwrap_or(self.message.len());
            self.message
                .insert_str(first, &format!("; {CAUSE_MARK}{cause}"));
        }
        if !lines.is_empty() {
            self.message.push('\n');
            self.message
                .push_str(&citadel_common::vllm::tail_header(lines.len()));
            for l in lines {
                self.message
                    .push_str(&format!("\n{}{l}", citadel_common::vllm::TAIL_PREFIX));
            }
        }
        self
    }
}

/// What a failure report needs besides the engine.
struct Run<'a> {
    cfg: &'a Config,
    model: &'a Model,
    gpu_source: &'a dyn GpuSource,
    /// The cgroup's OOM kill count when the engine was spawned.
    oom_kills: Option<u64>,
}

impl Run<'_> {
    fn context(&self) -> citadel_common::classify::Context {
        let mut c = incident::context(self.model);
        c.oom_kills = match (self.oom_kills, incident::oom_kills()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        };
        c
    }

    /// Classify the engine's output and record the incident.
    fn record(
        &self,
        engine: &Engine,
        event: Event,
        exit: ExitInfo,
        mut ctx: citadel_common::classify::Context,
    ) -> citadel_common::classify::Diagnosis {
        let output = engine.output();
        let holders = incident::gpu_holders(self.model, self.gpu_source);
        ctx.gpu_holders = holders;
        incident::record(
            self.cfg,
            self.model,
            incident::Failed {
                event,
                exit,
                output: &output,
                context: ctx,
            },
        )
    }
}

/// Exit 69 (no restart loop: the unit's `RestartPreventExitStatus=`) when one of the model's
/// GPUs is quarantined, recording why.
fn refuse_quarantined(cfg: &Config, model: &Model) -> Result<(), Failure> {
    let qs = citadel_common::quarantine::list(&cfg.paths.state_dir).map_err(|e| {
        Failure::unavailable(format!(
            "cannot read the GPU quarantine in {}: {e}",
            citadel_common::quarantine::dir(&cfg.paths.state_dir).display()
        ))
    })?;
    let Some(q) = qs.iter().find(|q| model.gpus.contains(&q.gpu)) else {
        return Ok(());
    };
    let what = format!(
        "GPU {} is quarantined: {}; not starting {} on it until `citadel-service gpu clear {}`",
        q.gpu, q.what, model.name, q.gpu
    );
    incident::refused(
        cfg,
        model,
        citadel_common::classify::Class::GpuFault,
        &what,
        Some(q.gpu),
        q.xid,
    );
    Err(Failure::unavailable(what))
}

/// The engine ended without being asked to: always a failure (exit 1), whatever its status.
/// The incident (class, fix, excerpt of stdout and stderr) is recorded.
fn died(engine: &mut Engine, run: &Run<'_>, end: supervise::Ended, when: &str) -> Failure {
    let name = &run.model.name;
    let pid = engine.pid();
    // Its orphans (EngineCore, workers) must not keep the GPU.
    engine.kill();
    let why = match end {
        supervise::Ended::Exited(0) => {
            " (status 0 is still a failure: vLLM exits 0 when its engine core dies, vLLM issue 48966)"
        }
        _ => "",
    };
    let exit = match end {
        supervise::Ended::Exited(c) => ExitInfo {
            code: Some(c),
            signal: None,
        },
        supervise::Ended::Signaled(s) => ExitInfo {
            code: None,
            signal: Some(s.to_string()),
        },
    };
    let mut ctx = run.context();
    ctx.sigkilled = end == supervise::Ended::Signaled(nix::sys::signal::Signal::SIGKILL);
    let event = if when == "while serving" {
        Event::Crash
    } else {
        Event::StartFailure
    };
    let d = run.record(engine, event, exit, ctx);
    Failure::other(format!(
        "engine of {name} (PID {pid}) {end} {when}, without a stop being asked{why}\n{}: {} -- fix: {}",
        d.class, d.summary, d.fix
    ))
    .with_tail(engine)
}

/// Margin added to the time a stop may still take when start-model extends the unit's stop
/// timeout (`EXTEND_TIMEOUT_USEC`): our own exit and systemd's bookkeeping.
pub const EXTEND_MARGIN: Duration = Duration::from_secs(15);

/// Stop on request: STOPPING=1, then [`supervise::Engine::stop`] with `plan`, extending the
/// unit's stop timeout while it waits. Always exit 0.
fn stop_engine(
    engine: &mut Engine,
    name: &str,
    sig: nix::sys::signal::Signal,
    plan: StopPlan,
    when: &str,
) -> Exit {
    let how = if plan.skip_drain {
        "skipping the drain (the monitor restarts it as broken): SIGKILL to its process group"
            .to_string()
    } else if plan.drain.is_zero() {
        format!(
            "SIGTERM to its process group, up to {} s (engine.stop_grace_secs)",
            plan.grace.as_secs()
        )
    } else {
        format!(
            "draining: SIGTERM to the API server, up to {} s for requests in flight (engine.drain_secs), then {} s (engine.stop_grace_secs)",
            plan.drain.as_secs(),
            plan.grace.as_secs()
        )
    };
    let msg = format!("stopping {name} on {sig} {when}")
        .trim_end()
        .to_string();
    log::info!("{msg}: {how}");
    notify::stopping(&msg);
    let t0 = Instant::now();
    let stopped = engine.stop(plan, &mut |left| {
        notify::extend_timeout(left + EXTEND_MARGIN);
    });
    let end = stopped.end.map_or("ended".to_string(), |e| e.to_string());
    let took = t0.elapsed().as_secs_f64();
    let pid = engine.pid();
    match stopped.how {
        StopHow::Drained => {
            log::info!("engine of {name} (PID {pid}) drained and {end} after {took:.1} s")
        }
        StopHow::Terminated if !plan.drain.is_zero() => log::warn!(
            "engine of {name} (PID {pid}) did not end within {} s (engine.drain_secs); SIGTERM to its process group: {end} after {took:.1} s",
            plan.drain.as_secs()
        ),
        StopHow::Terminated => {
            log::info!("engine of {name} (PID {pid}) {end} after {took:.1} s")
        }
        StopHow::Killed => {
            log::info!("engine of {name} (PID {pid}) killed after {took:.1} s")
        }
        StopHow::KilledAfterGrace => log::warn!(
            "engine of {name} (PID {pid}) {end}; its process group did not stop within {} s (engine.drain_secs + engine.stop_grace_secs) and was killed",
            (plan.drain + plan.grace).as_secs()
        ),
    }
    Exit::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn argv_is_logged_unambiguously() {
        let a: Vec<String> = ["/v/vllm", "serve", "a b", "it's", "", "--x"]
            .map(String::from)
            .to_vec();
        assert_eq!(display_argv(&a), r"/v/vllm serve 'a b' 'it'\''s' '' --x");
    }

    #[test]
    fn cli_parses_the_documented_forms() {
        let c = Cli::try_parse_from([
            "start-model",
            "--config",
            "/x.toml",
            "-v",
            "--dry-run",
            "phi3",
        ])
        .unwrap();
        assert!(c.dry_run);
        assert_eq!(c.name, "phi3");
        assert_eq!(c.common.config, PathBuf::from("/x.toml"));
        assert!(Cli::try_parse_from(["start-model"]).is_err());
    }
}
