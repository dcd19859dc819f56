//! The serving loop: accept (at most `gateway.max_connections` open at once; the rest wait in
//! the listen backlog), HTTP/1.1 with keep-alive per connection, the monitor state followed in
//! the background, SIGHUP reloads, SIGTERM drains (stop accepting, let in-flight requests
//! finish for at most `gateway.drain_secs`, exit 0).

use crate::avail::Availability;
use crate::proxy::{self, State};
use citadel_common::config::Config;
use citadel_common::{notify, Exit, Failure};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;

/// A keep-alive connection with no new request for this long is closed.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(75);
/// How often the monitor's state file is checked for changes.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// Open client connections, counted in the metrics.
struct Open(Arc<State>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn serve(
    cfg: Config,
    config_path: PathBuf,
    listener: std::net::TcpListener,
) -> Result<Exit, Failure> {
    let avail = Arc::new(
        Availability::new(&cfg.monitor.state_file, cfg.monitor.interval_secs)
            .with_rollouts(&cfg.paths.runtime_dir),
    );
    let state = Arc::new(State::new(crate::snapshot(&cfg, None)?, Arc::clone(&avail)));
    tokio::spawn(Arc::clone(&avail).follow(FOLLOW_EVERY));
    let listener = TcpListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(cfg.gateway.max_connections as usize));
    let graceful = GracefulShutdown::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(KEEP_ALIVE_IDLE);
    let mut cfg = cfg;
    let summary = |c: &Config| {
        format!(
            "serving {} models on {}",
            c.enabled_models().count(),
            c.gateway.listen
        )
    };
    log::info!("{}", summary(&cfg));
    notify::ready(&summary(&cfg));
    loop {
        tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => {
                let Ok(permit) = permit else { break };
                let (stream, _peer) = tokio::select! {
                    r = listener.accept() => match r {
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
                    _ = hup.recv() => { cfg = reload(&config_path, cfg, &state); continue; }
                };
                let _ = stream.set_nodelay(true);
                state.metrics.connections.fetch_add(1, Ordering::Relaxed);
                let open = Open(Arc::clone(&state));
                let st = Arc::clone(&state);
                let svc = hyper::service::service_fn(move |req| proxy::handle(Arc::clone(&st), req));
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(open);
                    drop(permit);
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => cfg = reload(&config_path, cfg, &state),
        }
    }
    drop(listener);
    let drain = Duration::from_secs(cfg.gateway.drain_secs);
    let open = state.metrics.connections.load(Ordering::Relaxed);
    log::info!("stopping: no new connections, draining {open} open ones for at most {drain:?}");
    notify::stopping("draining");
    match tokio::time::timeout(drain, graceful.shutdown()).await {
        Ok(()) => log::info!("drained, exiting"),
        Err(_) => log::warn!(
            "drain deadline ({}s) passed with {} connections open; exiting",
            drain.as_secs(),
            state.metrics.connections.load(Ordering::Relaxed)
        ),
    }
    Ok(Exit::Ok)
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
