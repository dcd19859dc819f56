//! The rows of a `/proc/net/tcp` (or `tcp6`) table: read by `citadel-service check` for the
//! ports in use, and by the system tests for a process's connections.

/// `st` of a listening socket.
pub const LISTEN: &str = "0A";
/// `st` of an established connection.
pub const ESTABLISHED: &str = "01";

/// One socket of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRow<'a> {
    pub local_port: u16,
    pub remote_port: u16,
    /// The kernel's state, in hex as the table writes it ([`LISTEN`], [`ESTABLISHED`], ...).
    pub state: &'a str,
    /// The socket's inode: `socket:[INODE]` is what a process's fd links to.
    pub inode: &'a str,
}

/// The rows of `text` (its header line and any line it cannot read left out).
pub fn tcp_rows(text: &str) -> impl Iterator<Item = TcpRow<'_>> {
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    text.lines().skip(1).filter_map(move |l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        Some(TcpRow {
            local_port: port(w.get(1)?)?,
            remote_port: port(w.get(2)?)?,
            state: w.get(3)?,
            inode: w.get(9)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_have_their_ports_state_and_inode() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:2CCB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41 1\n\
   1: 0100007F:D431 0100007F:4719 01 00000000:00000000 00:00000000 00000000   999        0 52 1\n\
   2: short line\n";
        let rows: Vec<TcpRow> = tcp_rows(t).collect();
        assert_eq!(
            rows,
            [
                TcpRow {
                    local_port: 11467,
                    remote_port: 0,
                    state: LISTEN,
                    inode: "41"
                },
                TcpRow {
                    local_port: 54321,
                    remote_port: 18201,
                    state: ESTABLISHED,
                    inode: "52"
                },
            ]
        );
    }
}
