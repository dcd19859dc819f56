//! Helpers for the tests of other crates that run the stand-in (start-model, health-monitor,
//! the gateway): where the binary is, a free port the config accepts, and a stand-in engine run
//! directly ([`Engine`]). One copy, used by all.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let t = if p.is_dir() {
                newest_mtime(&p)
            } else {
                e.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH)
            };
            newest = newest.max(t);
        }
    }
    newest
}

/// The stand-in binary, for a test whose own binary under test is `bin_under_test`
/// (`env!("CARGO_BIN_EXE_...")`). Tests never build it: `tests/run.sh` (and `cargo test
/// --workspace`) build it before any test runs. Found, in order:
/// 1. `$CITADEL_STANDIN`, an explicit path (what `tests/run.sh` exports);
/// 2. `citadel-standin` next to the binary under test, when it is newer than every source
///    file of the stand-in (`tests/standin/src`) and of common.
///
/// Otherwise the test panics, saying how to build it (`cargo build -p citadel-standin`).
pub fn binary(bin_under_test: &Path) -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("CITADEL_STANDIN") {
            return PathBuf::from(p);
        }
        let ws = workspace();
        let sibling = bin_under_test.with_file_name("citadel-standin");
        // The binary's sources: the stand-in's own tests (tests/standin/tests) are not.
        let sources = newest_mtime(&ws.join("tests/standin/src"))
            .max(newest_mtime(&ws.join("common/src")))
            .max(newest_mtime(&ws.join("common/data")));
        match sibling.metadata().and_then(|m| m.modified()) {
            Ok(t) if t >= sources => sibling,
            Ok(_) => panic!(
                "{} is older than its sources: cargo build -p citadel-standin (or bash tests/run.sh)",
                sibling.display()
            ),
            Err(_) => panic!(
                "no stand-in at {}: cargo build -p citadel-standin (or bash tests/run.sh), or set CITADEL_STANDIN",
                sibling.display()
            ),
        }
    })
    .clone()
}

/// A loopback port that is free right now, between 20000 and 32000: below the kernel's
/// ephemeral range (the config refuses ports there). Each test process starts at an offset
/// from its PID, so parallel test binaries rarely race for the same port.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20000 + (std::process::id() % 400) as u16 * 30,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        let p = 20000 + (p.wrapping_sub(20000)) % 12000;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// One response with a length from a kept-alive connection: its head (status line and
/// headers, names and values lower-cased, without the blank line) and its body. Panics when
/// the connection ends first or the answer has no `content-length`.
pub fn read_response(r: &mut std::io::BufReader<TcpStream>) -> (String, Vec<u8>) {
    use std::io::{BufRead, Read};
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("a response line");
        assert!(n > 0, "the connection ended in a response head: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .unwrap_or_else(|| panic!("no content-length: {head}"))
        .trim()
        .parse()
        .expect("a content-length");
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("the whole body");
    (head, body)
}

/// Wait until something listens on loopback `port`; panics after `limit`.
pub fn wait_listening(port: u16, limit: Duration) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < limit,
            "nothing listened on {port} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stand-in served by this process, on its own threads: for a unit test, which has no
/// binary path to run the stand-in from. It serves until the test process ends.
pub struct InProcess {
    pub port: u16,
    pub engine: std::sync::Arc<crate::server::Engine>,
}

impl InProcess {
    /// Serve `settings` on a free loopback port.
    pub fn start(settings: crate::server::Settings) -> InProcess {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        let engine = std::sync::Arc::new(crate::server::Engine::new(settings));
        let serving = engine.clone();
        std::thread::spawn(move || serving.accept_loop(listener));
        InProcess { port, engine }
    }
}

/// One stand-in engine, run directly (no systemd), killed when dropped.
pub struct Engine {
    pub name: String,
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Engine {
    /// `STANDIN serve DIR --host 127.0.0.1 --port PORT --served-model-name NAME ARGS` with the
    /// knobs in its environment, output discarded; waits until it listens unless a knob tells it
    /// to load slowly (`STANDIN_LOAD_SECS`).
    pub fn start(
        standin: &Path,
        name: &str,
        port: u16,
        knobs: &[(&str, &str)],
        args: &[&str],
    ) -> Engine {
        let dir = tempfile::tempdir().expect("a temp dir for the stand-in's model");
        let mut cmd = Command::new(standin);
        cmd.arg("serve")
            .arg(dir.path())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--served-model-name", name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in knobs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the stand-in");
        let e = Engine {
            name: name.into(),
            port,
            child,
            _dir: dir,
        };
        if !knobs.iter().any(|(k, _)| *k == "STANDIN_LOAD_SECS") {
            e.wait_listening(Duration::from_secs(20));
        }
        e
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Wait until the port accepts connections.
    pub fn wait_listening(&self, limit: Duration) {
        wait_listening(self.port, limit)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
