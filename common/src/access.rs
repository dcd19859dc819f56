//! "Can the service account read this?", answered as that account would, not as root: every
//! directory on the way must grant search (x) to the account, and the target read (and search
//! for a directory). Mode bits only; POSIX ACLs are not consulted.

use nix::unistd::{Gid, Group, Uid, User};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An account's identity: uid, primary gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl Account {
    /// Look an account up in the user database (nss).
    pub fn lookup(name: &str) -> Result<Account, String> {
        let user = User::from_name(name)
            .map_err(|e| format!("looking up user {name}: {e}"))?
            .ok_or_else(|| format!("user {name} does not exist"))?;
        let mut gids = vec![user.gid.as_raw()];
        if let Ok(cname) = std::ffi::CString::new(name) {
            if let Ok(groups) = nix::unistd::getgrouplist(&cname, user.gid) {
                gids.extend(groups.iter().map(|g| g.as_raw()));
            }
        }
        gids.sort_unstable();
        gids.dedup();
        Ok(Account {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gids,
        })
    }

    /// The uid and gid of a group-qualified account.
    pub fn ids(user: &str, group: &str) -> Result<(Uid, Gid), String> {
        let u = User::from_name(user)
            .map_err(|e| format!("looking up user {user}: {e}"))?
            .ok_or_else(|| format!("user {user} does not exist"))?;
        let g = Group::from_name(group)
            .map_err(|e| format!("looking up group {group}: {e}"))?
            .ok_or_else(|| format!("group {group} does not exist"))?;
        Ok((u.uid, g.gid))
    }

    fn allows(&self, meta: &std::fs::Metadata, bit: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let mode = meta.mode();
        if meta.uid() == self.uid {
            mode & (bit << 6) != 0
        } else if self.gids.contains(&meta.gid()) {
            mode & (bit << 3) != 0
        } else {
            mode & bit != 0
        }
    }
}

const R: u32 = 0o4;
const X: u32 = 0o1;

/// Check that `account` can reach and read `path` (a file or directory). The path is checked as
/// written and as resolved, so a symlink (the models link) is followed the way the kernel does.
pub fn check_readable(account: &Account, path: &Path) -> Result<(), String> {
    let mut walks = vec![path.to_path_buf()];
    if let Ok(real) = std::fs::canonicalize(path) {
        if real != path {
            walks.push(real);
        }
    }
    for p in walks {
        walk(account, &p)?;
    }
    Ok(())
}

fn walk(account: &Account, path: &Path) -> Result<(), String> {
    let mut prefix = PathBuf::new();
    let comps: Vec<_> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        prefix.push(c);
        let meta = std::fs::metadata(&prefix).map_err(|e| format!("{}: {e}", prefix.display()))?;
        let last = i + 1 == comps.len();
        let denied = |verb: &str| {
            format!(
                "{} (mode {:o}, owner {}:{}) cannot be {verb} by {} (uid {})",
                prefix.display(),
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid(),
                account.name,
                account.uid
            )
        };
        if (!last || meta.is_dir()) && !account.allows(&meta, X) {
            return Err(denied("traversed"));
        }
        if last && !account.allows(&meta, R) {
            return Err(denied("read"));
        }
    }
    Ok(())
}

/// Check a whole model directory: the directory and every regular file in it.
pub fn check_tree_readable(account: &Account, dir: &Path) -> Result<(), String> {
    check_readable(account, dir)?;
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        let meta = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.is_file() && !account.allows(&meta, R) {
            return Err(format!(
                "{} (mode {:o}) cannot be read by {} (uid {})",
                p.display(),
                meta.mode() & 0o7777,
                account.name,
                account.uid
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn nobody() -> Account {
        Account {
            name: "nobody".into(),
            uid: 65534,
            gids: vec![65534],
        }
    }

    #[test]
    fn an_untraversable_parent_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let parent = d.path().join("p");
        let model = parent.join("m");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o700)).unwrap();
        // Only meaningful when the tempdir's own parents are traversable (they are: /tmp).
        let e = check_readable(&nobody(), &model).unwrap_err();
        assert!(e.contains(&parent.display().to_string()), "{e}");
        assert!(e.contains("cannot be traversed"), "{e}");
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_readable(&nobody(), &model).unwrap();
        std::fs::set_permissions(
            model.join("config.json"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let e = check_tree_readable(&nobody(), &model).unwrap_err();
        assert!(e.contains("config.json"), "{e}");
    }

    #[test]
    fn root_reads_everything() {
        let root = Account {
            name: "root".into(),
            uid: 0,
            gids: vec![0],
        };
        check_readable(&root, Path::new("/")).unwrap();
    }
}
