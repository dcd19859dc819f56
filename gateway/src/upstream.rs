//! The engines as one worker thread reaches them: HTTP/1.1 over TCP with hyper's own client
//! connection (`hyper::client::conn::http1`), kept alive between requests where the engine
//! allows it (vLLM's uvicorn closes an idle connection after 5 s: one is reused for at most
//! [`POOL_IDLE`]). Each worker thread has its own [`Upstream`], so a connection and the
//! requests on it stay on one thread: no lock is ever contended and no request wakes another
//! thread. A connection has no task of its own either: hyper's connection state machine is
//! polled by the request that uses it ([`Engine::drive`]), while it waits for the answer and
//! then from the response body's `poll_frame`, so the engine's answer is read, and the
//! client's written, in one task, without a wake-up of a driver task and a switch to it.
//!
//! A connection is leased for one exchange ([`Lease`]) and comes back to the pool only when the
//! response body has been read to its end ([`Lease::release`]); a body dropped before its end
//! (the client went away) drops the connection with it, so the engine sees the disconnect and
//! aborts the request. A request that an idle pooled connection could not even start (the
//! engine had closed it meanwhile) is sent again on a new connection: nothing of it was sent.

use crate::after::after_answer;
use crate::body::Body;
use crate::within::within;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Connecting to an engine on the same box.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle connection to an engine is not reused after this (uvicorn closes at 5 s).
pub const POOL_IDLE: Duration = Duration::from_secs(4);
/// Idle connections kept per engine and worker; more are closed.
pub const POOL_MAX_IDLE: usize = 64;
/// How often a worker closes its expired idle connections.
pub const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// Where an engine listens, as the gateway dials it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host as written in URLs and `Host:` (`127.0.0.1`, `[::1]`, `localhost`).
    pub host: String,
    /// The host when it is an address (dialled without a lookup).
    pub ip: Option<IpAddr>,
    pub port: u16,
    /// `HOST:PORT`, the requests' `Host:`.
    pub authority: HeaderValue,
}

impl Target {
    pub fn new(host: &str, port: u16) -> Target {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        Target {
            host: host.to_string(),
            ip: bare.parse().ok(),
            port,
            // The config refuses hosts with spaces or control characters.
            authority: HeaderValue::from_str(&format!("{host}:{port}"))
                .unwrap_or(HeaderValue::from_static("localhost")),
        }
    }

    /// The same host on another port (a rollout's surge instance).
    pub fn on(&self, port: u16) -> Target {
        Target::new(&self.host, port)
    }

    /// `http://HOST:PORT`, for messages.
    pub fn base(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    fn same(&self, other: &Target) -> bool {
        self.port == other.port && self.host == other.host
    }
}

/// Why an exchange with an engine failed.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    /// No connection: refused, unreachable or not within [`CONNECT_TIMEOUT`]. Nothing was sent.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The connection broke during the exchange (the request may have reached the engine).
    #[error("{0}")]
    Protocol(hyper::Error),
}

/// One connection to an engine: hyper's request side and its connection state machine, which
/// whoever holds the connection polls ([`Engine::drive`]); `conn` is `None` once it has ended
/// (the engine closed it, or it failed).
pub struct Engine {
    tx: SendRequest<Body>,
    /// Boxed: hyper's connection is large, and an engine moves from the pool to a request,
    /// its lease and its body.
    conn: Option<Box<http1::Connection<EngineIo, Body>>>,
}

impl Engine {
    /// Let hyper read and write what it can now (it registers `cx` for the rest); whether the
    /// connection is still open. Its end drops it: its `close(2)` follows the answer
    /// ([`after_answer`]).
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(c) = &mut self.conn {
            if let Poll::Ready(r) = Pin::new(&mut **c).poll(cx) {
                if let Err(e) = r {
                    log::debug!("engine connection: {e}");
                }
                self.conn = None;
            }
        }
        self.conn.is_some()
    }

    /// Ready for a request (`true`), or closed meanwhile (`false`).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if !self.drive(cx) {
            return Poll::Ready(false);
        }
        self.tx.poll_ready(cx).map(|r| r.is_ok())
    }
}

struct Idle {
    since: Instant,
    engine: Engine,
}

/// The idle connections to one engine.
struct Slot {
    target: Arc<Target>,
    idle: Vec<Idle>,
}

/// One worker thread's connections to the engines.
#[derive(Default)]
pub struct Upstream {
    /// Few engines per box: a short list, searched in order.
    slots: Mutex<Vec<Slot>>,
}

/// A connection leased for one exchange.
pub struct Lease {
    pool: Arc<Upstream>,
    target: Arc<Target>,
    engine: Engine,
    /// The engine keeps the connection open after this response.
    reusable: bool,
}

impl Lease {
    /// Drive the connection (the response body is read through it): [`Engine::drive`].
    pub fn drive(&mut self, cx: &mut Context<'_>) {
        self.engine.drive(cx);
    }

    /// The response body was read to its end: the connection may serve another request.
    pub fn release(self) {
        // A connection that has ended dropped hyper's receiving side: `tx` is closed then too.
        if self.reusable && !self.engine.tx.is_closed() {
            self.pool.put(&self.target, self.engine);
        }
    }
}

/// A response, and the connection to give back when its body has ended.
pub struct Answer {
    pub response: Response<Incoming>,
    pub lease: Lease,
}

/// Whether the engine keeps the connection after `r` (HTTP/1.1 without `Connection: close`).
fn keeps_alive(r: &Response<Incoming>) -> bool {
    r.version() == hyper::Version::HTTP_11
        && !r
            .headers()
            .get_all(hyper::header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// Whether the engine at `t` accepts a connection now (a loopback connect: a millisecond):
/// the same connect as a request's, with nothing written.
pub async fn reachable(t: &Target) -> bool {
    match t.ip {
        Some(ip) => match EngineIo::connect(SocketAddr::new(ip, t.port)) {
            Ok(mut io) => std::future::poll_fn(|cx| io.poll_connected(cx, &[]))
                .await
                .map_or(true, |r| r.is_ok()),
            Err(_) => false,
        },
        None => dial(t).await.is_ok(),
    }
}

/// A connection to an engine named by a host name (looked up); an address is dialled by
/// [`EngineIo::connect`]. No `TCP_NODELAY` either way: hyper writes each request, head and
/// body, in one `writev`, and the engine has acknowledged the previous one before it answered,
/// so Nagle's algorithm never holds a request back (nginx leaves it off upstream too).
async fn dial(t: &Target) -> std::io::Result<TcpStream> {
    let connect = std::pin::pin!(TcpStream::connect((t.host.as_str(), t.port)));
    within(CONNECT_TIMEOUT, connect)
        .await
        .unwrap_or_else(|| Err(connect_timed_out()))
}

/// An engine connection's IO for hyper: `TokioIo<TcpStream>`, except that hyper's
/// `shutdown(2)` at the end is left out (the connection is dropped right after it, and its
/// `close(2)` sends the same FIN: one system call less per engine connection), that the
/// close itself waits until the client's answer is written ([`after_answer`]): the
/// connection ends as soon as an engine that closes has answered, and that the request
/// is written while the connect is still "in progress" ([`Link`]).
pub struct EngineIo {
    io: Option<TokioIo<TcpStream>>,
    link: Link,
}

/// Whether the connection is known to be up. A non-blocking `connect(2)` to an engine says
/// `EINPROGRESS`; on loopback the handshake is over by the time `connect(2)` returns (the
/// engine's kernel answers the SYN before the call does), so the request is written at once:
/// no `epoll_wait` for the socket to turn writable and no `getsockopt(SO_ERROR)` first, two
/// system calls and a trip through the runtime's queue less on every request's path (nginx
/// waits for them). Only when that write would block (a far or busy engine) does it wait, for
/// at most [`CONNECT_TIMEOUT`]. A failure before the connection is known to be up is a
/// connect failure ([`ConnectFailed`]): nothing of the request reached the engine.
enum Link {
    /// `connect(2)` said `EINPROGRESS` and nothing was written yet: the first write finds out.
    InProgress,
    /// That write would have blocked: waiting for the socket to turn writable, until this.
    Waiting(Pin<Box<tokio::time::Sleep>>),
    /// Up: everything goes through tokio.
    Up,
}

/// An error of a connection that never came up (refused, unreachable, timed out), as it
/// travels through hyper inside an `io::Error`; [`connect_failure`] finds it again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ConnectFailed(std::io::Error);

fn connect_failed(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), ConnectFailed(e))
}

fn connect_timed_out() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no connection within {CONNECT_TIMEOUT:?}"),
    )
}

/// The connect failure behind a failed exchange, if that is what it was.
fn connect_failure(e: &hyper::Error) -> Option<std::io::Error> {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(f) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref()?.downcast_ref::<ConnectFailed>())
        {
            return Some(std::io::Error::new(f.0.kind(), f.0.to_string()));
        }
        cause = c.source();
    }
    None
}

impl EngineIo {
    /// A connection that is up.
    fn new(s: TcpStream) -> EngineIo {
        EngineIo {
            io: Some(TokioIo::new(s)),
            link: Link::Up,
        }
    }

    /// Start connecting to `addr`; the first write finds out whether it worked.
    fn connect(addr: SocketAddr) -> std::io::Result<EngineIo> {
        use nix::sys::socket::{
            connect, socket, AddressFamily, SockFlag, SockType, SockaddrStorage,
        };
        let family = match addr {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let fd = socket(family, SockType::Stream, flags, None)?;
        let link = match connect(fd.as_raw_fd(), &SockaddrStorage::from(addr)) {
            Ok(()) => Link::Up,
            Err(nix::errno::Errno::EINPROGRESS) => Link::InProgress,
            Err(e) => return Err(e.into()),
        };
        let stream = TcpStream::from_std(std::net::TcpStream::from(fd))?;
        Ok(EngineIo {
            io: Some(TokioIo::new(stream)),
            link,
        })
    }

    fn io(self: Pin<&mut Self>) -> Pin<&mut TokioIo<TcpStream>> {
        Pin::new(self.get_mut().io.as_mut().expect("taken only on drop"))
    }

    /// While connecting: write `bufs` straight to the socket if the connection is up;
    /// `Ready(None)` once it is known to be up (write through tokio from then on). With no
    /// `bufs`, a probe: `Ready(Some(Ok(0)))` or `Ready(None)` when up, an error when not.
    fn poll_connected(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<Option<std::io::Result<usize>>> {
        use nix::sys::socket::{sendmsg, MsgFlags};
        if let Link::Up = self.link {
            return Poll::Ready(None);
        }
        let stream = self.io.as_ref().expect("taken only on drop").inner();
        if let Link::InProgress = self.link {
            // tokio would wait for epoll's word that the socket is writable: ask the socket.
            match sendmsg::<()>(stream.as_raw_fd(), bufs, &[], MsgFlags::MSG_NOSIGNAL, None) {
                Ok(n) => {
                    self.link = Link::Up;
                    return Poll::Ready(Some(Ok(n)));
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    self.link = Link::Waiting(Box::pin(tokio::time::sleep(CONNECT_TIMEOUT)));
                }
                Err(e) => return Poll::Ready(Some(Err(connect_failed(e.into())))),
            }
        }
        if let Poll::Ready(r) = stream.poll_write_ready(cx) {
            let failed = match r.and_then(|()| stream.take_error()) {
                Ok(None) => None,
                Ok(Some(e)) | Err(e) => Some(e),
            };
            return match failed {
                Some(e) => Poll::Ready(Some(Err(connect_failed(e)))),
                None => {
                    self.link = Link::Up;
                    Poll::Ready(None)
                }
            };
        }
        let Link::Waiting(timeout) = &mut self.link else {
            unreachable!("waiting from the first write that would block");
        };
        ready!(timeout.as_mut().poll(cx));
        Poll::Ready(Some(Err(connect_failed(connect_timed_out()))))
    }
}

impl Drop for EngineIo {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            after_answer(move || drop(io));
        }
    }
}

impl hyper::rt::Read for EngineIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let connecting = !matches!(self.link, Link::Up);
        match ready!(self.io().poll_read(cx, buf)) {
            Err(e) if connecting => Poll::Ready(Err(connect_failed(e))),
            r => Poll::Ready(r),
        }
    }
}

impl hyper::rt::Write for EngineIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        if let Some(r) = ready!(me.poll_connected(cx, &[std::io::IoSlice::new(buf)])) {
            return Poll::Ready(r);
        }
        Pin::new(me).io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        if let Some(r) = ready!(me.poll_connected(cx, bufs)) {
            return Poll::Ready(r);
        }
        Pin::new(me).io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Upstream {
    /// The slot of `t`, made when missing.
    fn slot<'a>(slots: &'a mut Vec<Slot>, t: &Arc<Target>) -> &'a mut Slot {
        match slots.iter().position(|s| s.target.same(t)) {
            Some(i) => &mut slots[i],
            None => {
                slots.push(Slot {
                    target: Arc::clone(t),
                    idle: Vec::new(),
                });
                slots.last_mut().expect("just pushed")
            }
        }
    }

    /// An idle connection to `t` that is ready for a request, newest first.
    async fn take(&self, t: &Target) -> Option<Engine> {
        loop {
            let idle = {
                let mut g = self.slots.lock().expect("not poisoned");
                g.iter_mut().find(|s| s.target.same(t))?.idle.pop()?
            };
            if idle.since.elapsed() >= POOL_IDLE {
                // The older ones are older still.
                let mut g = self.slots.lock().expect("not poisoned");
                if let Some(s) = g.iter_mut().find(|s| s.target.same(t)) {
                    s.idle.clear();
                }
                return None;
            }
            let mut e = idle.engine;
            if std::future::poll_fn(|cx| e.poll_ready(cx)).await {
                return Some(e);
            }
        }
    }

    fn put(&self, t: &Arc<Target>, engine: Engine) {
        let mut g = self.slots.lock().expect("not poisoned");
        let now = Instant::now();
        let list = &mut Self::slot(&mut g, t).idle;
        // By age only: an idle connection is not polled, so nothing about it changes until
        // `take` drives it (and drops it if the engine has closed it meanwhile).
        list.retain(|i| now.duration_since(i.since) < POOL_IDLE);
        if list.len() < POOL_MAX_IDLE {
            list.push(Idle { since: now, engine });
        }
    }

    /// A new connection (no task: its requests drive it).
    async fn open(&self, t: &Target) -> Result<Engine, Failed> {
        let io = match t.ip {
            Some(ip) => EngineIo::connect(SocketAddr::new(ip, t.port)).map_err(Failed::Connect)?,
            None => EngineIo::new(dial(t).await.map_err(Failed::Connect)?),
        };
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(Failed::Protocol)?;
        Ok(Engine {
            tx,
            conn: Some(Box::new(conn)),
        })
    }

    /// Send `req` (origin-form URI, `Host:` set) to the engine at `t`. The answer's body is
    /// read through its lease ([`Lease::drive`]: `Body::stream`).
    pub async fn send(
        self: &Arc<Self>,
        t: &Arc<Target>,
        req: Request<Body>,
    ) -> Result<Answer, Failed> {
        let mut req = req;
        loop {
            let (mut engine, pooled) = match self.take(t).await {
                Some(e) => (e, true),
                None => (self.open(t).await?, false),
            };
            let mut answer = std::pin::pin!(engine.tx.try_send_request(req));
            let answer = std::future::poll_fn(|cx| {
                engine.drive(cx);
                answer.as_mut().poll(cx)
            })
            .await;
            match answer {
                Ok(response) => {
                    let reusable = keeps_alive(&response);
                    let lease = Lease {
                        pool: Arc::clone(self),
                        target: Arc::clone(t),
                        engine,
                        reusable,
                    };
                    return Ok(Answer { response, lease });
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the pooled connection had been closed. Again, on another one.
                    Some(r) if pooled => req = r,
                    _ => {
                        let e = e.into_error();
                        return Err(match connect_failure(&e) {
                            Some(c) => Failed::Connect(c),
                            None => Failed::Protocol(e),
                        });
                    }
                },
            }
        }
    }

    /// Close the idle connections that will not be reused any more (a background task of each
    /// worker, every [`PRUNE_EVERY`]).
    pub fn prune(&self) {
        let now = Instant::now();
        let mut g = self.slots.lock().expect("not poisoned");
        for s in g.iter_mut() {
            s.idle.retain(|i| now.duration_since(i.since) < POOL_IDLE);
        }
    }

    /// Prune every [`PRUNE_EVERY`], forever. This also keeps the worker runtime's next timer
    /// wake-up within a second, so the timers a request sets (2 s and more) never make tokio
    /// wake its own thread through its eventfd (two system calls per request otherwise).
    pub async fn prune_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        loop {
            tick.tick().await;
            self.prune();
        }
    }

    /// Idle connections to `t` now (tests).
    pub fn idle_to(&self, t: &Target) -> usize {
        let g = self.slots.lock().expect("not poisoned");
        g.iter()
            .find(|s| s.target.same(t))
            .map_or(0, |s| s.idle.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Bytes;

    #[test]
    fn targets() {
        let t = Target::new("[::1]", 8000);
        assert_eq!(t.ip, Some("::1".parse().unwrap()));
        assert_eq!(t.authority, "[::1]:8000");
        assert_eq!(Target::new("localhost", 1).ip, None);
        assert_eq!(
            Target::new("127.0.0.1", 1).on(2).base(),
            "http://127.0.0.1:2"
        );
    }

    /// The stand-in, in this process, keeping its connections alive as vLLM's uvicorn does.
    fn keepalive_engine() -> citadel_standin::testing::InProcess {
        let mut settings = citadel_standin::server::Settings::new(vec!["m".into()]);
        settings.keepalive = Some(Duration::from_secs(5));
        citadel_standin::testing::InProcess::start(settings)
    }

    async fn get(up: &Arc<Upstream>, t: &Arc<Target>) -> Answer {
        let body = br#"{"model":"m","prompt":"hi","max_tokens":1}"#;
        let mut req = Request::new(Body::full(Bytes::from_static(body)));
        *req.method_mut() = hyper::Method::POST;
        *req.uri_mut() = "/v1/completions".parse().unwrap();
        req.headers_mut()
            .insert(hyper::header::HOST, t.authority.clone());
        up.send(t, req).await.unwrap()
    }

    /// Read the answer's body as the gateway does (through the lease, released at its end).
    async fn read_to_end(a: Answer) {
        use hyper::body::Body as _;
        let mut b = Body::stream(a.response.into_body(), Duration::from_secs(5), a.lease);
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await {
            f.unwrap();
        }
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_reused_one_dropped_midway_is_not() {
        let engine = keepalive_engine();
        let up = Arc::new(Upstream::default());
        let t = Arc::new(Target::new("127.0.0.1", engine.port));
        for _ in 0..3 {
            read_to_end(get(&up, &t).await).await;
            assert_eq!(up.idle_to(&t), 1);
        }
        // A lease dropped before its body ended closes that connection.
        let a = get(&up, &t).await;
        assert_eq!(up.idle_to(&t), 0);
        drop(a);
        read_to_end(get(&up, &t).await).await;
        assert_eq!(
            engine.engine.accepted(),
            2,
            "four on the first connection, one after the drop"
        );
    }

    /// The request is written while the connect is in progress; an engine that never answers
    /// the SYN (its listen queue is full, so the kernel drops it) is still a connect failure,
    /// after [`CONNECT_TIMEOUT`], not a hang or an upstream error.
    #[tokio::test]
    async fn an_engine_that_never_answers_the_syn_is_a_connect_failure_in_time() {
        use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag};
        use nix::sys::socket::{SockType, SockaddrIn};
        let l = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        bind(l.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
        listen(&l, Backlog::new(0).unwrap()).unwrap();
        let l = std::net::TcpListener::from(l);
        let port = l.local_addr().unwrap().port();
        // Fill the queue (nobody accepts) until a connect gets no answer.
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut held = Vec::new();
        while let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            held.push(s);
            assert!(held.len() < 16, "the listen queue never filled");
        }
        let up = Arc::new(Upstream::default());
        let t = Arc::new(Target::new("127.0.0.1", port));
        let start = Instant::now();
        let r = up.send(&t, Request::new(Body::full("{}"))).await;
        let took = start.elapsed();
        match r {
            Err(Failed::Connect(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut),
            Err(Failed::Protocol(e)) => panic!("an upstream error, not a connect failure: {e:?}"),
            Ok(_) => panic!("answered by an engine that accepts nothing"),
        }
        assert!(took >= CONNECT_TIMEOUT, "gave up after {took:?}");
        assert!(took < CONNECT_TIMEOUT * 2, "gave up after {took:?}");
    }

    /// `GET /v1/models` lists a model whose engine accepts a connection and marks down one
    /// whose engine refuses it.
    #[tokio::test]
    async fn reachable_is_true_for_a_listener_and_false_for_a_closed_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = l.local_addr().unwrap().port();
        assert!(reachable(&Target::new("127.0.0.1", open)).await);
        assert!(reachable(&Target::new("localhost", open)).await);
        drop(l);
        assert!(!reachable(&Target::new("127.0.0.1", open)).await);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let up = Arc::new(Upstream::default());
        let t = Arc::new(Target::new("127.0.0.1", port));
        let req = Request::new(Body::empty());
        assert!(matches!(up.send(&t, req).await, Err(Failed::Connect(_))));
    }
}
