//! `citadel-service check`: validate the config and print the plan; with `--host`, also the
//! plan against this machine ([`crate::hostcheck`]).

use citadel_common::config::{Config, ConfigError};
use citadel_common::plan::Plan;
use citadel_common::text::count;
use citadel_common::{Exit, Failure};
use std::path::Path;

/// The JSON document `check --json` prints.
pub fn json_report(result: &Result<Config, ConfigError>) -> serde_json::Value {
    match result {
        Ok(cfg) => {
            let plan = Plan::of(cfg);
            serde_json::json!({
                "valid": true,
                "warnings": cfg.warnings(),
                "config": plan.config,
                "models": plan.models,
                "gpus": plan.gpus.iter().map(|g| serde_json::json!({
                    "index": g.index,
                    "share": g.share,
                    "models": g.models.iter().map(|(n, s)| serde_json::json!({"name": n, "share": s})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        }
        Err(e) => {
            let mut doc = citadel_common::exit::error_document(Exit::Config, &e.lines().join("\n"));
            let obj = doc.as_object_mut().expect("an object");
            obj.insert("valid".into(), false.into());
            obj.insert("config".into(), e.file.display().to_string().into());
            obj.insert("errors".into(), serde_json::json!(e.issues));
            obj.insert("messages".into(), serde_json::json!(e.lines()));
            doc
        }
    }
}

/// The summary line of a valid config: `ok: 3 models (2 enabled) on 2 GPUs`.
pub fn summary(cfg: &Config) -> String {
    format!(
        "ok: {} ({} enabled) on {}",
        count(cfg.models.len(), "model"),
        cfg.enabled_models().count(),
        count(Plan::of(cfg).gpus.len(), "GPU")
    )
}

/// Validate `file`; print the plan (stdout) or every error (stderr, and stdout with `--json`).
/// With `host`, the plan is also checked against the machine (exit 1 when a check fails).
pub fn run(
    file: &Path,
    json: bool,
    host: Option<&dyn crate::systemd::Host>,
) -> Result<Exit, Failure> {
    let result = Config::load(file);
    let checks = match (&result, host) {
        (Ok(cfg), Some(h)) => Some(crate::hostcheck::evaluate(
            cfg,
            &crate::hostcheck::gather(h, cfg),
        )),
        _ => None,
    };
    if json {
        let mut doc = json_report(&result);
        if let (Some(c), Some(obj)) = (&checks, doc.as_object_mut()) {
            obj.insert(
                "host".into(),
                serde_json::json!({
                    "ok": crate::hostcheck::judge(c).ok(),
                    "checks": c,
                }),
            );
        }
        citadel_common::output::print_json(&doc)?;
    }
    match result {
        Ok(cfg) => {
            for w in cfg.warnings() {
                log::warn!("{w}");
            }
            if !json {
                print!("{}", Plan::of(&cfg).render());
                match &checks {
                    Some(c) => {
                        print!("{}", crate::hostcheck::render(c));
                        println!("\n{}; {}", summary(&cfg), crate::hostcheck::summary(c));
                    }
                    None => println!(
                        "\n{} (the plan only: check --host compares it with this machine)",
                        summary(&cfg)
                    ),
                }
            }
            Ok(checks
                .as_deref()
                .map_or(Exit::Ok, |c| crate::hostcheck::judge(c).exit))
        }
        Err(e) => {
            let f = Failure::config(format!(
                "{}\n{}: {} found",
                e,
                e.file.display(),
                count(e.issues.len(), "problem")
            ));
            // With --json the document above already holds the errors (and an `error` member).
            Err(if json { f.with_document_printed() } else { f })
        }
    }
}
