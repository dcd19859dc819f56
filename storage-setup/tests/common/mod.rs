//! Test scaffolding: a sandbox box layout under a tempdir, its config, a mountinfo fixture that
//! names the sandbox's mounts, a runner for the built binary, and a tree snapshot to prove that
//! nothing changed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_storage-setup");

/// The mountinfo template: real format, `@ROOT@` stands for the sandbox root.
pub fn template() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mountinfo-template.txt");
    fs::read_to_string(p).expect("fixture")
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The current user and its primary group, by name.
pub fn me() -> (String, String) {
    let u = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .expect("current user has a name");
    let g = nix::unistd::Group::from_gid(u.gid)
        .unwrap()
        .expect("current group has a name");
    (u.name, g.name)
}

/// One model in the config.
pub struct ModelSpec {
    pub name: &'static str,
    pub path: String,
    pub enabled: bool,
}

/// A box under a tempdir:
///
/// ```text
/// ROOT/mnt/citadel-models/active/phi3   (complete fake model, 2 shards)   <- "mounted"
/// ROOT/mnt/citadel-backup/              <- "mounted"
/// ROOT/opt/citadel/                     (models link goes here)
/// ROOT/run/  ROOT/var/lib/
/// ```
///
/// The config and the mountinfo file live in a second tempdir, so a snapshot of ROOT sees
/// every change storage-setup could make.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub side: tempfile::TempDir,
    pub root: PathBuf,
    pub user: String,
    pub group: String,
    pub min_free_gib: u64,
    pub backup_required: bool,
    pub dir_mode: &'static str,
    pub models: Vec<ModelSpec>,
    /// Template lines kept in the mountinfo fixture: those naming these sandbox paths.
    pub mounted: Vec<&'static str>,
    /// Use the fixture (true) or the real /proc/self/mountinfo (false).
    pub use_fixture: bool,
    /// More mountinfo lines (`@ROOT@` stands for the sandbox root), appended to the fixture.
    pub extra_mounts: Vec<String>,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let side = tempfile::tempdir().unwrap();
        // tempdirs are 0700; the service account must be able to traverse the root.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        for d in [
            "mnt/citadel-models/active",
            "mnt/citadel-backup",
            "opt/citadel",
            "run",
            "var/lib",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        citadel_common::modelfiles::write_fake_model(
            &root.join("mnt/citadel-models/active/phi3"),
            2,
        )
        .unwrap();
        let (user, group) = me();
        Sandbox {
            dir,
            side,
            root,
            user,
            group,
            min_free_gib: 0,
            backup_required: false,
            dir_mode: "0750",
            models: vec![
                ModelSpec {
                    name: "phi3",
                    path: "phi3".into(),
                    enabled: true,
                },
                // Disabled and absent: never checked.
                ModelSpec {
                    name: "off",
                    path: "not-downloaded".into(),
                    enabled: false,
                },
            ],
            mounted: vec!["mnt/citadel-models", "mnt/citadel-backup"],
            use_fixture: true,
            extra_mounts: vec![],
        }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn config_path(&self) -> PathBuf {
        self.side.path().join("citadel.toml")
    }

    pub fn mountinfo_path(&self) -> PathBuf {
        self.side.path().join("mountinfo")
    }

    pub fn config_text(&self) -> String {
        let mut s = citadel_common::config::Paths::under(&self.root).to_toml();
        s.push_str(&format!(
            r#"
[service]
user = "{}"
group = "{}"

[engine]
command = ["/bin/true"]

[storage]
min_free_gib = {}
backup_required = {}
dir_mode = "{}"
"#,
            self.user, self.group, self.min_free_gib, self.backup_required, self.dir_mode
        ));
        for (i, m) in self.models.iter().enumerate() {
            s.push_str(&format!(
                "\n[models.{}]\npath = \"{}\"\nport = {}\ngpus = [{i}]\nenabled = {}\n",
                m.name,
                m.path,
                11400 + i,
                m.enabled
            ));
        }
        s
    }

    pub fn mountinfo_text(&self) -> String {
        let root = self.root.display().to_string().replace(' ', "\\040");
        template()
            .lines()
            .filter(|l| {
                !l.contains("@ROOT@")
                    || self
                        .mounted
                        .iter()
                        .any(|m| l.contains(&format!("@ROOT@/{m} ")))
            })
            .map(str::to_string)
            .chain(self.extra_mounts.iter().cloned())
            .map(|l| l.replace("@ROOT@", &root) + "\n")
            .collect()
    }

    /// Run the binary with this sandbox's config (and mountinfo fixture).
    pub fn run(&self, args: &[&str]) -> Output {
        fs::write(self.config_path(), self.config_text()).unwrap();
        fs::write(self.mountinfo_path(), self.mountinfo_text()).unwrap();
        let mut c = Command::new(BIN);
        c.args(args)
            .env("CITADEL_CONFIG", self.config_path())
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM")
            .env_remove("CITADEL_MOUNTINFO");
        if self.use_fixture {
            c.env("CITADEL_MOUNTINFO", self.mountinfo_path());
        }
        c.output().unwrap()
    }

    /// Run with `--json` and parse stdout.
    pub fn run_json(&self, args: &[&str]) -> (Output, serde_json::Value) {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(&a);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out, v)
    }

    pub fn snapshot(&self) -> Tree {
        Tree::of(&self.root)
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// The run failed with `exit` and exactly one line on stderr containing every `needle`.
pub fn assert_fails(o: &Output, exit: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(
        code(o),
        exit,
        "exit code\nstderr: {err}\nstdout: {}",
        stdout(o)
    );
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "stderr {:?} lacks {n:?}", lines[0]);
    }
    assert!(
        lines[0].starts_with("error: storage-setup: "),
        "{}",
        lines[0]
    );
}

/// The entry named `name` of a JSON report.
pub fn entry<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no entry {name} in {v:#}"))
}

/// What one path looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub link: Option<PathBuf>,
    pub mtime: (i64, i64),
    pub size: u64,
}

/// A directory tree: path -> type, mode, owner, link target, mtime, size. Never follows
/// symlinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree(pub BTreeMap<PathBuf, Node>);

impl Tree {
    pub fn of(root: &Path) -> Tree {
        let mut map = BTreeMap::new();
        walk(root, &mut map);
        Tree(map)
    }

    /// Panic with every difference.
    pub fn assert_same(&self, after: &Tree, what: &str) {
        let diff = self.diff(after);
        assert!(
            diff.is_empty(),
            "{what}: the tree changed:\n{}",
            diff.join("\n")
        );
    }

    pub fn diff(&self, after: &Tree) -> Vec<String> {
        let mut out = vec![];
        for (p, n) in &self.0 {
            match after.0.get(p) {
                None => out.push(format!("removed {}", p.display())),
                Some(m) if m != n => out.push(format!("changed {}: {n:?} -> {m:?}", p.display())),
                _ => {}
            }
        }
        for p in after.0.keys() {
            if !self.0.contains_key(p) {
                out.push(format!("added {}", p.display()));
            }
        }
        out
    }

    /// The tree without `paths` (and what is under them), and with the mtimes of their parent
    /// directories ignored.
    pub fn without(&self, paths: &[PathBuf]) -> Tree {
        let mut t = self.clone();
        t.0.retain(|p, _| !paths.iter().any(|x| p.starts_with(x)));
        for x in paths {
            if let Some(n) = x.parent().and_then(|parent| t.0.get_mut(parent)) {
                n.mtime = (0, 0);
            }
        }
        t
    }
}

fn walk(p: &Path, map: &mut BTreeMap<PathBuf, Node>) {
    let m = fs::symlink_metadata(p).unwrap();
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        'l'
    } else if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else {
        '?'
    };
    map.insert(
        p.to_path_buf(),
        Node {
            kind,
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            link: ft.is_symlink().then(|| fs::read_link(p).unwrap()),
            mtime: (m.mtime(), m.mtime_nsec()),
            size: if ft.is_dir() { 0 } else { m.size() },
        },
    );
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for c in names {
            walk(&c, map);
        }
    }
}
