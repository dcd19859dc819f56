//! Processes the benchmarks start (killed on drop), /proc readings, the monotonic clock, and
//! talking to a box from the host: its processes by host PID, its loopback by its network
//! namespace.

use crate::cleanup;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process in a process group of its own, the whole group killed (SIGKILL) on drop
/// and the child reaped, registered for cleanup meanwhile. The group matters: nginx's workers
/// outlive a killed master (they were left behind, listening, after every bench run).
pub struct Guarded {
    pub child: Child,
}

impl Guarded {
    pub fn spawn(mut cmd: Command) -> Result<Guarded, String> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0)
            .stdin(Stdio::null())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG");
        let prog = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {prog}: {e}"))?;
        cleanup::add_pid(child.id() as i32);
        Ok(Guarded { child })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then wait up to `grace` (SIGKILL after); true when it exited by itself in time.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // The child leads the group: this kills it too.
        cleanup::kill_group(self.pid());
        let _ = self.child.wait();
        cleanup::remove_pid(self.child.id() as i32);
    }
}

/// A free TCP port below the ephemeral range (the config refuses ports in it).
pub fn free_port(taken: &mut Vec<u16>) -> Result<u16, String> {
    let start = 21000 + (std::process::id() % 200) as u16 * 50;
    for k in 0..10000u16 {
        let p = 20000 + (start - 20000 + k) % 12000;
        if !taken.contains(&p) && TcpListener::bind(("127.0.0.1", p)).is_ok() {
            taken.push(p);
            return Ok(p);
        }
    }
    Err("no free port in 20000-31999".into())
}

/// Wait until something accepts connections on loopback `port`, for at most `limit`.
pub fn wait_port(port: u16, limit: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if t0.elapsed() > limit {
            return Err(format!("nothing listens on {port} after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// One stand-in engine on the host (`citadel-standin serve DIR --port P ...`).
pub struct Standin {
    pub name: String,
    pub port: u16,
    proc_: Guarded,
    _dir: tempfile::TempDir,
}

impl Standin {
    /// Start it with `knobs` and wait until its port accepts connections.
    pub fn start(
        bin: &Path,
        name: &str,
        port: u16,
        knobs: &[(&str, &str)],
    ) -> Result<Standin, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg(dir.path())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--served-model-name", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in knobs {
            cmd.env(k, v);
        }
        let s = Standin {
            name: name.into(),
            port,
            proc_: Guarded::spawn(cmd)?,
            _dir: dir,
        };
        wait_port(port, Duration::from_secs(20)).map_err(|e| format!("stand-in {name}: {e}"))?;
        Ok(s)
    }

    pub fn pid(&self) -> i32 {
        self.proc_.pid()
    }
}

/// CLOCK_MONOTONIC in microseconds: the clock of systemd's `*TimestampMonotonic` properties
/// (a box shares the host's: nspawn makes no time namespace).
pub fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

/// Kernel clock ticks per second (for /proc/PID/stat times).
pub fn clk_tck() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |v| v as f64)
}

/// CPU seconds of a process from /proc/PID/stat: (own utime+stime, waited-for children's).
pub fn cpu_secs(pid: i32) -> Result<(f64, f64), String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    parse_stat_cpu(&s, clk_tck()).ok_or_else(|| format!("/proc/{pid}/stat: cannot parse {s:?}"))
}

/// CPU seconds of a process and of its live descendants (nginx's workers, LiteLLM's children):
/// each one's own utime+stime, its exited threads included.
pub fn tree_cpu_secs(pid: i32) -> Result<f64, String> {
    let parents = parents()?;
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    let mut total = cpu_secs(pid)?.0;
    for p in &tree[1..] {
        // A child that exited meanwhile is gone: nothing to add.
        total += cpu_secs(*p).map_or(0.0, |c| c.0);
    }
    Ok(total)
}

/// Every process and its parent, from /proc.
fn parents() -> Result<Vec<(i32, i32)>, String> {
    let mut parents = Vec::new();
    for e in std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))? {
        let Some(p) = e
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            if let Some(pp) = parse_stat_ppid(&s) {
                parents.push((p, pp));
            }
        }
    }
    Ok(parents)
}

/// The fields of a /proc/PID/stat line after `comm` (which may hold spaces and ')'): the state
/// first, then ppid.
fn after_comm(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace())
}

fn parse_stat_ppid(stat: &str) -> Option<i32> {
    after_comm(stat)?.nth(1)?.parse().ok()
}

fn parse_stat_cpu(stat: &str, tck: f64) -> Option<(f64, f64)> {
    // comm may contain spaces: fields after the last ')'. utime is field 14 overall, i.e. the
    // 12th after the state field.
    let f: Vec<u64> = after_comm(stat)?
        .skip(11)
        .take(4)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 4).then(|| ((f[0] + f[1]) as f64 / tck, (f[2] + f[3]) as f64 / tck))
}

/// (VmRSS, VmHWM) of a process in KiB.
pub fn rss_kib(pid: i32) -> Result<(u64, u64), String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let rss = crate::machine::meminfo_kib(&s, "VmRSS");
    let hwm = crate::machine::meminfo_kib(&s, "VmHWM");
    rss.zip(hwm)
        .ok_or_else(|| format!("/proc/{pid}/status has no VmRSS/VmHWM"))
}

/// The host PID of the process that is `inner` in the PID namespace of the box whose PID 1 is
/// host PID `leader`.
pub fn host_pid(leader: i32, inner: i32) -> Option<i32> {
    let ns = std::fs::read_link(format!("/proc/{leader}/ns/pid")).ok()?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{pid}/ns/pid"))
            .ok()
            .as_ref()
            != Some(&ns)
        {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let last = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse::<i32>().ok());
        if last == Some(inner) {
            return Some(pid);
        }
    }
    None
}

/// One HTTP request to `127.0.0.1:port` inside the network namespace of the box whose PID 1 is
/// host PID `leader` (from a thread that joins that namespace, so no `nsenter`/`curl` latency
/// sits between the request and the clock). Returns the status code.
pub fn netns_http(
    leader: i32,
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let ns: PathBuf = format!("/proc/{leader}/ns/net").into();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    std::thread::scope(|s| {
        s.spawn(|| -> Result<u16, String> {
            let f = std::fs::File::open(&ns).map_err(|e| format!("{}: {e}", ns.display()))?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns {}: {e}", ns.display()))?;
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let mut c = TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| format!("connect {port}: {e}"))?;
            c.set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            c.set_write_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            c.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
            let mut head = [0u8; 64];
            let n = c.read(&mut head).map_err(|e| format!("read: {e}"))?;
            let line = String::from_utf8_lossy(&head[..n]).to_string();
            line.split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("no HTTP status in {line:?}"))
        })
        .join()
        .unwrap_or_else(|_| Err("request thread panicked".into()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_fields() {
        // pid (comm with ) and spaces) state ppid ... utime=14 stime=15 cutime=16 cstime=17
        let s = "42 (a) b c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 3 0 100 1000 200";
        assert_eq!(parse_stat_cpu(s, 100.0), Some((3.0, 0.1)));
        assert_eq!(parse_stat_cpu("garbage", 100.0), None);
        assert_eq!(parse_stat_ppid(s), Some(1));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn a_process_tree_counts_its_childrens_cpu() {
        // A child that burns CPU for a while, then waits to be read.
        let mut child = Command::new("/bin/sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 30",
            ])
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let own = cpu_secs(me).unwrap().0;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let with_child = loop {
            let t = tree_cpu_secs(me).unwrap();
            if t - own >= 0.05 || std::time::Instant::now() > deadline {
                break t;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            with_child - own >= 0.05,
            "own {own}, with the child {with_child}"
        );
    }

    #[test]
    fn own_process_readings() {
        let me = std::process::id() as i32;
        let (rss, hwm) = rss_kib(me).unwrap();
        assert!(rss > 0 && hwm >= rss);
        assert!(cpu_secs(me).is_ok());
        let a = monotonic_us();
        std::thread::sleep(Duration::from_millis(5));
        assert!(monotonic_us() >= a + 5000);
        assert!(clk_tck() >= 1.0);
    }

    /// The state letter of `pid`, None once it is gone.
    fn state_of(pid: i32) -> Option<char> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        after_comm(&s)?.next()?.chars().next()
    }

    #[test]
    fn dropping_a_guard_kills_the_childs_children_too() {
        // A parent that leaves a child behind when it is killed, as nginx's master does.
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "/bin/sleep 60 & wait"]);
        let g = Guarded::spawn(cmd).unwrap();
        let parent = g.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        let sleeper = loop {
            if let Some(&(p, _)) = parents().unwrap().iter().find(|(_, pp)| *pp == parent) {
                break p;
            }
            assert!(Instant::now() < deadline, "sh never started its sleep");
            std::thread::sleep(Duration::from_millis(10));
        };
        drop(g);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(state_of(sleeper), None | Some('Z')) {
            assert!(
                Instant::now() < deadline,
                "pid {sleeper} ({:?}) outlived its killed parent",
                state_of(sleeper)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut taken = vec![];
        let a = free_port(&mut taken).unwrap();
        let b = free_port(&mut taken).unwrap();
        assert_ne!(a, b);
        assert!((20000..32000).contains(&a));
    }
}
