//! The model servers' API key, read the same way by every helper that needs it: start-model
//! hands it to vLLM, health-monitor sends it with its deep probe.
//!
//! Under systemd the key arrives as the credential [`crate::paths::API_KEY_CREDENTIAL`]
//! (`LoadCredential=api-key:/etc/citadel/api-key`), so `$CREDENTIALS_DIRECTORY/api-key` is read
//! first; otherwise `engine.api_key_file`. No key configured anywhere is `Ok(None)`.
//!
//! A blank credential counts as absent: the units also say `SetCredential=api-key:\n`, because
//! systemd 252 fails a unit (243/CREDENTIALS) whose `LoadCredential=` file is missing, and
//! `SetCredential=` is the fallback it uses instead. A box without a key then gets a blank
//! credential, which must mean "no key", not "empty key".

use crate::config::Config;
use crate::Failure;
use std::path::{Path, PathBuf};

/// Read the API key: `$CREDENTIALS_DIRECTORY/api-key` when that file exists and is not blank, else
/// `engine.api_key_file` when set, else `None`. The key is the first line, trimmed; an empty key
/// or an unreadable file is an error naming the file (exit 78: configuration).
pub fn read(cfg: &Config) -> Result<Option<String>, Failure> {
    let cred_dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    read_from(cred_dir.as_deref(), cfg.engine.api_key_file.as_deref())
}

/// [`read`] with the credentials directory and the configured file given explicitly (tests).
pub fn read_from(
    credentials_dir: Option<&Path>,
    api_key_file: Option<&Path>,
) -> Result<Option<String>, Failure> {
    if let Some(dir) = credentials_dir {
        let p = dir.join(crate::paths::API_KEY_CREDENTIAL);
        if p.exists() {
            match read_file(&p) {
                Ok(key) => return Ok(Some(key)),
                // Blank: the unit's `SetCredential=` fallback, i.e. no key file was installed.
                Err(_) if is_blank(&p) => {}
                Err(e) => return Err(e),
            }
        }
    }
    match api_key_file {
        Some(p) => read_file(p).map(Some),
        None => Ok(None),
    }
}

fn is_blank(p: &Path) -> bool {
    std::fs::read_to_string(p).is_ok_and(|t| t.trim().is_empty())
}

fn read_file(p: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| Failure::config(format!("API key file {}: {e}", p.display())))?;
    let key = text.lines().next().unwrap_or("").trim();
    if key.is_empty() {
        return Err(Failure::config(format!(
            "API key file {}: empty (expected the key on its first line)",
            p.display()
        )));
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_first_then_file_then_none() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        let creds = d.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        assert_eq!(read_from(None, None).unwrap(), None);
        assert_eq!(
            read_from(Some(&creds), Some(&file)).unwrap().as_deref(),
            Some("from-file")
        );
        std::fs::write(creds.join("api-key"), "  from-cred  \nignored\n").unwrap();
        assert_eq!(
            read_from(Some(&creds), Some(&file)).unwrap().as_deref(),
            Some("from-cred")
        );
    }

    #[test]
    fn empty_or_missing_files_are_config_errors() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = read_from(None, Some(&empty)).unwrap_err();
        assert_eq!(e.exit(), crate::Exit::Config);
        assert!(e.message.contains("empty"), "{e}");
        let e = read_from(None, Some(&d.path().join("nope"))).unwrap_err();
        assert!(e.message.contains("nope"), "{e}");
    }

    #[test]
    fn a_blank_credential_is_the_units_fallback_and_means_absent() {
        let d = tempfile::tempdir().unwrap();
        let creds = d.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        std::fs::write(creds.join("api-key"), "\n").unwrap();
        assert_eq!(read_from(Some(&creds), None).unwrap(), None);
        let file = d.path().join("key");
        std::fs::write(&file, "from-file\n").unwrap();
        assert_eq!(
            read_from(Some(&creds), Some(&file)).unwrap().as_deref(),
            Some("from-file")
        );
        let e = read_from(Some(&creds), Some(&d.path().join("nope"))).unwrap_err();
        assert!(e.message.contains("nope"), "{e}");
    }
}
