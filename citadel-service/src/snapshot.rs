//! The running snapshot: the config text the box was last started or applied with, kept as
//! `state_dir/applied.toml` (a regular file, written atomically, never through a symlink).
//! `apply` compares the edited config with it.

use citadel_common::config::Config;
use citadel_common::fsutil::write_atomic;
use citadel_common::Failure;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The snapshot's file name under `state_dir`.
pub const FILE: &str = "applied.toml";
/// Larger than any sane config: a bigger file is not read.
const MAX_BYTES: u64 = 4 << 20;

pub fn path(cfg: &Config) -> PathBuf {
    cfg.paths.state_dir.join(FILE)
}

/// The snapshot's text; `None` when there is none. A symlink or a non-regular file is an error.
pub fn read_text(file: &Path) -> Result<Option<String>, Failure> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(file)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Failure::other(format!(
                "cannot read the running snapshot {}: {e}",
                file.display()
            )))
        }
    };
    let meta = f
        .metadata()
        .map_err(|e| Failure::other(format!("{}: {e}", file.display())))?;
    if !meta.is_file() {
        return Err(Failure::other(format!(
            "the running snapshot {} is not a regular file",
            file.display()
        )));
    }
    let mut text = String::new();
    f.take(MAX_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| Failure::other(format!("cannot read {}: {e}", file.display())))?;
    Ok(Some(text))
}

/// The running config from the snapshot of `cfg`'s state dir; `None` when there is none or it
/// no longer validates (then the plan treats every model as unknown, with a warning).
pub fn load(cfg: &Config) -> Result<Option<(PathBuf, Config)>, Failure> {
    let file = path(cfg);
    let Some(text) = read_text(&file)? else {
        return Ok(None);
    };
    match Config::parse(&text, &file) {
        Ok(c) => Ok(Some((file, c))),
        Err(e) => {
            log::warn!(
                "the running snapshot does not validate any more, ignoring it: {}",
                e.lines().first().cloned().unwrap_or_default()
            );
            Ok(None)
        }
    }
}

/// Save the config file `cfg` was loaded from as the running snapshot, if the file still
/// says the same (it is re-read: the snapshot must be text that validates to `cfg`).
pub fn save(cfg: &Config) -> Result<PathBuf, Failure> {
    let text = std::fs::read_to_string(&cfg.file)
        .map_err(|e| Failure::other(format!("cannot read {}: {e}", cfg.file.display())))?;
    match Config::parse(&text, &cfg.file) {
        Ok(again) if again == *cfg => {}
        _ => {
            return Err(Failure::other(format!(
                "{} changed while it was being applied; run citadel-service apply again",
                cfg.file.display()
            )))
        }
    }
    let file = path(cfg);
    write_atomic(&file, text.as_bytes(), 0o640).map_err(|e| {
        Failure::other(format!(
            "cannot write the running snapshot {}: {e}",
            file.display()
        ))
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use citadel_common::config::{Limits, Paths};

    fn cfg_in(root: &Path) -> Config {
        let text = format!(
            "{}\n[models.a]\npath = \"a\"\nport = 11403\ngpus = [0]\n",
            Paths::under(root).to_toml()
        );
        let file = root.join("citadel.toml");
        std::fs::write(&file, &text).unwrap();
        Config::parse_with(&text, &file, &Limits::default()).unwrap()
    }

    #[test]
    fn save_then_read_round_trips_and_symlinks_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg_in(d.path());
        std::fs::create_dir_all(&c.paths.state_dir).unwrap();
        assert_eq!(read_text(&path(&c)).unwrap(), None);
        let f = save(&c).unwrap();
        assert_eq!(
            read_text(&f).unwrap().unwrap(),
            std::fs::read_to_string(&c.file).unwrap()
        );
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(&c.file, &f).unwrap();
        assert!(read_text(&f).is_err(), "a symlink is not followed");
        // save replaces the link itself, never writes through it.
        save(&c).unwrap();
        assert!(std::fs::symlink_metadata(&f).unwrap().is_file());
    }

    #[test]
    fn a_config_edited_meanwhile_is_not_saved() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg_in(d.path());
        std::fs::create_dir_all(&c.paths.state_dir).unwrap();
        let mut t = std::fs::read_to_string(&c.file).unwrap();
        t.push_str("max_model_len = 10\n");
        std::fs::write(&c.file, t).unwrap();
        assert!(save(&c).unwrap_err().message.contains("changed while"));
        assert_eq!(read_text(&path(&c)).unwrap(), None);
    }
}
