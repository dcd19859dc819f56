//! `deploy`: the phased rollout. Phase 1 infrastructure (storage, gpu); phase 2 one test model
//! (default `phi3`) must reach healthy; phase 3 every enabled model; phase 4 the monitor and
//! `citadel-ai.target`. Each phase enables (models excepted: citadel-generator makes the config's
//! enabled models wanted at boot) and starts its units, waits, and verifies (units
//! active; models also answer `/health` with 200) before the next one runs. `--phase N` runs
//! one phase after checking that the phase before it is in place. Running it again is
//! harmless: enabling an enabled unit and starting an active one change nothing.

use crate::control::bring_up;
use crate::probes::ProbeResult;
use crate::services::{Kind, Member, Service};
use crate::systemd::{ActiveState, Host, Job};
use crate::wait::{self, WaitOptions};
use citadel_common::config::Config;
use citadel_common::{paths, Exit, Failure};
use std::io::Write;
use std::time::Duration;

/// The phases, by number.
pub const PHASES: [(u8, &str); 4] = [
    (1, "infrastructure"),
    (2, "test model"),
    (3, "all enabled models"),
    (4, "monitor and target"),
];

/// How many times a model's `/health` is tried after its unit is active, and how far apart.
pub const HEALTH_TRIES: u32 = 3;
pub const HEALTH_RETRY: Duration = Duration::from_secs(2);

/// Probes `(model, port)` pairs (live in the binary, scripted in tests).
pub type ProbeFn<'a> = dyn Fn(&[(String, u16)]) -> Vec<ProbeResult> + 'a;

/// What to deploy.
pub struct DeployOptions {
    /// Run only this phase.
    pub phase: Option<u8>,
    /// `None`: the first enabled model of the config.
    pub test_model: Option<String>,
    pub wait: WaitOptions,
}

/// The units of a phase.
pub fn phase_members(phase: u8, cfg: &Config, test_model: &str) -> Vec<Member> {
    match phase {
        1 => [Service::Storage, Service::Gpu]
            .iter()
            .flat_map(|s| s.members(cfg))
            .collect(),
        2 => Service::Model(test_model.to_string()).members(cfg),
        3 => Service::Models.to_start(cfg),
        _ => {
            let mut v = Service::Monitor.members(cfg);
            v.extend(Service::Gateway.to_start(cfg));
            v.push(Member {
                service: "all".into(),
                unit: paths::TARGET_AI.into(),
                kind: Kind::Target,
                enabled: true,
                port: None,
                listen: None,
            });
            v
        }
    }
}

/// The test model: the one named, or the first enabled model of the config (the config's models
/// are sorted by name). No enabled model at all is a config error.
pub fn test_model(cfg: &Config, named: Option<&str>) -> Result<String, Failure> {
    match named {
        Some(n) => Ok(n.to_string()),
        None => cfg
            .enabled_models()
            .next()
            .map(|m| m.name.clone())
            .ok_or_else(|| {
                Failure::config(format!(
                    "{}: no enabled model to deploy (every [models.NAME] has enabled = false)",
                    cfg.file.display()
                ))
            }),
    }
}

/// The test model must be in the config and enabled.
pub fn check_test_model(cfg: &Config, name: &str) -> Result<(), Failure> {
    match cfg.model(name) {
        Some(m) if m.enabled => Ok(()),
        Some(_) => Err(Failure::usage(format!(
            "test model {name} is disabled in {}; pick an enabled one with --test-model NAME",
            cfg.file.display()
        ))),
        None => Err(Failure::usage(format!(
            "test model {name} is not in {} (models: {}); pick one with --test-model NAME",
            cfg.file.display(),
            cfg.models
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Units of `members` that are not active.
fn not_active(host: &dyn Host, members: &[Member]) -> Result<Vec<String>, Failure> {
    let names: Vec<String> = members.iter().map(|m| m.unit.clone()).collect();
    Ok(host
        .units(&names)?
        .into_iter()
        .filter(|u| u.active_state != ActiveState::Active)
        .map(|u| format!("{} is {}", u.unit, u.active_state))
        .collect())
}

/// Probe the models among `members` until all answer 200 (a few tries).
fn verify_health(
    host: &dyn Host,
    cfg: &Config,
    members: &[Member],
    probe: &ProbeFn,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let models: Vec<(String, u16)> = members
        .iter()
        .filter(|m| m.kind == Kind::Model)
        .filter_map(|m| cfg.model(&m.service).map(|x| (x.name.clone(), x.port)))
        .collect();
    if models.is_empty() {
        return Ok(());
    }
    let mut bad = vec![];
    for attempt in 1..=HEALTH_TRIES {
        bad = probe(&models)
            .into_iter()
            .filter(|p| !p.healthy())
            .collect::<Vec<_>>();
        if bad.is_empty() {
            let _ = writeln!(
                out,
                "healthy: {}",
                models
                    .iter()
                    .map(|m| m.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Ok(());
        }
        if attempt < HEALTH_TRIES {
            host.sleep(HEALTH_RETRY);
        }
    }
    Err(Failure::other(
        bad.iter()
            .map(|p| {
                format!(
                    "{} is active but {} is not healthy: {}",
                    p.name,
                    p.url,
                    p.error()
                        .or(p.http_status().map(|s| format!("HTTP {s}")))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    ))
}

/// Run the rollout (or one phase).
pub fn run(
    host: &dyn Host,
    cfg: &Config,
    opts: &DeployOptions,
    probe: &ProbeFn,
    out: &mut dyn Write,
) -> Result<Exit, Failure> {
    let phases: Vec<u8> = match opts.phase {
        Some(p @ 1..=4) => vec![p],
        Some(p) => return Err(Failure::usage(format!("--phase {p}: phases are 1 to 4"))),
        None => vec![1, 2, 3, 4],
    };
    let test_model = if phases.contains(&2) || phases.contains(&3) {
        test_model(cfg, opts.test_model.as_deref())?
    } else {
        opts.test_model.clone().unwrap_or_default()
    };
    if phases.contains(&2) || phases.contains(&3) {
        check_test_model(cfg, &test_model)?;
    }
    if phases.contains(&2) && opts.test_model.is_none() {
        let _ = writeln!(
            out,
            "test model: {test_model} (the first enabled model in {}; --test-model NAME picks another)",
            cfg.file.display()
        );
    }
    if let [p] = phases[..] {
        if p > 1 {
            let before = phase_members(p - 1, cfg, &test_model);
            let missing = not_active(host, &before)?;
            if !missing.is_empty() {
                return Err(Failure::other(format!(
                    "phase {} is not in place ({}); run citadel-service deploy --phase {} first",
                    p - 1,
                    missing.join(", "),
                    p - 1
                )));
            }
        }
    }
    for p in phases {
        let name = PHASES[(p - 1) as usize].1;
        let members = phase_members(p, cfg, &test_model);
        let units: Vec<String> = members.iter().map(|m| m.unit.clone()).collect();
        let _ = writeln!(out, "=== phase {p}: {name} ({}) ===", units.join(" "));
        let fail = |f: Failure| f.context(format!("deploy phase {p} ({name}) failed"));
        crate::control::check_installed(host, &members).map_err(fail)?;
        // Models are wanted at boot by citadel-generator (from the config), never one by one.
        let enable: Vec<String> = members
            .iter()
            .filter(|m| m.kind != Kind::Model)
            .map(|m| m.unit.clone())
            .collect();
        host.set_enabled(true, &enable).map_err(fail)?;
        bring_up(host, Job::Start, &members, Some(&opts.wait), out).map_err(fail)?;
        // Targets are not waited for by bring_up; make sure they are up too.
        let targets: Vec<Member> = members
            .iter()
            .filter(|m| m.kind == Kind::Target)
            .cloned()
            .collect();
        if !targets.is_empty() {
            wait::wait(
                host,
                &targets,
                wait::start_phase,
                &opts.wait,
                &mut std::io::sink(),
            )
            .map_err(fail)?;
        }
        let missing = not_active(host, &members).map_err(fail)?;
        if !missing.is_empty() {
            return Err(fail(Failure::other(missing.join(", "))));
        }
        verify_health(host, cfg, &members, probe, out).map_err(fail)?;
        let _ = writeln!(out, "phase {p} done");
        if p == 3 {
            // Every enabled model runs this config: `apply` compares the next edit with it.
            if let Err(e) = crate::snapshot::save(cfg) {
                log::warn!("{e}");
            }
        }
    }
    let _ = writeln!(out, "deploy complete");
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::tests::cfg;
    use crate::systemd::fake::{unit, FakeHost};

    fn opts(phase: Option<u8>) -> DeployOptions {
        DeployOptions {
            phase,
            test_model: Some("phi3".into()),
            wait: WaitOptions {
                timeout: Duration::from_secs(100),
                poll: Duration::from_secs(1),
                tty: false,
                color: false,
                attempts: true,
            },
        }
    }

    fn healthy(models: &[(String, u16)]) -> Vec<ProbeResult> {
        models
            .iter()
            .map(|(n, p)| ProbeResult {
                name: n.clone(),
                url: format!("http://127.0.0.1:{p}/health"),
                outcome: Ok(citadel_common::probe::Answer {
                    status: 200,
                    latency: Duration::from_millis(3),
                }),
            })
            .collect()
    }

    fn all_active() -> FakeHost {
        let mut h = FakeHost::new();
        for u in [
            "citadel-ai.target",
            "citadel-models.target",
            "citadel-storage.service",
            "citadel-gpu.service",
            "citadel-model@coder.service",
            "citadel-model@phi3.service",
            "citadel-monitor.service",
            "citadel-gateway.service",
        ] {
            h = h.with(
                u,
                vec![unit(u, "activating", false), unit(u, "active", false)],
            );
        }
        h
    }

    #[test]
    fn all_phases_enable_start_and_verify_in_order() {
        let host = all_active();
        let mut out = vec![];
        assert_eq!(
            run(&host, &cfg(), &opts(None), &healthy, &mut out).unwrap(),
            Exit::Ok
        );
        let text = String::from_utf8(out).unwrap();
        for p in 1..=4 {
            assert!(text.contains(&format!("phase {p} done")), "{text}");
        }
        let starts: Vec<String> = host
            .recorded()
            .into_iter()
            .filter(|c| c.starts_with("start"))
            .collect();
        assert_eq!(starts, [
            "start --no-block citadel-storage.service citadel-gpu.service",
            "start --no-block citadel-model@phi3.service",
            "start --no-block citadel-models.target citadel-model@coder.service citadel-model@phi3.service",
            "start --no-block citadel-monitor.service citadel-gateway.service citadel-ai.target",
        ]);
    }

    #[test]
    fn the_default_test_model_is_the_first_enabled_one_and_deploy_says_so() {
        let host = all_active();
        let mut out = vec![];
        let mut o = opts(None);
        o.test_model = None;
        run(&host, &cfg(), &o, &healthy, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("test model: coder (the first enabled model in test.toml; --test-model NAME picks another)\n"),
            "{text}"
        );
        let starts: Vec<String> = host
            .recorded()
            .into_iter()
            .filter(|c| c.starts_with("start"))
            .collect();
        assert_eq!(starts[1], "start --no-block citadel-model@coder.service");
        // Named: no line about the choice.
        let mut out = vec![];
        run(&all_active(), &cfg(), &opts(None), &healthy, &mut out).unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("test model:"));
    }

    #[test]
    fn an_unhealthy_test_model_stops_the_rollout() {
        let host = all_active();
        let refused = |models: &[(String, u16)]| -> Vec<ProbeResult> {
            let mut r = healthy(models);
            for p in &mut r {
                p.outcome = Err(citadel_common::probe::ProbeError::Refused);
            }
            r
        };
        let e = run(&host, &cfg(), &opts(None), &refused, &mut vec![]).unwrap_err();
        assert!(e.message.starts_with("deploy phase 2 (test model) failed: phi3 is active but http://127.0.0.1:11403/health is not healthy: connection refused"), "{e}");
        assert!(!host
            .recorded()
            .iter()
            .any(|c| c.contains("citadel-models.target")));
    }

    #[test]
    fn a_single_phase_checks_the_one_before() {
        let host = FakeHost::new();
        let e = run(&host, &cfg(), &opts(Some(3)), &healthy, &mut vec![]).unwrap_err();
        assert!(e.message.contains("phase 2 is not in place"), "{e}");
        assert!(host.recorded().is_empty());
        let e = run(&host, &cfg(), &opts(Some(5)), &healthy, &mut vec![]).unwrap_err();
        assert_eq!(e.exit(), Exit::Usage);
    }

    #[test]
    fn the_test_model_must_be_enabled_and_known() {
        let c = cfg();
        assert!(check_test_model(&c, "phi3").is_ok());
        assert_eq!(
            check_test_model(&c, "vision").unwrap_err().exit(),
            Exit::Usage
        );
        assert!(check_test_model(&c, "mixtral")
            .unwrap_err()
            .message
            .contains("models: coder, phi3, vision"));
    }
}
