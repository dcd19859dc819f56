//! Bounded HTTP probes of a model server: every request has a timeout that covers connect,
//! send and reading the body, and bodies are read up to a small bound.

use std::io::Read;
use std::time::{Duration, Instant};

/// Why a probe did not get an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeError {
    /// Nothing listens (vLLM does not listen while it loads weights).
    Refused,
    /// No full answer within the timeout.
    Timeout,
    /// Anything else (reset, malformed response ...).
    Other(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Refused => f.write_str("connection refused"),
            ProbeError::Timeout => f.write_str("timed out"),
            ProbeError::Other(s) => f.write_str(s),
        }
    }
}

/// The answer to one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// At most the bound, lossily decoded.
    pub body: String,
    pub latency: Duration,
}

/// Bodies larger than this are cut (a `/health` answer is empty; `/metrics` is a few KiB).
pub const DEFAULT_MAX_BODY: u64 = 256 * 1024;

/// A probe client with one timeout for the whole exchange.
#[derive(Clone)]
pub struct Prober {
    agent: ureq::Agent,
    max_body: u64,
}

impl Prober {
    pub fn new(timeout: Duration) -> Prober {
        Self::with_max_body(timeout, DEFAULT_MAX_BODY)
    }

    pub fn with_max_body(timeout: Duration, max_body: u64) -> Prober {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout(timeout)
            .max_idle_connections(0)
            .redirects(0)
            .build();
        Prober { agent, max_body }
    }

    /// `GET url`; any HTTP status is a [`Reply`].
    pub fn get(&self, url: &str, bearer: Option<&str>) -> Result<Reply, ProbeError> {
        let mut req = self.agent.get(url);
        if let Some(k) = bearer {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let t0 = Instant::now();
        self.finish(req.call(), t0)
    }

    /// `POST url` with a JSON body.
    pub fn post_json(
        &self,
        url: &str,
        body: &str,
        bearer: Option<&str>,
    ) -> Result<Reply, ProbeError> {
        let mut req = self.agent.post(url).set("Content-Type", "application/json");
        if let Some(k) = bearer {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        let t0 = Instant::now();
        self.finish(req.send_string(body), t0)
    }

    fn finish(
        &self,
        r: Result<ureq::Response, ureq::Error>,
        t0: Instant,
    ) -> Result<Reply, ProbeError> {
        let resp = match r {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(ureq::Error::Transport(t)) => return Err(classify(&t)),
        };
        let status = resp.status();
        let mut buf = Vec::new();
        match resp.into_reader().take(self.max_body).read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Err(ProbeError::Timeout),
            Err(e) => return Err(ProbeError::Other(format!("reading body: {e}"))),
        }
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&buf).into_owned(),
            latency: t0.elapsed(),
        })
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    ) || e.to_string().contains("timed out")
}

fn classify(t: &ureq::Transport) -> ProbeError {
    use std::error::Error;
    let mut src = t.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return ProbeError::Refused;
            }
            if is_timeout(io) {
                return ProbeError::Timeout;
            }
        }
        src = s.source();
    }
    let msg = t.to_string();
    if msg.contains("Connection refused") {
        ProbeError::Refused
    } else if msg.contains("timed out") {
        ProbeError::Timeout
    } else {
        ProbeError::Other(msg)
    }
}

/// The base URL of a model server: the bind host, unless it binds every interface.
pub fn base_url(host: &str, port: u16) -> String {
    let h = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" => "[::1]",
        h if h.contains(':') && !h.starts_with('[') => return format!("http://[{h}]:{port}"),
        h => h,
    };
    format!("http://{h}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn serve_once(reply: &'static [u8], delay: Duration) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = s.write_all(reply);
            }
        });
        port
    }

    #[test]
    fn refused_when_nothing_listens() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let p = Prober::new(Duration::from_secs(1));
        assert_eq!(
            p.get(&base_url("127.0.0.1", port), None),
            Err(ProbeError::Refused)
        );
    }

    #[test]
    fn status_and_body_are_returned() {
        let port = serve_once(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndead",
            Duration::ZERO,
        );
        let r = Prober::new(Duration::from_secs(2))
            .get(&format!("http://127.0.0.1:{port}/health"), None)
            .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "dead");
    }

    #[test]
    fn a_slow_server_times_out_within_the_bound() {
        let port = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Duration::from_secs(3),
        );
        let t0 = Instant::now();
        let r = Prober::new(Duration::from_millis(300))
            .get(&format!("http://127.0.0.1:{port}/health"), None);
        assert_eq!(r, Err(ProbeError::Timeout));
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn bodies_are_bounded() {
        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let big = BIG.get_or_init(|| {
            let mut v = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
            v.extend(std::iter::repeat(b'x').take(100_000));
            v
        });
        let port = serve_once(big, Duration::ZERO);
        let r = Prober::with_max_body(Duration::from_secs(2), 10)
            .get(&format!("http://127.0.0.1:{port}/"), None)
            .unwrap();
        assert_eq!(r.body.len(), 10);
    }

    #[test]
    fn urls() {
        assert_eq!(base_url("127.0.0.1", 1), "http://127.0.0.1:1");
        assert_eq!(base_url("0.0.0.0", 1), "http://127.0.0.1:1");
        assert_eq!(base_url("::1", 1), "http://[::1]:1");
    }
}
