//! citadel-service: start, stop, inspect and check the whole Citadel box through systemd.
//!
//! Reads the config (`--config`, default `/etc/citadel/citadel.toml`) and the health monitor's
//! state file (`[monitor] state_file`); talks to systemd only through `systemctl`/`journalctl`
//! argv vectors (absolute paths), behind the [`systemd::Host`] trait so that tests use fakes.
//!
//! Service names: `all` (`citadel-ai.target`), `storage`, `gpu`, `models`
//! (`citadel-models.target`), `monitor`, `gateway` (`citadel-gateway.service`), or a model name (`citadel-model@NAME.service`).
//!
//! Output: human tables on stdout (colour only on a terminal and never with `NO_COLOR`), JSON
//! on stdout with `--json`, logs and errors on stderr.
//!
//! Exit codes: 0 ok (`status`: every enabled unit shown is active; `health`: every enabled
//! model is healthy); 1 failure (a unit failed or timed out, something is down or unhealthy,
//! a `check --host` check failed, not run as root); 2 usage (unknown service name, bad option); 69 a unit is not installed or
//! systemd/journalctl cannot be run; 78 invalid config.
//!
//! Over 500 lines as one concern, the dispatch: [`run`] and [`run_with`] route each [`Command`]
//! (defined in [`cli`]) to its module, with each command's glue (config, host, waiting, output)
//! beside the match arm that runs it.

pub mod apply;
pub mod changes;
pub mod check;
pub mod cli;
pub mod control;
pub mod deploy;
pub mod examples;
pub mod export;
pub mod gpu;
pub mod health;
pub mod hostcheck;
pub mod logs;
pub mod output;
pub mod probes;
pub mod rollout;
pub mod services;
pub mod snapshot;
pub mod status;
pub mod systemd;
pub mod top;
pub mod wait;
pub mod why;

use citadel_common::config::Config;
use citadel_common::health::HealthState;
use citadel_common::{Exit, Failure};
use services::Service;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use systemd::{ActiveState, Host, Job, RealHost};

pub use cli::{Cli, Command, ExportTarget, GpuAction, ServiceArg, StartArgs};

/// Seconds between polls of systemd while waiting.
pub const POLL: Duration = Duration::from_secs(1);

fn wait_options(timeout: u64) -> wait::WaitOptions {
    wait::WaitOptions {
        timeout: Duration::from_secs(timeout),
        poll: POLL,
        tty: std::io::stdout().is_terminal(),
        color: output::use_color(),
        attempts: true,
    }
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Run one command.
pub fn run(cli: &Cli) -> Result<Exit, Failure> {
    let command = cli.command_or_status();
    match &command {
        Command::Check { json, host } => {
            let machine = RealHost::default();
            let host = host.then_some(&machine as &dyn Host);
            return check::run(&cli.common.config, *json, host);
        }
        // Usage errors come before the config is read.
        Command::Stop { service, .. } => drop(service.required("stop")?),
        Command::Restart(a) => drop(a.service.required("restart")?),
        _ => {}
    }
    if let Command::Apply { .. } = &command {
        // apply validates the file itself (and prints the errors as JSON with --json).
        return apply_command(&command, &cli.common.config, &RealHost::default());
    }
    let cfg = match Config::load(&cli.common.config) {
        Ok(cfg) => cfg,
        Err(e) if works_with_a_broken_config(&command) => degraded(&e, &command),
        Err(e) => return Err(Failure::config(e.to_string())),
    };
    // An unknown service name is a usage error, before systemd is asked anything.
    if let Some(sa) = service_arg(&command) {
        Service::parse(sa.or_all(), &cfg)?;
    }
    if needs_systemd(&command) {
        require_systemd(
            std::path::Path::new(citadel_common::paths::SYSTEMD_RUN_DIR),
            &command,
        )?;
    }
    let host = RealHost::default();
    run_with(cli, &cfg, &host)
}

/// The service a command names, if it takes one.
fn service_arg(c: &Command) -> Option<&ServiceArg> {
    match c {
        Command::Start(a) | Command::Restart(a) => Some(&a.service),
        Command::Stop { service, .. }
        | Command::Status { service, .. }
        | Command::Logs { service, .. } => Some(service),
        _ => None,
    }
}

/// Commands that cannot do anything without a running systemd (`check` and `export` read only
/// the config; `health` probes and reads resources; `logs` reads journal files).
pub fn needs_systemd(c: &Command) -> bool {
    !matches!(
        c,
        Command::Check { .. }
            | Command::Rollout { dry_run: true, .. }
            | Command::Export { .. }
            | Command::Health { .. }
            | Command::Logs { .. }
    )
}

/// systemd must be PID 1 (`dir` is /run/systemd/system, as sd_booted(3) checks): otherwise one
/// short line and exit 69.
pub fn require_systemd(dir: &std::path::Path, c: &Command) -> Result<(), Failure> {
    if dir.is_dir() {
        return Ok(());
    }
    Err(Failure::unavailable(format!(
        "systemd is not running here (no {}: a container or chroot?); {} needs it, check works without",
        dir.display(),
        verb_of(c)
    )))
}

/// Read-only commands and `stop`/`disable` keep working while the config is broken (they act
/// on what systemd, the journal and the monitor's state file know); `check`, `start`,
/// `restart`, `deploy`, `enable` and `export` need a valid config and refuse with exit 78.
pub fn works_with_a_broken_config(c: &Command) -> bool {
    matches!(
        c,
        Command::Status { .. }
            | Command::Top { .. }
            | Command::Logs { .. }
            | Command::Health { .. }
            | Command::Stop { .. }
            | Command::Disable
    )
}

/// The word for a command in messages.
fn verb_of(c: &Command) -> &'static str {
    match c {
        Command::Status { .. } => "status",
        Command::Top { .. } => "top",
        Command::Logs { .. } => "logs",
        Command::Health { .. } => "health",
        Command::Stop { .. } => "stop",
        Command::Disable => "disable",
        Command::Start(_) => "start",
        Command::Restart(_) => "restart",
        Command::Enable => "enable",
        Command::Deploy { .. } => "deploy",
        Command::Rollout { .. } => "rollout",
        _ => "this command",
    }
}

/// The config to work from when the file does not validate: what salvage keeps, plus the
/// dropped models by name (so their units can still be stopped, shown and read). One warning
/// line says so.
fn degraded(e: &citadel_common::config::ConfigError, command: &Command) -> Config {
    let s = citadel_common::salvage::salvage(&e.file);
    let n = e.issues.len();
    // health probes ports: a model without a valid one is left out of it.
    let probes = matches!(command, Command::Health { .. });
    let note = match s.dropped_models.as_slice() {
        [] => String::new(),
        d => format!(
            "; {} {}: {}",
            if d.len() == 1 { "model" } else { "models" },
            d.join(", "),
            if probes {
                "left out (not valid)"
            } else {
                "from systemd only (not valid)"
            }
        ),
    };
    log::warn!(
        "{} is invalid ({}; citadel-service check lists {}): {} works from what systemd and the monitor know{note}",
        e.file.display(),
        citadel_common::text::count(n, "problem"),
        if n == 1 { "it" } else { "them" },
        verb_of(command),
    );
    let mut cfg = s.config;
    if !probes {
        cfg.models.extend(s.unvalidated);
        cfg.models.sort_by(|a, b| a.name.cmp(&b.name));
    }
    cfg
}

/// Run a command against a loaded config and a host.
pub fn run_with(cli: &Cli, cfg: &Config, host: &(dyn Host + Sync)) -> Result<Exit, Failure> {
    let mut out = std::io::stdout();
    let service = |s: &ServiceArg| Service::parse(s.or_all(), cfg);
    let command = cli.command_or_status();
    match &command {
        Command::Check { json, host: h } => {
            check::run(&cli.common.config, *json, h.then_some(host as &dyn Host))
        }
        Command::Start(a) | Command::Restart(a) => {
            let (verb, name) = match &command {
                Command::Start(_) => (Job::Start, "start"),
                _ => (Job::Restart, "restart"),
            };
            if verb == Job::Restart {
                a.service.required(name)?;
            }
            let s = service(&a.service)?;
            control::require_root(name)?;
            let opts = wait_options(a.timeout);
            control::start(host, cfg, &s, verb, (!a.no_wait).then_some(&opts), &mut out)
        }
        Command::Stop {
            service: sa,
            no_wait,
            timeout,
        } => {
            let s = Service::parse(sa.required("stop")?, cfg)?;
            control::require_root("stop")?;
            let opts = wait_options(*timeout);
            control::stop(host, cfg, &s, (!no_wait).then_some(&opts), &mut out)
        }
        Command::Status {
            service: sa,
            json,
            probe,
        } => {
            let s = service(sa)?;
            status_command(host, cfg, &s, *json, *probe)
        }
        Command::Top { interval } => top::run(
            &top::Live { host, cfg },
            top::TopOptions {
                interval: Duration::from_secs(*interval),
                color: output::use_color(),
            },
        ),
        Command::Logs {
            service: sa,
            follow,
            lines,
            since,
            priority,
            grep,
            kernel,
        } => {
            let s = service(sa)?;
            let units: Vec<String> = s.members(cfg).into_iter().map(|m| m.unit).collect();
            logs::exec(
                &units,
                &logs::LogOptions {
                    follow: *follow,
                    lines: *lines,
                    since: since.clone(),
                    priority: priority.clone(),
                    grep: grep.clone(),
                    kernel: *kernel,
                },
            )
        }
        Command::Enable => {
            control::require_root("enable")?;
            control::set_enabled(host, cfg, true, &mut out)
        }
        Command::Disable => {
            control::require_root("disable")?;
            control::set_enabled(host, cfg, false, &mut out)
        }
        Command::Health { json, timeout } => health_command(host, cfg, *json, *timeout),
        Command::Apply { .. } => apply_command(&command, &cfg.file, host),
        Command::Deploy {
            phase,
            test_model,
            timeout,
        } => {
            control::require_root("deploy")?;
            let opts = deploy::DeployOptions {
                phase: *phase,
                test_model: test_model.clone(),
                wait: wait_options(*timeout),
            };
            let timeout = Duration::from_secs(cfg.monitor.probe_timeout_secs.max(1));
            let probe = |m: &[(String, u16)]| probes::probe_all(&cfg.engine.host, m, timeout);
            deploy::run(host, cfg, &opts, &probe, &mut out)
        }
        Command::Rollout {
            name,
            path,
            dry_run,
            json,
            timeout,
            golden_prompt,
            golden_expect,
        } => {
            let opts = rollout::RolloutOptions {
                name: name.clone(),
                path: path.clone(),
                dry_run: *dry_run,
                json: *json,
                wait: wait_options(*timeout),
                golden: golden_prompt.clone().zip(golden_expect.clone()),
            };
            let port_free =
                |p| citadel_common::launch::port_free(&cfg.engine.host, p).unwrap_or(false);
            let http = rollout::Http { cfg };
            rollout::run(host, &http, cfg, &opts, &port_free, &mut out)
        }
        Command::Why { name, json } => why::run(host, cfg, name, *json),
        Command::Gpu {
            action: GpuAction::Clear { gpu },
        } => why::gpu_clear(cfg, *gpu, &mut out),
        Command::Export { target } => match target {
            ExportTarget::Kubernetes { namespace, out } => {
                export::run_kubernetes(cfg, namespace.as_deref(), out.as_deref())
            }
            ExportTarget::ProductionStack { out } => {
                export::run_production_stack(cfg, out.as_deref())
            }
        },
    }
}

fn apply_command(
    command: &Command,
    file: &std::path::Path,
    host: &dyn Host,
) -> Result<Exit, Failure> {
    let Command::Apply {
        dry_run,
        json,
        timeout,
    } = command
    else {
        return Err(Failure::other("not an apply command"));
    };
    let opts = apply::ApplyOptions {
        dry_run: *dry_run,
        json: *json,
        wait: wait_options(*timeout),
    };
    apply::run(host, file, &opts, &mut std::io::stdout())
}

/// The monitor's health, read from its state file, as status cells and a source line.
pub fn monitor_health(
    cfg: &Config,
) -> (BTreeMap<String, status::HealthCell>, status::HealthSource) {
    let file = &cfg.monitor.state_file;
    let mut src = status::HealthSource {
        kind: "none".into(),
        state_file: Some(file.display().to_string()),
        updated_unix: None,
        stale: false,
        note: None,
    };
    match HealthState::read(file) {
        Ok(Some(st)) => {
            src.kind = "monitor".into();
            src.updated_unix = Some(st.updated_unix);
            src.stale =
                now_unix().saturating_sub(st.updated_unix) > 3 * cfg.monitor.interval_secs.max(1);
            (status::cells_from_state(&st), src)
        }
        Ok(None) => {
            src.note = Some(format!(
                "no monitor state file at {} (is citadel-monitor running?)",
                file.display()
            ));
            (BTreeMap::new(), src)
        }
        Err(e) => {
            src.note = Some(format!("cannot read the monitor state file: {e}"));
            (BTreeMap::new(), src)
        }
    }
}

/// The `status` report of `s` now: systemd's units, the health (the monitor's state file, or
/// live probes with `probe`), the GPU memory per model from `gpus` (NVML), the open incidents.
/// `status` prints it once; `top` redraws it.
pub fn status_report(
    host: &dyn Host,
    cfg: &Config,
    s: &Service,
    probe: bool,
    gpus: Option<&citadel_common::gpu::Snapshot>,
) -> Result<status::StatusReport, Failure> {
    let members = s.members(cfg);
    let names: Vec<String> = members.iter().map(|m| m.unit.clone()).collect();
    let units = host.units(&names)?;
    let (cells, src) = if probe {
        // Models disabled in the config are probed only while their unit runs.
        let models: Vec<(String, u16)> = members
            .iter()
            .zip(&units)
            .filter(|(m, u)| m.enabled || u.active_state != ActiveState::Inactive)
            .filter_map(|(m, _)| m.port.map(|p| (m.service.clone(), p)))
            .collect();
        let timeout = Duration::from_secs(cfg.monitor.probe_timeout_secs.max(1));
        let r = probes::probe_all(&cfg.engine.host, &models, timeout);
        (
            status::cells_from_probes(&r),
            status::HealthSource {
                kind: "probe".into(),
                state_file: None,
                updated_unix: None,
                stale: false,
                note: None,
            },
        )
    } else {
        monitor_health(cfg)
    };
    let gpu_mem = gpus.map(gpu::memory_by_model);
    let mut report = status::build(
        &cfg.file.display().to_string(),
        &members,
        &units,
        host.monotonic(),
        &cells,
        src,
        gpu_mem.as_ref(),
    );
    status::add_incident_classes(&mut report, &why::open_classes(cfg));
    Ok(report)
}

fn status_command(
    host: &dyn Host,
    cfg: &Config,
    s: &Service,
    json: bool,
    probe: bool,
) -> Result<Exit, Failure> {
    let gpus = gpu::snapshot()
        .map_err(|e| log::debug!("no GPU memory per model: {e}"))
        .ok();
    let report = status_report(host, cfg, s, probe, gpus.as_ref())?;
    if json {
        println!("{}", status::to_json(&report)?);
    } else {
        print!(
            "{}",
            status::render_table(&report, now_unix(), output::use_color())
        );
    }
    Ok(if report.all_up {
        Exit::Ok
    } else {
        Exit::Failure
    })
}

fn health_command(
    host: &dyn Host,
    cfg: &Config,
    json: bool,
    timeout: Option<u64>,
) -> Result<Exit, Failure> {
    let models: Vec<(String, u16)> = cfg
        .enabled_models()
        .map(|m| (m.name.clone(), m.port))
        .collect();
    let mut units: Vec<String> = cfg.enabled_models().map(|m| m.unit()).collect();
    if cfg.gateway.enabled {
        units.push(citadel_common::paths::UNIT_GATEWAY.to_string());
    }
    let timeout = Duration::from_secs(timeout.unwrap_or(cfg.monitor.probe_timeout_secs).max(1));
    // Probes (the models directly, and through the gateway), systemd and the resource
    // readings run at the same time.
    let (probes, gateway, states, resources) = std::thread::scope(|sc| {
        let p = sc.spawn(|| probes::probe_all(&cfg.engine.host, &models, timeout));
        let g = sc.spawn(|| {
            cfg.gateway
                .enabled
                .then(|| probes::probe_gateway(cfg, timeout))
        });
        let r = sc.spawn(|| health::read_resources(&[cfg.paths.models_mount.clone(), "/".into()]));
        let states = if std::path::Path::new(citadel_common::paths::SYSTEMD_RUN_DIR).is_dir() {
            host.units(&units)
        } else {
            Err(Failure::unavailable("systemd is not running here"))
        };
        (p.join(), g.join(), states, r.join())
    });
    let gateway = gateway.map_err(|_| Failure::other("the gateway probe panicked"))?;
    let probes = probes.map_err(|_| Failure::other("the probe thread panicked"))?;
    let resources = resources.map_err(|_| Failure::other("reading resources panicked"))?;
    let mut warnings = vec![];
    let states = match states {
        Ok(v) => Some(
            v.into_iter()
                .map(|u| {
                    let word = status::state_word(&u.load_state, u.active_state.as_str());
                    (u.unit, word)
                })
                .collect::<BTreeMap<_, _>>(),
        ),
        Err(e) => {
            warnings.push(format!("unit states unknown: {e}"));
            None
        }
    };
    let (gpus, source) = match gpu::snapshot() {
        Ok(s) => (citadel_common::health::GpuHealth::of(&s), "nvml"),
        Err(e) => match HealthState::read(&cfg.monitor.state_file) {
            Ok(Some(st)) if !st.gpus.is_empty() => (st.gpus, "monitor"),
            _ => {
                log::debug!("no GPU readings: {e}");
                (vec![], "none")
            }
        },
    };
    let mut report = health::assemble(
        cfg,
        &probes,
        states.as_ref(),
        resources,
        gpus,
        source,
        warnings,
    );
    if let Some(mut g) = gateway {
        g.unit_state = states.as_ref().and_then(|s| s.get(&g.unit).cloned());
        report = health::with_gateway(report, cfg, g);
    }
    if json {
        println!("{}", health::to_json(&report)?);
    } else {
        print!("{}", health::render_table(&report, output::use_color()));
    }
    Ok(if report.healthy {
        Exit::Ok
    } else {
        Exit::Failure
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn without_systemd_one_short_line_and_exit_69() {
        let status = Cli::try_parse_from(["citadel-service"])
            .unwrap()
            .command_or_status();
        assert!(needs_systemd(&status));
        let d = tempfile::tempdir().unwrap();
        assert!(require_systemd(d.path(), &status).is_ok());
        let e = require_systemd(&d.path().join("system"), &status).unwrap_err();
        assert_eq!(e.exit(), Exit::Unavailable);
        assert!(e.message.starts_with("systemd is not running here"), "{e}");
        assert!(e.message.contains("status needs it"), "{e}");
        assert!(e.message.len() < 160 && !e.message.contains('\n'), "{e}");
        let check = Cli::try_parse_from(["citadel-service", "check"])
            .unwrap()
            .command_or_status();
        assert!(!needs_systemd(&check));
    }
}
