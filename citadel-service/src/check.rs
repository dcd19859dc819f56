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
                "config": plan.config,
                "models": plan.models,
                "gpus": plan.gpus.iter().map(|g| serde_json::json!({
                    "index": g.index,
                    "share": g.share,
                    "models": g.models.iter().map(|(n, s)| serde_json::json!({"name": n, "share": s})).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        }
        Err(e) => serde_json::json!({
            "valid": false,
            "config": e.file.display().to_string(),
            "errors": e.issues,
            "messages": e.lines(),
        }),
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
            Err(Failure::config(format!(
                "{}\n{}: {n} problem{} found",
                e,
                e.file.display(),
                if n == 1 { "" } else { "s" }
            )))
        }
    }
}
