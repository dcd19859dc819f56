//! Helpers for the tests of other crates that run the stand-in (start-model, health-monitor):
//! where the binary is, and a free port the config accepts. One copy, used by both.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

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
/// 2. `citadel-standin` next to the binary under test, when it is newer than every stand-in
///    and common source file.
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
        let sources = newest_mtime(&ws.join("tests/standin"))
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
