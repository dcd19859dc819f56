//! One engine process: spawned with a clean environment in its own process group, its stderr
//! echoed and remembered, stopped with SIGTERM -> grace -> SIGKILL of the whole group.
//!
//! start-model makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`), so the engine's
//! orphaned children (an EngineCore whose API server died) are re-parented to us and can be
//! reaped; after a stop, `kill(-pgid, 0)` must answer ESRCH: no process of the group remains.

use citadel_common::launch::LaunchSpec;
use citadel_common::Failure;
use nix::errno::Errno;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How many of the engine's last stderr lines the exit message quotes.
pub const TAIL_LINES: usize = 20;
/// How often waits look again.
pub const TICK: Duration = Duration::from_millis(100);

// ------------------------------------------------------------------------------------------
// Stop signals

/// The stop signal received (SIGTERM or SIGINT), 0 = none. Set by the handler, read by loops.
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(sig: nix::libc::c_int) {
    STOP.store(sig, Ordering::SeqCst);
}

/// Catch SIGTERM and SIGINT: they only set a flag that [`stop_requested`] reads. (Handlers
/// revert to the default in the engine at exec, so the engine gets normal signals.)
pub fn install_stop_handlers() -> Result<(), Failure> {
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { signal::sigaction(sig, &action) }
            .map_err(|e| Failure::other(format!("installing a {sig} handler: {e}")))?;
    }
    Ok(())
}

/// The stop signal received so far, if any.
pub fn stop_requested() -> Option<Signal> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        s => Signal::try_from(s).ok(),
    }
}

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

/// A running engine (leader of its own process group).
pub struct Engine {
    pid: Pid,
    ended: Option<Ended>,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr_done: mpsc::Receiver<()>,
}

impl Engine {
    /// Spawn the engine: `env_clear` + the spec's environment, stdin from /dev/null, stdout
    /// inherited (the journal), stderr through a thread that echoes each line to our stderr
    /// and keeps the last [`TAIL_LINES`]. A program that cannot be started is 69.
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
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Failure::unavailable(format!(
                    "cannot start engine {program} (engine.command): {e}"
                ))
            })?;
        let pid = Pid::from_raw(child.id() as i32);
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let (tx, stderr_done) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let tail = tail.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let _ = std::io::stderr().lock().write_all(&line);
                            let text = String::from_utf8_lossy(&line).trim_end().to_string();
                            if let Ok(mut t) = tail.lock() {
                                if t.len() == TAIL_LINES {
                                    t.pop_front();
                                }
                                t.push_back(text);
                            }
                        }
                    }
                }
                let _ = tx.send(());
            });
        }
        // We reap with waitpid ourselves; std's Child has nothing left to do.
        drop(child);
        Ok(Engine {
            pid,
            ended: None,
            tail,
            stderr_done,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Has the engine (the group leader) ended? Reaps it.
    pub fn poll(&mut self) -> Option<Ended> {
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

    /// SIGTERM to the group, up to `grace` for every member to go, then SIGKILL and reap.
    /// Returns the leader's end, and whether SIGKILL was needed.
    pub fn stop(&mut self, grace: Duration) -> (Option<Ended>, bool) {
        self.signal_group(Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if !self.group_alive() {
                return (self.ended, false);
            }
            std::thread::sleep(TICK);
        }
        (self.kill(), true)
    }

    /// SIGKILL the group now and wait (bounded) until none of it remains.
    pub fn kill(&mut self) -> Option<Ended> {
        self.signal_group(Signal::SIGKILL);
        let t0 = Instant::now();
        while self.group_alive() {
            if t0.elapsed() > Duration::from_secs(10) {
                log::error!(
                    "process group {} still has members 10 s after SIGKILL (a process stuck in the kernel?)",
                    self.pid
                );
                break;
            }
            self.signal_group(Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.ended
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

impl Drop for Engine {
    /// Whatever the way out, no process of the group outlives us.
    fn drop(&mut self) {
        if self.group_alive() {
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
        let (end, killed) = e.stop(Duration::from_secs(5));
        assert_eq!(end, Some(Ended::Signaled(Signal::SIGTERM)));
        assert!(!killed);
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
        let (_, killed) = e.stop(Duration::from_millis(500));
        assert!(killed, "the TERM-ignoring member needed SIGKILL");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(!e.group_alive());
    }

    #[test]
    fn a_missing_program_is_69() {
        match Engine::spawn(&spec(&["/nonexistent/vllm", "serve"])) {
            Err(f) => {
                assert_eq!(f.exit, citadel_common::Exit::Unavailable);
                assert!(f.message.contains("/nonexistent/vllm"));
            }
            Ok(_) => panic!("spawned a missing program"),
        }
    }
}
