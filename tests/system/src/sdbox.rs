//! A real systemd (PID 1 of a `systemd-nspawn --boot` container) on a host whose own PID 1 is
//! not systemd. The recipe is `shared/docs/SYSTEMD-TESTING.md`:
//!
//! - a Debian 12 rootfs built once by mmdebstrap under `DIR/base` (a lock serialises builders;
//!   a stamp names the recipe, so a changed package list rebuilds it),
//! - one overlayfs per box (`DIR/boxes/NAME/{upper,work,root}`), so boxes never change the base,
//! - nspawn with `--register=no --keep-unit` (no machined, no host systemd), started inside its
//!   own host cgroup `citadel-sdbox-NAME` so its payload/supervisor cgroups never land at the
//!   root of the host hierarchy and boxes can run side by side,
//! - every command inside through `nsenter -t PID1 -a` with a clean environment and a timeout,
//! - [`SdBox`]'s `Drop` powers the box off (SIGTERM to nspawn = clean poweroff, SIGKILL of the
//!   box's PID 1 after a timeout), removes its cgroups, unmounts and deletes it.
//!
//! Over 500 lines as one concern: the lifecycle of one box in the steps above (build, boot, enter,
//! power off), which share its paths and cgroups.

use crate::run::{self, Output};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Host tools, by absolute path.
pub const NSPAWN: &str = "/usr/bin/systemd-nspawn";
pub const NSENTER: &str = "/usr/bin/nsenter";
pub const MMDEBSTRAP: &str = "/usr/bin/mmdebstrap";
pub const MOUNT: &str = "/usr/bin/mount";
pub const UMOUNT: &str = "/usr/bin/umount";
pub const JOURNALCTL_HOST: &str = "/usr/bin/journalctl";

/// Default cache dir of the base rootfs and the boxes (`CITADEL_SDBOX_DIR` overrides).
pub const DEFAULT_DIR: &str = "/var/tmp/citadel-sdbox";
/// Packages of the base rootfs (minbase plus these).
pub const PACKAGES: &str = "systemd,systemd-sysv,dbus,procps,iproute2,curl,ca-certificates";
const SUITE: &str = "bookworm";
/// Changes whenever the base recipe changes, so an old cached base is rebuilt.
const RECIPE: &str = "citadel-sdbox base v1";

/// Environment of every command run inside a box: nothing of the host leaks in.
const INNER_ENV: &[&str] = &[
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "TERM=dumb",
    "SYSTEMD_PAGER=",
    "SYSTEMD_COLORS=0",
    "SYSTEMD_LESS=",
];

pub type Result<T> = std::result::Result<T, String>;

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Why the system tests cannot run here, if they cannot (not root, no nspawn, ...).
pub fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (systemd-nspawn, overlayfs mounts, cgroups)".into());
    }
    for tool in [NSPAWN, NSENTER, MMDEBSTRAP, MOUNT] {
        if !Path::new(tool).exists() {
            return Some(format!(
                "{tool} is missing (apt-get install systemd-container mmdebstrap)"
            ));
        }
    }
    None
}

/// The cache dir: `CITADEL_SDBOX_DIR` or [`DEFAULT_DIR`].
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CITADEL_SDBOX_DIR").map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from)
}

/// The Debian mirror the host's apt uses (so the box is built from the same source).
fn mirror() -> String {
    if let Ok(m) = std::env::var("CITADEL_SDBOX_MIRROR") {
        return m;
    }
    let sources = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    if let Some(uri) = sources.lines().find_map(|l| l.strip_prefix("URIs:")) {
        if let Some(first) = uri.split_whitespace().next() {
            return first.to_string();
        }
    }
    let list = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    list.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("deb")).then(|| w.next()).flatten()
        })
        .next()
        .unwrap_or("http://deb.debian.org/debian")
        .to_string()
}

/// A cached rootfs: a directory name under the cache dir, the packages on top of minbase, and
/// the recipe line of its stamp (a changed recipe rebuilds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rootfs {
    pub name: &'static str,
    pub packages: &'static str,
    pub recipe: &'static str,
}

/// The base every box boots from (shared by every helper: never delete it).
pub const BASE: Rootfs = Rootfs {
    name: "base",
    packages: PACKAGES,
    recipe: RECIPE,
};

/// The engine tier's base: [`BASE`] plus what the real vLLM CPU build needs at run time
/// (libnuma for its compiled ops, g++ and the Python headers for torch.compile's C++ code,
/// Debian's python3 for the venv bind-mounted from the host). A second cached rootfs, so the
/// shared base never changes.
pub const ENGINE_BASE: Rootfs = Rootfs {
    name: "base-engine",
    packages: "systemd,systemd-sysv,dbus,procps,iproute2,curl,ca-certificates,libnuma1,g++,python3,python3-dev",
    recipe: "citadel-sdbox base-engine v1",
};

/// Build the base rootfs unless a current one exists; returns its path. Safe to call from
/// several processes at once (a file lock), cheap once built.
pub fn ensure_base(dir: &Path) -> Result<PathBuf> {
    ensure_rootfs(dir, &BASE)
}

/// Build rootfs `r` under `dir` unless a current one exists; returns its path (see
/// [`ensure_base`]).
pub fn ensure_rootfs(dir: &Path, r: &Rootfs) -> Result<PathBuf> {
    let packages = r.packages;
    let base = dir.join(r.name);
    let stamp = base.join(".citadel-sdbox-ok");
    let want = format!("{}\npackages={packages}\nsuite={SUITE}\n", r.recipe);
    if fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(base);
    }
    fs::create_dir_all(dir).map_err(io_err(dir.display()))?;
    let lock_path = if r.name == BASE.name {
        dir.join(".create.lock")
    } else {
        dir.join(format!(".create-{}.lock", r.name))
    };
    let lock_file = fs::File::create(&lock_path).map_err(io_err(lock_path.display()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("{}: flock: {e}", lock_path.display()))?;
    if fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(base);
    }
    let tmp = dir.join(format!("{}.tmp", r.name));
    let done = tmp.join(".bootstrap-done");
    let done_want = format!("packages={packages}\nsuite={SUITE}\n");
    // A finished bootstrap of the same package list (an earlier run died while customising)
    // is reused; anything else is built afresh.
    if !fs::read_to_string(&done).is_ok_and(|s| s == done_want) {
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(tmp.display()))?;
        }
        let t0 = Instant::now();
        eprintln!(
            "sdbox: building the Debian {SUITE} {} rootfs with mmdebstrap (a minute or more, once)",
            r.name
        );
        let mut c = Command::new(MMDEBSTRAP);
        c.args(["--variant=minbase", &format!("--include={packages}"), SUITE])
            .arg(&tmp)
            .arg(mirror());
        let o = run::run(c, None, Duration::from_secs(1200));
        if !o.success() {
            let tail: Vec<&str> = o.stderr.lines().rev().take(20).collect();
            return Err(format!(
                "mmdebstrap failed ({:?}):\n{}",
                o.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        fs::write(&done, &done_want).map_err(io_err(done.display()))?;
        eprintln!(
            "sdbox: {} rootfs bootstrapped in {:.0}s",
            r.name,
            t0.elapsed().as_secs_f64()
        );
    }
    customize_base(&tmp)?;
    fs::write(tmp.join(".citadel-sdbox-ok"), &want).map_err(io_err("stamp"))?;
    if base.exists() {
        fs::remove_dir_all(&base).map_err(io_err(base.display()))?;
    }
    fs::rename(&tmp, &base).map_err(io_err(base.display()))?;
    Ok(base)
}

/// Make a fresh rootfs boot fast and deterministically in a box.
fn customize_base(r: &Path) -> Result<()> {
    let w = |p: &str, s: &str| {
        let path = r.join(p.trim_start_matches('/'));
        if let Some(d) = path.parent() {
            fs::create_dir_all(d).map_err(io_err(d.display()))?;
        }
        fs::write(&path, s).map_err(io_err(path.display()))
    };
    w("/etc/hostname", "citadel-box\n")?;
    // Empty in the base; a fresh id per box at boot. A missing or "uninitialized" id would be a
    // first boot, where systemd runs preset-all and enables every installed unit.
    w("/etc/machine-id", "")?;
    // Noise and time in a test box: masked.
    for u in [
        "console-getty.service",
        "getty@.service",
        "serial-getty@.service",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer",
        "e2scrub_all.timer",
        "e2scrub_reap.service",
        "fstrim.timer",
        "systemd-timesyncd.service",
        "systemd-networkd.service",
        "systemd-resolved.service",
        "systemd-networkd-wait-online.service",
    ] {
        let link = r.join("etc/systemd/system").join(u);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link).map_err(io_err(link.display()))?;
    }
    let def = r.join("etc/systemd/system/default.target");
    let _ = fs::remove_file(&def);
    std::os::unix::fs::symlink("/lib/systemd/system/multi-user.target", &def)
        .map_err(io_err(def.display()))?;
    // Persistent journal (readable from the host after a stop); never drop lines.
    fs::create_dir_all(r.join("var/log/journal")).map_err(io_err("journal dir"))?;
    w(
        "/etc/systemd/journald.conf.d/citadel-sdbox.conf",
        "[Journal]\nStorage=persistent\nRateLimitIntervalSec=0\n",
    )?;
    for d in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(rd) = fs::read_dir(r.join(d)) {
            for e in rd.flatten() {
                if e.path().is_file() {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
    Ok(())
}

/// How to boot a box.
#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Own network namespace with only `lo` (tests: several boxes use the same ports).
    pub private_network: bool,
    /// Keep the box running when the [`SdBox`] is dropped (the demo).
    pub keep: bool,
    pub boot_timeout: Duration,
    pub stop_timeout: Duration,
    /// The rootfs the box's overlay sits on.
    pub rootfs: Rootfs,
    /// Host directories bind-mounted read-only at the same path inside the box.
    pub bind_ro: Vec<PathBuf>,
    /// A box whose systemd can run its BPF IP firewall (`IPAddressAllow=`/`IPAddressDeny=`).
    /// Without it systemd warns "the local system does not support BPF/cgroup firewalling" and
    /// filters nothing. It takes the unified cgroup hierarchy (cgroup v2 only,
    /// `SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`, even on a host whose own is hybrid: v1 controllers
    /// plus cgroup2 at /sys/fs/cgroup/unified, as on these CI machines) and the bpf(2) system
    /// call, which nspawn's seccomp filter blocks by default (`--system-call-filter=bpf`). The
    /// v1 controllers are not in such a box (no memory or CPU limits), so only the tests that
    /// need it ask for it.
    pub ip_firewall: bool,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            private_network: true,
            keep: false,
            boot_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
            rootfs: BASE,
            bind_ro: vec![],
            ip_firewall: false,
        }
    }
}

/// A running box. Dropping it tears it down (unless [`BootOptions::keep`]).
pub struct SdBox {
    pub name: String,
    pub dir: PathBuf,
    /// The box's `/` as seen from the host (the overlay mount).
    pub root: PathBuf,
    nspawn: Option<Pid>,
    leader: Pid,
    keep: bool,
    stop_timeout: Duration,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
}

/// Host cgroup dirs a box named `name` uses (hybrid: both hierarchies; pure v2: one).
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let cg = format!("citadel-sdbox-{name}");
    let root = Path::new("/sys/fs/cgroup");
    if root.join("unified").is_dir() {
        vec![
            root.join("systemd").join(&cg),
            root.join("unified").join(&cg),
        ]
    } else if root.join("cgroup.controllers").exists() {
        vec![root.join(&cg)]
    } else {
        vec![root.join("systemd").join(&cg)]
    }
}

/// Remove a box's host cgroups, deepest first (only ever our own subtree).
fn cgroup_cleanup(name: &str) {
    fn rm(d: &Path) {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rm(&e.path());
                }
            }
        }
        let _ = fs::remove_dir(d);
    }
    for d in cgroup_dirs(name) {
        rm(&d);
    }
}

/// Every PID still in a box's host cgroups.
pub fn cgroup_pids(name: &str) -> Vec<i32> {
    fn walk(d: &Path, out: &mut Vec<i32>) {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    if let Some(d) = cgroup_dirs(name).first() {
        walk(d, &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn is_mountpoint(p: &Path) -> bool {
    let want = match p.canonicalize() {
        Ok(p) => p,
        Err(_) => return false,
    };
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|mp| Path::new(mp) == want))
    })
}

impl SdBox {
    /// Boot a box named `name` from the base under `dir` (built if needed). A leftover box of
    /// the same name (an earlier run that was killed) is torn down first.
    pub fn boot(dir: &Path, name: &str, opts: &BootOptions) -> Result<SdBox> {
        if !valid_name(name) {
            return Err(format!("bad box name {name:?}"));
        }
        let base = ensure_rootfs(dir, &opts.rootfs)?;
        teardown(dir, name, opts.stop_timeout);
        let bdir = dir.join("boxes").join(name);
        let root = bdir.join("root");
        for d in ["upper", "work", "root"] {
            fs::create_dir_all(bdir.join(d)).map_err(io_err(bdir.join(d).display()))?;
        }
        let mut m = Command::new(MOUNT);
        m.args([
            "-t",
            "overlay",
            &format!("overlay-citadel-sdbox-{name}"),
            "-o",
        ])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            base.display(),
            bdir.join("upper").display(),
            bdir.join("work").display()
        ))
        .arg(&root);
        run::run(m, None, Duration::from_secs(30)).ok()?;
        // A fresh machine id per box: not a first boot, so no preset-all.
        let id = fs::read_to_string("/proc/sys/kernel/random/uuid")
            .map_err(io_err("random uuid"))?
            .trim()
            .replace('-', "");
        fs::write(root.join("etc/machine-id"), format!("{id}\n")).map_err(io_err("machine-id"))?;
        Self::launch(name, &bdir, opts)
    }

    /// Reboot: power the box off cleanly and boot it again from the same disk (the overlay
    /// keeps /etc and /var; /run and mounts made inside are gone, as after a real reboot).
    pub fn reboot(&mut self, opts: &BootOptions) -> Result<()> {
        self.stop();
        let again = Self::launch(&self.name, &self.dir, opts)?;
        let keep = self.keep;
        // The handle being replaced must not tear down the box it is replaced by.
        self.keep = true;
        *self = again;
        self.keep = keep;
        Ok(())
    }

    /// Start systemd-nspawn on the mounted overlay of `bdir` and wait until the box is up.
    fn launch(name: &str, bdir: &Path, opts: &BootOptions) -> Result<SdBox> {
        let root = bdir.join("root");

        let mut args: Vec<String> = vec![
            "-q".into(),
            "-D".into(),
            root.display().to_string(),
            "--boot".into(),
            format!("--machine={name}"),
            "--register=no".into(),       // no systemd-machined on the host
            "--keep-unit".into(),         // no host systemd to ask for a scope unit
            "--console=read-only".into(), // boot log to console.log, never reads stdin
            "--link-journal=no".into(),   // never touch the host's /var/log/journal
            "--timezone=copy".into(),
        ];
        for b in &opts.bind_ro {
            args.push(format!("--bind-ro={}", b.display()));
        }
        if opts.ip_firewall {
            args.push("--system-call-filter=bpf".into());
        }
        if opts.private_network {
            args.push("--private-network".into());
        } else {
            args.push("--resolv-conf=copy-host".into());
        }
        cgroup_cleanup(name);
        // Open our host cgroups' cgroup.procs before forking: the child then only writes "0"
        // (= itself) to them, which is async-signal-safe.
        let mut procs = Vec::new();
        for d in cgroup_dirs(name) {
            fs::create_dir_all(&d).map_err(io_err(d.display()))?;
            let f = fs::OpenOptions::new()
                .write(true)
                .open(d.join("cgroup.procs"))
                .map_err(io_err(d.join("cgroup.procs").display()))?;
            procs.push(f);
        }
        let console = fs::File::create(bdir.join("console.log")).map_err(io_err("console.log"))?;
        let console2 = console.try_clone().map_err(io_err("console.log"))?;
        let fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
        let mut c = Command::new(NSPAWN);
        // Unset: nspawn picks the host's own kind of hierarchy.
        c.env_remove("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY");
        if opts.ip_firewall {
            c.env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1");
        }
        c.args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(console)
            .stderr(console2);
        // SAFETY: the closure only calls write(2) on fds opened above and setsid(2), both
        // async-signal-safe; it allocates nothing.
        unsafe {
            c.pre_exec(move || {
                for fd in &fds {
                    if nix::libc::write(*fd, b"0\n".as_ptr().cast(), 2) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                nix::libc::setsid();
                Ok(())
            });
        }
        let t0 = Instant::now();
        let mut child = c.spawn().map_err(io_err(NSPAWN))?;
        drop(procs);
        let nspawn = Pid::from_raw(child.id() as i32);
        fs::write(bdir.join("nspawn.pid"), format!("{nspawn}\n")).map_err(io_err("nspawn.pid"))?;
        // The child is reaped by a thread so it never lingers as a zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let mut sb = SdBox {
            name: name.to_string(),
            dir: bdir.to_path_buf(),
            root,
            nspawn: Some(nspawn),
            leader: Pid::from_raw(0),
            keep: opts.keep,
            stop_timeout: opts.stop_timeout,
        };
        let mut state = String::new();
        while t0.elapsed() < opts.boot_timeout {
            if kill(nspawn, None).is_err() {
                let log = fs::read_to_string(bdir.join("console.log")).unwrap_or_default();
                return Err(format!("systemd-nspawn exited during boot:\n{log}"));
            }
            if let Some(l) = find_leader(nspawn.as_raw()) {
                sb.leader = Pid::from_raw(l);
                let o = sb.exec_t(&["systemctl", "is-system-running"], Duration::from_secs(10));
                state = o.stdout.trim().to_string();
                if state == "running" || state == "degraded" {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if state != "running" && state != "degraded" {
            let log = fs::read_to_string(bdir.join("console.log")).unwrap_or_default();
            return Err(format!(
                "box {name} did not boot within {:?} (state {state:?}):\n{log}",
                opts.boot_timeout
            ));
        }
        if state == "degraded" {
            let o = sb.exec(&["systemctl", "--failed", "--no-legend"]);
            eprintln!("sdbox[{name}]: booted degraded: {}", o.stdout.trim());
        }
        eprintln!(
            "sdbox[{name}]: booted in {:.2}s (nspawn pid {nspawn}, PID 1 = host pid {})",
            t0.elapsed().as_secs_f64(),
            sb.leader
        );
        Ok(sb)
    }

    /// Attach to a box booted earlier (by another process: `citadel-sdbox`).
    pub fn attach(dir: &Path, name: &str) -> Result<SdBox> {
        let bdir = dir.join("boxes").join(name);
        let pid: i32 = fs::read_to_string(bdir.join("nspawn.pid"))
            .map_err(|e| format!("box {name} is not running ({e})"))?
            .trim()
            .parse()
            .map_err(|e| format!("{}: {e}", bdir.join("nspawn.pid").display()))?;
        if comm(pid) != "systemd-nspawn" {
            return Err(format!("box {name} is not running"));
        }
        let leader = find_leader(pid).ok_or(format!("box {name}: no systemd inside"))?;
        Ok(SdBox {
            name: name.to_string(),
            root: bdir.join("root"),
            dir: bdir,
            nspawn: Some(Pid::from_raw(pid)),
            leader: Pid::from_raw(leader),
            keep: true,
            stop_timeout: Duration::from_secs(30),
        })
    }

    /// The box's PID 1 as seen from the host.
    pub fn leader(&self) -> i32 {
        self.leader.as_raw()
    }

    /// Whether the box is kept running after this handle is dropped.
    pub fn set_keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new(NSENTER);
        c.args([
            "-t",
            &self.leader.to_string(),
            "-a",
            "--",
            "/usr/bin/env",
            "-i",
        ])
        .args(INNER_ENV)
        .args(argv)
        .env_clear();
        c
    }

    /// Run `argv` inside the box (default timeout 60 s).
    pub fn exec(&self, argv: &[&str]) -> Output {
        self.exec_t(argv, Duration::from_secs(60))
    }

    /// Run `argv` inside the box with a timeout.
    pub fn exec_t(&self, argv: &[&str], timeout: Duration) -> Output {
        run::run(self.command(argv), None, timeout)
    }

    /// Run `argv` inside the box with `stdin`.
    pub fn exec_in(&self, argv: &[&str], stdin: &[u8], timeout: Duration) -> Output {
        run::run(self.command(argv), Some(stdin), timeout)
    }

    /// `exec` that must succeed: its stdout, or an error describing the failure.
    pub fn ok(&self, argv: &[&str]) -> Result<String> {
        self.exec(argv).ok()
    }

    /// Write a file inside the box (through its mount namespace, so it also reaches tmpfs
    /// mounts made inside), creating parent directories.
    pub fn write(&self, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let parent = Path::new(path)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or("/".into());
        self.ok(&["mkdir", "-p", &parent])?;
        let t = Duration::from_secs(60);
        self.exec_in(&["dd", "status=none", &format!("of={path}")], bytes, t)
            .ok()?;
        self.ok(&["chmod", &format!("{mode:o}"), path])?;
        Ok(())
    }

    /// Copy a host file into the box.
    pub fn install(&self, src: &Path, dest: &str) -> Result<()> {
        let bytes = fs::read(src).map_err(io_err(src.display()))?;
        let mode = fs::metadata(src)
            .map_err(io_err(src.display()))?
            .permissions()
            .mode()
            & 0o7777;
        self.write(dest, &bytes, mode)
    }

    /// The journal inside the box, `journalctl --no-pager ARGS`.
    pub fn journal(&self, args: &[&str]) -> String {
        let mut argv = vec!["journalctl", "--no-pager"];
        argv.extend_from_slice(args);
        self.exec(&argv).stdout
    }

    /// Power the box off and remove it (what `Drop` does unless `keep`).
    pub fn destroy(mut self) {
        self.keep = false;
    }

    /// Power off only (the overlay stays, so the journal can still be read from the host).
    pub fn stop(&mut self) {
        if let Some(p) = self.nspawn.take() {
            stop_nspawn(p, self.leader, self.stop_timeout);
        }
        cgroup_cleanup(&self.name);
        let _ = fs::remove_dir(format!("/run/systemd/nspawn/propagate/{}", self.name));
    }
}

impl Drop for SdBox {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let dir = self
            .dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        self.stop();
        if let Some(d) = dir {
            teardown(&d, &self.name, self.stop_timeout);
        }
    }
}

/// The box's systemd: the child of nspawn whose command is `systemd`.
fn find_leader(nspawn: i32) -> Option<i32> {
    let tasks = fs::read_dir(format!("/proc/{nspawn}/task")).ok()?;
    for t in tasks.flatten() {
        let kids = fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for k in kids
            .split_whitespace()
            .filter_map(|k| k.parse::<i32>().ok())
        {
            if comm(k) == "systemd" {
                return Some(k);
            }
        }
    }
    None
}

fn stop_nspawn(p: Pid, leader: Pid, timeout: Duration) {
    // SIGTERM to nspawn = SIGRTMIN+3 to the box's systemd = a clean poweroff (ExecStop= run,
    // journal flushed).
    let _ = kill(p, Signal::SIGTERM);
    let t0 = Instant::now();
    while kill(p, None).is_ok() && comm(p.as_raw()) == "systemd-nspawn" && t0.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(50));
    }
    if kill(p, None).is_ok() && comm(p.as_raw()) == "systemd-nspawn" {
        eprintln!("sdbox: no clean poweroff within {timeout:?}, killing");
        // Killing the namespace's PID 1 kills every process of the box.
        if leader.as_raw() > 1 {
            let _ = kill(leader, Signal::SIGKILL);
        }
        let _ = kill(p, Signal::SIGKILL);
        let t1 = Instant::now();
        while kill(p, None).is_ok()
            && comm(p.as_raw()) == "systemd-nspawn"
            && t1.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Stop and delete box `name` under `dir` if anything of it is left (running or not).
pub fn teardown(dir: &Path, name: &str, stop_timeout: Duration) {
    let bdir = dir.join("boxes").join(name);
    if let Ok(s) = fs::read_to_string(bdir.join("nspawn.pid")) {
        if let Ok(pid) = s.trim().parse::<i32>() {
            if comm(pid) == "systemd-nspawn" {
                let leader = find_leader(pid).unwrap_or(0);
                stop_nspawn(Pid::from_raw(pid), Pid::from_raw(leader), stop_timeout);
            }
        }
    }
    // Anything left in our cgroups (nspawn found only through them) goes too.
    for pid in cgroup_pids(name) {
        if comm(pid) == "systemd-nspawn" {
            stop_nspawn(
                Pid::from_raw(pid),
                Pid::from_raw(find_leader(pid).unwrap_or(0)),
                stop_timeout,
            );
        }
    }
    cgroup_cleanup(name);
    let _ = fs::remove_dir(format!("/run/systemd/nspawn/propagate/{name}"));
    let root = bdir.join("root");
    if is_mountpoint(&root) {
        let mut u = Command::new(UMOUNT);
        u.arg(&root);
        if !run::run(u, None, Duration::from_secs(30)).success() {
            let mut u = Command::new(UMOUNT);
            u.arg("-l").arg(&root);
            let _ = run::run(u, None, Duration::from_secs(30));
        }
    }
    if bdir.exists() && !is_mountpoint(&root) {
        let _ = fs::remove_dir_all(&bdir);
    }
}

/// Whether box `name` under `dir` is running.
pub fn is_running(dir: &Path, name: &str) -> bool {
    SdBox::attach(dir, name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_names_are_checked() {
        assert!(valid_name("citadel-demo"));
        assert!(valid_name("s03_crash"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"x".repeat(41)));
    }

    #[test]
    fn cgroups_are_named_after_the_box() {
        for d in cgroup_dirs("t1") {
            assert!(d.ends_with("citadel-sdbox-t1"), "{}", d.display());
        }
    }
}
