//! `start`, `stop`, `restart`, `enable`, `disable`: queue systemd jobs, then wait and report.

use crate::services::{boot_units, Member, Service};
use crate::systemd::{process_name, Host, Job};
use crate::wait::{self, start_phase, stop_phase, Outcome, Phase, WaitOptions};
use citadel_common::config::Config;
use citadel_common::{Exit, Failure};
use std::io::Write;

/// Journal lines shown for a unit that failed to start.
pub const JOURNAL_LINES: u32 = 20;

/// Commands that change systemd state say so up front instead of failing inside systemctl.
pub fn require_root(command: &str) -> Result<(), Failure> {
    let argv: Vec<String> = std::env::args().collect();
    check_root(nix::unistd::geteuid().as_raw(), command, &argv)
}

/// Quote one word for a shell command line an operator can paste.
fn shell_word(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// Root or exit 1 with the exact command line to retry under sudo (service name, options and
/// all; `argv[0]` as the operator typed it).
pub fn check_root(euid: u32, command: &str, argv: &[String]) -> Result<(), Failure> {
    if euid == 0 {
        Ok(())
    } else {
        let again: Vec<String> = argv.iter().map(|w| shell_word(w)).collect();
        Err(Failure::other(format!(
            "citadel-service {command} must be run as root (it changes systemd state); try: sudo {}",
            again.join(" ")
        )))
    }
}

fn names(members: &[Member]) -> Vec<String> {
    members.iter().map(|m| m.unit.clone()).collect()
}

/// Refuse (exit 69, nothing queued) when a unit is not installed.
pub fn check_installed(host: &dyn Host, members: &[Member]) -> Result<(), Failure> {
    let units = host.units(&names(members))?;
    let missing: Vec<String> = units
        .iter()
        .filter(|u| u.load_state == "not-found")
        .map(|u| u.unit.clone())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Failure::unavailable(format!(
            "not installed (LoadState=not-found): {}; is the citadel package installed?",
            missing.join(", ")
        )))
    }
}

/// Queue `verb` (start or restart) for `members`, wait unless `opts` is `None`, and fail with
/// the journal of every unit that failed.
pub fn bring_up(
    host: &dyn Host,
    verb: Job,
    members: &[Member],
    opts: Option<&WaitOptions>,
    out: &mut dyn Write,
) -> Result<Outcome, Failure> {
    check_installed(host, members)?;
    host.queue(verb, &names(members))?;
    let watch = wait::watch_list(members);
    let Some(opts) = opts else {
        let _ = writeln!(
            out,
            "{} queued for {} (not waiting)",
            verb.as_str(),
            names(members).join(" ")
        );
        return Ok(Outcome {
            watched: vec![],
            elapsed: Default::default(),
            timed_out: false,
        });
    };
    let outcome = wait::wait(host, &watch, start_phase, opts, out)?;
    let failed: Vec<&wait::Watched> = outcome
        .watched
        .iter()
        .filter(|w| w.phase == Phase::Failed || w.gave_up.is_some())
        .collect();
    for w in &failed {
        let tail = host.journal_tail(&w.member.unit, JOURNAL_LINES)?;
        eprintln!(
            "--- last {JOURNAL_LINES} journal lines of {} ---",
            w.member.unit
        );
        eprint!("{}", tail);
        if !tail.is_empty() && !tail.ends_with('\n') {
            eprintln!();
        }
    }
    if !failed.is_empty() {
        return Err(Failure::other(format!(
            "failed to {}: {}",
            verb.as_str(),
            failed
                .iter()
                .map(|w| match &w.gave_up {
                    Some(cause) => format!(
                        "{} ({}: {} failed attempts, the same failure twice in a row: {cause}; systemd keeps retrying until its start limit)",
                        w.member.service, w.member.unit, w.failed_attempts
                    ),
                    None => format!(
                        "{} ({}: {})",
                        w.member.service,
                        w.member.unit,
                        wait::detail(&w.unit, w.phase)
                    ),
                })
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    if outcome.timed_out {
        return Err(Failure::other(format!(
            "timed out after {}s; not up yet: {} (still starting; see citadel-service status)",
            outcome.elapsed.as_secs(),
            outcome
                .pending()
                .iter()
                .map(|w| format!("{} ({})", w.member.service, w.phase.word()))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let _ = writeln!(
        out,
        "up: {} in {}",
        watch
            .iter()
            .map(|m| m.service.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        crate::output::duration(outcome.elapsed.as_secs())
    );
    Ok(outcome)
}

/// `start` / `restart`.
pub fn start(
    host: &dyn Host,
    cfg: &Config,
    service: &Service,
    verb: Job,
    opts: Option<&WaitOptions>,
    out: &mut dyn Write,
) -> Result<Exit, Failure> {
    if let Service::Model(n) = service {
        if cfg.model(n).is_some_and(|m| !m.enabled) {
            log::warn!(
                "model {n} is disabled in {}; starting it anyway",
                cfg.file.display()
            );
        }
    }
    bring_up(host, verb, &service.to_start(cfg), opts, out)?;
    // The box now runs this config: `apply` compares the next edit with it.
    if opts.is_some() && matches!(service, Service::All | Service::Models) {
        match crate::snapshot::save(cfg) {
            Ok(p) => log::debug!("running snapshot: {}", p.display()),
            Err(e) => log::warn!("{e}"),
        }
    }
    Ok(Exit::Ok)
}

/// `stop`: stop every unit behind the name (disabled models too), wait, and report whatever is
/// left running: units not yet inactive and processes still in their cgroups.
pub fn stop(
    host: &dyn Host,
    cfg: &Config,
    service: &Service,
    opts: Option<&WaitOptions>,
    out: &mut dyn Write,
) -> Result<Exit, Failure> {
    let all = service.members(cfg);
    let before = host.units(&names(&all))?;
    // Units that do not exist cannot run; systemctl stop would refuse them.
    let members: Vec<Member> = all
        .iter()
        .zip(&before)
        .filter(|(_, u)| u.load_state != "not-found")
        .map(|(m, _)| m.clone())
        .collect();
    if members.is_empty() {
        let _ = writeln!(out, "nothing to stop: no unit is installed");
        return Ok(Exit::Ok);
    }
    let cgroups: Vec<(String, String)> = before
        .iter()
        .filter(|u| !u.control_group.is_empty())
        .map(|u| (u.unit.clone(), u.control_group.clone()))
        .collect();
    host.queue(Job::Stop, &names(&members))?;
    let Some(opts) = opts else {
        let _ = writeln!(
            out,
            "stop queued for {} (not waiting)",
            names(&members).join(" ")
        );
        return Ok(Exit::Ok);
    };
    let outcome = wait::wait(host, &members, stop_phase, opts, out)?;
    let mut left = vec![];
    for w in outcome.pending() {
        left.push(format!(
            "{} is still {}",
            w.member.unit, w.unit.active_state
        ));
    }
    for (unit, cg) in &cgroups {
        let pids = host.cgroup_pids(cg);
        if !pids.is_empty() {
            left.push(format!(
                "{unit}: processes still in {cg}: {}",
                pids.iter()
                    .map(|p| format!("{p} ({})", process_name(*p)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if !left.is_empty() {
        return Err(Failure::other(format!(
            "still running after stop:\n{}",
            left.join("\n")
        )));
    }
    let failed = outcome.in_phase(Phase::Failed);
    if !failed.is_empty() {
        log::warn!(
            "stopped, but in failed state (see citadel-service logs): {}",
            failed
                .iter()
                .map(|w| w.member.unit.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        out,
        "stopped: {} in {}",
        members
            .iter()
            .map(|m| m.service.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        crate::output::duration(outcome.elapsed.as_secs())
    );
    Ok(Exit::Ok)
}

/// `enable`: the target, the infrastructure units, the monitor and the models target come up
/// at boot; which models the target pulls is the config's business (citadel-generator), so
/// per-model links left by older versions are removed. `disable`: all of them off.
pub fn set_enabled(
    host: &dyn Host,
    cfg: &Config,
    enable: bool,
    out: &mut dyn Write,
) -> Result<Exit, Failure> {
    let legacy = host.model_links();
    let (on, off) = boot_units(cfg, &legacy);
    if enable {
        host.set_enabled(true, &on)?;
        let _ = writeln!(out, "enabled: {}", on.join(" "));
        if !legacy.is_empty() {
            host.set_enabled(false, &off)?;
            let _ = writeln!(
                out,
                "removed per-model boot links (the config decides which models run): {}",
                legacy.join(" ")
            );
        }
        let wanted: Vec<&str> = cfg.enabled_models().map(|m| m.name.as_str()).collect();
        let _ = writeln!(
            out,
            "models wanted at boot (from {}): {}",
            cfg.file.display(),
            if wanted.is_empty() {
                "none".to_string()
            } else {
                wanted.join(" ")
            }
        );
    } else {
        let every: Vec<String> = on.into_iter().chain(off).collect();
        host.set_enabled(false, &every)?;
        let _ = writeln!(out, "disabled: {}", every.join(" "));
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::tests::cfg;
    use crate::systemd::fake::{unit, FakeHost};

    #[test]
    fn root_is_required_by_name() {
        let argv: Vec<String> = [
            "citadel-service",
            "stop",
            "phi3",
            "--config",
            "/etc/my citadel.toml",
        ]
        .map(String::from)
        .to_vec();
        assert!(check_root(0, "stop", &argv).is_ok());
        let e = check_root(1000, "stop", &argv).unwrap_err();
        // The hint keeps the service name and the options.
        assert_eq!(
            e.message,
            "citadel-service stop must be run as root (it changes systemd state); try: sudo citadel-service stop phi3 --config '/etc/my citadel.toml'"
        );
    }

    #[test]
    fn start_queues_every_unit_and_reports_failures_with_the_journal() {
        let p = "citadel-model@phi3.service";
        let mut host = FakeHost::new().with(
            p,
            vec![unit(p, "activating", false), unit(p, "failed", false)],
        );
        for u in [
            "citadel-ai.target",
            "citadel-models.target",
            "citadel-storage.service",
            "citadel-gpu.service",
            "citadel-model@coder.service",
            "citadel-monitor.service",
            "citadel-gateway.service",
        ] {
            host = host.with(u, vec![unit(u, "active", false)]);
        }
        host.systemd.set_journal(p, "boom\n");
        let e = start(
            &host,
            &cfg(),
            &Service::All,
            Job::Start,
            Some(&WaitOptions::for_tests()),
            &mut vec![],
        )
        .unwrap_err();
        assert_eq!(e.exit(), Exit::Failure);
        assert!(
            e.message
                .contains("phi3 (citadel-model@phi3.service: result exit-code)"),
            "{e}"
        );
        let calls = host.recorded();
        assert_eq!(calls[0], "start --no-block citadel-ai.target citadel-models.target citadel-storage.service citadel-gpu.service citadel-model@coder.service citadel-model@phi3.service citadel-monitor.service citadel-gateway.service");
        assert_eq!(calls[1], format!("journal {p} 20"));
    }

    #[test]
    fn start_refuses_units_that_are_not_installed() {
        let host = FakeHost::new();
        let e = start(
            &host,
            &cfg(),
            &Service::Gpu,
            Job::Start,
            Some(&WaitOptions::for_tests()),
            &mut vec![],
        )
        .unwrap_err();
        assert_eq!(e.exit(), Exit::Unavailable);
        assert!(host.recorded().is_empty(), "nothing queued");
    }

    #[test]
    fn stop_reports_processes_left_in_the_cgroup() {
        let g = "citadel-gpu.service";
        let mut host = FakeHost::new().with(
            g,
            vec![
                unit(g, "active", false),
                unit(g, "deactivating", true),
                unit(g, "inactive", false),
            ],
        );
        host.leftover_pids
            .insert(format!("/system.slice/{g}"), vec![4242]);
        let e = stop(
            &host,
            &cfg(),
            &Service::Gpu,
            Some(&WaitOptions::for_tests()),
            &mut vec![],
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("processes still in /system.slice/citadel-gpu.service: 4242"),
            "{e}"
        );
        host.leftover_pids.clear();
        let mut out = vec![];
        // A fresh host: the cgroup is empty once the unit is down.
        let host = FakeHost::new().with(
            g,
            vec![unit(g, "active", false), unit(g, "inactive", false)],
        );
        assert_eq!(
            stop(
                &host,
                &cfg(),
                &Service::Gpu,
                Some(&WaitOptions::for_tests()),
                &mut out
            )
            .unwrap(),
            Exit::Ok
        );
        assert!(String::from_utf8(out).unwrap().contains("stopped: gpu"));
    }

    #[test]
    fn enable_follows_the_config() {
        let host = FakeHost::new();
        set_enabled(&host, &cfg(), true, &mut vec![]).unwrap();
        assert_eq!(
            host.recorded(),
            ["enable citadel-ai.target citadel-models.target citadel-storage.service citadel-gpu.service citadel-monitor.service citadel-gateway.socket citadel-gateway.service"],
            "no model is enabled one by one, and without old links nothing is disabled"
        );
        let mut host = FakeHost::new();
        host.model_links = vec!["citadel-model@removed.service".into()];
        let mut out = vec![];
        set_enabled(&host, &cfg(), true, &mut out).unwrap();
        assert_eq!(host.recorded()[1], "disable citadel-model@coder.service citadel-model@phi3.service citadel-model@vision.service citadel-model@removed.service");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("models wanted at boot (from test.toml): coder phi3"),
            "{text}"
        );
        let host = FakeHost::new();
        set_enabled(&host, &cfg(), false, &mut vec![]).unwrap();
        assert_eq!(host.recorded(), ["disable citadel-ai.target citadel-models.target citadel-storage.service citadel-gpu.service citadel-monitor.service citadel-gateway.socket citadel-gateway.service citadel-model@coder.service citadel-model@phi3.service citadel-model@vision.service"]);
    }
}
