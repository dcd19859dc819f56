//! The changes setup may make, and how each is made atomically. Nothing here decides *whether*
//! to change something: [`crate::checks`] does, and setup applies the list only when every
//! check passed.
//!
//! - A directory is created under a temporary name in its parent
//!   ([`temp_name`]: `.citadel-storage-setup.PID.NAME.tmp`), given its mode and owner, then
//!   renamed into place: nobody ever sees it with the wrong owner or mode.
//! - The models link is created with one `symlink(2)`, which is atomic and never replaces
//!   anything.
//! - Ownership and mode of an existing directory are fixed with `lchown` + `chmod`.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Start of every temporary name storage-setup uses; `--cleanup` removes leftovers.
pub const TEMP_PREFIX: &str = ".citadel-storage-setup.";
/// End of every temporary name storage-setup uses.
pub const TEMP_SUFFIX: &str = ".tmp";

/// `.citadel-storage-setup.PID.WHAT.tmp`.
pub fn temp_name(what: &str) -> String {
    format!("{TEMP_PREFIX}{}.{what}{TEMP_SUFFIX}", std::process::id())
}

/// Is `name` one of storage-setup's temporary names?
pub fn is_temp_name(name: &str) -> bool {
    name.len() > TEMP_PREFIX.len() + TEMP_SUFFIX.len()
        && name.starts_with(TEMP_PREFIX)
        && name.ends_with(TEMP_SUFFIX)
}

/// An owner as numbers and as names (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub user: String,
    pub group: String,
    pub uid: u32,
    pub gid: u32,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.user, self.group)
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a directory (its parent exists, or is created by an earlier action).
    CreateDir {
        path: PathBuf,
        owner: Owner,
        mode: u32,
    },
    /// Fix an existing directory's owner and/or mode.
    FixDir {
        path: PathBuf,
        chown: Option<Owner>,
        chmod: Option<u32>,
    },
    /// Create the models link.
    CreateLink { link: PathBuf, target: PathBuf },
}

impl Action {
    /// What the action does, in a few words.
    pub fn describe(&self) -> String {
        match self {
            Action::CreateDir { owner, mode, .. } => {
                format!("create directory (owner {owner}, mode {mode:04o})")
            }
            Action::FixDir { chown, chmod, .. } => {
                let mut parts = vec![];
                if let Some(o) = chown {
                    parts.push(format!("chown {o}"));
                }
                if let Some(m) = chmod {
                    parts.push(format!("chmod {m:04o}"));
                }
                parts.join(", ")
            }
            Action::CreateLink { target, .. } => {
                format!("create symlink -> {}", target.display())
            }
        }
    }

    /// Make the change.
    pub fn apply(&self) -> Result<(), String> {
        match self {
            Action::CreateDir { path, owner, mode } => create_dir(path, owner, *mode),
            Action::FixDir { path, chown, chmod } => {
                if let Some(o) = chown {
                    std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid))
                        .map_err(|e| format!("chown {o} {}: {e}", path.display()))?;
                }
                if let Some(m) = chmod {
                    fs::set_permissions(path, fs::Permissions::from_mode(*m))
                        .map_err(|e| format!("chmod {m:04o} {}: {e}", path.display()))?;
                }
                Ok(())
            }
            Action::CreateLink { link, target } => {
                std::os::unix::fs::symlink(target, link).map_err(|e| {
                    format!(
                        "cannot create symlink {} -> {}: {e}",
                        link.display(),
                        target.display()
                    )
                })?;
                sync_parent(link);
                Ok(())
            }
        }
    }
}

fn create_dir(path: &Path, owner: &Owner, mode: u32) -> Result<(), String> {
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (p, n.to_string_lossy()),
        _ => {
            return Err(format!(
                "{}: cannot create a directory here",
                path.display()
            ))
        }
    };
    let tmp = parent.join(temp_name(&name));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let result = (|| {
        // Root can give it to anyone; others can still set a group they belong to.
        let meta = fs::symlink_metadata(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        if meta.uid() != owner.uid || meta.gid() != owner.gid {
            std::os::unix::fs::lchown(&tmp, Some(owner.uid), Some(owner.gid))
                .map_err(|e| format!("chown {owner} {}: {e}", tmp.display()))?;
        }
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {mode:04o} {}: {e}", tmp.display()))?;
        if fs::symlink_metadata(path).is_ok() {
            return Err(format!(
                "{} appeared while storage-setup was creating it",
                path.display()
            ));
        }
        fs::rename(&tmp, path)
            .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_dir(&tmp);
    } else {
        sync_parent(path);
    }
    result
}

fn sync_parent(path: &Path) {
    if let Some(d) = path.parent().and_then(|p| fs::File::open(p).ok()) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The current user as an owner (tests run as anyone).
    pub(crate) fn me() -> Owner {
        Owner {
            user: "me".into(),
            group: "me".into(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }

    #[test]
    fn temp_names_are_recognised() {
        let n = temp_name("cache");
        assert!(is_temp_name(&n), "{n}");
        assert!(n.starts_with(".citadel-storage-setup."));
        assert!(!is_temp_name(".citadel-storage-setup..tmp"));
        assert!(!is_temp_name("model.tmp"));
        assert!(!is_temp_name(".citadel-storage-setup.1.x"));
    }

    #[test]
    fn a_created_directory_has_its_mode_and_no_temp_is_left() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cache");
        let a = Action::CreateDir {
            path: p.clone(),
            owner: me(),
            mode: 0o751,
        };
        a.apply().unwrap();
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o7777, 0o751);
        assert_eq!(m.uid(), me().uid);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        // A second create fails and leaves nothing behind.
        let e = a.apply().unwrap_err();
        assert!(e.contains("appeared"), "{e}");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn links_are_never_replaced() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("models");
        let a = Action::CreateLink {
            link: link.clone(),
            target: d.path().join("active"),
        };
        a.apply().unwrap();
        assert_eq!(fs::read_link(&link).unwrap(), d.path().join("active"));
        assert!(a.apply().is_err());
        assert!(a.describe().contains("active"));
    }

    #[test]
    fn fix_dir_sets_the_mode() {
        let d = tempfile::tempdir().unwrap();
        let a = Action::FixDir {
            path: d.path().to_path_buf(),
            chown: None,
            chmod: Some(0o750),
        };
        a.apply().unwrap();
        assert_eq!(fs::metadata(d.path()).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(a.describe(), "chmod 0750");
    }
}
