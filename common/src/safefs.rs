//! File operations for root helpers that treat every path as hostile.
//!
//! A directory is reached from `/` one component at a time, each opened with
//! `O_NOFOLLOW | O_DIRECTORY` relative to the directory before it ([`DirFd::open`]): no symlink
//! is followed at any level, and once a directory is open, renaming or replacing its path can
//! no longer redirect what is done to it. Changes are made on the descriptor (`fchmod`,
//! `fchown`) or relative to it (`mkdirat`, `renameat2(RENAME_NOREPLACE)`, `unlinkat`), never by
//! path. [`read_regular`] opens a file only when it is a regular file, and reads at most a cap.

use nix::errno::Errno;
use nix::fcntl::{self, OFlag, RenameFlags};
use nix::sys::stat::{self, FileStat, Mode, SFlag};
use nix::unistd::{self, Gid, Uid, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// What a `stat` mode is, in words.
pub fn kind_of(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFLNK => "a symlink",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFSOCK => "a socket",
        _ => "of an unknown kind",
    }
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// An open directory, reached without following symlinks.
#[derive(Debug)]
pub struct DirFd {
    fd: OwnedFd,
    path: PathBuf,
}

impl DirFd {
    /// Open the absolute directory `path` from `/`, component by component, following no
    /// symlink: a symlink (or a non-directory) at any level is an error that names it.
    pub fn open(path: &Path) -> io::Result<DirFd> {
        if !path.is_absolute() {
            return Err(io::Error::other(format!(
                "{}: not an absolute path",
                path.display()
            )));
        }
        let mut dir = DirFd::raw_open(None, Path::new("/"), PathBuf::from("/"))?;
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => dir = dir.child(name)?,
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(io::Error::other(format!(
                        "{}: '..' is not allowed",
                        path.display()
                    )))
                }
            }
        }
        Ok(dir)
    }

    fn raw_open(parent: Option<&DirFd>, name: &Path, path: PathBuf) -> io::Result<DirFd> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match fcntl::openat(parent.map(|p| p.fd.as_raw_fd()), name, flags, Mode::empty()) {
            // SAFETY: openat returned a new descriptor that nothing else owns.
            Ok(fd) => Ok(DirFd {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
                path,
            }),
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                let what = parent
                    .and_then(|p| p.stat_at(name.as_os_str()).ok())
                    .map_or("not a directory", |st| kind_of(st.st_mode));
                Err(io::Error::new(
                    io::Error::from_raw_os_error(e as i32).kind(),
                    format!(
                        "{} is {what}: Citadel's directories are reached without following symlinks",
                        path.display()
                    ),
                ))
            }
            Err(e) => Err(io::Error::new(
                io_err(e).kind(),
                format!("{}: {}", path.display(), e.desc()),
            )),
        }
    }

    /// Open the directory `name` (one component) inside this one, not following a symlink.
    pub fn child(&self, name: &OsStr) -> io::Result<DirFd> {
        check_name(name)?;
        DirFd::raw_open(Some(self), Path::new(name), self.path.join(name))
    }

    /// The path this directory was opened by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `fstat` of the directory itself.
    pub fn stat(&self) -> io::Result<FileStat> {
        stat::fstat(self.fd.as_raw_fd()).map_err(io_err)
    }

    /// `fstatat(name, AT_SYMLINK_NOFOLLOW)`: the entry itself, a symlink included.
    pub fn stat_at(&self, name: &OsStr) -> io::Result<FileStat> {
        check_name(name)?;
        stat::fstatat(
            Some(self.fd.as_raw_fd()),
            name,
            fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_err)
    }

    /// `fchmod` on the descriptor.
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        stat::fchmod(self.fd.as_raw_fd(), Mode::from_bits_truncate(mode)).map_err(io_err)
    }

    /// `fchown` on the descriptor.
    pub fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        unistd::fchown(
            self.fd.as_raw_fd(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )
        .map_err(io_err)
    }

    /// `mkdirat(name, mode)`.
    pub fn mkdir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        check_name(name)?;
        stat::mkdirat(
            Some(self.fd.as_raw_fd()),
            name,
            Mode::from_bits_truncate(mode),
        )
        .map_err(io_err)
    }

    /// `renameat2(from, to, RENAME_NOREPLACE)` inside this directory: never replaces `to`.
    pub fn rename_noreplace(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        check_name(from)?;
        check_name(to)?;
        let fd = Some(self.fd.as_raw_fd());
        fcntl::renameat2(fd, from, fd, to, RenameFlags::RENAME_NOREPLACE).map_err(io_err)
    }

    /// Remove the entry `name`: a file or symlink (the link itself, never its target), or with
    /// `dir` an empty directory.
    pub fn remove(&self, name: &OsStr, dir: bool) -> io::Result<()> {
        check_name(name)?;
        let flag = if dir {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        unistd::unlinkat(Some(self.fd.as_raw_fd()), name, flag).map_err(io_err)
    }

    /// The entries (not `.` and `..`) with their own, not followed, metadata; sorted by name.
    pub fn entries(&self) -> io::Result<Vec<(OsString, FileStat)>> {
        let d = nix::dir::Dir::openat(
            Some(self.fd.as_raw_fd()),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err)?;
        let mut out = vec![];
        for e in d {
            let e = e.map_err(io_err)?;
            let name = OsStr::from_bytes(e.file_name().to_bytes()).to_os_string();
            if name == "." || name == ".." {
                continue;
            }
            if let Ok(st) = self.stat_at(&name) {
                out.push((name, st));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Is this the same directory (device and inode) as `st`?
    pub fn is(&self, st: &FileStat) -> io::Result<bool> {
        let me = self.stat()?;
        Ok(me.st_dev == st.st_dev && me.st_ino == st.st_ino && is_dir(st))
    }

    /// `fsync` the directory (after creating or renaming in it).
    pub fn sync(&self) {
        let _ = nix::unistd::fsync(self.fd.as_raw_fd());
    }

    /// Read the entry `name` when it is a regular file of at most `cap` bytes: opened with
    /// `O_NOFOLLOW | O_NONBLOCK` relative to this directory and checked with `fstat` first.
    pub fn read_file(&self, name: &OsStr, cap: u64) -> io::Result<Vec<u8>> {
        check_name(name)?;
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd =
            fcntl::openat(Some(self.fd.as_raw_fd()), name, flags, Mode::empty()).map_err(io_err)?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        let st = stat::fstat(f.as_raw_fd()).map_err(io_err)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("is {}, not a regular file", kind_of(st.st_mode)),
            ));
        }
        let mut buf = vec![];
        f.take(cap + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > cap {
            return Err(too_big(buf.len() as u64, cap));
        }
        Ok(buf)
    }

    /// Replace the entry `name` with `contents` atomically: a new temp file with an
    /// unpredictable name (`O_CREAT | O_EXCL | O_NOFOLLOW`), written and fsynced, renamed over
    /// `name` (a symlink there is replaced, never followed), then the directory fsynced.
    pub fn write_replace(&self, name: &OsStr, contents: &[u8], mode: u32) -> io::Result<()> {
        check_name(name)?;
        let tmp = unpredictable_name(".tmp.", "");
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let dfd = Some(self.fd.as_raw_fd());
        let fd = fcntl::openat(dfd, tmp.as_str(), flags, Mode::from_bits_truncate(mode))
            .map_err(io_err)?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let mut f = unsafe { File::from_raw_fd(fd) };
        let r = f
            .write_all(contents)
            .and_then(|_| {
                stat::fchmod(f.as_raw_fd(), Mode::from_bits_truncate(mode)).map_err(io_err)
            })
            .and_then(|_| f.sync_all())
            .and_then(|_| fcntl::renameat(dfd, tmp.as_str(), dfd, name).map_err(io_err));
        if r.is_err() {
            let _ = unistd::unlinkat(dfd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        } else {
            self.sync();
        }
        r
    }

    /// Take an exclusive `flock` on the regular file `name` in this directory (created when
    /// missing, never through a symlink); released when the returned value is dropped.
    pub fn lock(&self, name: &OsStr) -> io::Result<fcntl::Flock<File>> {
        check_name(name)?;
        let flags = OFlag::O_RDWR
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC;
        let fd = fcntl::openat(
            Some(self.fd.as_raw_fd()),
            name,
            flags,
            Mode::from_bits_truncate(0o660),
        )
        .map_err(io_err)?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        let st = stat::fstat(f.as_raw_fd()).map_err(io_err)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(io::Error::other(format!(
                "{}/{} is {}, not a regular file",
                self.path.display(),
                name.to_string_lossy(),
                kind_of(st.st_mode)
            )));
        }
        fcntl::Flock::lock(f, fcntl::FlockArg::LockExclusive).map_err(|(_, e)| io_err(e))
    }
}

fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::other(format!(
            "{name:?} is not a single path component"
        )));
    }
    Ok(())
}

/// A name nobody can guess: `PREFIX` + 16 random hex digits (from `/dev/urandom`, else from the
/// standard library's randomly keyed hasher) + `SUFFIX`.
pub fn unpredictable_name(prefix: &str, suffix: &str) -> String {
    let mut b = [0u8; 8];
    let random = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    let n = match random {
        Ok(()) => u64::from_ne_bytes(b),
        Err(_) => {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        }
    };
    format!("{prefix}{n:016x}{suffix}")
}

/// Read a file that must be a regular file of at most `cap` bytes. It is opened non-blocking
/// (a FIFO never blocks the open) and checked with `fstat` before anything is read, so a FIFO,
/// a device such as `/dev/zero` or a directory is refused at once, and so is a file over the
/// cap (read at most `cap + 1` bytes, in case it grows).
pub fn read_regular(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        use std::os::unix::fs::MetadataExt;
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", kind_of(meta.mode())),
        ));
    }
    if meta.len() > cap {
        return Err(too_big(meta.len(), cap));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(too_big(buf.len() as u64, cap));
    }
    Ok(buf)
}

fn libc_flags() -> i32 {
    (OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).bits()
}

fn too_big(len: u64, cap: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("is too large ({len} bytes; at most {cap} bytes)"),
    )
}

/// [`read_regular`] as UTF-8 text.
pub fn read_regular_text(path: &Path, cap: u64) -> io::Result<String> {
    String::from_utf8(read_regular(path, cap)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_symlink_at_any_level_is_refused_and_named() {
        let d = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(d.path()).unwrap();
        fs::create_dir_all(root.join("real/inner")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        assert!(DirFd::open(&root.join("real/inner")).is_ok());
        let e = DirFd::open(&root.join("link/inner"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("link is a symlink"), "{e}");
        let e = DirFd::open(&root.join("link")).unwrap_err().to_string();
        assert!(e.contains("is a symlink"), "{e}");
        fs::write(root.join("file"), "x").unwrap();
        let e = DirFd::open(&root.join("file")).unwrap_err().to_string();
        assert!(e.contains("is a regular file"), "{e}");
    }

    #[test]
    fn changes_go_to_the_opened_directory_even_after_its_path_is_swapped() {
        let d = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(d.path()).unwrap();
        fs::create_dir(root.join("dir")).unwrap();
        fs::write(root.join("victim"), "x").unwrap();
        fs::set_permissions(root.join("victim"), fs::Permissions::from_mode(0o600)).unwrap();
        let dir = DirFd::open(&root.join("dir")).unwrap();
        // The path is swapped for a symlink to the victim after the open.
        fs::rename(root.join("dir"), root.join("moved")).unwrap();
        std::os::unix::fs::symlink(root.join("victim"), root.join("dir")).unwrap();
        dir.chmod(0o751).unwrap();
        assert_eq!(
            fs::metadata(root.join("victim"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o600
        );
        assert_eq!(
            fs::metadata(root.join("moved"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o751
        );
    }

    #[test]
    fn rename_never_replaces_and_remove_never_follows() {
        let d = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(d.path()).unwrap();
        let dir = DirFd::open(&root).unwrap();
        dir.mkdir(OsStr::new("a"), 0o700).unwrap();
        dir.mkdir(OsStr::new("b"), 0o700).unwrap();
        assert!(dir
            .rename_noreplace(OsStr::new("a"), OsStr::new("b"))
            .is_err());
        fs::create_dir(root.join("target")).unwrap();
        fs::write(root.join("target/keep"), "x").unwrap();
        std::os::unix::fs::symlink(root.join("target"), root.join("l")).unwrap();
        assert!(dir.child(OsStr::new("l")).is_err());
        dir.remove(OsStr::new("l"), false).unwrap();
        assert!(root.join("target/keep").exists());
        assert!(dir.child(OsStr::new("../x")).is_err());
        let names: Vec<_> = dir.entries().unwrap().into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["a", "b", "target"]);
    }

    #[test]
    fn temporary_names_are_unpredictable() {
        let a = unpredictable_name(".p.", ".tmp");
        let b = unpredictable_name(".p.", ".tmp");
        assert_ne!(a, b);
        assert!(a.starts_with(".p.") && a.ends_with(".tmp") && a.len() == 3 + 16 + 4);
    }

    #[test]
    fn only_small_regular_files_are_read() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.toml");
        fs::write(&f, "x = 1\n").unwrap();
        assert_eq!(read_regular_text(&f, 100).unwrap(), "x = 1\n");
        let e = read_regular(&f, 3).unwrap_err().to_string();
        assert!(e.contains("too large (6 bytes; at most 3 bytes)"), "{e}");
        let e = read_regular(Path::new("/dev/zero"), 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a character device, not a regular file"), "{e}");
        let e = read_regular(d.path(), 100).unwrap_err().to_string();
        assert!(e.contains("a directory"), "{e}");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_regular(&fifo, 100).unwrap_err().to_string();
        assert!(e.contains("a FIFO, not a regular file"), "{e}");
    }
}
