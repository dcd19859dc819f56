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
//!
//! Nothing is deleted by path: every directory scanned is opened from `/` one component at a
//! time without following symlinks ([`DirFd::open`]), and entries are listed, checked and
//! removed relative to that descriptor (`fstatat(AT_SYMLINK_NOFOLLOW)`, `unlinkat`). A
//! directory whose path holds a symlink at any level is reported and left alone.

use crate::actions::is_temp_name;
use crate::report::Entry;
use citadel_common::config::Config;
use citadel_common::safefs::DirFd;
use citadel_common::Exit;
use nix::sys::stat::{FileStat, SFlag};
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::path::PathBuf;

/// Files in `runtime_dir/locks` that cleanup removes end with this.
pub const LOCK_SUFFIX: &str = ".lock";

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

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

/// Open a directory to scan without following symlinks: `None` when it does not exist, a
/// warning entry when a symlink (or a non-directory) is in the way.
fn open_scanned(path: &std::path::Path, name: &str, out: &mut Vec<Entry>) -> Option<DirFd> {
    match DirFd::open(path) {
        Ok(d) => Some(d),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => {
            out.push(Entry::warn(name, path, format!("{e}: left alone")));
            None
        }
    }
}

/// Remove (or with `dry_run`, list) what setup made at runtime.
pub fn run(cfg: &Config, dry_run: bool) -> Vec<Entry> {
    let mut out = vec![];
    let remove = |dir: &DirFd, file: &OsStr, what: &str, is_dir: bool, out: &mut Vec<Entry>| {
        let name = format!("cleanup:{what}");
        let path = dir.path().join(file);
        if dry_run {
            let mut e = Entry::ok(&name, &path, format!("{what} would be removed"));
            e.action = Some(format!("would remove {what}"));
            out.push(e);
            return;
        }
        match dir.remove(file, is_dir) {
            Ok(()) => {
                let mut e = Entry::ok(&name, &path, format!("{what} removed"));
                e.changed = true;
                e.action = Some(format!("remove {what}"));
                out.push(e);
            }
            Err(e) => out.push(Entry::fail(
                &name,
                &path,
                Exit::Failure,
                format!("cannot remove {what} {}: {e}", path.display()),
            )),
        }
    };

    // Locks.
    let locks_path = cfg.paths.runtime_dir.join("locks");
    if let Some(locks) = open_scanned(&locks_path, "cleanup:locks", &mut out) {
        let mut left = 0usize;
        for (name, st) in locks.entries().unwrap_or_default() {
            let is_lock = name.to_str().is_some_and(|n| n.ends_with(LOCK_SUFFIX));
            if kind(&st) == SFlag::S_IFREG && is_lock {
                remove(&locks, &name, "lock file", false, &mut out);
            } else {
                left += 1;
            }
        }
        if left == 0 {
            match open_scanned(&cfg.paths.runtime_dir, "cleanup:locks", &mut out) {
                Some(runtime)
                    if runtime
                        .stat_at(OsStr::new("locks"))
                        .is_ok_and(|st| locks.is(&st).unwrap_or(false)) =>
                {
                    remove(
                        &runtime,
                        OsStr::new("locks"),
                        "locks directory",
                        true,
                        &mut out,
                    )
                }
                _ => {}
            }
        } else {
            out.push(Entry::warn(
                "cleanup:locks",
                &locks_path,
                format!("{left} entries that are not lock files: left alone"),
            ));
        }
    }

    // Temporary leftovers.
    for path in temp_dirs(cfg) {
        let Some(dir) = open_scanned(&path, "cleanup:temporary", &mut out) else {
            continue;
        };
        for (name, st) in dir.entries().unwrap_or_default() {
            if !name.to_str().is_some_and(is_temp_name) {
                continue;
            }
            if kind(&st) == SFlag::S_IFDIR {
                let empty = dir
                    .child(&name)
                    .and_then(|d| d.entries())
                    .is_ok_and(|e| e.is_empty());
                if empty {
                    remove(&dir, &name, "temporary directory", true, &mut out);
                } else {
                    out.push(Entry::warn(
                        "cleanup:temporary",
                        &dir.path().join(&name),
                        "temporary directory is not empty: left alone",
                    ));
                }
            } else {
                // A file or a symlink: unlinkat removes the entry itself, never a target.
                remove(&dir, &name, "temporary file", false, &mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use citadel_common::config::Limits;
    use std::path::Path;

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
