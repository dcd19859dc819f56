//! Everything citadel-service asks of the host, behind one trait ([`Host`]) so that the wait
//! logic and the rendering are tested with [`fake::FakeHost`]. The real one, [`RealHost`],
//! runs `systemctl`/`journalctl` (argv vectors, absolute paths) and reads `/sys/fs/cgroup`.

use citadel_common::systemctl::Systemctl;
pub use citadel_common::systemd::{ActiveState, Client, Job, Signal, Systemd, Through, UnitStatus};
use citadel_common::{paths, Failure};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One unit as systemd sees it now: common's [`UnitStatus`], under the name this crate's
/// modules read best.
pub type Unit = UnitStatus;

/// What citadel-service needs from the host: systemd (the one client, [`Systemd`]: unit
/// states, jobs, enable, journal) and, beyond it, the waits, helpers, cgroups and the clock.
pub trait Host: Systemd {
    /// `systemctl daemon-reload` (generators run again), waiting for it.
    fn daemon_reload(&self) -> Result<(), Failure>;
    /// `systemctl reload UNIT`, waiting for the reload job (the unit's `ExecReload=`).
    fn reload(&self, unit: &str) -> Result<(), Failure>;
    /// `systemctl reset-failed UNIT`: forget its failed state and its start-limit count (a
    /// rollback restarts a model whose new version just burnt starts).
    fn reset_failed(&self, unit: &str) -> Result<(), Failure>;
    /// Run a helper of the package (`/usr/lib/citadel/NAME ARGS...`); its exit code and
    /// its output (stdout then stderr).
    fn run_helper(&self, name: &str, args: &[String]) -> Result<(i32, String), Failure>;
    /// Model instances linked into the models target by `systemctl enable` (in /etc).
    fn model_links(&self) -> Vec<String>;
    /// Why the unit's last attempt failed, as start-model said it: its last error-priority
    /// journal line, from the engine's own cause line when it quoted one
    /// ([`citadel_common::vllm::CAUSE_MARK`]).
    fn last_cause(&self, unit: &str) -> Option<String>;
    /// PIDs still in a cgroup (empty when it is gone or unreadable).
    fn cgroup_pids(&self, control_group: &str) -> Vec<u32>;
    /// CLOCK_MONOTONIC (the clock systemd's `*TimestampMonotonic` use).
    fn monotonic(&self) -> Duration;
    /// Wait between polls.
    fn sleep(&self, d: Duration);
}

/// The real host: systemd over D-Bus ([`Client`]), systemctl where it waits for a job,
/// journalctl, /sys/fs/cgroup and the system clock.
#[derive(Default)]
pub struct RealHost {
    pub systemd: Client,
    pub systemctl: Systemctl,
}

impl Through for RealHost {
    fn systemd(&self) -> &dyn Systemd {
        &self.systemd
    }
}

impl Host for RealHost {
    fn daemon_reload(&self) -> Result<(), Failure> {
        self.systemctl.run_ok(&["daemon-reload"]).map(|_| ())
    }

    fn reload(&self, unit: &str) -> Result<(), Failure> {
        self.systemctl.run_ok(&["reload", unit]).map(|_| ())
    }

    fn reset_failed(&self, unit: &str) -> Result<(), Failure> {
        self.systemctl.run_ok(&["reset-failed", unit]).map(|_| ())
    }

    fn run_helper(&self, name: &str, args: &[String]) -> Result<(i32, String), Failure> {
        let program = Path::new(paths::LIBEXEC_DIR).join(name);
        let out = Command::new(&program)
            .args(args)
            .output()
            .map_err(|e| Failure::unavailable(format!("cannot run {}: {e}", program.display())))?;
        Ok((
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    fn model_links(&self) -> Vec<String> {
        model_links_in(
            &Path::new(paths::ETC_UNIT_DIR).join(format!("{}.wants", paths::TARGET_MODELS)),
        )
    }

    fn last_cause(&self, unit: &str) -> Option<String> {
        let out = Command::new(paths::JOURNALCTL)
            .arg(format!("_SYSTEMD_UNIT={unit}"))
            .arg("SYSLOG_IDENTIFIER=start-model")
            // The failure message's first line, then its tail block (header + the engine's
            // last stderr lines, start_model::TAIL_LINES = 20): read past the block.
            .args(["-p", "err", "-n", "40", "--no-pager", "-o", "cat"])
            .env("SYSTEMD_COLORS", "0")
            .output()
            .ok()?;
        cause_of(&String::from_utf8_lossy(&out.stdout))
    }

    fn cgroup_pids(&self, control_group: &str) -> Vec<u32> {
        cgroup_pids_under(Path::new("/sys/fs/cgroup"), control_group)
    }

    fn monotonic(&self) -> Duration {
        use nix::time::{clock_gettime, ClockId};
        clock_gettime(ClockId::CLOCK_MONOTONIC)
            .map(Duration::from)
            .unwrap_or_default()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// The cause in start-model's last failure message, from its error-priority journal lines: the
/// last line before the message's tail block ([`citadel_common::vllm::is_tail_line`]), what
/// follows [`citadel_common::vllm::CAUSE_MARK`] in it, else the line itself; control characters
/// escaped. Each line of the message is its own journal entry, so the very last one is only the
/// end of the engine's output.
pub fn cause_of(lines: &str) -> Option<String> {
    let mark = citadel_common::vllm::CAUSE_MARK;
    let line = lines
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !citadel_common::vllm::is_tail_line(l))?
        .trim();
    let text = line.find(mark).map_or(line, |i| &line[i + mark.len()..]);
    Some(citadel_common::text::escape_controls(text).into_owned())
}

/// The model instances linked in a `.wants/` directory (sorted; none when it is missing).
pub fn model_links_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| paths::model_of_unit(n).is_some_and(|m| !m.is_empty()))
        .collect();
    v.sort();
    v
}

/// The PIDs in `control_group` and its children, looked up under a cgroup root: the unified
/// (v2) hierarchy, or on hybrid hosts `unified/` and the v1 `systemd/` hierarchy.
pub fn cgroup_pids_under(root: &Path, control_group: &str) -> Vec<u32> {
    let rel = control_group.trim_start_matches('/');
    if rel.is_empty() {
        return vec![];
    }
    let mut pids = vec![];
    for base in [
        root.to_path_buf(),
        root.join("unified"),
        root.join("systemd"),
    ] {
        let dir = base.join(rel);
        if dir.join("cgroup.procs").is_file() {
            collect_pids(&dir, &mut pids, 0);
            break;
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn collect_pids(dir: &PathBuf, pids: &mut Vec<u32>, depth: u32) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if depth > 8 {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), pids, depth + 1);
            }
        }
    }
}

/// A process's name from `/proc/PID/comm`, for reports.
pub fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// A scripted host for this crate's tests and its `top_fake` example (feature `testing`, never
/// in the shipped binary): systemd is common's one fake
/// ([`citadel_common::systemd::fake::FakeSystemd`]), one script step per [`Host::sleep`].
#[cfg(any(test, feature = "testing"))]
pub mod fake {
    use super::*;
    pub use citadel_common::systemd::fake::{unit, FakeSystemd};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// The fake systemd plus what else citadel-service asks of the host. Every call (jobs,
    /// enable, journal, daemon-reload, reload, helpers) is recorded in order, in
    /// `systemd`'s log.
    #[derive(Default)]
    pub struct FakeHost {
        pub systemd: FakeSystemd,
        /// [`Host::last_cause`] per unit, one entry per poll step like the script (the last stays).
        pub causes: BTreeMap<String, Vec<String>>,
        pub leftover_pids: BTreeMap<String, Vec<u32>>,
        pub model_links: Vec<String>,
        /// Exit codes of helpers run with `run_helper` (default 0).
        pub helper_codes: BTreeMap<String, i32>,
        /// Start of the fake clock.
        pub boot: Duration,
        /// Advance per sleep (defaults to the requested duration).
        pub tick: Option<Duration>,
        clock: Mutex<Duration>,
    }

    impl FakeHost {
        pub fn new() -> FakeHost {
            FakeHost::default()
        }
        /// Script a unit's states.
        pub fn with(self, unit_name: &str, states: Vec<Unit>) -> FakeHost {
            self.systemd.script(unit_name, states);
            self
        }
        /// Polls so far.
        pub fn steps(&self) -> usize {
            self.systemd.steps()
        }
        pub fn recorded(&self) -> Vec<String> {
            self.systemd.recorded()
        }
    }

    impl Through for FakeHost {
        fn systemd(&self) -> &dyn Systemd {
            &self.systemd
        }
    }

    impl Host for FakeHost {
        fn daemon_reload(&self) -> Result<(), Failure> {
            self.systemd.note("daemon-reload".into());
            Ok(())
        }
        fn reload(&self, unit: &str) -> Result<(), Failure> {
            self.systemd.note(format!("reload {unit}"));
            Ok(())
        }
        fn reset_failed(&self, unit: &str) -> Result<(), Failure> {
            self.systemd.note(format!("reset-failed {unit}"));
            Ok(())
        }
        fn run_helper(&self, name: &str, args: &[String]) -> Result<(i32, String), Failure> {
            self.systemd
                .note(format!("{name} {}", args.join(" ")).trim().to_string());
            let code = self.helper_codes.get(name).copied().unwrap_or(0);
            Ok((code, format!("{name} exited {code}")))
        }
        fn model_links(&self) -> Vec<String> {
            self.model_links.clone()
        }
        fn last_cause(&self, unit: &str) -> Option<String> {
            let c = self.causes.get(unit)?;
            let step = self.steps();
            c.get(step.min(c.len().checked_sub(1)?))
                .and_then(|l| cause_of(l))
        }
        fn cgroup_pids(&self, control_group: &str) -> Vec<u32> {
            self.leftover_pids
                .get(control_group)
                .cloned()
                .unwrap_or_default()
        }
        fn monotonic(&self) -> Duration {
            self.boot + *self.clock.lock().unwrap_or_else(|e| e.into_inner())
        }
        fn sleep(&self, d: Duration) {
            *self.clock.lock().unwrap_or_else(|e| e.into_inner()) += self.tick.unwrap_or(d);
            self.systemd.advance();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_read_past_the_engine_tail_block_of_the_last_message() {
        // start-model's error lines as journalctl -o cat prints them (engine tier, real vLLM,
        // max_model_len 4096 on a 512-position model): before this test the last line won.
        let msg = "engine of c (PID 107) exited with status 1 while loading, without a stop being asked; the engine said: Value error, User-specified max_model_len (4096) is greater than the derived max_model_len (max_position_embeddings=512.0 or model_max_length=None in model's config.json).\nlast 2 stderr lines of the engine:\n  | pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n  |     For further information visit https://errors.pydantic.dev/2.14/v/value_error\n";
        assert!(cause_of(msg)
            .unwrap()
            .starts_with("Value error, User-specified max_model_len (4096)"));
        // No mark: the line before the tail (what failed), not the engine's last output line.
        assert_eq!(
            cause_of(
                "engine of c exited with status 1\nlast 1 stderr lines of the engine:\n  | bye\n"
            )
            .as_deref(),
            Some("engine of c exited with status 1")
        );
        // Two attempts: the later message counts.
        let two = format!("engine of c exited; the engine said: OSError: first\n{msg}");
        assert!(cause_of(&two).unwrap().starts_with("Value error, "));
        let two = format!("{msg}engine of c exited with status 1\n");
        assert_eq!(
            cause_of(&two).as_deref(),
            Some("engine of c exited with status 1")
        );
        assert_eq!(cause_of("\n"), None);
        assert_eq!(
            cause_of("last 1 stderr lines of the engine:\n  | x\n"),
            None
        );
    }

    #[test]
    fn cgroup_pids_are_read_recursively_from_the_unified_hierarchy() {
        let d = tempfile::tempdir().unwrap();
        let cg = d
            .path()
            .join("unified/system.slice/citadel-model@phi3.service");
        std::fs::create_dir_all(cg.join("payload")).unwrap();
        std::fs::write(cg.join("cgroup.procs"), "12\n").unwrap();
        std::fs::write(cg.join("payload/cgroup.procs"), "40\n41\n").unwrap();
        assert_eq!(
            cgroup_pids_under(d.path(), "/system.slice/citadel-model@phi3.service"),
            [12, 40, 41]
        );
        assert!(cgroup_pids_under(d.path(), "/system.slice/gone.service").is_empty());
        assert!(cgroup_pids_under(d.path(), "").is_empty());
    }

    #[test]
    fn model_links_are_the_instances_in_a_wants_dir() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "citadel-model@b.service",
            "citadel-model@a.service",
            "other.service",
            "citadel-model@.service",
        ] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        assert_eq!(
            model_links_in(d.path()),
            ["citadel-model@a.service", "citadel-model@b.service"]
        );
        assert!(model_links_in(&d.path().join("missing")).is_empty());
    }

    #[test]
    fn the_monotonic_clock_runs() {
        let h = RealHost::default();
        let a = h.monotonic();
        assert!(a > Duration::ZERO);
        assert!(h.monotonic() >= a);
    }
}
