//! The changes setup may make, and how each is made atomically. Nothing here decides *whether*
//! to change something: [`crate::checks`] does, and setup applies the list only when every
//! check passed.
//!
//! Every change to a directory is made on a file descriptor, never by path: the parent is opened
//! from `/` one component at a time with `O_NOFOLLOW|O_DIRECTORY`
//! ([`citadel_common::safefs::DirFd`]), the directory relative to it the same way, and the
//! owner and mode are set with `fchown`/`fchmod` on that descriptor. The service account owns
//! `runtime_dir` and can swap anything inside it for a symlink at any moment; whatever it swaps
//! in after the check, no symlink is ever followed and no root file is ever changed.
//!
//! - A directory is created under an unpredictable temporary name in its parent
//!   ([`temp_name`]: `.citadel-storage-setup.RANDOM.NAME.tmp`), opened, checked to be the
//!   directory just made (owned by this process), given its owner and mode on the descriptor,
//!   then renamed into place with `RENAME_NOREPLACE` (never replacing what appeared there) and
//!   re-verified: the name must now be that same directory.
//! - The models link is created with one `symlink(2)`, which is atomic and never replaces
//!   anything.
//! - Ownership and mode of an existing directory are fixed with `fchown` + `fchmod` on a
//!   descriptor opened without following symlinks, then re-read from it.

use citadel_common::safefs::{self, DirFd};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

/// Start of every temporary name storage-setup uses; `--cleanup` removes leftovers.
pub const TEMP_PREFIX: &str = ".citadel-storage-setup.";
/// End of every temporary name storage-setup uses.
pub const TEMP_SUFFIX: &str = ".tmp";

/// `.citadel-storage-setup.RANDOM.WHAT.tmp`, RANDOM being 16 random hex digits: the service
/// account cannot plant anything at a name it cannot guess.
pub fn temp_name(what: &str) -> String {
    safefs::unpredictable_name(TEMP_PREFIX, &format!(".{what}{TEMP_SUFFIX}"))
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
            Action::FixDir { path, chown, chmod } => fix_dir(path, chown.as_ref(), *chmod),
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

/// The parent directory (opened without following symlinks) and the last component.
fn split(path: &Path) -> Result<(DirFd, &OsStr), String> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => Ok((DirFd::open(p).map_err(|e| e.to_string())?, n)),
        _ => Err(format!(
            "{}: cannot create or change a directory here",
            path.display()
        )),
    }
}

fn fix_dir(path: &Path, chown: Option<&Owner>, chmod: Option<u32>) -> Result<(), String> {
    let (parent, name) = split(path)?;
    let dir = parent.child(name).map_err(|e| e.to_string())?;
    if let Some(o) = chown {
        dir.chown(o.uid, o.gid)
            .map_err(|e| format!("chown {o} {}: {e}", path.display()))?;
    }
    if let Some(m) = chmod {
        dir.chmod(m)
            .map_err(|e| format!("chmod {m:04o} {}: {e}", path.display()))?;
    }
    verify(&dir, chown, chmod)
}

/// Re-read owner and mode from the descriptor.
fn verify(dir: &DirFd, owner: Option<&Owner>, mode: Option<u32>) -> Result<(), String> {
    let st = dir
        .stat()
        .map_err(|e| format!("{}: {e}", dir.path().display()))?;
    if let Some(o) = owner {
        if (st.st_uid, st.st_gid) != (o.uid, o.gid) {
            return Err(format!(
                "{}: owner is {}:{} after chown {o}",
                dir.path().display(),
                st.st_uid,
                st.st_gid
            ));
        }
    }
    if let Some(m) = mode {
        if st.st_mode & 0o7777 != m {
            return Err(format!(
                "{}: mode is {:04o} after chmod {m:04o}",
                dir.path().display(),
                st.st_mode & 0o7777
            ));
        }
    }
    Ok(())
}

fn create_dir(path: &Path, owner: &Owner, mode: u32) -> Result<(), String> {
    let (parent, name) = split(path)?;
    if parent.stat_at(name).is_ok() {
        return Err(format!(
            "{} appeared while storage-setup was creating it",
            path.display()
        ));
    }
    let tmp_name = temp_name(&name.to_string_lossy());
    let tmp = OsStr::new(&tmp_name);
    let tmp_path = parent.path().join(tmp);
    parent
        .mkdir(tmp, 0o700)
        .map_err(|e| format!("cannot create {}: {e}", tmp_path.display()))?;
    let result = (|| {
        let dir = parent.child(tmp).map_err(|e| e.to_string())?;
        let st = dir
            .stat()
            .map_err(|e| format!("{}: {e}", tmp_path.display()))?;
        let me = nix::unistd::geteuid().as_raw();
        if st.st_uid != me {
            return Err(format!(
                "{} was replaced while storage-setup was creating it (owner {})",
                tmp_path.display(),
                st.st_uid
            ));
        }
        // Root can give it to anyone; others can still set a group they belong to.
        if st.st_uid != owner.uid || st.st_gid != owner.gid {
            dir.chown(owner.uid, owner.gid)
                .map_err(|e| format!("chown {owner} {}: {e}", tmp_path.display()))?;
        }
        dir.chmod(mode)
            .map_err(|e| format!("chmod {mode:04o} {}: {e}", tmp_path.display()))?;
        verify(&dir, Some(owner), Some(mode))?;
        parent.rename_noreplace(tmp, name).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                format!(
                    "{} appeared while storage-setup was creating it",
                    path.display()
                )
            } else {
                format!(
                    "cannot rename {} to {}: {e}",
                    tmp_path.display(),
                    path.display()
                )
            }
        })?;
        parent.sync();
        // Re-verify: the name is now the directory that was made and fixed.
        let placed = parent.stat_at(name).map_err(|e| e.to_string())?;
        if !dir.is(&placed).map_err(|e| e.to_string())? {
            return Err(format!(
                "{} was replaced right after storage-setup created it",
                path.display()
            ));
        }
        Ok(())
    })();
    if result.is_err() {
        // Only our own empty directory, found without following anything.
        let _ = parent.remove(tmp, true);
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
    use std::os::unix::fs::MetadataExt;

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
