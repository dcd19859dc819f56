//! One engine process: spawned with a clean environment in its own process group, its stderr
//! echoed and remembered, stopped with SIGTERM -> grace -> SIGKILL of the whole group.
//!
//! start-model makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`), so the engine's
//! orphaned children (an EngineCore whose API server died) are re-parented to us and can be
//! reaped; after a stop, `kill(-pgid, 0)` must answer ESRCH: no process of the group remains.
//!
//! A descendant can leave the group (`setsid`, `setpgid`): the process group alone would miss
//! it, and it would keep the port. So start-model also tracks every descendant of the engine
//! by its parent links in `/proc` (refreshed while it runs, and before every stop), adopts the
//! orphans as subreaper, and on every way out signals, kills and reaps each of them too (by pid
//! and start time, so a reused pid is never hit). The unit's cgroup (`KillMode=mixed`) is the
//! backstop, not the only line.
//!
//! Over 500 lines as one concern: the engine's process tree from spawn to the last reaped
//! descendant (spawning, tracking and stopping share the group and the descendant list).

use citadel_common::classify::CauseFinder;
use citadel_common::launch::LaunchSpec;
use citadel_common::Failure;
use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a stop in progress reports the time it may still take.
pub const EXTEND_EVERY: Duration = Duration::from_secs(5);

/// How to stop the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPlan {
    /// `engine.drain_secs` while serving (vLLM runs with `--shutdown-timeout` = this): SIGTERM
    /// to the API server only, and this long for it to end by itself.
    /// Zero (nothing to drain, or loading): straight to the grace.
    pub drain: Duration,
    /// Then SIGTERM to whatever is left of the group, and this long for it to go; then
    /// SIGKILL. A stop never takes more than drain + grace (plus the SIGKILL's reaping).
    pub grace: Duration,
    /// SIGKILL the group at once (the monitor restarts a broken engine: nothing to wait for).
    pub skip_drain: bool,
}

/// How a stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopHow {
    /// The API server ended by itself within the drain (after a SIGTERM to it alone), and
    /// the rest of the group with it or after a SIGTERM within the grace.
    Drained,
    /// Every process ended after a SIGTERM to the whole group.
    Terminated,
    /// The group was SIGKILLed at once ([`StopPlan::skip_drain`]).
    Killed,
    /// The group was SIGKILLed because drain + grace passed.
    KilledAfterGrace,
}

/// The result of [`Engine::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// How the API server ended, when it was seen.
    pub end: Option<Ended>,
    pub how: StopHow,
}

/// How many of the engine's last stderr lines the exit message quotes.
pub const TAIL_LINES: usize = 20;
/// The longest engine output line kept and echoed; a longer one keeps its end (the part that
/// says what went wrong), marked with how much was cut.
pub const MAX_LINE: usize = 16 * 1024;
/// How many lines of the engine's output (stdout and stderr, in arrival order) are kept for
/// the incident record's classification and excerpt (`citadel_common::classify`).
pub const OUTPUT_LINES: usize = 2000;
/// Characters kept of one such line (the echo to the journal is not cut).
pub const OUTPUT_LINE_CHARS: usize = 4096;
/// How often waits look again.
pub const TICK: Duration = Duration::from_millis(100);

// ------------------------------------------------------------------------------------------
// Stop signals

// SIGTERM / SIGINT and the monitor's no-drain signal: common's one set of signal flags
// (`citadel_common::signals`: `install`, `stop_signal`, `drain_skipped`, `NO_DRAIN_SIGNAL`).

/// Become the reaper of the engine's orphans (best effort; logged when refused).
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::debug!("PR_SET_CHILD_SUBREAPER refused: {e}");
    }
}

// ------------------------------------------------------------------------------------------
// The engine process

/// How the engine ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(Signal),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(c) => write!(f, "exited with status {c}"),
            Ended::Signaled(s) => write!(f, "was killed by signal {s}"),
        }
    }
}

/// A process by pid and start time (`/proc/PID/stat` field 22): a reused pid is another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Proc {
    pid: i32,
    start: u64,
}

/// `(pid, ppid, session, start time, state)` of every process, from `/proc`.
fn process_table() -> Vec<(i32, i32, i32, u64, char)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state(0) ppid(1) pgrp(2) session(3) ... starttime(19).
            let state = f.first()?.chars().next()?;
            Some((
                pid,
                f.get(1)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
                f.get(19)?.parse().ok()?,
                state,
            ))
        })
        .collect()
}

/// A running engine (leader of its own process group).
pub struct Engine {
    pid: Pid,
    /// Every descendant seen so far (the group and whoever left it).
    known: std::collections::BTreeSet<Proc>,
    tracked_at: Option<Instant>,
    ended: Option<Ended>,
    tail: Arc<Mutex<VecDeque<String>>>,
    cause: Arc<Mutex<CauseFinder>>,
    output: Arc<Mutex<VecDeque<String>>>,
    stderr_done: mpsc::Receiver<()>,
    stdout_done: mpsc::Receiver<()>,
}

/// Keep `text` (cut) at the end of the bounded output buffer.
fn keep(buf: &Mutex<VecDeque<String>>, text: &str) {
    if let Ok(mut b) = buf.lock() {
        if b.len() == OUTPUT_LINES {
            b.pop_front();
        }
        b.push_back(text.chars().take(OUTPUT_LINE_CHARS).collect());
    }
}

/// Copy `from` to `to` line by line (bytes untouched), handing each line's text to `seen`.
fn echo_lines(mut from: impl std::io::Read, to: &mut dyn Write, mut seen: impl FnMut(&str)) {
    let mut lines = LineCap::new(MAX_LINE);
    let mut buf = vec![0u8; 64 * 1024];
    let mut emit = |line: String| {
        // Escaped: engine text can neither forge journal lines nor reach a terminal raw.
        let _ = writeln!(to, "{}", citadel_common::text::escape_controls(&line));
        let _ = to.flush();
        seen(&line);
    };
    loop {
        // Always drained at once, whatever the line length: the engine never blocks on a full
        // pipe, and memory stays at MAX_LINE per line.
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for line in lines.feed(&buf[..n]) {
            emit(line);
        }
    }
    if let Some(line) = lines.finish() {
        emit(line);
    }
}

impl Engine {
    /// Spawn the engine: `env_clear` + the spec's environment, stdin from /dev/null, stdout and
    /// stderr through threads that echo each line to ours (the journal) and look for the cause
    /// of a failure; the last [`TAIL_LINES`] of stderr are kept. A program that cannot be
    /// started is 69.
    pub fn spawn(spec: &LaunchSpec) -> Result<Engine, Failure> {
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| Failure::config("engine.command is empty"))?;
        let mut child = Command::new(program)
            .args(args)
            .env_clear()
            .envs(&spec.env)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Failure::unavailable(format!(
                    "cannot start engine {program} (engine.command): {e}"
                ))
            })?;
        let pid = Pid::from_raw(child.id() as i32);
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let cause = Arc::new(Mutex::new(CauseFinder::default()));
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, stderr_done) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let (tail, cause, output) = (tail.clone(), cause.clone(), output.clone());
            std::thread::spawn(move || {
                echo_lines(stderr, &mut std::io::stderr(), |text| {
                    keep(&output, text);
                    if let Ok(mut c) = cause.lock() {
                        c.feed(text);
                    }
                    if let Ok(mut t) = tail.lock() {
                        if t.len() == TAIL_LINES {
                            t.pop_front();
                        }
                        t.push_back(text.to_string());
                    }
                });
                let _ = tx.send(());
            });
        }
        let (tx_out, stdout_done) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            // vLLM logs (errors included) go to stdout: to the journal untouched, and read
            // for the cause of a failure.
            let (cause, output) = (cause.clone(), output.clone());
            std::thread::spawn(move || {
                echo_lines(stdout, &mut std::io::stdout(), |text| {
                    keep(&output, text);
                    if let Ok(mut c) = cause.lock() {
                        c.feed(text);
                    }
                });
                let _ = tx_out.send(());
            });
        }
        // We reap with waitpid ourselves; std's Child has nothing left to do.
        drop(child);
        Ok(Engine {
            pid,
            known: Default::default(),
            tracked_at: None,
            ended: None,
            tail,
            cause,
            output,
            stderr_done,
            stdout_done,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Refresh the set of the engine's descendants: everything below the engine or below a
    /// descendant already known, and our own children that left our session (`setsid`
    /// orphans adopted as subreaper).
    fn track(&mut self) {
        self.tracked_at = Some(Instant::now());
        let table = process_table();
        let me = std::process::id() as i32;
        let my_session = table.iter().find(|p| p.0 == me).map(|p| p.2);
        let alive: std::collections::BTreeSet<Proc> = table
            .iter()
            .map(|p| Proc {
                pid: p.0,
                start: p.3,
            })
            .collect();
        self.known.retain(|p| alive.contains(p));
        let mut roots: std::collections::BTreeSet<i32> = self.known.iter().map(|p| p.pid).collect();
        roots.insert(self.pid.as_raw());
        loop {
            let before = self.known.len();
            for &(pid, ppid, session, start, _) in &table {
                let adopted = ppid == me && Some(session) != my_session && pid != self.pid.as_raw();
                let below = roots.contains(&ppid) && ppid != me;
                if (below || adopted) && self.known.insert(Proc { pid, start }) {
                    roots.insert(pid);
                }
            }
            if self.known.len() == before {
                break;
            }
        }
    }

    /// Known descendants still there (and not zombies); reaps those that are our children.
    fn descendants_alive(&mut self) -> Vec<Proc> {
        let table = process_table();
        let mut out = vec![];
        for p in &self.known {
            let Some(row) = table.iter().find(|r| r.0 == p.pid && r.3 == p.start) else {
                continue;
            };
            if row.4 == 'Z' {
                let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
                continue;
            }
            out.push(*p);
        }
        out
    }

    /// Signal every known descendant outside the group (the group gets `killpg`).
    fn signal_descendants(&mut self, sig: Signal) {
        for p in self.descendants_alive() {
            match signal::kill(Pid::from_raw(p.pid), sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => log::warn!("sending {sig} to engine descendant {}: {e}", p.pid),
            }
        }
    }

    /// Is anything of the engine left: its group or a descendant that left it?
    fn anything_alive(&mut self) -> bool {
        let group = self.group_alive();
        !self.descendants_alive().is_empty() || group
    }

    /// Has the engine (the group leader) ended? Reaps it.
    pub fn poll(&mut self) -> Option<Ended> {
        if self
            .tracked_at
            .map_or(true, |t| t.elapsed() >= Duration::from_secs(1))
        {
            self.track();
        }
        if self.ended.is_none() {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, c)) => self.ended = Some(Ended::Exited(c)),
                Ok(WaitStatus::Signaled(_, s, _)) => self.ended = Some(Ended::Signaled(s)),
                Ok(_) => {}
                Err(Errno::ECHILD) => self.ended = Some(Ended::Exited(-1)),
                Err(e) => log::debug!("waitpid {}: {e}", self.pid),
            }
        }
        self.ended
    }

    /// Does any process of the engine's group remain (zombies included)? Reaps the ones that
    /// are ours (the leader, and orphans re-parented to us as subreaper).
    pub fn group_alive(&mut self) -> bool {
        self.poll();
        loop {
            match waitpid(
                Pid::from_raw(-self.pid.as_raw()),
                Some(WaitPidFlag::WNOHANG),
            ) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                // The leader died just now: keep its status.
                Ok(WaitStatus::Exited(p, c)) if p == self.pid => {
                    self.ended.get_or_insert(Ended::Exited(c));
                }
                Ok(WaitStatus::Signaled(p, s, _)) if p == self.pid => {
                    self.ended.get_or_insert(Ended::Signaled(s));
                }
                Ok(_) => continue,
            }
        }
        signal::killpg(self.pid, None).is_ok()
    }

    /// Signal the whole group (ignores "no such process").
    pub fn signal_group(&self, sig: Signal) {
        match signal::killpg(self.pid, sig) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => log::warn!("sending {sig} to process group {}: {e}", self.pid),
        }
    }

    /// Stop the engine: see [`StopPlan`]. `tick(left)` is called about every
    /// [`EXTEND_EVERY`] with the time the stop may still take (start-model extends the unit's
    /// stop timeout with it).
    pub fn stop(&mut self, plan: StopPlan, tick: &mut dyn FnMut(Duration)) -> Stopped {
        self.track();
        let t0 = Instant::now();
        let budget = plan.drain + plan.grace;
        let mut next_tick = t0;
        // Wait until `done` or `limit` from now; false on timeout.
        let mut wait = |e: &mut Engine, limit: Duration, done: fn(&mut Engine) -> bool| {
            let start = Instant::now();
            loop {
                if done(e) {
                    return true;
                }
                if start.elapsed() >= limit {
                    return false;
                }
                if Instant::now() >= next_tick {
                    tick(budget.saturating_sub(t0.elapsed()));
                    next_tick = Instant::now() + EXTEND_EVERY;
                }
                std::thread::sleep(TICK);
            }
        };
        // Gone: the group and every descendant that left it.
        let gone = |e: &mut Engine| !e.anything_alive();
        if plan.skip_drain {
            self.kill();
            return Stopped {
                end: self.ended,
                how: StopHow::Killed,
            };
        }
        let mut drained = false;
        if !plan.drain.is_zero() {
            // The API server alone: it stops taking requests, lets vLLM drain the running ones
            // (--shutdown-timeout), then shuts its own children down in order. A SIGTERM to the
            // whole group would reach the workers too, which exit at once and abort the drain.
            match signal::kill(self.pid, Signal::SIGTERM) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => log::warn!("sending SIGTERM to {}: {e}", self.pid),
            }
            let leader_done = |e: &mut Engine| e.poll().is_some() || !e.group_alive();
            drained = wait(self, plan.drain, leader_done);
            if drained && gone(self) {
                return Stopped {
                    end: self.ended,
                    how: StopHow::Drained,
                };
            }
        }
        // Whatever is left (everything, or what the API server left behind).
        self.signal_group(Signal::SIGTERM);
        self.signal_descendants(Signal::SIGTERM);
        if wait(self, plan.grace, gone) {
            return Stopped {
                end: self.ended,
                how: if drained {
                    StopHow::Drained
                } else {
                    StopHow::Terminated
                },
            };
        }
        Stopped {
            end: self.kill(),
            how: StopHow::KilledAfterGrace,
        }
    }

    /// SIGKILL the group now and wait (bounded) until none of it remains.
    pub fn kill(&mut self) -> Option<Ended> {
        self.track();
        self.signal_group(Signal::SIGKILL);
        self.signal_descendants(Signal::SIGKILL);
        let t0 = Instant::now();
        while self.anything_alive() {
            if t0.elapsed() > Duration::from_secs(10) {
                log::error!(
                    "process group {} still has members 10 s after SIGKILL (a process stuck in the kernel?)",
                    self.pid
                );
                break;
            }
            self.signal_group(Signal::SIGKILL);
            self.signal_descendants(Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.ended
    }

    /// The line of the engine's output (stdout or stderr) that says why it failed, if any
    /// ([`CauseFinder`]); call after [`Engine::last_lines`], which waits for the pipe to drain.
    pub fn cause(&self) -> Option<String> {
        self.cause
            .lock()
            .ok()
            .and_then(|c| c.cause().map(String::from))
    }

    /// The engine's last output lines, stdout and stderr in arrival order (waits briefly for
    /// both echo threads to drain their pipes): what the incident is classified from.
    pub fn output(&self) -> Vec<String> {
        let _ = self.stdout_done.recv_timeout(Duration::from_millis(500));
        let _ = self.stderr_done.recv_timeout(Duration::from_millis(500));
        self.output
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The engine's last stderr lines (waits briefly for the echo thread to drain the pipe).
    pub fn last_lines(&self) -> Vec<String> {
        let _ = self.stderr_done.recv_timeout(Duration::from_millis(500));
        self.tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Splits a byte stream into lines of at most `max` bytes each: of a longer line only the last
/// `max` bytes are kept, behind a `[... N bytes cut]` marker. Memory is bounded by `max`.
pub struct LineCap {
    max: usize,
    cur: Vec<u8>,
    cut: u64,
}

impl LineCap {
    pub fn new(max: usize) -> LineCap {
        LineCap {
            max,
            cur: Vec::new(),
            cut: 0,
        }
    }

    /// Feed bytes; the lines they complete.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut out = vec![];
        while let Some(i) = bytes.iter().position(|b| *b == b'\n') {
            self.push(&bytes[..i]);
            out.push(self.take());
            bytes = &bytes[i + 1..];
        }
        self.push(bytes);
        out
    }

    /// The last line, if it had no newline.
    pub fn finish(&mut self) -> Option<String> {
        (!self.cur.is_empty() || self.cut > 0).then(|| self.take())
    }

    fn push(&mut self, b: &[u8]) {
        if b.len() >= self.max {
            self.cut += (self.cur.len() + b.len() - self.max) as u64;
            self.cur.clear();
            self.cur.extend_from_slice(&b[b.len() - self.max..]);
            return;
        }
        self.cur.extend_from_slice(b);
        if self.cur.len() > self.max {
            let extra = self.cur.len() - self.max;
            self.cut += extra as u64;
            self.cur.drain(..extra);
        }
    }

    fn take(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.cur).trim_end().to_string();
        let line = if self.cut > 0 {
            format!("[... {} bytes cut] {text}", self.cut)
        } else {
            text
        };
        self.cur.clear();
        self.cut = 0;
        line
    }
}

impl Drop for Engine {
    /// Whatever the way out, no process of the group (nor a descendant that left it) outlives
    /// us.
    fn drop(&mut self) {
        self.track();
        if self.anything_alive() {
            self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(argv: &[&str]) -> LaunchSpec {
        LaunchSpec {
            model: "t".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
            port: 1,
            gpus: vec![0],
        }
    }

    fn plan(drain_ms: u64, grace_ms: u64) -> StopPlan {
        StopPlan {
            drain: Duration::from_millis(drain_ms),
            grace: Duration::from_millis(grace_ms),
            skip_drain: false,
        }
    }

    fn wait_end(e: &mut Engine) -> Ended {
        let t0 = Instant::now();
        loop {
            if let Some(x) = e.poll() {
                return x;
            }
            assert!(t0.elapsed() < Duration::from_secs(10));
            std::thread::sleep(TICK);
        }
    }

    #[test]
    fn exit_status_and_stderr_tail_are_kept() {
        let mut e = Engine::spawn(&spec(&[
            "/bin/sh",
            "-c",
            "for i in $(seq 1 30); do echo line $i >&2; done; exit 3",
        ]))
        .unwrap();
        assert_eq!(wait_end(&mut e), Ended::Exited(3));
        let t = e.last_lines();
        assert_eq!(t.len(), TAIL_LINES);
        assert_eq!(t[0], "line 11");
        assert_eq!(t[TAIL_LINES - 1], "line 30");
    }

    #[test]
    fn the_environment_is_clean() {
        std::env::set_var("CITADEL_LEAK_TEST", "x");
        let mut e = Engine::spawn(&spec(&["/bin/sh", "-c", "env >&2"])).unwrap();
        wait_end(&mut e);
        let t = e.last_lines();
        assert!(t.iter().any(|l| l == "PATH=/usr/bin:/bin"), "{t:?}");
        assert!(
            !t.iter().any(|l| l.starts_with("CITADEL_LEAK_TEST")),
            "{t:?}"
        );
    }

    #[test]
    fn the_engine_leads_its_own_process_group() {
        let mut e = Engine::spawn(&spec(&["/bin/sleep", "30"])).unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", e.pid())).unwrap();
        let after = stat.rsplit(')').next().unwrap();
        let pgrp: u32 = after.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert_eq!(pgrp, e.pid());
        let s = e.stop(plan(0, 5000), &mut |_| {});
        assert_eq!(s.end, Some(Ended::Signaled(Signal::SIGTERM)));
        assert_eq!(s.how, StopHow::Terminated);
        assert!(!e.group_alive());
    }

    #[test]
    fn a_group_member_ignoring_sigterm_is_killed_after_the_grace() {
        become_subreaper();
        let mut e = Engine::spawn(&spec(&[
            "/bin/sh",
            "-c",
            "trap '' TERM; /bin/sleep 60 & trap - TERM; exec /bin/sleep 60",
        ]))
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        let s = e.stop(plan(0, 500), &mut |_| {});
        assert_eq!(
            s.how,
            StopHow::KilledAfterGrace,
            "the TERM-ignoring member needed SIGKILL"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(!e.group_alive());
    }

    #[test]
    fn a_missing_program_is_69() {
        match Engine::spawn(&spec(&["/nonexistent/vllm", "serve"])) {
            Err(f) => {
                assert_eq!(f.exit(), citadel_common::Exit::Unavailable);
                assert!(f.message.contains("/nonexistent/vllm"));
            }
            Ok(_) => panic!("spawned a missing program"),
        }
    }

    /// A leader that finishes its work on SIGTERM (like vLLM draining) and a child that would
    /// die at once on SIGTERM (like a worker): the drain signals only the leader.
    #[test]
    fn the_drain_signals_the_leader_only_and_waits_for_it() {
        become_subreaper();
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("child-got-term");
        let script = format!(
            "/bin/sh -c 'trap \"touch {m}; exit 0\" TERM; while :; do /bin/sleep 0.05; done' & \
             trap '/bin/sleep 0.3; kill -9 $!; exit 0' TERM; while :; do /bin/sleep 0.05; done",
            m = mark.display()
        );
        let mut e = Engine::spawn(&spec(&["/bin/sh", "-c", &script])).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut ticks = Vec::new();
        let t0 = Instant::now();
        let s = e.stop(plan(5000, 5000), &mut |left| ticks.push(left));
        assert_eq!(s.how, StopHow::Drained);
        assert_eq!(s.end, Some(Ended::Exited(0)));
        assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
        assert!(!e.group_alive());
        // The child never got a SIGTERM (its leader ended it with SIGKILL after "draining").
        assert!(!mark.exists(), "the drain sent SIGTERM to the whole group");
        assert!(
            !ticks.is_empty() && ticks[0] <= Duration::from_secs(10),
            "{ticks:?}"
        );
    }

    #[test]
    fn a_leader_that_does_not_end_within_the_drain_gets_the_group_sigterm() {
        become_subreaper();
        let mut e = Engine::spawn(&spec(&[
            "/bin/sh",
            "-c",
            "trap '' TERM; /bin/sleep 60 & trap - TERM; trap '' TERM; while :; do /bin/sleep 0.05; done",
        ]))
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        let s = e.stop(plan(400, 600), &mut |_| {});
        // The leader ignores SIGTERM: drain, then group SIGTERM (the sleep ends), then SIGKILL.
        assert_eq!(s.how, StopHow::KilledAfterGrace);
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(1000) && took < Duration::from_secs(4),
            "{took:?}"
        );
        assert!(!e.group_alive());
    }

    #[test]
    fn skip_drain_kills_the_group_at_once() {
        let mut e = Engine::spawn(&spec(&[
            "/bin/sh",
            "-c",
            "trap '' TERM; exec /bin/sleep 60",
        ]))
        .unwrap();
        let t0 = Instant::now();
        let s = e.stop(
            StopPlan {
                skip_drain: true,
                ..plan(30_000, 60_000)
            },
            &mut |_| {},
        );
        assert_eq!(s.how, StopHow::Killed);
        assert_eq!(s.end, Some(Ended::Signaled(Signal::SIGKILL)));
        assert!(t0.elapsed() < Duration::from_secs(3));
    }
}
