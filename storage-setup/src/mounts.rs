//! The mount table, read from `/proc/self/mountinfo` (or a fixture in the same format), and the
//! free space of a filesystem.
//!
//! A line of mountinfo (proc(5)):
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
//! ```
//!
//! The optional fields (7) end at the `-` separator. Spaces, tabs, newlines and backslashes in
//! paths are written as octal escapes (`\040`, `\011`, `\012`, `\134`).

use std::path::{Path, PathBuf};

/// The kernel's mount table of this process's mount namespace.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u32,
    pub parent: u32,
    /// `major:minor` of the filesystem's device.
    pub dev: String,
    /// Root of the mount inside its filesystem.
    pub root: PathBuf,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,relatime`).
    pub options: String,
    pub fstype: String,
    /// The mount source: a device (`/dev/sdb1`), `tmpfs`, a remote share.
    pub source: String,
    pub super_options: String,
}

impl MountEntry {
    /// Mounted read-only?
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }

    /// `device /dev/sdb1, ext4` for reports.
    pub fn describe(&self) -> String {
        format!("device {}, {}", self.source, self.fstype)
    }
}

/// Where a path lives, according to the mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement<'a> {
    /// The path is itself a mount point.
    MountPoint(&'a MountEntry),
    /// The path is a plain directory (or file) on the filesystem mounted at the entry.
    Inside(&'a MountEntry),
}

/// A parsed mount table, in file order (later entries are mounted over earlier ones).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountTable {
    pub source: PathBuf,
    pub entries: Vec<MountEntry>,
}

impl MountTable {
    /// Read and parse a mountinfo file.
    pub fn read(path: &Path) -> Result<MountTable, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the mount table {}: {e}", path.display()))?;
        MountTable::parse(&text, path)
    }

    /// Parse mountinfo text; `source` is only used in messages.
    pub fn parse(text: &str, source: &Path) -> Result<MountTable, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let e = parse_line(line).ok_or_else(|| {
                format!(
                    "{}:{}: not a mountinfo line: {line:?}",
                    source.display(),
                    i + 1
                )
            })?;
            entries.push(e);
        }
        if entries.is_empty() {
            return Err(format!("{}: the mount table is empty", source.display()));
        }
        Ok(MountTable {
            source: source.to_path_buf(),
            entries,
        })
    }

    /// The root filesystem: the last entry mounted at `/`.
    pub fn root_filesystem(&self) -> Option<&MountEntry> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.mount_point == Path::new("/"))
    }

    /// The filesystem `path` is on. `path` should be absolute and canonical (no symlinks, no
    /// `..`): the table holds canonical mount points. The longest mount point that is a prefix
    /// of `path` wins; among equal ones the last (the one mounted on top).
    pub fn placement(&self, path: &Path) -> Option<Placement<'_>> {
        let mut best: Option<&MountEntry> = None;
        for e in &self.entries {
            if path.starts_with(&e.mount_point) {
                let longer = best.map_or(true, |b| {
                    e.mount_point.components().count() >= b.mount_point.components().count()
                });
                if longer {
                    best = Some(e);
                }
            }
        }
        let e = best?;
        Some(if e.mount_point == path {
            Placement::MountPoint(e)
        } else {
            Placement::Inside(e)
        })
    }
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().position(|f| *f == "-")?;
    if sep < 6 || fields.len() < sep + 3 {
        return None;
    }
    let id = fields[0].parse().ok()?;
    let parent = fields[1].parse().ok()?;
    let dev = fields[2];
    if !dev.contains(':') {
        return None;
    }
    Some(MountEntry {
        id,
        parent,
        dev: dev.to_string(),
        root: PathBuf::from(unescape(fields[3])),
        mount_point: PathBuf::from(unescape(fields[4])),
        options: fields[5].to_string(),
        fstype: fields[sep + 1].to_string(),
        source: unescape(fields[sep + 2]),
        super_options: fields.get(sep + 3).map_or(String::new(), |s| s.to_string()),
    })
}

/// Decode the kernel's octal escapes (`\040` = space). Anything else is kept as written.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Free space on the filesystem holding `path`, in bytes available to unprivileged users.
pub fn free_bytes(path: &Path) -> Result<u64, String> {
    let s =
        nix::sys::statvfs::statvfs(path).map_err(|e| format!("statvfs {}: {e}", path.display()))?;
    Ok(s.blocks_available().saturating_mul(s.fragment_size()))
}

/// Bytes as GiB with one decimal, for reports.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = include_str!("../tests/fixtures/mountinfo-host.txt");

    fn host() -> MountTable {
        MountTable::parse(HOST, Path::new("mountinfo-host.txt")).unwrap()
    }

    #[test]
    fn parses_a_real_table() {
        let t = host();
        let root = t
            .entries
            .iter()
            .find(|e| e.mount_point == Path::new("/"))
            .unwrap();
        assert_eq!(root.fstype, "ext4");
        assert_eq!(root.source, "/dev/vda1");
        assert_eq!(root.dev, "254:1");
        let models = t
            .entries
            .iter()
            .find(|e| e.mount_point == Path::new("/mnt/citadel-models"))
            .unwrap();
        assert_eq!(models.fstype, "xfs");
        assert_eq!(models.source, "/dev/nvme1n1");
        assert!(!models.read_only());
    }

    #[test]
    fn decodes_octal_escapes() {
        assert_eq!(unescape(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape(r"a\011b\012c\134d"), "a\tb\nc\\d");
        assert_eq!(unescape(r"trailing\04"), r"trailing\04");
        assert_eq!(unescape(r"\999"), r"\999");
        let t = host();
        assert!(t
            .entries
            .iter()
            .any(|e| e.mount_point == Path::new("/media/usb backup")));
    }

    #[test]
    fn placement_finds_mount_points_and_plain_directories() {
        let t = host();
        match t.placement(Path::new("/mnt/citadel-models")) {
            Some(Placement::MountPoint(e)) => assert_eq!(e.source, "/dev/nvme1n1"),
            other => panic!("{other:?}"),
        }
        match t.placement(Path::new("/mnt/citadel-models/active/phi3")) {
            Some(Placement::Inside(e)) => {
                assert_eq!(e.mount_point, Path::new("/mnt/citadel-models"))
            }
            other => panic!("{other:?}"),
        }
        // Not mounted: a plain directory on /.
        match t.placement(Path::new("/mnt/citadel-backup")) {
            Some(Placement::Inside(e)) => {
                assert_eq!(e.mount_point, Path::new("/"));
                assert_eq!(e.source, "/dev/vda1");
            }
            other => panic!("{other:?}"),
        }
        // A prefix of a name is not a parent directory.
        match t.placement(Path::new("/mnt/citadel-models2")) {
            Some(Placement::Inside(e)) => assert_eq!(e.mount_point, Path::new("/")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_last_of_stacked_mounts_wins() {
        let text = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 8:2 / /data rw - ext4 /dev/sda2 rw
3 1 0:50 / /data rw shared:9 - tmpfs tmpfs rw,size=1024k
";
        let t = MountTable::parse(text, Path::new("t")).unwrap();
        match t.placement(Path::new("/data")) {
            Some(Placement::MountPoint(e)) => assert_eq!(e.fstype, "tmpfs"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_rejected_with_the_line_number() {
        let e = MountTable::parse(
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\nnonsense\n",
            Path::new("f"),
        )
        .unwrap_err();
        assert!(e.starts_with("f:2:"), "{e}");
        assert!(MountTable::parse("", Path::new("f")).is_err());
    }

    #[test]
    fn read_only_mounts_are_seen() {
        let t = MountTable::parse(
            "1 0 8:1 / / ro,relatime - ext4 /dev/sda1 ro\n",
            Path::new("f"),
        )
        .unwrap();
        assert!(t.entries[0].read_only());
    }

    #[test]
    fn free_space_of_a_real_directory() {
        assert!(free_bytes(Path::new("/")).is_ok());
        assert!(free_bytes(Path::new("/nonexistent/x")).is_err());
        assert_eq!(gib(3 << 30), "3.0 GiB");
    }
}
