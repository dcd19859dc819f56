//! Shared helpers of start-model's black-box tests: a temp box (config, model dir, runtime
//! dir), free ports, a fake `NOTIFY_SOCKET`, and the stand-in engine.
//!
//! The stand-in binary is found by `citadel_standin::testing::binary`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const START_MODEL: &str = env!("CARGO_BIN_EXE_start-model");

#[allow(unused_imports)]
pub use citadel_standin::testing::{free_port, workspace};

/// The stand-in engine binary (see `citadel_standin::testing::binary` for how it is found).
pub fn standin() -> PathBuf {
    citadel_standin::testing::binary(Path::new(START_MODEL))
}

/// A fake systemd notify socket that records every datagram with its arrival time.
pub struct Notify {
    pub path: PathBuf,
    pub msgs: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Notify {
    pub fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let m2 = msgs.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let s = String::from_utf8_lossy(&buf[..n]).into_owned();
                m2.lock().unwrap().push((Instant::now(), s));
            }
        });
        Notify { path, msgs }
    }

    pub fn all(&self) -> Vec<String> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// When the first message containing `needle` arrived, waiting up to `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<Instant> {
        let t0 = Instant::now();
        loop {
            if let Some((t, _)) = self
                .msgs
                .lock()
                .unwrap()
                .iter()
                .find(|(_, s)| s.contains(needle))
            {
                return Some(*t);
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One test box: a temp dir holding the config, a fake model, the runtime and cache dirs.
pub struct TestBox {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    pub notify: Notify,
}

/// What goes into the config.
pub struct Setup {
    pub engine_command: Vec<String>,
    pub engine_env: BTreeMap<String, String>,
    /// More `[engine]` lines.
    pub engine_extra: String,
    /// More `[models.m]` lines.
    pub model_extra: String,
    /// More TOML after everything (e.g. other models).
    pub tail: String,
    pub write_model: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            engine_command: vec![],
            engine_env: BTreeMap::new(),
            engine_extra: "stop_grace_secs = 5\nport_wait_secs = 1\ngpu_release_wait_secs = 1\n"
                .into(),
            model_extra: "load_timeout_secs = 60\n".into(),
            tail: String::new(),
            write_model: true,
        }
    }
}

impl Setup {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.engine_env.insert(k.into(), v.into());
        self
    }
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

impl TestBox {
    pub fn new(setup: Setup) -> TestBox {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        let paths = citadel_common::config::Paths::under(d);
        if setup.write_model {
            citadel_common::modelfiles::write_fake_model(&paths.models_link.join("m"), 2).unwrap();
        }
        let command = if setup.engine_command.is_empty() {
            vec![standin().to_string_lossy().into_owned(), "serve".into()]
        } else {
            setup.engine_command.clone()
        };
        let command: Vec<String> = command.iter().map(|c| toml_str(c)).collect();
        let env: String = setup
            .engine_env
            .iter()
            .map(|(k, v)| format!("{k} = {}\n", toml_str(v)))
            .collect();
        let text = format!(
            r#"
{paths}
[service]
user = "root"
group = "root"

[engine]
command = [{command}]
host = "127.0.0.1"
{engine_extra}
[engine.env]
{env}
[models.m]
path = "m"
port = {port}
gpus = [0]
gpu_memory_utilization = 0.4
{model_extra}
{tail}
"#,
            paths = paths.to_toml(),
            command = command.join(", "),
            engine_extra = setup.engine_extra,
            model_extra = setup.model_extra,
            tail = setup.tail,
        );
        let config = d.join("citadel.toml");
        std::fs::write(&config, text).unwrap();
        let notify = Notify::bind(d);
        TestBox {
            dir,
            config,
            port,
            notify,
        }
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// The box's paths (the default layout under the temp dir).
    pub fn paths(&self) -> citadel_common::config::Paths {
        citadel_common::config::Paths::under(self.dir.path())
    }

    /// The model's directory (under the models link).
    pub fn model_dir(&self) -> PathBuf {
        self.paths().models_link.join("m")
    }

    /// `start-model --config CONFIG ARGS..` with the fake notify socket; stderr to a file.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(START_MODEL);
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("NOTIFY_SOCKET", &self.notify.path)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("CITADEL_FAKE_GPU")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Start `start-model m` in the background; its stderr goes to `stderr.log`.
    pub fn spawn(&self, extra_env: &[(&str, &str)]) -> Child {
        let log = std::fs::File::create(self.path("stderr.log")).unwrap();
        let mut c = self.command(&["m"]);
        c.stdout(Stdio::null()).stderr(Stdio::from(log));
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.spawn().expect("spawn start-model")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
    }

    /// Spawn start-model, wait (30 s at most) for its READY=1: (start-model, engine pid).
    pub fn start_ready(&self) -> (Child, u32) {
        let sm = self.spawn(&[]);
        let engine = engine_pid(sm.id());
        assert!(
            self.notify
                .wait_for("READY=1", Duration::from_secs(30))
                .is_some(),
            "no READY; stderr:\n{}",
            self.stderr()
        );
        (sm, engine)
    }
}

/// Wait for a child to exit, up to `timeout`; its exit code (None = killed by a signal).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<Option<i32>> {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st.code());
        }
        if t0.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(ppid, pgrp)` of a process, from `/proc/PID/stat`.
pub fn stat(pid: u32) -> Option<(u32, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let mut f = rest.split_whitespace();
    let _state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The children of a process.
pub fn children(pid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| stat(*p).is_some_and(|(pp, _)| pp == pid))
        .collect()
}

/// Processes in process group `pgrp`.
pub fn group_members(pgrp: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| stat(*p).is_some_and(|(_, g)| g == pgrp))
        .collect()
}

/// The engine start-model spawned (its one child), waiting up to 10 s for it.
pub fn engine_pid(start_model: u32) -> u32 {
    let t0 = Instant::now();
    loop {
        if let Some(p) = children(start_model).first() {
            return *p;
        }
        let state =
            std::fs::read_to_string(format!("/proc/{start_model}/stat")).unwrap_or_default();
        let exited = match state.rsplit_once(')') {
            Some((_, rest)) => rest.trim_start().starts_with('Z'),
            None => true,
        };
        assert!(!exited, "start-model exited without spawning an engine");
        assert!(t0.elapsed() < Duration::from_secs(10), "no engine spawned");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}
