//! What is still usable of a config that does not validate, so that read-only commands and
//! `stop` keep working while an operator fixes a typo (`citadel-service status` must not be
//! locked out by the config it would help to debug).
//!
//! The salvaged config is always a valid [`Config`] (it went through the same validation):
//! the non-model sections as written when they validate (else the defaults), and every model
//! table that validates on its own, dropping the last ones while together they do not (two
//! models over-committing a GPU, a duplicate port). A file that cannot be read or is not TOML
//! yields the defaults and no models. Nothing here is used to start anything.

use crate::config::{valid_model_name, Config, Limits, Model};
use std::path::Path;
use toml::{Table, Value};

/// The usable part of the config at `file` (see the module doc), with the models dropped.
pub fn salvage(file: &Path) -> Salvaged {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    salvage_text(&text, file, &Limits::from_host())
}

/// What [`salvage`] kept and dropped.
#[derive(Debug, Clone)]
pub struct Salvaged {
    pub config: Config,
    /// The sections (other than models) that were replaced by their defaults.
    pub dropped_sections: Vec<String>,
    /// The models that could not be kept.
    pub dropped_models: Vec<String>,
    /// The dropped models as far as they can be read (name, the port if it is a port, the
    /// rest defaults), so that `stop`, `status` and `logs` can still name their units. Never
    /// validated: nothing may start them.
    pub unvalidated: Vec<Model>,
}

/// A dropped model, for naming its unit: the port as written if it is one (else 0), the rest
/// defaults.
fn placeholder(name: &str, raw: Option<&Value>) -> Model {
    let port = raw
        .and_then(|m| m.get("port"))
        .and_then(Value::as_integer)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0);
    let enabled = raw
        .and_then(|m| m.get("enabled"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    Model {
        name: name.to_string(),
        path: Default::default(),
        port,
        gpus: vec![],
        tensor_parallel_size: 1,
        gpu_memory_utilization: 0.0,
        max_model_len: None,
        served_model_name: name.to_string(),
        load_timeout_secs: 0,
        extra_args: vec![],
        enabled,
        max_concurrent: None,
        aliases: vec![],
    }
}

fn parses(t: &Table, file: &Path, limits: &Limits) -> Option<Config> {
    Config::parse_with(&toml::to_string(t).ok()?, file, limits).ok()
}

/// [`salvage`] of a text.
pub fn salvage_text(text: &str, file: &Path, limits: &Limits) -> Salvaged {
    let all: Table = text.parse().unwrap_or_default();
    let mut models: Vec<(String, Value)> = match all.get("models") {
        Some(Value::Table(m)) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => vec![],
    };
    // The non-model sections: all of them if they validate, else each one that does.
    let mut base = Table::new();
    let mut dropped_sections = vec![];
    for (k, v) in all.iter().filter(|(k, _)| k.as_str() != "models") {
        let mut t = base.clone();
        t.insert(k.clone(), v.clone());
        if parses(&t, file, limits).is_some() {
            base = t;
        } else {
            dropped_sections.push(k.clone());
        }
    }
    let mut dropped_models = vec![];
    models.retain(|(name, m)| {
        let mut t = base.clone();
        let mut one = Table::new();
        one.insert(name.clone(), m.clone());
        t.insert("models".into(), Value::Table(one));
        let ok = parses(&t, file, limits).is_some();
        if !ok {
            dropped_models.push(name.clone());
        }
        ok
    });
    loop {
        let mut t = base.clone();
        t.insert(
            "models".into(),
            Value::Table(models.iter().cloned().collect()),
        );
        if let Some(config) = parses(&t, file, limits) {
            dropped_models.sort();
            let raw = all.get("models");
            let unvalidated = dropped_models
                .iter()
                .filter(|n| valid_model_name(n))
                .map(|n| placeholder(n, raw.and_then(|m| m.get(n.as_str()))))
                .collect();
            return Salvaged {
                config,
                dropped_sections,
                dropped_models,
                unvalidated,
            };
        }
        match models.pop() {
            Some((name, _)) => dropped_models.push(name),
            None => {
                // Cannot happen (the base validated alone); the defaults as a last resort.
                let config =
                    Config::parse_with("", file, limits).expect("the empty config is valid");
                return Salvaged {
                    config,
                    dropped_sections: all.keys().cloned().collect(),
                    dropped_models,
                    unvalidated: vec![],
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[monitor]
state_file = "/tmp/x/health.json"

[models.phi3]
path = "phi3"
port = 11403
gpus = [0]
gpu_memory_utilization = 0.4

[models.coder]
path = "coder"
port = 11405
gpus = [1]
"#;

    fn names(s: &Salvaged) -> Vec<&str> {
        s.config.models.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn a_typo_in_a_new_model_drops_only_that_model() {
        let text = format!("{GOOD}\n[models.mistral]\npath = \"m\"\nprot = 11407\ngpus = [2]\n");
        let p = Path::new("c.toml");
        assert!(Config::parse_with(&text, p, &Limits::default()).is_err());
        let s = salvage_text(&text, p, &Limits::default());
        assert_eq!(names(&s), ["coder", "phi3"]);
        assert_eq!(s.dropped_models, ["mistral"]);
        assert!(s.dropped_sections.is_empty());
        assert_eq!(s.config.monitor.state_file, Path::new("/tmp/x/health.json"));
        assert_eq!(s.config.model("phi3").unwrap().port, 11403);
        // mistral's unit can still be named; it has no port (the key is misspelt).
        assert_eq!(s.unvalidated.len(), 1);
        assert_eq!(
            (s.unvalidated[0].name.as_str(), s.unvalidated[0].port),
            ("mistral", 0)
        );
    }

    #[test]
    fn a_bad_section_falls_back_to_its_defaults_and_models_that_clash_are_dropped() {
        let text = format!(
            "{GOOD}\n[engine]\nhost = \"0.0.0.0\"\n\n[models.vision]\npath = \"v\"\nport = 11406\ngpus = [0]\ngpu_memory_utilization = 0.7\n"
        );
        let s = salvage_text(&text, Path::new("c.toml"), &Limits::default());
        // 0.0.0.0 without an API key is refused: [engine] is the default one.
        assert_eq!(s.dropped_sections, ["engine"]);
        assert_eq!(s.config.engine.host, "127.0.0.1");
        // phi3 (0.4) and vision (0.7) over-commit GPU 0 together: one of them goes.
        assert_eq!(s.config.models.len(), 2, "{:?}", names(&s));
        assert_eq!(s.dropped_models.len(), 1);
        assert_eq!(s.unvalidated[0].port, 11406);
    }

    #[test]
    fn not_toml_at_all_gives_the_defaults() {
        let s = salvage_text(
            "[models.phi3\nport = ",
            Path::new("c.toml"),
            &Limits::default(),
        );
        assert!(s.config.models.is_empty());
        let s = salvage(Path::new("/nonexistent/citadel.toml"));
        assert!(s.config.models.is_empty());
        assert_eq!(s.config.file, Path::new("/nonexistent/citadel.toml"));
    }
}
