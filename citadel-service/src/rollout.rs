//! `citadel-service rollout NAME --path NEW_PATH [--dry-run] [--json]`: switch a model to a new
//! version of its weights, with rollback.
//!
//! 1. Checks, before anything is touched: a valid config (78), an enabled model (78), no rollout
//!    of it in progress (1), the new directory complete by the model-files rule of
//!    storage-setup and readable by the service account (69), the config with the new path
//!    still valid (78).
//! 2. The mode ([`citadel_common::rollout::decide`]): surge when every GPU of the model has room
//!    for a second instance by the plan's shares and a spare port is free; else replace. The
//!    plan (mode, why, port, steps) is printed; `--dry-run` stops here.
//! 3. Surge: the record (`runtime_dir/rollout/NAME.json`, phase surge-starting) names the new
//!    path and the spare port; `citadel-model-next@NAME` starts there and must pass READY, a
//!    deep probe (a one-token completion) and the golden prompt if one is given. Then phase
//!    switched and a gateway reload (the gateway routes NAME to the surge port; the reload
//!    returns once it does), `citadel-model@NAME` restarts on the new path (in-flight requests
//!    drain on the old one) and is verified the same way, the config's `models.NAME.path` is
//!    rewritten (that value only), the record removed, the gateway reloaded (back to the main
//!    port) and the surge instance stopped (it drains).
//! 4. Replace: phase replacing and a gateway reload (503 + `Retry-After`, "rolling out"), stop
//!    the main (drain), start it on the new path, verify, rewrite the config, remove the record,
//!    reload the gateway.
//! 5. Any failure: the record says restoring (main on the config's path), the main is restarted
//!    if it had been touched and waited for, the record removed, the gateway reloaded, the
//!    surge instance stopped; exit 1 naming the step and the cause (the engine's cause line when
//!    start-model logged one).
//!
//! The config file changes only after the new version serves on the main instance. The record
//! lives in /run: a reboot in the middle boots the old version from the unchanged config.
//!
//! Exit codes: 0 rolled out (or a dry run); 1 the rollout failed and was rolled back (or a
//! rollout is in progress already); 2 usage; 69 the new model files are incomplete; 78 invalid
//! config, unknown or disabled model, or a config the new path would make invalid.
//!
//! Over 500 lines as one concern: one rollout, its checks, the mode decision, the surge and the
//! replace steps and the rollback, as methods of one `Rollout` over one state (the record and
//! what was touched), in the order they run; the tests are in `rollout/tests.rs`.

use crate::apply::{running, stop_and_wait};
use crate::control::bring_up;
use crate::services::{Kind, Member};
use crate::systemd::{Host, Job};
use crate::wait::WaitOptions;
use citadel_common::config::{Config, Model};
use citadel_common::rollout::{self, Decision, Mode, Phase, Record};
use citadel_common::text::escape_controls;
use citadel_common::{paths, Exit, Failure};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How long the gateway gets to act on a reload (its SIGHUP, or its 0.5 s refresh tick).
pub const GATEWAY_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the monitor's state file is read while waiting for its word.
const MONITOR_POLL: std::time::Duration = std::time::Duration::from_millis(250);

pub struct RolloutOptions {
    pub name: String,
    pub path: PathBuf,
    pub dry_run: bool,
    pub json: bool,
    pub wait: WaitOptions,
    /// `--golden-prompt` and `--golden-expect`.
    pub golden: Option<(String, String)>,
}

/// What the rollout asks of a serving engine besides systemd: the deep probe and the golden
/// prompt. The real one is [`Http`]; tests use a fake.
pub trait Verify {
    /// A one-token completion on `port` answers 200; with `golden`, the completion of its
    /// prompt contains its expected text. `Err` says what was wrong, in one line.
    fn verify(
        &self,
        served: &str,
        port: u16,
        golden: Option<&(String, String)>,
    ) -> Result<(), String>;
}

/// [`Verify`] over HTTP with [`citadel_common::probe::Prober`], the API key of the config and
/// the monitor's deep-probe timeout.
pub struct Http<'a> {
    pub cfg: &'a Config,
}

impl Verify for Http<'_> {
    fn verify(
        &self,
        served: &str,
        port: u16,
        golden: Option<&(String, String)>,
    ) -> Result<(), String> {
        use citadel_common::probe::{base_url, Prober};
        let key = citadel_common::apikey::read(self.cfg).map_err(|f| f.message)?;
        let timeout = std::time::Duration::from_secs(self.cfg.monitor.deep_probe_timeout_secs);
        let url = format!("{}/v1/completions", base_url(&self.cfg.engine.host, port));
        let prober = Prober::with_max_body(timeout, 1 << 20);
        let ask = |prompt: &str, max_tokens: u32| {
            let body = serde_json::json!({"model": served, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
                .to_string();
            match prober.post_json(&url, &body, key.as_deref()) {
                Ok(r) if r.status == 200 => Ok(r.body),
                Ok(r) => Err(format!(
                    "{url} answered HTTP {}: {}",
                    r.status,
                    escape_controls(r.body.chars().take(200).collect::<String>().trim())
                )),
                Err(e) => Err(format!("{url}: {e}")),
            }
        };
        ask("ping", 1).map_err(|e| format!("deep probe (1-token completion): {e}"))?;
        if let Some((prompt, expect)) = golden {
            let body = ask(prompt, 64).map_err(|e| format!("golden prompt: {e}"))?;
            let text = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["choices"][0]["text"].as_str().map(str::to_string))
                .unwrap_or_default();
            if !text.contains(expect.as_str()) {
                return Err(format!(
                    "golden prompt: the completion does not contain {:?}: {:?}",
                    escape_controls(expect),
                    escape_controls(&text.chars().take(200).collect::<String>())
                ));
            }
        }
        Ok(())
    }
}

/// The plan: what `--dry-run` prints, and the head of the `--json` document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub model: String,
    pub config: String,
    pub old_path: String,
    pub new_path: String,
    /// The new path as the engine gets it (relative ones are under `paths.models_link`).
    pub resolved_path: String,
    pub port: u16,
    #[serde(flatten)]
    pub decision: Decision,
    pub steps: Vec<String>,
}

impl Plan {
    fn surge_port(&self) -> Option<u16> {
        match self.decision.mode {
            Mode::Surge { port } => Some(port),
            Mode::Replace => None,
        }
    }

    /// The plan as text.
    pub fn render(&self) -> String {
        let e = |s: &str| escape_controls(s).into_owned();
        let mode = match self.decision.mode {
            Mode::Surge { port } => format!("surge (a second instance on port {port})"),
            Mode::Replace => "replace (stop, then start the new version)".into(),
        };
        let mut s = format!(
            "rollout of {}: {} -> {}\nmode: {mode}\nwhy: {}\nsteps:\n",
            self.model,
            e(&self.old_path),
            e(&self.new_path),
            self.decision.why
        );
        for (i, st) in self.steps.iter().enumerate() {
            s.push_str(&format!("  {}. {}\n", i + 1, e(st)));
        }
        s.push_str("on any failure: the old version is restored and serves again\n");
        s
    }
}

fn steps(m: &Model, d: &Decision, golden: bool) -> Vec<String> {
    let verify = if golden {
        "READY, deep probe, golden prompt"
    } else {
        "READY, deep probe"
    };
    let main = paths::model_unit(&m.name);
    match d.mode {
        Mode::Surge { port } => vec![
            format!(
                "start {} on port {port} with the new path; wait: {verify}",
                paths::surge_unit(&m.name)
            ),
            format!("switch: the gateway routes {} to port {port}", m.name),
            format!("restart {main} on the new path (the old one drains); wait: {verify}"),
            format!("write models.{}.path to the config", m.name),
            format!(
                "switch back: the gateway routes {} to port {}",
                m.name, m.port
            ),
            format!("stop {} (it drains)", paths::surge_unit(&m.name)),
        ],
        Mode::Replace => vec![
            format!(
                "the gateway answers 503 with Retry-After for {} (rolling out)",
                m.name
            ),
            format!("stop {main} (it drains)"),
            format!("start {main} on the new path; wait: {verify}"),
            format!("write models.{}.path to the config", m.name),
            format!("the gateway routes {} again", m.name),
        ],
    }
}

/// The checks of step 1 and the plan, from the loaded config.
pub fn plan(
    cfg: &Config,
    name: &str,
    new_path: &Path,
    golden: bool,
    port_free: &dyn Fn(u16) -> bool,
) -> Result<Plan, Failure> {
    let file = cfg.file.display();
    let Some(m) = cfg.model(name) else {
        let known: Vec<&str> = cfg.models.iter().map(|m| m.name.as_str()).collect();
        return Err(Failure::config(format!(
            "{file}: no model named {name:?} (models: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    };
    if !m.enabled {
        return Err(Failure::config(format!(
            "{file}: model {name} is disabled (models.{name}.enabled = false); roll out only a model that runs"
        )));
    }
    let Some(new_text) = new_path.to_str().filter(|s| !s.is_empty()) else {
        return Err(Failure::usage(format!(
            "--path {:?}: not a UTF-8 path the config can hold",
            new_path
        )));
    };
    if new_path == m.path {
        return Err(Failure::usage(format!(
            "models.{name}.path is already {}: nothing to roll out",
            escape_controls(new_text)
        )));
    }
    if let Ok(Some(r)) = Record::read(&cfg.paths.runtime_dir, name) {
        return Err(Failure::other(format!(
            "a rollout of {name} is in progress already (phase {}, {}); if no citadel-service rollout runs, remove that file",
            r.phase.as_str(),
            rollout::file(&cfg.paths.runtime_dir, name).display()
        )));
    }
    let mut edited = m.clone();
    edited.path = new_path.to_path_buf();
    let resolved = edited.resolved_path(&cfg.paths);
    check_files(cfg, &resolved)?;
    // The config with the new path must still be valid (the path rules of the config).
    let text = std::fs::read_to_string(&cfg.file)
        .map_err(|e| Failure::config(format!("{file}: cannot read: {e}")))?;
    let new = rollout::set_model_path(&text, name, new_text)
        .map_err(|e| Failure::config(format!("{file}: models.{name}.path: {e}")))?;
    if let Err(e) = Config::parse(&new, &cfg.file) {
        return Err(Failure::config(format!(
            "{file}: with models.{name}.path = {:?}: {}",
            escape_controls(new_text),
            e.lines().join("; ")
        )));
    }
    let decision = rollout::decide(cfg, m, port_free);
    Ok(Plan {
        model: name.to_string(),
        config: cfg.file.display().to_string(),
        old_path: m.path.display().to_string(),
        new_path: new_text.to_string(),
        resolved_path: resolved.display().to_string(),
        port: m.port,
        steps: steps(m, &decision, golden),
        decision,
    })
}

/// The new directory: complete (storage-setup's rule) and, as root, readable by the service
/// account (start-model's rule): 69 otherwise, every problem named.
fn check_files(cfg: &Config, dir: &Path) -> Result<(), Failure> {
    citadel_common::modelfiles::check_model_dir(dir)
        .map_err(|p| Failure::unavailable(format!("new version refused: {}", p.join("; "))))?;
    if nix::unistd::geteuid().is_root() {
        let account = citadel_common::access::Account::lookup(&cfg.service.user)
            .map_err(|e| Failure::config(format!("service.user: {e}")))?;
        citadel_common::access::check_tree_readable(&account, dir).map_err(|e| {
            Failure::unavailable(format!(
                "new version refused: {} is not readable by {}: {e}",
                dir.display(),
                cfg.service.user
            ))
        })?;
    }
    Ok(())
}

/// The `--json` document: the plan, then the outcome.
#[derive(Debug, Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    plan: &'a Plan,
    dry_run: bool,
    /// planned, rolled-out, rolled-back, rollback-failed
    result: &'a str,
    error: Option<String>,
}

fn print_report(plan: &Plan, dry_run: bool, result: &str, error: Option<String>) {
    let r = Report {
        plan,
        dry_run,
        result,
        error,
    };
    if let Err(e) = citadel_common::output::print_json(&r) {
        log::error!("{e}");
    }
}

/// Validate, plan, print; carry it out unless `--dry-run`.
pub fn run(
    host: &dyn Host,
    verify: &dyn Verify,
    cfg: &Config,
    opts: &RolloutOptions,
    port_free: &dyn Fn(u16) -> bool,
    out: &mut dyn Write,
) -> Result<Exit, Failure> {
    let plan = plan(
        cfg,
        &opts.name,
        &opts.path,
        opts.golden.is_some(),
        port_free,
    )?;
    if !opts.json {
        let _ = write!(out, "{}", plan.render());
    }
    if opts.dry_run {
        if opts.json {
            print_report(&plan, true, "planned", None);
        }
        return Ok(Exit::Ok);
    }
    crate::control::require_root("rollout")?;
    let mut progress: Box<dyn Write> = if opts.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let r = Rollout {
        host,
        verify,
        cfg,
        plan: &plan,
        opts,
    };
    match r.execute(&mut *progress) {
        Ok(()) => {
            let _ = writeln!(
                progress,
                "rolled out: {} serves {} on port {} ({} updated)",
                plan.model,
                escape_controls(&plan.new_path),
                plan.port,
                cfg.file.display()
            );
            if opts.json {
                print_report(&plan, false, "rolled-out", None);
            }
            Ok(Exit::Ok)
        }
        Err(f) => {
            if opts.json {
                let result = if f.message.contains("rollback failed") {
                    "rollback-failed"
                } else {
                    "rolled-back"
                };
                print_report(&plan, false, result, Some(f.message.clone()));
                return Err(f.with_document_printed());
            }
            Err(f)
        }
    }
}

struct Rollout<'a> {
    host: &'a dyn Host,
    verify: &'a dyn Verify,
    cfg: &'a Config,
    plan: &'a Plan,
    opts: &'a RolloutOptions,
}

/// How far a rollout got: what a rollback must undo.
#[derive(Default)]
struct Touched {
    surge: bool,
    main: bool,
}

fn member(name: &str, unit: String, port: u16) -> Member {
    Member {
        service: name.to_string(),
        unit,
        kind: Kind::Model,
        enabled: true,
        port: Some(port),
        listen: None,
    }
}

impl Rollout<'_> {
    fn name(&self) -> &str {
        &self.plan.model
    }

    fn record(&self, phase: Phase) -> Record {
        Record {
            schema: rollout::SCHEMA,
            name: self.name().to_string(),
            phase,
            path: PathBuf::from(&self.plan.new_path),
            resolved_path: PathBuf::from(&self.plan.resolved_path),
            surge_port: self.plan.surge_port(),
            started_unix: crate::now_unix(),
        }
    }

    fn write_record(&self, phase: Phase, out: &mut dyn Write) -> Result<(), Failure> {
        let p = self
            .record(phase)
            .write(&self.cfg.paths.runtime_dir)
            .map_err(|e| {
                Failure::other(format!(
                    "cannot write the rollout record {}: {e}",
                    rollout::file(&self.cfg.paths.runtime_dir, self.name()).display()
                ))
            })?;
        let _ = writeln!(
            out,
            "  rollout record: {} ({})",
            p.display(),
            phase.as_str()
        );
        Ok(())
    }

    fn remove_record(&self) -> Result<(), Failure> {
        Record::remove(&self.cfg.paths.runtime_dir, self.name()).map_err(|e| {
            Failure::other(format!(
                "cannot remove the rollout record {}: {e}",
                rollout::file(&self.cfg.paths.runtime_dir, self.name()).display()
            ))
        })
    }

    /// The gateway re-reads the records now (`systemctl reload` returns once it has); a
    /// gateway that does not run has nothing to switch.
    fn reload_gateway(&self, out: &mut dyn Write) -> Result<(), Failure> {
        if !self.cfg.gateway.enabled || !running(self.host, paths::UNIT_GATEWAY, "gateway", out)? {
            return Ok(());
        }
        self.host.reload(paths::UNIT_GATEWAY)?;
        // ExecReload= only sends SIGHUP; the gateway re-reads the records at once, and on its
        // refresh tick (0.5 s) at the latest: one second covers both.
        self.host.sleep(GATEWAY_SETTLE);
        Ok(())
    }

    /// Before the gateway goes back to the main instance: wait until the monitor's word on it
    /// would let requests through (healthy or failing, as the gateway reads it), or the monitor
    /// is not running (no state file, or a stale one), for up to three monitor intervals + 10 s.
    fn wait_monitor(&self, out: &mut dyn Write) {
        use citadel_common::health::{HealthState, ModelState};
        let iv = self.cfg.monitor.interval_secs.max(1);
        let limit = std::time::Duration::from_secs(3 * iv + 10).min(self.opts.wait.timeout);
        let stale = (iv * 3).max(30);
        let t0 = self.host.monotonic();
        loop {
            let word = match HealthState::read(&self.cfg.monitor.state_file) {
                Ok(Some(st)) if crate::now_unix().saturating_sub(st.updated_unix) <= stale => {
                    st.model(self.name()).map(|m| m.state)
                }
                _ => return,
            };
            match word {
                Some(ModelState::Healthy | ModelState::Failing) | None => return,
                Some(other) if self.host.monotonic().saturating_sub(t0) >= limit => {
                    let _ = writeln!(
                        out,
                        "  the monitor still says {} for {} after {}s; going on",
                        other.as_str(),
                        self.name(),
                        limit.as_secs()
                    );
                    return;
                }
                Some(_) => self.host.sleep(MONITOR_POLL),
            }
        }
    }

    fn main(&self) -> Member {
        member(self.name(), paths::model_unit(self.name()), self.plan.port)
    }

    fn surge(&self, port: u16) -> Member {
        member(self.name(), paths::surge_unit(self.name()), port)
    }

    fn served(&self) -> String {
        self.cfg
            .model(self.name())
            .map_or_else(|| self.name().to_string(), |m| m.served_model_name.clone())
    }

    fn check(&self, port: u16, out: &mut dyn Write) -> Result<(), Failure> {
        self.verify
            .verify(&self.served(), port, self.opts.golden.as_ref())
            .map_err(Failure::other)?;
        let _ = writeln!(
            out,
            "  verified on port {port}: deep probe{}",
            if self.opts.golden.is_some() {
                " and golden prompt"
            } else {
                ""
            }
        );
        Ok(())
    }

    /// Start or restart one unit and wait until it serves; a failure names start-model's
    /// cause (the engine's own line when it quoted one), as `citadel-service start` does.
    fn bring_up(&self, verb: Job, m: Member, out: &mut dyn Write) -> Result<(), Failure> {
        let unit = m.unit.clone();
        bring_up(self.host, verb, &[m], Some(&self.opts.wait), out)
            .map(|_| ())
            .map_err(|mut e| {
                if let Some(c) = self.host.last_cause(&unit) {
                    if !e.message.contains(&c) {
                        e.message = format!("{}; start-model said: {c}", e.message);
                    }
                }
                e
            })
    }

    fn execute(&self, out: &mut dyn Write) -> Result<(), Failure> {
        let mut touched = Touched::default();
        let steps = &self.plan.steps;
        let n = steps.len();
        let mut at = 0;
        let result = match self.plan.decision.mode {
            Mode::Surge { port } => self.surge_steps(port, &mut touched, &mut at, out),
            Mode::Replace => self.replace_steps(&mut touched, &mut at, out),
        };
        let Err(e) = result else {
            return Ok(());
        };
        let step = steps.get(at).cloned().unwrap_or_default();
        let _ = writeln!(
            out,
            "rollout failed at step {}/{n} ({step}): {}",
            at + 1,
            e.message
        );
        let _ = writeln!(
            out,
            "rolling back to {}",
            escape_controls(&self.plan.old_path)
        );
        let why = format!(
            "rollout of {} failed at step {}/{n} ({}): {}",
            self.name(),
            at + 1,
            escape_controls(&step),
            e.message
        );
        match self.rollback(&touched, out) {
            Ok(()) => Err(Failure::other(format!(
                "{why}; rolled back: {} serves the old version ({}) on port {}, {} unchanged",
                self.name(),
                escape_controls(&self.plan.old_path),
                self.plan.port,
                self.cfg.file.display()
            ))),
            Err(r) => Err(Failure::other(format!(
                "{why}; rollback failed too: {}; see citadel-service why {}",
                r.message,
                self.name()
            ))),
        }
    }

    fn step(&self, at: &mut usize, i: usize, out: &mut dyn Write) {
        *at = i;
        let n = self.plan.steps.len();
        if let Some(s) = self.plan.steps.get(i) {
            let _ = writeln!(out, "[{}/{n}] {}", i + 1, escape_controls(s));
        }
    }

    fn surge_steps(
        &self,
        port: u16,
        touched: &mut Touched,
        at: &mut usize,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        self.step(at, 0, out);
        self.write_record(Phase::SurgeStarting, out)?;
        touched.surge = true;
        self.bring_up(Job::Start, self.surge(port), out)?;
        self.check(port, out)?;
        self.step(at, 1, out);
        self.write_record(Phase::Switched, out)?;
        self.reload_gateway(out)?;
        self.step(at, 2, out);
        touched.main = true;
        self.bring_up(Job::Restart, self.main(), out)?;
        self.commit(at, out)?;
        self.step(at, 5, out);
        // From here the new version serves from the config: a surge that does not stop cleanly
        // is reported, not rolled back.
        if let Err(e) = stop_and_wait(
            self.host,
            &[paths::surge_unit(self.name())],
            self.surge(port),
            &self.opts.wait,
            out,
        ) {
            log::warn!("{}: {}", paths::surge_unit(self.name()), e.message);
        }
        Ok(())
    }

    fn replace_steps(
        &self,
        touched: &mut Touched,
        at: &mut usize,
        out: &mut dyn Write,
    ) -> Result<(), Failure> {
        self.step(at, 0, out);
        self.write_record(Phase::Replacing, out)?;
        self.reload_gateway(out)?;
        self.step(at, 1, out);
        touched.main = true;
        let unit = paths::model_unit(self.name());
        stop_and_wait(self.host, &[unit], self.main(), &self.opts.wait, out)?;
        self.step(at, 2, out);
        self.bring_up(Job::Start, self.main(), out)?;
        self.commit(at, out)
    }

    /// The end both modes share, once the main unit runs the new path: it must pass the
    /// checks (step 2's), then the config is written (3), and once the monitor would let
    /// requests through the record goes and the gateway routes to the main port again (4).
    fn commit(&self, at: &mut usize, out: &mut dyn Write) -> Result<(), Failure> {
        self.check(self.plan.port, out)?;
        self.step(at, 3, out);
        self.write_config(out)?;
        self.step(at, 4, out);
        self.wait_monitor(out);
        self.remove_record()?;
        self.reload_gateway(out)
    }

    /// Undo what was touched: the main back on the config's path (the record says restoring
    /// meanwhile, so the gateway keeps away from it), the record gone, the surge stopped.
    fn rollback(&self, touched: &Touched, out: &mut dyn Write) -> Result<(), Failure> {
        let mut first_error: Option<Failure> = None;
        if touched.main {
            self.write_record(Phase::Restoring, out)?;
            self.reload_gateway(out)?;
            let unit = paths::model_unit(self.name());
            let _ = writeln!(out, "  starting {unit} again on the old path");
            // Stopped first (a failing new version is in systemd's restart loop: the stop ends
            // it), then its failed state and start-limit count reset (the new version may have
            // burnt the unit's starts), then started on the config's path.
            let restored = stop_and_wait(
                self.host,
                std::slice::from_ref(&unit),
                self.main(),
                &self.opts.wait,
                out,
            )
            .and_then(|()| self.host.reset_failed(&unit))
            .and_then(|()| self.bring_up(Job::Start, self.main(), out));
            match restored {
                Ok(()) => self.wait_monitor(out),
                Err(e) => first_error = Some(e),
            }
        }
        self.remove_record()?;
        if let Err(e) = self.reload_gateway(out) {
            first_error.get_or_insert(e);
        }
        if touched.surge {
            if let Some(port) = self.plan.surge_port() {
                let unit = paths::surge_unit(self.name());
                if let Err(e) = stop_and_wait(
                    self.host,
                    std::slice::from_ref(&unit),
                    self.surge(port),
                    &self.opts.wait,
                    out,
                ) {
                    first_error.get_or_insert(e);
                }
                // A failed surge instance is the rollout's failure, said above; not the unit's.
                if let Err(e) = self.host.reset_failed(&unit) {
                    log::warn!("{e}");
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `models.NAME.path` in the config file, and in the running snapshot when there is one
    /// (so the next apply does not restart the model again); every other byte kept.
    fn write_config(&self, out: &mut dyn Write) -> Result<(), Failure> {
        let file = &self.cfg.file;
        edit_file(file, self.name(), &self.plan.new_path, true)?;
        let _ = writeln!(
            out,
            "  {}: models.{}.path = {:?}",
            file.display(),
            self.name(),
            escape_controls(&self.plan.new_path)
        );
        let snap = crate::snapshot::path(self.cfg);
        if snap.exists() {
            if let Err(e) = edit_file(&snap, self.name(), &self.plan.new_path, false) {
                log::warn!(
                    "running snapshot not updated (apply may restart {}): {}",
                    self.name(),
                    e.message
                );
            }
        }
        Ok(())
    }
}

/// Set `models.NAME.path` in `file` (atomically, its mode kept); with `validate`, the result
/// must be a valid config.
fn edit_file(file: &Path, name: &str, path: &str, validate: bool) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    let d = file.display();
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::other(format!("{d}: cannot read: {e}")))?;
    let new = rollout::set_model_path(&text, name, path)
        .map_err(|e| Failure::other(format!("{d}: {e}")))?;
    if validate {
        Config::parse(&new, file).map_err(|e| {
            Failure::other(format!("{d}: with the new path: {}", e.lines().join("; ")))
        })?;
    }
    let mode = std::fs::metadata(file)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    citadel_common::fsutil::write_atomic(file, new.as_bytes(), mode)
        .map_err(|e| Failure::other(format!("{d}: cannot write: {e}")))
}

#[cfg(test)]
mod tests;
