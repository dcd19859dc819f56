//! The file checks: the models link, Citadel's directories (owner and mode) and each enabled
//! model's files. Each returns a [`Planned`]; nothing here writes.

use super::*;

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
