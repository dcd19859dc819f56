//! # citadel-standin: a stand-in for `vllm serve` 0.33 (no GPU, no Python)
//!
//! Tests and the demo run it where the real engine would run:
//!
//! ```text
//! citadel-standin serve MODEL_PATH [vllm serve flags...]
//! ```
//!
//! ## Command line
//! The flags are checked against the project's copy of vLLM 0.33's flag list
//! ([`citadel_common::vllm::flags`]) the way argparse does ([`cli`]): `--opt value`,
//! `--opt=value`, `nargs='+'` options, underscore spellings, dotted sub-keys, unique prefixes,
//! `-O<n>`. An unknown flag prints `vllm serve: error: unrecognized arguments: --swap-space` (after
//! a usage line) on stderr and exits **2**; so do a missing model path, a missing or bad value.
//! Flags it honours: `--host` (default `0.0.0.0`), `--port` (default 8000; 0 = any free port),
//! `--served-model-name` (default: the model path; the first name labels the metrics),
//! `--api-key` (else env `VLLM_API_KEY`), `--max-model-len` (else `max_position_embeddings`
//! from `MODEL_PATH/config.json`, else 4096), `--disable-log-stats` (no `/metrics`, as in vLLM),
//! `--enable-uvicorn-access-log` (one stdout line per request), `--shutdown-timeout` (drain on
//! SIGTERM, below). Every other accepted flag is ignored. `citadel-standin --version` prints `0.33.0`.
//!
//! ## Life cycle (like vLLM)
//! 1. The port is **bound but not listening** at once (`SO_REUSEADDR`), so a port already served
//!    by someone fails at once (`OSError: [Errno 98] Address already in use`, exit 1) and a
//!    connection during loading is **refused**.
//! 2. The engine-core child is spawned (only with `STANDIN_ENGINE_CORE` / `STANDIN_LEAVE_CHILD`).
//! 3. "Loading" for `STANDIN_LOAD_SECS`; nothing answers.
//! 4. `listen()`; stdout gets `Starting vLLM server on http://HOST:PORT` and then
//!    `INFO:     Application startup complete.`. From here on "serving" (the `*_AFTER_SECS`
//!    knobs count from this moment).
//! 5. SIGTERM / SIGINT (at any time): stdout `[shutdown] API server: shutdown triggered`, stop,
//!    SIGTERM the engine-core child (SIGKILL after 5 s) unless `STANDIN_LEAVE_CHILD=1`,
//!    exit **0**. In-flight requests are aborted (vLLM's default `--shutdown-timeout 0`).
//!    With `--shutdown-timeout N` > 0 while serving, first a drain: new completions get 503,
//!    the running ones finish (each stream ends with its `finish_reason`), for up to N s; then
//!    the same exit.
//!
//! Logs go to stdout (vLLM's logger writes to stdout); argparse errors and tracebacks to stderr.
//!
//! ## Endpoints
//! - `GET /health`, `GET|POST /ping`: 200 with an empty body (see `STANDIN_HEALTH`).
//! - `GET /version`: `{"version":"0.33.0"}`.
//! - `GET /v1/models`: OpenAI list, one entry per served name: `id`, `root` (model path),
//!   `max_model_len`, `owned_by: "vllm"`.
//! - `POST /v1/completions`, `POST /v1/chat/completions`: echo the prompt (chat: the last user
//!   message) one word = one token at a time. `max_tokens` (chat also `max_completion_tokens`)
//!   gives exactly that many tokens (the echo repeats) with `finish_reason: "length"`; without
//!   it at most 16 tokens with `"stop"`. `stream: true` answers server-sent events ending in
//!   `data: [DONE]` (`stream_options.include_usage` adds a usage chunk). OpenAI-shaped JSON with
//!   `usage`. Errors as vLLM: unknown `model` 404, bad body / `max_tokens` < 1 / over
//!   `--max-model-len` 400, `{"error":{"message","type","param","code"}}`.
//! - `GET /metrics`: Prometheus text with vLLM 0.33's names, labels `model_name` (first served
//!   name) and `engine="0"`: gauges `vllm:num_requests_running` (requests in flight),
//!   `vllm:num_requests_waiting` (0), `vllm:kv_cache_usage_perc` (0.05 per running request, at
//!   most 1); counters (with `_created` gauges, as prometheus_client writes them)
//!   `vllm:num_preemptions_total`, `vllm:prompt_tokens_total` (prompt words, at request start),
//!   `vllm:generation_tokens_total` (counted as each token is produced),
//!   `vllm:request_success_total{finished_reason="stop"|"length"|"abort"|"error"}`.
//! - Authentication as vLLM: with an API key, every path under `/v1`, `/v2`, `/inference`,
//!   `/cohere` needs `Authorization: Bearer KEY` (else 401 `{"error":"Unauthorized"}`);
//!   `/health`, `/ping`, `/metrics`, `/version` are open.
//! - Unknown path 404 `{"detail":"Not Found"}`, wrong method 405.
//!
//! Every connection is answered once and closed (`connection: close`), unless
//! `STANDIN_KEEPALIVE=1`. Reads and writes time out after 30 s, a request must arrive within
//! 30 s, heads are capped at 64 KiB and bodies at 8 MiB (`Content-Length` or chunked); a
//! malformed request gets 400 and the server carries on.
//! At most 512 connections are served at once (more are closed).
//!
//! ## Fault knobs (environment variables, all optional)
//! | Variable | Effect |
//! |---|---|
//! | `STANDIN_LOAD_SECS=F` | "load" for F seconds (float) before listening: connections refused meanwhile. Default 0. |
//! | `STANDIN_FAIL_AT_START=1` | after the load delay, print vLLM's `EngineCore failed to start` error (stdout) and `RuntimeError: Engine core initialization failed...` (stderr) and exit 1; never serve. |
//! | `STANDIN_EXIT_AFTER_SECS=F` | after serving F s, log `Engine core proc EngineCore_DP0 died unexpectedly` and exit with `STANDIN_EXIT_CODE`. |
//! | `STANDIN_EXIT_CODE=N` | the code for `STANDIN_EXIT_AFTER_SECS`; default **0** (vLLM exits 0 when its engine dies, vLLM issue 48966). |
//! | `STANDIN_CRASH_AFTER_SECS=F` | after serving F s, print `Fatal Python error: Aborted` (stderr) and `abort()` (killed by SIGABRT; an engine-core child survives, as vLLM's does). |
//! | `STANDIN_HANG_AFTER_SECS=F` | after serving F s the engine is hung: `/health` stays 200, completions never answer and hold their connection, each counts in `num_requests_running` for good, `generation_tokens_total` stops. |
//! | `STANDIN_TOKEN_DELAY_MS=N` | each generated token takes N ms (a busy but progressing engine; the counter keeps moving). A client that leaves mid-generation aborts its request. |
//! | `STANDIN_HEALTH=ok\|503\|hang\|drop` | how `/health` and `/ping` answer: 200; 503; accept and never answer; accept, read, close without an answer. Default `ok`. |
//! | `STANDIN_ENGINE_CORE=1` | spawn a well-behaved engine-core child (see below) that a clean exit or SIGTERM stops. |
//! | `STANDIN_LEAVE_CHILD=1` | spawn the engine-core child and leave it behind on every exit (an orphan, vLLM issue 55510). |
//! | `STANDIN_CHILD_IGNORE_TERM=1` | the child ignores SIGTERM (and SIGINT, SIGHUP): only SIGKILL ends it. |
//! | `STANDIN_CHILD_LIFETIME_SECS=F` | the child exits by itself after F s (default 600), so no test leaks it forever. |
//! | `STANDIN_CONTROL=1` | serve the control endpoints below. |
//! | `STANDIN_REQUIRE_MODEL_DIR=1` | exit 1 at start (after the load delay) when MODEL_PATH is not a directory. |
//! | `STANDIN_ACCESS_LOG=1` | same as `--enable-uvicorn-access-log`. |
//! | `STANDIN_KEEPALIVE=1` | keep a connection open after an answer with a length, as vLLM's uvicorn does (no `connection: close`; the next request must arrive whole within `STANDIN_KEEPALIVE_IDLE_SECS`). A stream still ends with its connection, and so do a client's `connection: close`, HTTP/1.0, a 400 or 413, and every answer once a drain has begun. |
//! | `STANDIN_KEEPALIVE_IDLE_SECS=F` | with `STANDIN_KEEPALIVE=1`, how long a kept connection waits for its next request before the stand-in closes it. Default 5 (uvicorn's `--timeout-keep-alive`). |
//! | `STANDIN_FAULTS_DIR=DIR` | if `DIR/<first served name>` (for a name with `/`, such as the default = the model path: its last component) exists, its `KEY=VALUE` lines (`#` comments; the `STANDIN_` prefix optional) override the variables above for this instance only. An unknown key is an error. |
//! | `MODEL_PATH/standin-faults` | the same `KEY=VALUE` lines, read last: faults of one version of a model's weights, whatever its name (the rollout tests: a new version that crashes, hangs or loads slowly). |
//!
//! A bad knob value (or faults file) prints `citadel-standin: KEY="value": ...` on stderr and
//! exits **64** before doing anything.
//!
//! The engine-core child is `citadel-standin engine-core` (argv\[0\] `VLLM::EngineCore`, thread
//! name `VLLM::EngineCor`), in the stand-in's process group, spawned before loading starts. It
//! prints `citadel-standin engine-core pid=PID` on stdout and sleeps.
//!
//! ## Control endpoints (only with `STANDIN_CONTROL=1`; open, no API key)
//! - `POST /_standin/hang`: hang from now on (as `STANDIN_HANG_AFTER_SECS`).
//! - `POST /_standin/health?mode=ok|503|hang|drop`: change how `/health` answers.
//! - `POST /_standin/exit?code=N`: answer 200, then exit with N (a clean exit: child stopped).
//! - `POST /_standin/crash`: answer 200, then abort (SIGABRT).
//! - `GET /_standin/state`: `{"pid","hung","health","running","generation_tokens","prompt_tokens","accepted"}` (`accepted`: connections accepted since the start, this one included).
//!
//! ## Exit codes
//! 0 SIGTERM/SIGINT, or the `STANDIN_EXIT_*` code; 1 failed start (fail knob, port in use,
//! missing model dir); 2 argparse error; 64 bad knob; killed by SIGABRT for the crash knob.
//!
//! About 500 lines, a hundred of them this documentation: the engine's life (start, the
//! EngineCore child, signals, drain, exit) in one place; the HTTP server, the knobs and the
//! flag parser are modules of their own.

pub mod cli;
pub mod http;
pub mod knobs;
pub mod server;
pub mod testing;

use cli::{Command, ServeArgs};
use knobs::Knobs;
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage};
use server::{Engine, Settings, VLLM_VERSION};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The engine-core child, when one was spawned.
static CHILD: Mutex<Option<Child>> = Mutex::new(None);
/// `STANDIN_LEAVE_CHILD`: never stop the child.
static LEAVE_CHILD: AtomicBool = AtomicBool::new(false);
/// Set once the server listens.
static SERVING: AtomicBool = AtomicBool::new(false);
/// The serving engine and its `--shutdown-timeout`, for the signal thread's drain.
static DRAIN: OnceLock<(Arc<Engine>, Duration)> = OnceLock::new();

/// How long a clean exit waits for the engine-core child after SIGTERM before SIGKILL.
pub const CHILD_STOP_GRACE: Duration = Duration::from_secs(5);

/// One line on stdout; a closed stdout is ignored.
pub fn out_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A vLLM-style log line on stdout.
pub fn log(level: &str, msg: &str) {
    out_line(&format!(
        "(APIServer pid={}) {level} [citadel-standin] {msg}",
        std::process::id()
    ));
}

/// Stop the engine-core child (unless it is to be left behind): SIGTERM, wait, SIGKILL.
fn stop_child() {
    if LEAVE_CHILD.load(SeqCst) {
        return;
    }
    let Ok(mut guard) = CHILD.lock() else { return };
    let Some(child) = guard.as_mut() else { return };
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = signal::kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + CHILD_STOP_GRACE;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            *guard = None;
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    *guard = None;
}

/// Exit with `code` the clean way: the engine-core child is stopped first (unless left).
pub fn exit_clean(code: i32) -> ! {
    stop_child();
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// Die the hard way (SIGABRT), leaving the child behind as a crashed vLLM does.
pub fn crash() -> ! {
    eprintln!("Fatal Python error: Aborted");
    std::process::abort()
}

/// Run with a full argv; returns the exit status.
pub fn main_with(argv: &[String]) -> u8 {
    match cli::parse(argv) {
        Err(e) => {
            eprintln!("{e}");
            2
        }
        Ok(Command::Help(text)) => {
            out_line(&text);
            0
        }
        Ok(Command::Version) => {
            out_line(VLLM_VERSION);
            0
        }
        Ok(Command::EngineCore) => engine_core(),
        Ok(Command::Serve(args)) => serve(&args),
    }
}

fn env_flag(key: &str) -> bool {
    std::env::var(key).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
}

/// `citadel-standin engine-core`: a sleeping stand-in for vLLM's EngineCore process.
fn engine_core() -> u8 {
    if env_flag("STANDIN_CHILD_IGNORE_TERM") {
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            // SAFETY: installing SIG_IGN runs no code in signal context.
            let _ = unsafe { signal::signal(s, SigHandler::SigIgn) };
        }
    }
    // The parent blocks these for its signal thread; the mask survives exec.
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    let _ = signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    if let Ok(name) = std::ffi::CString::new("VLLM::EngineCor") {
        let _ = nix::sys::prctl::set_name(&name);
    }
    out_line(&format!(
        "citadel-standin engine-core pid={}",
        std::process::id()
    ));
    let lifetime = std::env::var("STANDIN_CHILD_LIFETIME_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|f| Duration::try_from_secs_f64(f).ok())
        .unwrap_or(Duration::from_secs(600));
    std::thread::sleep(lifetime);
    0
}

fn spawn_child(knobs: &Knobs) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let child = std::process::Command::new(&exe)
        .arg0("VLLM::EngineCore")
        .arg("engine-core")
        .env(
            "STANDIN_CHILD_IGNORE_TERM",
            if knobs.child_ignore_term { "1" } else { "0" },
        )
        .env(
            "STANDIN_CHILD_LIFETIME_SECS",
            knobs.child_lifetime.as_secs_f64().to_string(),
        )
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot spawn {} engine-core: {e}", exe.display()))?;
    if let Ok(mut g) = CHILD.lock() {
        *g = Some(child);
    }
    Ok(())
}

/// Block SIGTERM/SIGINT in every thread and handle them in one thread.
fn install_signal_thread() {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    if signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if let Ok(sig) = set.wait() {
                if SERVING.load(SeqCst) {
                    log("INFO", "[shutdown] API server: shutdown triggered");
                    if let Some((engine, limit)) = DRAIN.get().filter(|(_, d)| !d.is_zero()) {
                        drain(engine, *limit);
                    }
                } else {
                    log(
                        "INFO",
                        &format!("[shutdown] API server: {sig} during startup, shutdown triggered"),
                    );
                }
                exit_clean(0);
            }
        });
}

/// `--shutdown-timeout` > 0: refuse new requests, let the running ones finish, up to `limit`.
fn drain(engine: &Engine, limit: Duration) {
    engine.start_draining();
    log(
        "INFO",
        &format!(
            "[shutdown] draining {} in-flight request(s), up to {} s",
            engine.running(),
            limit.as_secs()
        ),
    );
    let t0 = Instant::now();
    while (engine.running() > 0 || engine.answering() > 0) && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(20));
    }
    if engine.running() > 0 || engine.answering() > 0 {
        log(
            "WARNING",
            &format!(
                "[shutdown] drain timeout: aborting {} request(s)",
                engine.running()
            ),
        );
    }
}

/// The first address `host:port` resolves to.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host {host:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("host {host:?} resolves to no address"))
}

/// Create and bind the server socket without listening (vLLM's `create_server_socket`).
fn bind_socket(addr: SocketAddr) -> Result<(OwnedFd, u16), String> {
    let fam = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(fam, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("OSError: [Errno {}] {}", e as i32, e.desc()))?;
    let _ = socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true);
    let sa = SockaddrStorage::from(addr);
    use std::os::fd::AsRawFd;
    socket::bind(fd.as_raw_fd(), &sa)
        .map_err(|e| format!("OSError: [Errno {}] {}", e as i32, e.desc()))?;
    let port = socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .ok()
        .and_then(|s| {
            s.as_sockaddr_in()
                .map(|a| a.port())
                .or_else(|| s.as_sockaddr_in6().map(|a| a.port()))
        })
        .unwrap_or(addr.port());
    Ok((fd, port))
}

/// `max_position_embeddings` (or a similar key) of `MODEL/config.json`.
fn model_max_len(model: &str) -> Option<u64> {
    let text = std::fs::read_to_string(std::path::Path::new(model).join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    [
        "max_position_embeddings",
        "n_positions",
        "max_seq_len",
        "seq_length",
    ]
    .iter()
    .find_map(|k| v.get(k).and_then(serde_json::Value::as_u64))
    .filter(|n| *n > 0)
}

fn fail_start(stdout_msg: &str, stderr_msg: &str) -> ! {
    log("ERROR", stdout_msg);
    eprintln!("Traceback (most recent call last):\n  File \"vllm/entrypoints/cli/main.py\", line 75, in main\n{stderr_msg}");
    exit_clean(1)
}

fn after(delay: Duration, name: &str, f: impl FnOnce() + Send + 'static) {
    let _ = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            std::thread::sleep(delay);
            f();
        });
}

/// `serve`: the whole life of the stand-in server. Returns only on early failures.
fn serve(args: &ServeArgs) -> u8 {
    install_signal_thread();
    let name0 = args.served_model_names[0].clone();
    let knobs = match Knobs::resolve(
        &|k| std::env::var(k).ok(),
        &name0,
        Some(std::path::Path::new(&args.model)),
    ) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("citadel-standin: {e}");
            return 64;
        }
    };
    LEAVE_CHILD.store(knobs.leave_child, SeqCst);
    let mut api_keys = args.api_keys.clone();
    if api_keys.is_empty() {
        if let Some(k) = std::env::var("VLLM_API_KEY").ok().filter(|k| !k.is_empty()) {
            api_keys.push(k);
        }
    }
    log(
        "INFO",
        &format!("vLLM API server version {VLLM_VERSION} (citadel-standin)"),
    );
    log(
        "INFO",
        &format!(
            "model: {}, served as: {}",
            args.model,
            args.served_model_names.join(", ")
        ),
    );
    if let Some(f) = &knobs.faults_file {
        log("WARNING", &format!("fault knobs from {}", f.display()));
    }
    let (fd, port) = match resolve(&args.host, args.port).and_then(bind_socket) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if knobs.spawns_child() {
        if let Err(e) = spawn_child(&knobs) {
            eprintln!("citadel-standin: {e}");
            return 1;
        }
    }
    if !knobs.load.is_zero() {
        log(
            "INFO",
            &format!(
                "Loading weights (citadel-standin: {:.1} s) ...",
                knobs.load.as_secs_f64()
            ),
        );
        std::thread::sleep(knobs.load);
    }
    if knobs.require_model_dir && !std::path::Path::new(&args.model).is_dir() {
        fail_start(
            &format!("EngineCore failed to start: model path {} is not a directory", args.model),
            &format!("OSError: Incorrect path_or_model_id: '{}'. Please provide either the path to a local folder or the repo_id of a model on the Hub.", args.model),
        );
    }
    if knobs.fail_at_start {
        fail_start(
            "EngineCore failed to start. (citadel-standin: STANDIN_FAIL_AT_START)",
            "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
        );
    }
    let backlog = Backlog::new(1024).unwrap_or(Backlog::MAXCONN);
    if let Err(e) = socket::listen(&fd, backlog) {
        fail_start(
            "API server failed to listen",
            &format!("OSError: [Errno {}] {}", e as i32, e.desc()),
        );
    }
    let listener = TcpListener::from(fd);
    let max_model_len = args
        .max_model_len
        .or_else(|| model_max_len(&args.model))
        .unwrap_or(4096);
    let now = Instant::now();
    let engine = Arc::new(Engine::new(Settings {
        names: args.served_model_names.clone(),
        model_path: args.model.clone(),
        max_model_len,
        api_keys,
        metrics: !args.disable_log_stats,
        access_log: args.access_log || knobs.access_log,
        keepalive: knobs.keepalive.then_some(knobs.keepalive_idle),
        control: knobs.control,
        token_delay: knobs.token_delay,
        hang_at: knobs.hang_after.map(|d| now + d),
        health: knobs.health,
    }));
    let _ = DRAIN.set((engine.clone(), Duration::from_secs(args.shutdown_timeout)));
    SERVING.store(true, SeqCst);
    let shown_host = if args.host.is_empty() {
        "0.0.0.0"
    } else {
        &args.host
    };
    log(
        "INFO",
        &format!("Starting vLLM server on http://{shown_host}:{port}"),
    );
    out_line("INFO:     Application startup complete.");
    if let Some(d) = knobs.exit_after {
        let code = knobs.exit_code;
        after(d, "exit-after", move || {
            log(
                "ERROR",
                "Engine core proc EngineCore_DP0 died unexpectedly, shutting down client.",
            );
            log("INFO", "[shutdown] API server: shutdown triggered");
            exit_clean(i32::from(code));
        });
    }
    if let Some(d) = knobs.crash_after {
        after(d, "crash-after", || crash());
    }
    engine.accept_loop(listener);
    exit_clean(1)
}
