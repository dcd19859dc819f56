//! The listening socket: handed over by systemd (`citadel-gateway.socket`, `LISTEN_FDS`), so
//! a restart or upgrade refuses no connection (they wait in the socket's backlog), or bound
//! here when run by hand. An inherited socket must listen where `gateway.listen` says.

use citadel_common::Failure;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Whether systemd passed sockets to this process (`LISTEN_PID` is ours, `LISTEN_FDS` >= 1).
fn activated() -> Result<bool, Failure> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let ours = pid.and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    match (ours, fds.as_deref().map(str::parse::<u32>)) {
        (true, Some(Ok(1))) => Ok(true),
        (true, Some(Ok(n))) => Err(Failure::config(format!(
            "systemd passed {n} sockets; citadel-gateway.socket must have exactly one ListenStream="
        ))),
        _ => Ok(false),
    }
}

/// The listener, and whether it came from systemd.
pub fn listener(want: SocketAddr) -> Result<(TcpListener, bool), Failure> {
    if activated()? {
        // SAFETY: systemd passed fd 3 to this process (LISTEN_PID/LISTEN_FDS checked above)
        // and nothing else in the process owns it.
        let l = unsafe { TcpListener::from_raw_fd(LISTEN_FDS_START) };
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
        let have = l.local_addr().map_err(|e| {
            Failure::config(format!(
                "the socket systemd passed is not a TCP listener: {e}"
            ))
        })?;
        if have != want {
            return Err(Failure::config(format!(
                "gateway.listen = \"{want}\" but citadel-gateway.socket listens on {have}: set ListenStream={want} in a drop-in (systemctl edit citadel-gateway.socket)"
            )));
        }
        l.set_nonblocking(true)?;
        return Ok((l, true));
    }
    let l = TcpListener::bind(want).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            Failure::temporary(format!("gateway.listen {want}: address in use"))
        }
        _ => Failure::unavailable(format!("gateway.listen {want}: {e}")),
    })?;
    l.set_nonblocking(true)?;
    Ok((l, false))
}
