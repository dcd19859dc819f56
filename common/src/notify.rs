//! sd_notify(3) without libsystemd: one datagram to `$NOTIFY_SOCKET`.
//!
//! Failures are logged at debug level and never fatal: a binary run by hand (no
//! `NOTIFY_SOCKET`) behaves exactly the same.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Send one notification (e.g. `READY=1\nSTATUS=serving`). Returns whether it was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    match send(&path.to_string_lossy(), state) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("sd_notify to {} failed: {e}", path.to_string_lossy());
            false
        }
    }
}

fn send(path: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(abs) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// The service is ready (`READY=1`), with a status line.
pub fn ready(status: &str) -> bool {
    notify(&format!("READY=1\nSTATUS={status}"))
}

/// The one-line status shown by `systemctl status`.
pub fn status(status: &str) -> bool {
    notify(&format!("STATUS={status}"))
}

/// The service is stopping.
pub fn stopping(status: &str) -> bool {
    notify(&format!("STOPPING=1\nSTATUS={status}"))
}

/// Pet the watchdog.
pub fn watchdog() -> bool {
    notify("WATCHDOG=1")
}

/// Extend the start (or stop) timeout by `d` from now.
pub fn extend_timeout(d: Duration) -> bool {
    notify(&format!("EXTEND_TIMEOUT_USEC={}", d.as_micros()))
}

/// The watchdog interval systemd expects (`WatchdogSec=`), if one is set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_a_datagram_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        send(p.to_str().unwrap(), "READY=1\nSTATUS=x").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("citadel-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
