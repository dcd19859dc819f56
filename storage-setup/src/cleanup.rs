//! `--cleanup` (ExecStop): remove what storage-setup and the model servers made at runtime, and
//! nothing else.
//!
//! Removed:
//! - lock files (`*.lock`, regular files) directly in `runtime_dir/locks`, then that directory
//!   if it is empty (setup creates it);
//! - leftovers of an interrupted setup, named `.citadel-storage-setup.PID.NAME.tmp`
//!   ([`crate::actions::temp_name`]) in `staging_dir` and in the parent directories where setup
//!   creates things (of the cache, staging, runtime and state directories and of the models
//!   link). A leftover directory is removed only when empty.
//!
//! Never touched: model directories, `cache_dir` contents, backups, the models link, any other
//! file in the runtime directory (the health state), anything reached through a symlink.

use crate::actions::is_temp_name;
use crate::report::Entry;
use citadel_common::config::Config;
use citadel_common::Exit;
use std::fs;
use std::path::{Path, PathBuf};

/// Files in `runtime_dir/locks` that cleanup removes end with this.
pub const LOCK_SUFFIX: &str = ".lock";

/// The directories scanned for temporary leftovers.
pub fn temp_dirs(cfg: &Config) -> Vec<PathBuf> {
    let p = &cfg.paths;
    let mut dirs = vec![p.staging_dir.clone()];
    for d in [
        &p.cache_dir,
        &p.staging_dir,
        &p.runtime_dir,
        &p.state_dir,
        &p.models_link,
    ] {
        if let Some(parent) = d.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    dirs.push(p.runtime_dir.clone());
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let new = !seen.contains(d);
        seen.push(d.clone());
        new
    });
    dirs
}

/// Remove (or with `dry_run`, list) what setup made at runtime.
pub fn run(cfg: &Config, dry_run: bool) -> Vec<Entry> {
    let mut out = vec![];
    let remove = |path: &Path, what: &str, is_dir: bool, out: &mut Vec<Entry>| {
        let name = format!("cleanup:{what}");
        if dry_run {
            let mut e = Entry::ok(&name, path, format!("{what} would be removed"));
            e.action = Some(format!("would remove {what}"));
            out.push(e);
            return;
        }
        let r = if is_dir {
            fs::remove_dir(path)
        } else {
            fs::remove_file(path)
        };
        match r {
            Ok(()) => {
                let mut e = Entry::ok(&name, path, format!("{what} removed"));
                e.changed = true;
                e.action = Some(format!("remove {what}"));
                out.push(e);
            }
            Err(e) => out.push(Entry::fail(
                &name,
                path,
                Exit::Failure,
                format!("cannot remove {what} {}: {e}", path.display()),
            )),
        }
    };

    // Locks.
    let locks = cfg.paths.runtime_dir.join("locks");
    match fs::symlink_metadata(&locks) {
        Err(_) => {}
        Ok(m) if !m.is_dir() => out.push(Entry::warn(
            "cleanup:locks",
            &locks,
            "not a directory (a symlink?): left alone",
        )),
        Ok(_) => {
            let mut left = 0usize;
            for (path, meta) in listing(&locks) {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                if meta.is_file() && name.is_some_and(|n| n.ends_with(LOCK_SUFFIX)) {
                    remove(&path, "lock file", false, &mut out);
                } else {
                    left += 1;
                }
            }
            if left == 0 {
                remove(&locks, "locks directory", true, &mut out);
            } else {
                out.push(Entry::warn(
                    "cleanup:locks",
                    &locks,
                    format!("{left} entries that are not lock files: left alone"),
                ));
            }
        }
    }

    // Temporary leftovers.
    for dir in temp_dirs(cfg) {
        for (path, meta) in listing(&dir) {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if !name.is_some_and(|n| is_temp_name(&n)) {
                continue;
            }
            if meta.is_dir() {
                let empty = fs::read_dir(&path)
                    .map(|mut r| r.next().is_none())
                    .unwrap_or(false);
                if empty {
                    remove(&path, "temporary directory", true, &mut out);
                } else {
                    out.push(Entry::warn(
                        "cleanup:temporary",
                        &path,
                        "temporary directory is not empty: left alone",
                    ));
                }
            } else {
                remove(&path, "temporary file", false, &mut out);
            }
        }
    }
    out
}

/// The entries of a directory with their own (not followed) metadata; empty when unreadable.
fn listing(dir: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return vec![];
    };
    let mut v: Vec<(PathBuf, fs::Metadata)> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let p = e.path();
            fs::symlink_metadata(&p).ok().map(|m| (p, m))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use citadel_common::config::Limits;

    #[test]
    fn temp_dirs_are_the_parents_setup_writes_in_once_each() {
        let cfg = Config::parse_with(
            "[engine]\ncommand = [\"/bin/true\"]\n",
            Path::new("/etc/citadel/citadel.toml"),
            &Limits::default(),
        )
        .unwrap();
        let dirs = temp_dirs(&cfg);
        let want: Vec<PathBuf> = [
            "/mnt/citadel-models/staging",
            "/mnt/citadel-models",
            "/run",
            "/var/lib",
            "/opt/citadel",
            "/run/citadel",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(dirs, want);
    }
}
