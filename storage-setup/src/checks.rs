//! Every check, in order: service account, models mount, backup mount, models_active, models
//! link, Citadel's directories, enabled models. Each returns a report entry and, where setup
//! can safely fix something, the [`Action`] that would do it. Nothing here writes.
//!
//! Here: the plan, the account and the mounts; in [`files`]: the models link, the directories
//! and each model's files.

use crate::actions::{Action, Owner};
use crate::mounts::{free_bytes, gib, MountTable, Placement};
use crate::report::Entry;
use citadel_common::access::{self, Account};
use citadel_common::config::Config;
use citadel_common::modelfiles;
use citadel_common::Exit;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

mod files;
pub use files::{directory, model, models_link};

/// A check's entry and what setup would do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub entry: Entry,
    pub action: Option<Action>,
}

impl From<Entry> for Planned {
    fn from(entry: Entry) -> Planned {
        Planned {
            entry,
            action: None,
        }
    }
}

/// Who is running the checks: the effective uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runner {
    pub uid: u32,
    pub gid: u32,
}

impl Runner {
    /// This process.
    pub fn current() -> Runner {
        Runner {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }
    fn is_root(self) -> bool {
        self.uid == 0
    }
}

/// The service account, resolved.
#[derive(Debug, Clone)]
pub struct ServiceAccount {
    pub owner: Owner,
    pub account: Account,
}

/// The directory `models_link` stands for while it does not exist yet (setup will create it).
fn via_pending_link(cfg: &Config, path: &Path, link_pending: bool) -> PathBuf {
    match path.strip_prefix(&cfg.paths.models_link) {
        Ok(rest) if link_pending => cfg.paths.models_active.join(rest),
        _ => path.to_path_buf(),
    }
}

/// Run every check.
pub fn plan(cfg: &Config, mounts: &Result<MountTable, String>, runner: Runner) -> Vec<Planned> {
    let mut out: Vec<Planned> = vec![];
    let (entry, svc) = account(cfg);
    out.push(entry.into());
    let p = &cfg.paths;
    let s = &cfg.storage;
    out.push(
        mount(
            "models_mount",
            &p.models_mount,
            mounts,
            s.min_free_gib,
            true,
            "models",
        )
        .into(),
    );
    out.push(
        mount(
            "backup_mount",
            &p.backup_mount,
            mounts,
            s.backup_min_free_gib,
            s.backup_required,
            "backups",
        )
        .into(),
    );
    out.push(models_active(cfg).into());
    let link = models_link(cfg);
    let link_pending = link.action.is_some();
    out.push(link);

    let owner = svc.as_ref().map(|s| &s.owner);
    let locks = p.runtime_dir.join("locks");
    let mut pending_dirs: Vec<PathBuf> = vec![];
    for (name, dir) in [
        ("cache_dir", &p.cache_dir),
        ("staging_dir", &p.staging_dir),
        ("runtime_dir", &p.runtime_dir),
        ("locks_dir", &locks),
        ("state_dir", &p.state_dir),
    ] {
        let parent_pending = dir
            .parent()
            .is_some_and(|d| pending_dirs.iter().any(|p| p == d));
        let planned = directory(name, dir, owner, s.dir_mode, runner, parent_pending);
        if matches!(planned.action, Some(Action::CreateDir { .. })) {
            pending_dirs.push(dir.clone());
        }
        out.push(planned);
    }

    for m in cfg.enabled_models() {
        out.push(model(cfg, m, svc.as_ref().map(|s| &s.account), link_pending).into());
    }
    out
}

/// The service account and group exist.
pub fn account(cfg: &Config) -> (Entry, Option<ServiceAccount>) {
    let (user, group) = (&cfg.service.user, &cfg.service.group);
    let name = "account";
    let path = Path::new("");
    let fail = |msg: String| {
        (
            Entry::fail(
                name,
                path,
                Exit::Unavailable,
                format!("{msg}: create it (the package's sysusers.d file does) or fix service.user / service.group in the config"),
            ),
            None,
        )
    };
    let acct = match Account::lookup(user) {
        Ok(a) => a,
        Err(e) => return fail(format!("service account {e} (service.user = {user:?})")),
    };
    let gid = match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => g.gid.as_raw(),
        Ok(None) => {
            return fail(format!(
                "service group {group} does not exist (service.group = {group:?})"
            ))
        }
        Err(e) => return fail(format!("looking up service group {group}: {e}")),
    };
    let owner = Owner {
        user: user.clone(),
        group: group.clone(),
        uid: acct.uid,
        gid,
    };
    (
        Entry::ok(
            name,
            path,
            format!("service account {owner} (uid {}, gid {gid})", acct.uid),
        ),
        Some(ServiceAccount {
            owner,
            account: acct,
        }),
    )
}

/// A mount point: mounted (not a plain directory), and enough free space.
pub fn mount(
    name: &str,
    path: &Path,
    mounts: &Result<MountTable, String>,
    min_free_gib: u64,
    required: bool,
    what: &str,
) -> Entry {
    let key = format!("paths.{name}");
    let problem = |exit: Exit, msg: String| {
        if required {
            Entry::fail(name, path, exit, msg)
        } else {
            Entry::warn(
                name,
                path,
                format!("{msg} (optional: storage.backup_required = false)"),
            )
        }
    };
    let table = match mounts {
        Ok(t) => t,
        Err(e) => return Entry::fail(name, path, Exit::Failure, e.clone()),
    };
    let real = match fs::canonicalize(path) {
        Ok(r) => r,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return problem(
                Exit::Unavailable,
                format!(
                    "{} does not exist ({key}): the {what} disk is not mounted",
                    path.display()
                ),
            )
        }
        Err(e) => {
            return problem(
                Exit::Unavailable,
                format!("{}: {e} ({key})", path.display()),
            )
        }
    };
    if !real.is_dir() {
        return problem(
            Exit::Unavailable,
            format!("{} is not a directory ({key})", path.display()),
        );
    }
    let entry = match table.placement(&real) {
        Some(Placement::MountPoint(e)) => match table.root_filesystem() {
            // A bind mount of `/` (or of a directory of the root filesystem) is a mount point in
            // the table, but what it fills is the root filesystem.
            Some(r) if r.dev == e.dev && r.id != e.id => {
                let what_of = if e.root == r.root {
                    "a bind mount of / itself".to_string()
                } else {
                    format!(
                        "a bind mount of {} of the root filesystem",
                        e.root.display()
                    )
                };
                return problem(
                    Exit::Unavailable,
                    format!(
                        "{} is {what_of} (device {}, {}, the same device as the root filesystem mounted at /): refusing to let {what} fill the root filesystem",
                        path.display(),
                        e.dev,
                        e.describe(),
                    ),
                );
            }
            _ => e,
        },
        Some(Placement::Inside(e)) => {
            let on = if e.mount_point == Path::new("/") {
                "the root filesystem".to_string()
            } else {
                format!("the filesystem mounted at {}", e.mount_point.display())
            };
            let consequence = if required {
                format!("refusing to let {what} fill {on}")
            } else {
                format!("{what} would fill {on}")
            };
            return problem(
                Exit::Unavailable,
                format!(
                    "{} is not a mount point (it is a directory on {}, {}): {consequence}",
                    path.display(),
                    e.mount_point.display(),
                    e.describe(),
                ),
            );
        }
        None => {
            return problem(
                Exit::Unavailable,
                format!(
                    "{} is on no filesystem of the mount table {}",
                    path.display(),
                    table.source.display()
                ),
            )
        }
    };
    let free = match free_bytes(&real) {
        Ok(f) => f,
        Err(e) => return problem(Exit::Failure, e),
    };
    let desc = format!(
        "mount point, {}, {} free (minimum {min_free_gib} GiB)",
        entry.describe(),
        gib(free)
    );
    if free < min_free_gib.saturating_mul(1 << 30) {
        let limit = if name == "models_mount" {
            "storage.min_free_gib"
        } else {
            "storage.backup_min_free_gib"
        };
        return problem(
            Exit::Failure,
            format!(
                "only {} free on {} ({}), under {limit} = {min_free_gib}",
                gib(free),
                path.display(),
                entry.describe()
            ),
        );
    }
    if entry.read_only() {
        return Entry::warn(name, path, format!("{desc}; mounted read-only"));
    }
    Entry::ok(name, path, desc)
}

/// `paths.models_active`: the link's target, a directory on the models mount.
pub fn models_active(cfg: &Config) -> Entry {
    let p = &cfg.paths;
    let name = "models_active";
    let path = &p.models_active;
    match fs::canonicalize(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Entry::fail(
            name,
            path,
            Exit::Unavailable,
            format!(
                "the models link target {} (paths.models_active) does not exist",
                path.display()
            ),
        ),
        Err(e) => Entry::fail(
            name,
            path,
            Exit::Unavailable,
            format!("{} (paths.models_active): {e}", path.display()),
        ),
        Ok(real) if !real.is_dir() => Entry::fail(
            name,
            path,
            Exit::Unavailable,
            format!(
                "the models link target {} (paths.models_active) is not a directory",
                path.display()
            ),
        ),
        Ok(real) => match fs::canonicalize(&p.models_mount) {
            Ok(mount) if !real.starts_with(&mount) => Entry::fail(
                name,
                path,
                Exit::Failure,
                format!(
                    "{} (paths.models_active) resolves to {}, outside the models mount {}",
                    path.display(),
                    real.display(),
                    p.models_mount.display()
                ),
            ),
            _ => Entry::ok(name, path, "directory inside paths.models_mount"),
        },
    }
}

#[cfg(test)]
mod tests;
