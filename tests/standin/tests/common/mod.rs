//! Shared helpers of the black-box tests: run the built stand-in on a free port and talk to it.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_citadel-standin");

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A running stand-in; killed (SIGKILL) when dropped.
pub struct Standin {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Standin {
    /// `citadel-standin serve MODEL --host 127.0.0.1 --port PORT EXTRA...` with `env` added
    /// (the caller's STANDIN_* and VLLM_API_KEY are removed first).
    pub fn start(model: &str, extra: &[&str], env: &[(&str, &str)]) -> Standin {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::fs::File::create(dir.path().join("stdout")).expect("stdout file");
        let err = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        for (k, _) in std::env::vars() {
            if k.starts_with("STANDIN_") || k == "VLLM_API_KEY" {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().expect("spawn citadel-standin");
        Standin { child, port, dir }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Wait until `/health` answers 200; panics (with the logs) after `limit`.
    pub fn wait_ready(&mut self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "stand-in exited early ({st}):\n{}\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if let Ok((200, _)) = get(&self.url("/health"), None, Duration::from_secs(2)) {
                return t0.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "not ready within {limit:?}:\n{}\n{}",
            self.stdout(),
            self.stderr()
        );
    }

    /// Wait until the port accepts connections (for `/health` modes other than ok).
    pub fn wait_exit_or_listen(&mut self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "stand-in exited early ({st}):\n{}\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("never listened:\n{}\n{}", self.stdout(), self.stderr());
    }

    /// Wait for the process to exit; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "still running after {limit:?}:\n{}\n{}",
            self.stdout(),
            self.stderr()
        );
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// The value of the metric line `NAME{...}` (labels as vLLM writes them for this model).
    pub fn metric(&self, name: &str) -> f64 {
        let (st, text) = get(&self.url("/metrics"), None, Duration::from_secs(5)).expect("metrics");
        assert_eq!(st, 200);
        metric_value(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the first sample of `name` (a full sample name, e.g.
/// `vllm:request_success_total{model_name="m",engine="0",finished_reason="length"}` or a bare
/// metric name).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        let matches = k == name || (!name.contains('{') && k.split('{').next() == Some(name));
        matches.then(|| v.parse().ok()).flatten()
    })
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(timeout)
        .timeout(timeout)
        .max_idle_connections(0)
        .build()
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> Result<(u16, String), String> {
    match r {
        Ok(resp) => {
            let st = resp.status();
            Ok((st, resp.into_string().map_err(|e| e.to_string())?))
        }
        Err(ureq::Error::Status(st, resp)) => Ok((st, resp.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// GET; Ok((status, body)) for any HTTP answer, Err for transport problems.
pub fn get(url: &str, key: Option<&str>, timeout: Duration) -> Result<(u16, String), String> {
    let mut req = agent(timeout).get(url);
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    answer(req.call())
}

/// POST a JSON body.
pub fn post(
    url: &str,
    body: &str,
    key: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut req = agent(timeout)
        .post(url)
        .set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    answer(req.send_string(body))
}

/// Whether a TCP connect to the port is refused.
pub fn refused(port: u16) -> bool {
    matches!(
        TcpStream::connect(("127.0.0.1", port)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The shipped config, for the seed's models.
pub fn shipped_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../packaging/citadel.toml")
}
