//! Shared helpers of the gateway's black-box tests: stand-in engines (run directly), a config
//! for them, the gateway binary with its stderr in a file, a small HTTP client.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use citadel_standin::testing::{free_port, wait_listening, Engine};

/// Status, headers (lower-case names), body.
pub type Answer = (u16, Vec<(String, String)>, String);

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_citadel-gateway");

pub fn standin() -> PathBuf {
    citadel_standin::testing::binary(Path::new(GATEWAY))
}

/// A stand-in engine on a free port, with its control endpoint on (`STANDIN_CONTROL=1`), then
/// `knobs`; `citadel-standin serve ... ARGS`.
pub fn start_engine(name: &str, knobs: &[(&str, &str)], args: &[&str]) -> Engine {
    let knobs: Vec<(&str, &str)> = [("STANDIN_CONTROL", "1")]
        .into_iter()
        .chain(knobs.iter().copied())
        .collect();
    Engine::start(&standin(), name, free_port(), &knobs, args)
}

/// A counter or gauge of a stand-in engine's own `/metrics`.
pub trait EngineMetric {
    /// Summed over the label sets matching `label`.
    fn metric(&self, name: &str, label: &str) -> f64;
}

impl EngineMetric for Engine {
    fn metric(&self, name: &str, label: &str) -> f64 {
        metric(self.port, name, label)
    }
}

/// A `[models.NAME]` table for an engine.
pub fn model_toml(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[models.{name}]\npath = \"/nonexistent/{name}\"\nport = {port}\ngpus = [0]\ngpu_memory_utilization = 0.1\n{extra}\n"
    )
}

/// A running gateway, killed when dropped.
pub struct Gateway {
    pub port: u16,
    pub child: Child,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    pub fn config_path(dir: &Path) -> PathBuf {
        dir.join("citadel.toml")
    }

    /// The config text for `models` with `[gateway] listen` on `port` and `gateway_extra`.
    pub fn config(dir: &Path, port: u16, gateway_extra: &str, rest: &str) -> String {
        format!(
            "[paths]\nruntime_dir = \"{}\"\n[gpu]\nrequired = false\n[monitor]\ninterval_secs = 2\nprobe_timeout_secs = 1\n[gateway]\nlisten = \"127.0.0.1:{port}\"\n{gateway_extra}\n{rest}",
            dir.join("run").display()
        )
    }

    /// Start the gateway on a free port; waits until it listens.
    pub fn start(gateway_extra: &str, rest: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        let port = free_port();
        let cfg = Gateway::config_path(dir.path());
        std::fs::write(&cfg, Gateway::config(dir.path(), port, gateway_extra, rest)).unwrap();
        let log = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let child = Command::new(GATEWAY)
            .arg("--config")
            .arg(&cfg)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start citadel-gateway");
        let g = Gateway { port, child, dir };
        wait_listening(port, Duration::from_secs(20));
        g
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap()
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("run/health.json")
    }

    pub fn post(&self, path: &str, body: &str) -> Answer {
        http(self.port, "POST", path, &[], body)
    }

    pub fn metric(&self, name: &str, label: &str) -> f64 {
        metric(self.port, name, label)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`); panics on a transport
/// error (a refused connection fails the test). Returns status, headers, body.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    try_http(port, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on port {port}: {e}"))
}

pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let hs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = hs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, hs, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

pub fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub fn chat(model: &str) -> String {
    format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hello gateway"}}],"max_tokens":2}}"#
    )
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Poll `f` until it is true; panics after `limit` (a liveness bound, not a timing claim).
pub fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < limit,
            "never happened within {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A counter or gauge of the `/metrics` on `port` (summed over the label sets matching).
fn metric(port: u16, name: &str, label: &str) -> f64 {
    let (_, _, body) = http(port, "GET", "/metrics", &[], "");
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
