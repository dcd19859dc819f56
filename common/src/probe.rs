//! Bounded HTTP probes of a model server: every request has a timeout that covers connect,
//! send and reading the body, and bodies are read up to a small bound.
//!
//! A probe's outcome is typed ([`Outcome`]: an [`Answer`] with its HTTP status, or a
//! [`ProbeError`]: refused, timed out, other); callers branch on it, never on its message.
//! [`probe_all`] is the one way to probe many servers at once (`status --probe`, `health`,
//! `top`, the monitor's sweep).

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Why a probe did not get an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum ProbeError {
    /// Nothing listens (vLLM does not listen while it loads weights).
    #[error("connection refused")]
    Refused,
    /// No full answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// Anything else (reset, malformed response ...).
    #[error("{0}")]
    Other(String),
}

impl ProbeError {
    /// The inverse of `Display` (for records that hold the message, e.g. test fixtures):
    /// `connection refused` and `timed out` are [`Refused`](ProbeError::Refused) and
    /// [`Timeout`](ProbeError::Timeout), anything else is [`Other`](ProbeError::Other).
    pub fn from_message(msg: &str) -> ProbeError {
        match msg {
            "connection refused" => ProbeError::Refused,
            "timed out" => ProbeError::Timeout,
            m => ProbeError::Other(m.to_string()),
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

impl Reply {
    /// Status and latency, the body aside.
    pub fn answer(&self) -> Answer {
        Answer {
            status: self.status,
            latency: self.latency,
        }
    }
}

/// An HTTP answer: status and latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub latency: Duration,
}

/// What one probe got: an HTTP answer (any status), or why there was none.
pub type Outcome = Result<Answer, ProbeError>;

/// The HEALTH word of one `/health` probe, the same in `status --probe`, `health` and its
/// gateway line: `healthy` (200), `http 503`, `refused`, `timeout`, `error`.
pub fn health_word(o: &Outcome) -> String {
    match o {
        Ok(a) if a.status == 200 => "healthy".into(),
        Ok(a) => format!("http {}", a.status),
        Err(ProbeError::Refused) => "refused".into(),
        Err(ProbeError::Timeout) => "timeout".into(),
        Err(ProbeError::Other(_)) => "error".into(),
    }
}

/// Bodies larger than this are cut (a `/health` answer is empty; `/metrics` is a few KiB).
pub const DEFAULT_MAX_BODY: u64 = 256 * 1024;

/// A probe client with one timeout for the whole exchange.
#[derive(Clone)]
pub struct Prober {
    agent: ureq::Agent,
    max_body: u64,
    timeout: Duration,
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
        Prober {
            agent,
            max_body,
            timeout,
        }
    }

    /// The one timeout of every exchange.
    pub fn timeout(&self) -> Duration {
        self.timeout
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

/// How long past the longest probe timeout [`probe_all`] waits for a probe thread's answer.
/// The socket timeouts inside a probe fire a little late (about 20 ms on a 1 s timeout), so
/// `probe_all` keeps its own deadline and counts a later answer as a timeout: with hung servers
/// it returns one probe timeout plus this slack after it began.
pub const MARGIN: Duration = Duration::from_millis(10);
/// How often a waiting [`probe_all_or_stop`] looks at the stop flag.
pub const STOP_POLL: Duration = Duration::from_millis(50);

/// One `GET` of [`probe_all`]: the URL, with the prober (timeout, body bound) to use.
#[derive(Clone)]
pub struct Get {
    pub prober: Prober,
    pub url: String,
}

/// `GET` every URL at once, each in a thread of its own with its prober's timeout; the
/// replies in input order. Waits at most the longest timeout plus [`MARGIN`]: a probe that
/// has not answered by then is [`ProbeError::Timeout`] (its thread is left to end on its own
/// within its timeout, so a hung server never delays the others or the caller).
pub fn probe_all(gets: Vec<Get>) -> Vec<Result<Reply, ProbeError>> {
    let n = gets.len();
    // Never raised: always `Some`.
    probe_all_or_stop(gets, &AtomicBool::new(false))
        .unwrap_or_else(|| vec![Err(ProbeError::Timeout); n])
}

/// [`probe_all`] that stops waiting at once when `stop` is raised (SIGTERM): `None` then.
pub fn probe_all_or_stop(
    gets: Vec<Get>,
    stop: &AtomicBool,
) -> Option<Vec<Result<Reply, ProbeError>>> {
    let timeout = gets.iter().map(|g| g.prober.timeout).max();
    let mut out: Vec<Option<Result<Reply, ProbeError>>> = vec![None; gets.len()];
    let (tx, rx) = mpsc::channel::<(usize, Result<Reply, ProbeError>)>();
    let mut pending = 0usize;
    for (i, g) in gets.into_iter().enumerate() {
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("probe-{i}"))
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    g.prober.get(&g.url, None)
                }))
                .unwrap_or_else(|_| Err(ProbeError::Other("probe thread panicked".into())));
                let _ = tx.send((i, r));
            });
        match spawned {
            Ok(_) => pending += 1,
            Err(e) => {
                out[i] = Some(Err(ProbeError::Other(format!(
                    "cannot start probe thread: {e}"
                ))))
            }
        }
    }
    drop(tx);
    let deadline = Instant::now() + timeout.unwrap_or_default() + MARGIN;
    while pending > 0 {
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left.min(STOP_POLL)) {
            Ok((i, r)) => {
                pending -= 1;
                out[i] = Some(r);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Some(
        out.into_iter()
            .map(|r| r.unwrap_or(Err(ProbeError::Timeout)))
            .collect(),
    )
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

/// Test support: canned HTTP servers on loopback.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    /// Listen on a free loopback port, answer the first connection with `reply` after
    /// `delay` (the request is read first), then close; returns the port.
    pub fn serve_once(reply: &'static [u8], delay: Duration) -> u16 {
        serve(reply, delay, Some(1))
    }

    /// As [`serve_once`], for every connection (each on its own thread), until the test
    /// process ends.
    pub fn serve_each(reply: &'static [u8], delay: Duration) -> u16 {
        serve(reply, delay, None)
    }

    /// One engine of each kind a probe tells apart, on loopback: its port and the word
    /// [`super::health_word`] gives it with a timeout under 3 s: healthy, a 503, two that hang
    /// for 3 s (probed in parallel, they cost one timeout, not two) and a port nothing listens on.
    pub fn one_of_each() -> [(u16, &'static str); 5] {
        let hang = Duration::from_secs(3);
        let closed = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        [
            (
                serve_once(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                    Duration::ZERO,
                ),
                "healthy",
            ),
            (
                serve_once(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                    Duration::ZERO,
                ),
                "http 503",
            ),
            (serve_once(b"HTTP/1.1 200 OK\r\n\r\n", hang), "timeout"),
            (serve_once(b"HTTP/1.1 200 OK\r\n\r\n", hang), "timeout"),
            (closed, "refused"),
        ]
    }

    fn serve(reply: &'static [u8], delay: Duration, connections: Option<usize>) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = l.local_addr().expect("local address").port();
        std::thread::spawn(move || {
            for s in l.incoming().take(connections.unwrap_or(usize::MAX)) {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf);
                    std::thread::sleep(delay);
                    let _ = s.write_all(reply);
                });
            }
        });
        port
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    use super::testing::serve_once;

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
    fn probe_all_runs_in_parallel_keeps_the_order_and_types_every_outcome() {
        let engines = super::testing::one_of_each();
        let p = Prober::new(Duration::from_millis(500));
        let gets = engines
            .iter()
            .map(|(port, _)| Get {
                prober: p.clone(),
                url: format!("{}/health", base_url("127.0.0.1", *port)),
            })
            .collect();
        let t0 = Instant::now();
        let r: Vec<Outcome> = probe_all(gets)
            .iter()
            .map(|r| r.as_ref().map(Reply::answer).map_err(Clone::clone))
            .collect();
        // Two hung servers cost one timeout (plus the margin), not two.
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
        let words: Vec<String> = r.iter().map(health_word).collect();
        assert_eq!(words, engines.map(|(_, w)| w));
        assert_eq!(
            health_word(&Err(ProbeError::Other("reset".into()))),
            "error"
        );
    }

    #[test]
    fn a_raised_stop_flag_abandons_the_wait() {
        let hung = serve_once(b"", Duration::from_secs(30));
        let gets = vec![Get {
            prober: Prober::new(Duration::from_secs(5)),
            url: format!("http://127.0.0.1:{hung}/health"),
        }];
        let t0 = Instant::now();
        assert!(probe_all_or_stop(gets, &AtomicBool::new(true)).is_none());
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_message_reads_back_as_the_error_it_displays() {
        for e in [
            ProbeError::Refused,
            ProbeError::Timeout,
            ProbeError::Other("reset by peer".into()),
        ] {
            assert_eq!(ProbeError::from_message(&e.to_string()), e);
        }
    }

    #[test]
    fn urls() {
        assert_eq!(base_url("127.0.0.1", 1), "http://127.0.0.1:1");
        assert_eq!(base_url("0.0.0.0", 1), "http://127.0.0.1:1");
        assert_eq!(base_url("::1", 1), "http://[::1]:1");
    }
}
