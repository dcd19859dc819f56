//! `citadel-service check`: validate the config and print the plan.

use citadel_common::config::{Config, ConfigError};
use citadel_common::plan::Plan;
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

/// Validate `file`; print the plan (stdout) or every error (stderr, and stdout with `--json`).
pub fn run(file: &Path, json: bool) -> Result<Exit, Failure> {
    let result = Config::load(file);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_report(&result)).unwrap_or_default()
        );
    }
    match result {
        Ok(cfg) => {
            for w in cfg.warnings() {
                log::warn!("{w}");
            }
            if !json {
                print!("{}", Plan::of(&cfg).render());
                let enabled = cfg.enabled_models().count();
                println!(
                    "\nok: {} models ({} enabled) on {} GPUs",
                    cfg.models.len(),
                    enabled,
                    Plan::of(&cfg).gpus.len()
                );
            }
            Ok(Exit::Ok)
        }
        Err(e) => {
            let n = e.issues.len();
            let f = Failure::config(format!(
                "{}\n{}: {n} problem{} found",
                e,
                e.file.display(),
                if n == 1 { "" } else { "s" }
            ));
            // With --json the document above already holds the errors (and an `error` member).
            Err(if json { f.with_document_printed() } else { f })
        }
    }
}
