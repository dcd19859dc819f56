//! `citadel-service why NAME [--json]`: is the model serving, and if not, why and what to do:
//! the unit and monitor state, the latest incident (class, what the engine said, the fix, the
//! first failure and how many followed), its excerpt, and the command for the full log.
//! `citadel-service gpu clear N`: lift a GPU's quarantine.

use crate::systemd::{ActiveState, Host};
use citadel_common::config::Config;
use citadel_common::incident::{Incident, Store};
use citadel_common::{alert, paths, quarantine, Exit, Failure};
use serde::Serialize;
use std::fmt::Write as _;

/// The `why` answer.
#[derive(Debug, Clone, Serialize)]
pub struct Why {
    pub model: String,
    pub unit: String,
    /// systemd's ActiveState (and SubState).
    pub unit_state: ActiveState,
    pub sub_state: String,
    /// The monitor's view, when its state file is there.
    pub health: Option<String>,
    pub health_reason: Option<String>,
    /// Serving now: the unit is active and the monitor (if any) says healthy.
    pub serving: bool,
    /// The latest incident (open, or the last resolved one).
    pub incident: Option<Incident>,
    /// GPUs of this model that are quarantined.
    pub quarantined_gpus: Vec<quarantine::Quarantine>,
    /// The command that shows the full log.
    pub log_command: String,
}

/// Gather the answer.
pub fn gather(host: &dyn Host, cfg: &Config, name: &str) -> Result<Why, Failure> {
    let model = cfg.models.iter().find(|m| m.name == name).ok_or_else(|| {
        Failure::usage(format!(
            "unknown model {:?}: not a [models.NAME] table in the config",
            citadel_common::text::escape_controls(name)
        ))
    })?;
    let unit = paths::model_unit(name);
    let u = host.units(std::slice::from_ref(&unit))?;
    let (unit_state, sub_state) = u
        .first()
        .map(|u| (u.active_state, u.sub_state.clone()))
        .unwrap_or_default();
    let (cells, _) = crate::monitor_health(cfg);
    let cell = cells.get(name);
    let health = cell.map(|c| c.health.clone());
    let serving =
        unit_state == ActiveState::Active && health.as_deref().map_or(true, |h| h == "healthy");
    let incident = match Store::open(&cfg.paths.state_dir) {
        Ok(s) => s.latest(name).map_err(|e| {
            Failure::other(format!(
                "cannot read the incidents in {}: {e}",
                s.path().display()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Failure::other(format!(
                "cannot open {}: {e}",
                citadel_common::incident::dir(&cfg.paths.state_dir).display()
            )))
        }
    };
    let quarantined_gpus = quarantine::list(&cfg.paths.state_dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|q| model.gpus.contains(&q.gpu))
        .collect();
    Ok(Why {
        model: name.to_string(),
        log_command: format!("journalctl -u {unit} -b"),
        unit,
        unit_state,
        sub_state,
        health,
        health_reason: cell.and_then(|c| c.reason.clone()),
        serving,
        incident,
        quarantined_gpus,
    })
}

/// The text answer.
pub fn render(w: &Why) -> String {
    let mut o = String::new();
    let state = match &w.health {
        Some(h) => format!("unit {} ({}), monitor: {h}", w.unit_state, w.sub_state),
        None => format!("unit {} ({})", w.unit_state, w.sub_state),
    };
    let _ = writeln!(
        o,
        "{}: {} -- {state}",
        w.model,
        if w.serving { "serving" } else { "NOT serving" }
    );
    for q in &w.quarantined_gpus {
        let _ = writeln!(
            o,
            "GPU {} is quarantined since {}: {}\n  after checking it: citadel-service gpu clear {}",
            q.gpu,
            alert::rfc3339(q.time_unix),
            q.what,
            q.gpu
        );
    }
    match &w.incident {
        Some(i) if i.is_open() || !w.serving => {
            let (class, summary, exit, last_time) = i.latest();
            let _ = writeln!(o, "cause: {} [{}]", class.title(), class.as_str());
            let _ = writeln!(o, "  {summary}");
            let fix = if class == i.class {
                i.fix.clone()
            } else {
                citadel_common::classify::word(class, summary, &ctx(&w.model), None).fix
            };
            let _ = writeln!(o, "fix: {fix}");
            let _ = writeln!(
                o,
                "first failure: {} {} ({}, {}), {} failure(s) in this series{}",
                alert::rfc3339(i.time_unix),
                i.event.as_str(),
                i.exit.as_ref().map_or("-".into(), |e| e.to_string()),
                i.class.as_str(),
                i.count,
                if i.count > 1 {
                    format!(
                        ", latest {} ({})",
                        alert::rfc3339(last_time),
                        exit.map_or("-".into(), |e| e.to_string())
                    )
                } else {
                    String::new()
                }
            );
            if let (Some(g), x) = (i.gpu, i.xid) {
                let _ = writeln!(
                    o,
                    "GPU: {g}{}",
                    x.map(|x| format!(", Xid {x}")).unwrap_or_default()
                );
            }
            if !i.excerpt.is_empty() {
                let _ = writeln!(
                    o,
                    "excerpt of the first failure ({} lines left out):",
                    i.excerpt_omitted
                );
                for l in &i.excerpt {
                    let _ = writeln!(o, "  | {l}");
                }
            }
        }
        Some(i) => {
            let _ = writeln!(
                o,
                "last incident (resolved {}): {} [{}] at {}",
                i.resolved_unix.map_or("-".into(), alert::rfc3339),
                i.class.title(),
                i.class.as_str(),
                alert::rfc3339(i.time_unix)
            );
        }
        None if w.serving => {}
        None => {
            let _ = writeln!(
                o,
                "no incident recorded{}",
                w.health_reason
                    .as_deref()
                    .map(|r| format!("; the monitor says: {r}"))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(o, "full log: {}", w.log_command);
    o
}

fn ctx(model: &str) -> citadel_common::classify::Context {
    citadel_common::classify::Context {
        model: model.to_string(),
        ..Default::default()
    }
}

/// `why NAME [--json]`.
pub fn run(host: &dyn Host, cfg: &Config, name: &str, json: bool) -> Result<Exit, Failure> {
    let w = gather(host, cfg, name)?;
    if json {
        citadel_common::output::print_json(&w)?;
    } else {
        print!("{}", render(&w));
    }
    Ok(Exit::Ok)
}

/// The class of each model's open incident (for `status`).
pub fn open_classes(cfg: &Config) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    if let Ok(s) = Store::open(&cfg.paths.state_dir) {
        for model in &cfg.models {
            if let Ok(Some(i)) = s.latest(&model.name) {
                if i.is_open() {
                    m.insert(model.name.clone(), i.latest().0.as_str().to_string());
                }
            }
        }
    }
    m
}

/// `gpu clear N` (root): lift the quarantine; the models stay stopped until started.
pub fn gpu_clear(cfg: &Config, gpu: u32, out: &mut dyn std::io::Write) -> Result<Exit, Failure> {
    crate::control::require_root("gpu clear")?;
    clear_quarantine(cfg, gpu, out)
}

/// `gpu clear N` once root was checked.
pub fn clear_quarantine(
    cfg: &Config,
    gpu: u32,
    out: &mut dyn std::io::Write,
) -> Result<Exit, Failure> {
    let dir = quarantine::dir(&cfg.paths.state_dir);
    match quarantine::clear(&cfg.paths.state_dir, gpu) {
        Ok(Some(q)) => {
            let models: Vec<&str> = cfg
                .models
                .iter()
                .filter(|m| m.enabled && m.gpus.contains(&gpu))
                .map(|m| m.name.as_str())
                .collect();
            let _ = writeln!(
                out,
                "GPU {gpu}: quarantine lifted (was: {}); start its models with: citadel-service start {}",
                q.what,
                if models.is_empty() { "NAME".to_string() } else { models.join(" / ") }
            );
            Ok(Exit::Ok)
        }
        Ok(None) => {
            let _ = writeln!(out, "GPU {gpu} is not quarantined");
            Ok(Exit::Ok)
        }
        Err(e) => Err(Failure::other(format!("{}: {e}", dir.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::tests::cfg;
    use crate::systemd::fake::{unit, FakeHost};
    use citadel_common::classify::{word, Class, Context};
    use citadel_common::incident::{Event, ExitInfo};

    fn with_state(d: &std::path::Path) -> Config {
        let mut c = cfg();
        c.paths.state_dir = d.to_path_buf();
        c.monitor.state_file = d.join("no-monitor.json");
        c
    }

    #[test]
    fn why_names_the_class_the_fix_the_first_failure_and_the_log() {
        let d = tempfile::tempdir().unwrap();
        let c = with_state(d.path());
        let s = Store::create(d.path()).unwrap();
        let ctx = Context {
            model: "phi3".into(),
            ..Default::default()
        };
        let first = word(Class::MaxModelLen, "ValueError: ... is greater than the derived max_model_len (max_position_embeddings=4096 or model_max_length=None in model's config.json)", &ctx, None);
        for _ in 0..5 {
            s.record(
                Incident::new(
                    "phi3",
                    "citadel-model@phi3.service",
                    "start-model",
                    Event::StartFailure,
                    &first,
                )
                .with_exit(ExitInfo {
                    code: Some(1),
                    signal: None,
                })
                .with_excerpt(
                    &[
                        "Traceback (most recent call last):".into(),
                        "ValueError: boom".into(),
                    ],
                    Some(1),
                ),
            )
            .unwrap();
        }
        let host = FakeHost::new().with(
            "citadel-model@phi3.service",
            vec![unit("citadel-model@phi3.service", "failed", false)],
        );
        let w = gather(&host, &c, "phi3").unwrap();
        assert!(!w.serving);
        let text = render(&w);
        assert!(text.starts_with("phi3: NOT serving"), "{text}");
        assert!(
            text.contains("cause: max_model_len too large [max_model_len]"),
            "{text}"
        );
        assert!(
            text.contains("fix: set models.phi3.max_model_len = 4096"),
            "{text}"
        );
        assert!(text.contains("5 failure(s) in this series"), "{text}");
        assert!(text.contains("  | ValueError: boom"), "{text}");
        assert!(
            text.contains("full log: journalctl -u citadel-model@phi3.service -b"),
            "{text}"
        );
        let json = serde_json::to_value(&w).unwrap();
        assert_eq!(json["incident"]["class"], "max_model_len");
        assert_eq!(json["incident"]["count"], 5);
        // status puts the class in the why-not-healthy line.
        let classes = open_classes(&c);
        assert_eq!(
            classes.get("phi3").map(String::as_str),
            Some("max_model_len")
        );
    }

    #[test]
    fn a_serving_model_with_no_open_incident_says_so_and_unknown_names_are_usage_errors() {
        let d = tempfile::tempdir().unwrap();
        let c = with_state(d.path());
        let host = FakeHost::new().with(
            "citadel-model@coder.service",
            vec![unit("citadel-model@coder.service", "active", false)],
        );
        let w = gather(&host, &c, "coder").unwrap();
        assert!(w.serving && w.incident.is_none());
        assert!(render(&w).starts_with("coder: serving"));
        let e = gather(&host, &c, "nope").unwrap_err();
        assert_eq!(e.exit(), Exit::Usage);
    }

    #[test]
    fn gpu_clear_lifts_the_quarantine() {
        let d = tempfile::tempdir().unwrap();
        let c = with_state(d.path());
        quarantine::set(
            d.path(),
            &quarantine::Quarantine {
                gpu: 1,
                xid: Some(79),
                what: "Xid 79".into(),
                time_unix: 1,
                models: vec!["coder".into()],
            },
        )
        .unwrap();
        let host = FakeHost::new().with(
            "citadel-model@coder.service",
            vec![unit("citadel-model@coder.service", "inactive", false)],
        );
        assert_eq!(
            gather(&host, &c, "coder").unwrap().quarantined_gpus.len(),
            1
        );
        let mut out = vec![];
        clear_quarantine(&c, 1, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("GPU 1: quarantine lifted"), "{out}");
        assert!(out.contains("citadel-service start coder"), "{out}");
        assert!(quarantine::list(d.path()).unwrap().is_empty());
    }
}
