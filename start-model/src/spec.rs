//! start-model's own inputs besides the launch spec (which is [`citadel_common::launch`]):
//! the model to run and its API key.

use citadel_common::config::{Config, Model};
use citadel_common::Failure;
use std::path::Path;

/// Read the API key with [`citadel_common::apikey`] (`$CREDENTIALS_DIRECTORY/api-key`, else
/// `engine.api_key_file`, else none). A configured file that does not exist is a missing
/// resource (69); an empty or unreadable one is a config error (78).
pub fn read_key(cfg: &Config, credentials_dir: Option<&Path>) -> Result<Option<String>, Failure> {
    citadel_common::apikey::read_from(credentials_dir, cfg.engine.api_key_file.as_deref()).map_err(
        |f| match cfg.engine.api_key_file.as_deref() {
            Some(p) if !p.exists() && f.message.contains(&p.display().to_string()) => {
                Failure::unavailable(f.message)
            }
            _ => f,
        },
    )
}

/// Find a model by name: unknown or disabled is a config error (78), naming the known models.
pub fn find_model<'c>(cfg: &'c Config, name: &str) -> Result<&'c Model, Failure> {
    let Some(m) = cfg.model(name) else {
        let known: Vec<&str> = cfg.models.iter().map(|m| m.name.as_str()).collect();
        return Err(Failure::config(format!(
            "{}: no model named {name:?} (models: {})",
            cfg.file.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    };
    if !m.enabled {
        return Err(Failure::config(format!(
            "{}: model {name} is disabled (models.{name}.enabled = false); enable it to start it",
            cfg.file.display()
        )));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use citadel_common::config::testing::{PATHS, PHI3_GPU5 as PHI3};

    fn config(models: &str) -> Config {
        citadel_common::config::testing::config(&format!("{PATHS}{models}"))
    }

    #[test]
    fn unknown_and_disabled_models_are_config_errors() {
        let cfg = config(&format!(
            "{PHI3}\n[models.off]\npath = \"o\"\nport = 11409\ngpus = [1]\nenabled = false\n"
        ));
        let e = find_model(&cfg, "nope").unwrap_err();
        assert_eq!(e.exit(), citadel_common::Exit::Config);
        assert!(e.message.contains("\"nope\"") && e.message.contains("off, phi3"));
        let e = find_model(&cfg, "off").unwrap_err();
        assert_eq!(e.exit(), citadel_common::Exit::Config);
        assert!(e.message.contains("disabled"), "{e}");
        assert!(find_model(&cfg, "phi3").is_ok());
    }

    #[test]
    fn api_key_missing_is_69_empty_is_78_credential_wins() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("key");
        let mut cfg = config(PHI3);
        assert_eq!(read_key(&cfg, None).unwrap(), None);
        cfg.engine.api_key_file = Some(file.clone());
        let e = read_key(&cfg, None).unwrap_err();
        assert_eq!(e.exit(), citadel_common::Exit::Unavailable);
        assert!(e.message.contains(&file.display().to_string()), "{e}");
        std::fs::write(&file, " \n").unwrap();
        assert_eq!(
            read_key(&cfg, None).unwrap_err().exit(),
            citadel_common::Exit::Config
        );
        std::fs::write(&file, "  sk-1 \n").unwrap();
        assert_eq!(read_key(&cfg, None).unwrap().as_deref(), Some("sk-1"));
        let creds = d.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        // The unit's SetCredential= fallback (blank) means "use the file / no key".
        std::fs::write(creds.join("api-key"), "\n").unwrap();
        assert_eq!(
            read_key(&cfg, Some(&creds)).unwrap().as_deref(),
            Some("sk-1")
        );
        let mut no_file = cfg.clone();
        no_file.engine.api_key_file = None;
        assert_eq!(read_key(&no_file, Some(&creds)).unwrap(), None);
        std::fs::write(creds.join("api-key"), "sk-cred\n").unwrap();
        assert_eq!(
            read_key(&cfg, Some(&creds)).unwrap().as_deref(),
            Some("sk-cred")
        );
    }
}
