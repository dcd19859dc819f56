//! Every check, in order: service account, models mount, backup mount, models_active, models
//! link, Citadel's directories, enabled models. Each returns a report entry and, where setup
//! can safely fix something, the [`Action`] that would do it. Nothing here writes.

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

/// `paths.models_link` -> `paths.models_active`: created when absent, never repointed.
pub fn models_link(cfg: &Config) -> Planned {
    let p = &cfg.paths;
    let name = "models_link";
    let link = &p.models_link;
    let target = &p.models_active;
    let fail = |exit: Exit, msg: String| -> Planned { Entry::fail(name, link, exit, msg).into() };
    let meta = match fs::symlink_metadata(link) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let parent = link.parent().unwrap_or(Path::new("/"));
            if !parent.is_dir() {
                return fail(
                    Exit::Failure,
                    format!(
                        "the models link {} cannot be created: its parent directory {} does not exist (is Citadel installed?)",
                        link.display(),
                        parent.display()
                    ),
                );
            }
            return Planned {
                entry: Entry::ok(name, link, format!("absent; links to {}", target.display())),
                action: Some(Action::CreateLink {
                    link: link.clone(),
                    target: target.clone(),
                }),
            };
        }
        Err(e) => return fail(Exit::Failure, format!("{}: {e}", link.display())),
    };
    if !meta.file_type().is_symlink() {
        let kind = if meta.is_dir() {
            "a directory"
        } else {
            "a file"
        };
        return fail(
            Exit::Failure,
            format!(
                "the models link {} is {kind}, not a symlink to {} (paths.models_active): refusing to replace it; move it away by hand",
                link.display(),
                target.display()
            ),
        );
    }
    let written = fs::read_link(link)
        .map(|t| t.display().to_string())
        .unwrap_or_else(|e| format!("(unreadable: {e})"));
    let resolved = match fs::canonicalize(link) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
            return fail(
                Exit::Failure,
                format!(
                    "the models link {} is a symlink loop (it points to {written}); it should point to {} (paths.models_active): refusing to repoint it, fix it by hand",
                    link.display(),
                    target.display()
                ),
            )
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return fail(
                Exit::Unavailable,
                format!(
                    "the models link {} is dangling: it points to {written}, which does not exist (paths.models_active is {}): refusing to repoint it",
                    link.display(),
                    target.display()
                ),
            )
        }
        Err(e) => {
            return fail(
                Exit::Failure,
                format!("the models link {} (-> {written}): {e}", link.display()),
            )
        }
    };
    let mount = fs::canonicalize(&p.models_mount).unwrap_or_else(|_| p.models_mount.clone());
    if !resolved.starts_with(&mount) || !resolved.is_dir() {
        let why = if resolved.is_dir() {
            format!("outside the models mount {}", p.models_mount.display())
        } else {
            "not a directory".to_string()
        };
        return fail(
            Exit::Failure,
            format!(
                "the models link {} points to {written} (resolves to {}, {why}); it should point to {} (paths.models_active): refusing to repoint it, fix it by hand",
                link.display(),
                resolved.display(),
                target.display()
            ),
        );
    }
    let active = fs::canonicalize(target).unwrap_or_else(|_| target.clone());
    if resolved != active {
        return Entry::warn(
            name,
            link,
            format!(
                "points to {written} (resolves to {}) on the models mount, not to paths.models_active {}",
                resolved.display(),
                target.display()
            ),
        )
        .into();
    }
    Entry::ok(name, link, format!("-> {written}")).into()
}

/// One of Citadel's own directories: exists (or will be created) with the service account as
/// owner and `storage.dir_mode`.
pub fn directory(
    name: &str,
    dir: &Path,
    owner: Option<&Owner>,
    mode: u32,
    runner: Runner,
    parent_pending: bool,
) -> Planned {
    let key = if name == "locks_dir" {
        "paths.runtime_dir + /locks".to_string()
    } else {
        format!("paths.{name}")
    };
    let fail = |msg: String| -> Planned { Entry::fail(name, dir, Exit::Failure, msg).into() };
    let Some(owner) = owner else {
        return Entry::warn(name, dir, "not checked: the service account is missing").into();
    };
    // Setup reaches the directory from `/` without following symlinks: say so now.
    if let Some(Err(e)) = dir.parent().map(citadel_common::safefs::DirFd::open) {
        if e.kind() != ErrorKind::NotFound {
            return fail(format!("{} ({key}): {e}", dir.display()));
        }
    }
    let meta = match fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let parent = dir.parent().unwrap_or(Path::new("/"));
            if !parent_pending && !parent.is_dir() {
                return fail(format!(
                    "{} ({key}) cannot be created: its parent directory {} does not exist (storage-setup creates only the last component)",
                    dir.display(),
                    parent.display()
                ));
            }
            if !runner.is_root() && owner.uid != runner.uid {
                return fail(format!(
                    "{} ({key}) does not exist and only root can create it owned by {owner}",
                    dir.display()
                ));
            }
            return Planned {
                entry: Entry::ok(name, dir, "absent"),
                action: Some(Action::CreateDir {
                    path: dir.to_path_buf(),
                    owner: owner.clone(),
                    mode,
                }),
            };
        }
        Err(e) => return fail(format!("{} ({key}): {e}", dir.display())),
    };
    if meta.file_type().is_symlink() {
        return fail(format!(
            "{} ({key}) is a symlink; Citadel's directories must be real directories (refusing to change what it points to)",
            dir.display()
        ));
    }
    if !meta.is_dir() {
        return fail(format!(
            "{} ({key}) exists but is not a directory: move it away by hand",
            dir.display()
        ));
    }
    let have_mode = meta.mode() & 0o7777;
    let wrong_owner = meta.uid() != owner.uid || meta.gid() != owner.gid;
    let wrong_mode = have_mode != mode;
    let state = format!(
        "owner {}:{} mode {have_mode:04o}",
        name_of_uid(meta.uid()),
        name_of_gid(meta.gid())
    );
    if !wrong_owner && !wrong_mode {
        return Entry::ok(name, dir, format!("owner {owner}, mode {mode:04o}")).into();
    }
    if wrong_owner && !runner.is_root() {
        return fail(format!(
            "{} ({key}) has {state}, should be owned by {owner} (service.user/service.group): only root can fix it",
            dir.display()
        ));
    }
    if wrong_mode && !runner.is_root() && meta.uid() != runner.uid {
        return fail(format!(
            "{} ({key}) has {state}, should be mode {mode:04o} (storage.dir_mode): only root or its owner can fix it",
            dir.display()
        ));
    }
    Planned {
        entry: Entry::ok(
            name,
            dir,
            format!("{state}; wants owner {owner}, mode {mode:04o}"),
        ),
        action: Some(Action::FixDir {
            path: dir.to_path_buf(),
            chown: wrong_owner.then(|| owner.clone()),
            chmod: wrong_mode.then_some(mode),
        }),
    }
}

fn name_of_uid(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

fn name_of_gid(gid: u32) -> String {
    nix::unistd::Group::from_gid(gid.into())
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name)
}

/// An enabled model: its directory is complete (the rule start-model uses) and readable by the
/// service account, every parent directory included.
pub fn model(
    cfg: &Config,
    m: &citadel_common::config::Model,
    account: Option<&Account>,
    link_pending: bool,
) -> Entry {
    let name = format!("model:{}", m.name);
    let path = m.resolved_path(&cfg.paths);
    let dir = via_pending_link(cfg, &path, link_pending);
    let fail = |msg: String| Entry::fail(&name, &path, Exit::Unavailable, msg);
    let files = match modelfiles::check_model_dir(&dir) {
        Ok(f) => f,
        Err(problems) => return fail(format!("model {}: {}", m.name, problems.join("; "))),
    };
    let Some(account) = account else {
        return Entry::warn(
            &name,
            &path,
            format!(
                "complete ({} weight files); readability not checked: the service account is missing",
                files.weights.len()
            ),
        );
    };
    let mut readable = access::check_tree_readable(account, &dir);
    if readable.is_ok() && link_pending {
        if let Some(parent) = cfg.paths.models_link.parent() {
            readable = access::check_readable(account, parent);
        }
    }
    if let Err(e) = readable {
        return fail(format!(
            "model {} ({}) is not readable by the service account: {e}",
            m.name,
            path.display()
        ));
    }
    Entry::ok(
        &name,
        &path,
        format!(
            "complete ({} weight files), readable by {}",
            files.weights.len(),
            account.name
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Status;

    fn table(text: &str) -> Result<MountTable, String> {
        MountTable::parse(text, Path::new("fixture"))
    }

    #[test]
    fn a_plain_directory_on_root_is_named_with_its_device() {
        let d = tempfile::tempdir().unwrap();
        let t = table("29 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw\n");
        let e = mount("models_mount", d.path(), &t, 0, true, "models");
        assert_eq!(e.status, Status::Fail);
        assert_eq!(e.exit, Some(Exit::Unavailable));
        assert!(
            e.detail
                .contains("is not a mount point (it is a directory on /, device /dev/vda1, ext4)"),
            "{}",
            e.detail
        );
        assert!(e.detail.contains("root filesystem"), "{}", e.detail);
        // Optional: a warning.
        let e = mount("backup_mount", d.path(), &t, 0, false, "backups");
        assert_eq!(e.status, Status::Warn);
    }

    #[test]
    fn a_mount_point_reports_device_and_free_space() {
        let d = tempfile::tempdir().unwrap();
        let real = fs::canonicalize(d.path()).unwrap();
        let t = table(&format!(
            "29 1 254:1 / / rw - ext4 /dev/vda1 rw\n40 29 259:1 / {} rw - xfs /dev/nvme1n1 rw\n",
            real.display()
        ));
        let e = mount("models_mount", d.path(), &t, 0, true, "models");
        assert_eq!(e.status, Status::Ok, "{}", e.detail);
        assert!(
            e.detail.contains("device /dev/nvme1n1, xfs"),
            "{}",
            e.detail
        );
        assert!(e.detail.contains("GiB free"), "{}", e.detail);
        let e = mount("models_mount", d.path(), &t, u64::MAX / 2, true, "models");
        assert_eq!(e.status, Status::Fail);
        assert_eq!(e.exit, Some(Exit::Failure));
        assert!(
            e.detail.contains("under storage.min_free_gib"),
            "{}",
            e.detail
        );
    }

    #[test]
    fn a_missing_mount_is_unavailable() {
        let t = table("29 1 254:1 / / rw - ext4 /dev/vda1 rw\n");
        let e = mount(
            "models_mount",
            Path::new("/nonexistent/m"),
            &t,
            0,
            true,
            "models",
        );
        assert_eq!(e.exit, Some(Exit::Unavailable));
        assert!(e.detail.contains("does not exist"), "{}", e.detail);
    }

    #[test]
    fn an_unreadable_mount_table_fails_the_mount_checks() {
        let t: Result<MountTable, String> = Err("cannot read the mount table x".into());
        let e = mount("models_mount", Path::new("/"), &t, 0, true, "models");
        assert_eq!(e.status, Status::Fail);
        assert!(e.detail.contains("cannot read the mount table"));
    }

    use crate::actions::tests::me;

    #[test]
    fn directories_are_planned_not_touched() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let p = directory(
            "cache_dir",
            &dir,
            Some(&me()),
            0o750,
            Runner::current(),
            false,
        );
        assert!(matches!(p.action, Some(Action::CreateDir { .. })));
        assert!(!dir.exists());
        // Parent missing and not pending: fail; pending: planned.
        let deep = d.path().join("a/b");
        let p = directory(
            "cache_dir",
            &deep,
            Some(&me()),
            0o750,
            Runner::current(),
            false,
        );
        assert_eq!(p.entry.status, Status::Fail);
        assert!(
            p.entry.detail.contains("parent directory"),
            "{}",
            p.entry.detail
        );
        let p = directory(
            "cache_dir",
            &deep,
            Some(&me()),
            0o750,
            Runner::current(),
            true,
        );
        assert!(p.action.is_some());
        // Existing with the wrong mode: a chmod, nothing else.
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let p = directory(
            "cache_dir",
            &dir,
            Some(&me()),
            0o750,
            Runner::current(),
            false,
        );
        match p.action {
            Some(Action::FixDir {
                chown: None,
                chmod: Some(0o750),
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_non_root_runner_cannot_chown() {
        let d = tempfile::tempdir().unwrap();
        let mut other = me();
        other.uid += 1;
        let runner = Runner {
            uid: 12345,
            gid: 12345,
        };
        let p = directory("state_dir", d.path(), Some(&other), 0o700, runner, false);
        assert_eq!(p.entry.status, Status::Fail);
        assert!(
            p.entry.detail.contains("only root can fix it"),
            "{}",
            p.entry.detail
        );
    }

    #[test]
    fn symlinked_directories_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("cache");
        std::os::unix::fs::symlink(d.path(), &l).unwrap();
        let p = directory(
            "cache_dir",
            &l,
            Some(&me()),
            0o750,
            Runner::current(),
            false,
        );
        assert_eq!(p.entry.status, Status::Fail);
        assert!(
            p.entry.detail.contains("is a symlink"),
            "{}",
            p.entry.detail
        );
    }
}
