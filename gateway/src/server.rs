//! The threads, nginx's shape: the main thread accepts (at most `gateway.max_connections` open
//! at once; the rest wait in the listen backlog), follows the monitor's state, reloads on SIGHUP
//! and drains on SIGTERM; one worker thread per CPU ([`workers`]), each with its own
//! single-threaded tokio runtime, serves the connections it is handed (HTTP/1.1, keep-alive)
//! to their end, with its own connections to the engines ([`Upstream`]). A new connection goes
//! to the worker with the fewest open; a request never crosses threads, so no request pays for
//! waking another thread. SIGTERM: stop accepting, let in-flight requests finish for at most
//! `gateway.drain_secs`, exit 0.

use crate::avail::Availability;
use crate::proxy::{self, State};
use crate::upstream::Upstream;
use citadel_common::config::Config;
use citadel_common::{notify, Exit, Failure};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A keep-alive connection with no new request for this long is closed.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(75);
/// How often the monitor's state file is checked for changes.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

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
        let graceful = GracefulShutdown::new();
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
                    };
                    let (st, up) = (Arc::clone(&state), Arc::clone(&up));
                    let svc = hyper::service::service_fn(move |req| {
                        proxy::handle(Arc::clone(&st), Arc::clone(&up), req)
                    });
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                    tokio::spawn(async move {
                        let _ = conn.await;
                        drop(guard);
                    });
                }
                Some(Msg::Drain(at)) => break at,
                // The main thread is gone: nothing to wait for.
                None => break Instant::now(),
            }
        };
        tokio::time::timeout_at(deadline, graceful.shutdown())
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
    let listener = TcpListener::from_std(listener)?;
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
                    r = listener.accept() => match r.and_then(|(s, _)| {
                        s.set_nodelay(true)?;
                        s.into_std()
                    }) {
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

/// SIGHUP: a valid new config replaces routes, keys and limits at once; an invalid one is
/// reported and the running one kept. The rollout records are re-read first either way.
fn reload(path: &Path, old: Config, state: &State) -> Config {
    // A rollout's switch is a reload: when `systemctl reload` returns, the new route is in.
    state.avail.refresh_rollouts();
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
