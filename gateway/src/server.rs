//! The threads, nginx's shape: the main thread accepts (at most `gateway.max_connections` open
//! at once; the rest wait in the listen backlog), follows the monitor's state, reloads on SIGHUP
//! and drains on SIGTERM; one worker thread per CPU ([`workers`]), each with its own
//! single-threaded tokio runtime, serves the connections it is handed (HTTP/1.1, keep-alive)
//! to their end, with its own connections to the engines ([`Upstream`]). A new connection goes
//! to the worker with the fewest open; a request never crosses threads, so no request pays for
//! waking another thread. SIGTERM: stop accepting, let in-flight requests finish for at most
//! `gateway.drain_secs`, exit 0. A connection that has not sent its first request when the
//! drain begins gets [`FIRST_REQUEST_GRACE`] to send it, and it is answered: its client has
//! just connected and is sending, and closing it then would fail that request with an empty
//! reply (hyper's own graceful shutdown closes every connection it has read nothing from).

use crate::after;
use crate::avail::Availability;
use crate::proxy::{self, State};
use crate::upstream::Upstream;
use citadel_common::config::Config;
use citadel_common::{notify, Exit, Failure};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::runtime::Runtime;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A keep-alive connection with no new request for this long is closed.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(75);
/// How often the monitor's state file is checked for changes.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// While draining, how long a connection that has sent no request yet may take to send its
/// first one (within the drain deadline). Connections that have served a request and wait
/// for the next are closed at once, as every HTTP server does.
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

/// Worker threads: one per CPU this process may run on (its affinity and cgroup quota).
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// What the main thread tells a worker.
enum Msg {
    /// Serve this connection; the permit is its place under `gateway.max_connections`.
    Serve(std::net::TcpStream, OwnedSemaphorePermit),
    /// Stop: finish what is in flight until this deadline.
    Drain(Instant),
}

/// The main thread's end of one worker.
struct Worker {
    tx: UnboundedSender<Msg>,
    /// Connections the worker serves now.
    open: Arc<AtomicUsize>,
    /// Ends with whether everything in flight finished before the deadline.
    thread: std::thread::JoinHandle<bool>,
}

/// One open client connection: counted in the metrics and in its worker's load.
struct Open {
    state: Arc<State>,
    worker: Arc<AtomicUsize>,
    _permit: OwnedSemaphorePermit,
    /// The worker's drain waits until every connection has dropped its sender.
    _open: mpsc::Sender<()>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.state
            .metrics
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        self.worker.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a connection has begun its first request (hyper has read its head).
#[derive(Default)]
struct First {
    seen: AtomicBool,
    notify: Notify,
}

impl First {
    /// Called for every request: one relaxed load once the first has been seen.
    fn saw(&self) {
        if !self.seen.load(Ordering::Relaxed) {
            self.seen.store(true, Ordering::Relaxed);
            // Stores a permit when nobody waits yet: a drain that looks later sees it.
            self.notify.notify_one();
        }
    }
}

/// Serve one connection to its end, or, once the drain begins (its deadline in `drain`),
/// finish the request in progress, or the first one if none came yet (for at most
/// [`FIRST_REQUEST_GRACE`]), and close.
async fn serve_one<I, S>(
    mut conn: std::pin::Pin<&mut http1::Connection<I, S>>,
    first: Arc<First>,
    mut drain: watch::Receiver<Option<Instant>>,
) where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<BoxError>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    let deadline = tokio::select! {
        _ = conn.as_mut() => return,
        d = drain.wait_for(Option::is_some) => match d.map(|d| *d) {
            Ok(Some(d)) => d,
            // The worker is gone (its runtime with it): nothing left to serve for.
            _ => return,
        },
    };
    if !first.seen.load(Ordering::Relaxed) {
        let until = deadline.min(Instant::now() + FIRST_REQUEST_GRACE);
        tokio::select! {
            _ = conn.as_mut() => return,
            () = first.notify.notified() => {}
            () = tokio::time::sleep_until(until) => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// One worker thread: serve what it is handed, drain when told.
fn work(
    rt: Runtime,
    state: Arc<State>,
    mut rx: UnboundedReceiver<Msg>,
    open: Arc<AtomicUsize>,
) -> bool {
    rt.block_on(async move {
        let up = Arc::new(Upstream::default());
        tokio::spawn(Arc::clone(&up).prune_forever());
        let (drain_tx, drain_rx) = watch::channel(None);
        let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
        let mut builder = http1::Builder::new();
        builder
            .keep_alive(true)
            .timer(TokioTimer::new())
            .header_read_timeout(KEEP_ALIVE_IDLE);
        let deadline = loop {
            match rx.recv().await {
                Some(Msg::Serve(stream, permit)) => {
                    let stream = match tokio::net::TcpStream::from_std(stream) {
                        Ok(s) => s,
                        Err(e) => {
                            log::warn!("connection dropped: {e}");
                            continue;
                        }
                    };
                    let guard = Open {
                        state: Arc::clone(&state),
                        worker: Arc::clone(&open),
                        _permit: permit,
                        _open: open_tx.clone(),
                    };
                    let first = Arc::new(First::default());
                    let (st, up, fi) = (Arc::clone(&state), Arc::clone(&up), Arc::clone(&first));
                    let svc = hyper::service::service_fn(move |req| {
                        fi.saw();
                        proxy::handle(Arc::clone(&st), Arc::clone(&up), req)
                    });
                    let drain = drain_rx.clone();
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        // Made here, in the task's own state: moved in, it would be held twice
                        // (the captured value and the pinned one).
                        let conn =
                            std::pin::pin!(builder.serve_connection(TokioIo::new(stream), svc));
                        let mut one = std::pin::pin!(serve_one(conn, first, drain));
                        // The access log and engine closes its answers queue run at the end
                        // of each of its polls, after hyper's writes.
                        std::future::poll_fn(|cx| after::answering(|| one.as_mut().poll(cx))).await;
                        drop(guard);
                    });
                }
                Some(Msg::Drain(at)) => break at,
                // The main thread is gone: nothing to wait for.
                None => break Instant::now(),
            }
        };
        let _ = drain_tx.send(Some(deadline));
        drop((open_tx, drain_rx));
        // `None` once every connection has dropped its `Open`.
        tokio::time::timeout_at(deadline, open_rx.recv())
            .await
            .is_ok()
    })
}

pub fn serve(
    cfg: Config,
    config_path: PathBuf,
    listener: std::net::TcpListener,
    workers: usize,
) -> Result<Exit, Failure> {
    let avail = Arc::new(
        Availability::new(&cfg.monitor.state_file, cfg.monitor.interval_secs)
            .with_rollouts(&cfg.paths.runtime_dir),
    );
    let state = Arc::new(State::new(crate::snapshot(&cfg, None)?, Arc::clone(&avail)));
    let main = runtime()?;
    let mut pool = Vec::new();
    for i in 0..workers.max(1) {
        let rt = runtime()?;
        let (tx, rx) = unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let (st, op) = (Arc::clone(&state), Arc::clone(&open));
        let thread = std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || work(rt, st, rx, op))?;
        pool.push(Worker { tx, open, thread });
    }
    let cfg = main.block_on(accept(cfg, &config_path, listener, &state, &pool))?;
    let drain = Duration::from_secs(cfg.gateway.drain_secs);
    let open = state.metrics.connections.load(Ordering::Relaxed);
    log::info!("stopping: no new connections, draining {open} open ones for at most {drain:?}");
    notify::stopping("draining");
    let deadline = Instant::now() + drain;
    for w in &pool {
        let _ = w.tx.send(Msg::Drain(deadline));
    }
    let mut drained = true;
    for w in pool {
        drained &= w.thread.join().unwrap_or(false);
    }
    if drained {
        log::info!("drained, exiting");
    } else {
        log::warn!(
            "drain deadline ({}s) passed with {} connections open; exiting",
            drain.as_secs(),
            state.metrics.connections.load(Ordering::Relaxed)
        );
    }
    Ok(Exit::Ok)
}

/// The worker with the fewest open connections.
fn least_loaded(pool: &[Worker]) -> &Worker {
    pool.iter()
        .min_by_key(|w| w.open.load(Ordering::Relaxed))
        .expect("at least one worker")
}

/// The main thread's loop until SIGTERM or SIGINT; the config in force then.
async fn accept(
    cfg: Config,
    config_path: &Path,
    listener: std::net::TcpListener,
    state: &Arc<State>,
    pool: &[Worker],
) -> Result<Config, Failure> {
    tokio::spawn(Arc::clone(&state.avail).follow(FOLLOW_EVERY));
    // SAFETY: the AsyncFd owns the listener; a std TcpListener's fd is valid, open and the
    // same for its whole life.
    let listener = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    let slots = Arc::new(Semaphore::new(cfg.gateway.max_connections as usize));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut cfg = cfg;
    let summary = |c: &Config| {
        format!(
            "serving {} models on {} ({} worker threads)",
            c.enabled_models().count(),
            c.gateway.listen,
            pool.len()
        )
    };
    log::info!("{}", summary(&cfg));
    notify::ready(&summary(&cfg));
    loop {
        tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => {
                let Ok(permit) = permit else { break };
                let stream = tokio::select! {
                    r = accept_one(&listener) => match r {
                        Ok(s) => s,
                        Err(e) => {
                            // EMFILE and friends: back off, never die.
                            log::warn!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => { cfg = reload(config_path, cfg, state); continue; }
                };
                state.metrics.connections.fetch_add(1, Ordering::Relaxed);
                let w = least_loaded(pool);
                w.open.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = w.tx.send(Msg::Serve(stream, permit)) {
                    // Only a worker that panicked drops its end; its connection goes with it.
                    w.open.fetch_sub(1, Ordering::Relaxed);
                    state.metrics.connections.fetch_sub(1, Ordering::Relaxed);
                    drop(e);
                    return Err(Failure::new(Exit::Failure, "a worker thread has stopped"));
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => cfg = reload(config_path, cfg, state),
        }
    }
    drop(listener);
    Ok(cfg)
}

/// The next connection, non-blocking, with `TCP_NODELAY`: `accept4(2)` and `setsockopt(2)`
/// only. tokio's own `TcpListener::accept` would register it with the main thread's epoll and
/// `into_std` take it out again (two `epoll_ctl` per connection) before the worker registers it
/// with its own.
async fn accept_one(l: &AsyncFd<std::net::TcpListener>) -> std::io::Result<std::net::TcpStream> {
    use nix::sys::socket::{accept4, SockFlag};
    loop {
        let mut ready = l.readable().await?;
        let r = ready.try_io(|l| {
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            accept4(l.get_ref().as_raw_fd(), flags).map_err(std::io::Error::from)
        });
        if let Ok(r) = r {
            // SAFETY: accept4 just returned this fd; nothing else owns it.
            let s = unsafe { std::net::TcpStream::from_raw_fd(r?) };
            s.set_nodelay(true)?;
            return Ok(s);
        }
        // EAGAIN: the readiness was stale (try_io cleared it); wait for the next connection.
    }
}

/// SIGHUP: a valid new config replaces routes, keys and limits at once; an invalid one is
/// reported and the running one kept. The monitor's state file and the rollout records are
/// re-read first either way.
fn reload(path: &Path, old: Config, state: &State) -> Config {
    // A rollout's switch is a reload: once the SIGHUP is handled the new route is in, with the
    // monitor's newest word on the instance it goes back to.
    state.avail.reread();
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for l in e.lines() {
                log::error!(
                    "reload refused, keeping the running config: {}",
                    l.escape_debug()
                );
            }
            return old;
        }
    };
    match crate::snapshot(&new, Some(&state.snapshot().routes)) {
        Ok(s) => {
            if new.gateway.listen != old.gateway.listen {
                log::warn!(
                    "gateway.listen changed to {}: takes effect on restart (still on {})",
                    new.gateway.listen,
                    old.gateway.listen
                );
            }
            state.replace(s);
            log::info!("reloaded {}", path.display());
            notify::status(&format!("serving {} models", new.enabled_models().count()));
            new
        }
        Err(f) => {
            log::error!("reload refused, keeping the running config: {f}");
            old
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use citadel_common::health::{testing, ModelHealth, ModelState};
    use citadel_common::rollout::{testing::record, Phase, Record};

    /// A rollout removes its record once the monitor says the main instance serves, then sends
    /// SIGHUP: from then on the gateway must route to the main instance with the monitor's
    /// newest word on it, not the "restarting" it held before (the follow task re-reads only
    /// every half second).
    #[test]
    fn a_reload_rereads_the_monitor_and_the_rollout_records() {
        let d = tempfile::tempdir().unwrap();
        let runtime = d.path().join("run");
        let state_file = d.path().join("health.json");
        let config = d.path().join("citadel.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[paths]
runtime_dir = "{}"
[gpu]
required = false
[monitor]
state_file = "{}"
[models.m]
path = "m"
port = 11400
gpus = [0]
gpu_memory_utilization = 0.4
"#,
                runtime.display(),
                state_file.display()
            ),
        )
        .unwrap();
        let cfg = Config::load(&config).unwrap();
        testing::state(vec![ModelHealth {
            reason: Some("replacing".into()),
            ..testing::model("m", ModelState::Restarting)
        }])
        .write(&state_file)
        .unwrap();
        let avail = Arc::new(
            Availability::new(&state_file, cfg.monitor.interval_secs).with_rollouts(&runtime),
        );
        let state = State::new(crate::snapshot(&cfg, None).unwrap(), Arc::clone(&avail));
        let mut r = record("m", Phase::Switched, Some(11450));
        r.write(&runtime).unwrap();
        let cfg = reload(&config, cfg, &state);
        assert_eq!(
            avail.route("m"),
            Ok(Some(11450)),
            "switched: the surge serves"
        );

        r.phase = Phase::Restoring;
        r.write(&runtime).unwrap();
        testing::state(vec![testing::model("m", ModelState::Healthy)])
            .write(&state_file)
            .unwrap();
        Record::remove(&runtime, "m").unwrap();
        reload(&config, cfg, &state);
        assert_eq!(avail.route("m"), Ok(None), "the main instance serves");
        assert!(
            avail.check("m").is_ok(),
            "the monitor's newest word: healthy"
        );
    }
}
