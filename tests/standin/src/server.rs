//! The serving half: shared engine state, routes, control endpoints; the completions are in
//! [`completions`], `/metrics` in [`metrics`].

use crate::http::{self, ReadError, Request};
use crate::knobs::HealthMode;
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod completions;
mod metrics;
pub use metrics::prom_float;

/// The vLLM version the stand-in impersonates.
pub const VLLM_VERSION: &str = "0.33.0";
/// Connections served at once; more are closed at once (the server itself stays up).
pub const MAX_CONNECTIONS: usize = 512;
/// Read and write timeout of every connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// With `STANDIN_KEEPALIVE=1`, how long a kept connection waits by default for its next
/// request, which must arrive whole within it (uvicorn's `--timeout-keep-alive` default).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// Tokens generated when a request gives no `max_tokens` (the echo is short).
pub const DEFAULT_ECHO_TOKENS: usize = 16;

/// `finished_reason` label values of `vllm:request_success_total`, in counter order.
pub const FINISH_REASONS: [&str; 4] = ["stop", "length", "abort", "error"];
const STOP: usize = 0;
const LENGTH: usize = 1;
const ABORT: usize = 2;

/// What the server is configured with (fixed once serving starts).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--served-model-name` values; the first labels the metrics.
    pub names: Vec<String>,
    /// The model path as given (`root` in `/v1/models`).
    pub model_path: String,
    pub max_model_len: u64,
    /// Accepted API keys; empty = no authentication.
    pub api_keys: Vec<String>,
    /// False with `--disable-log-stats`: `/metrics` is then 404, as in vLLM.
    pub metrics: bool,
    pub access_log: bool,
    /// `STANDIN_KEEPALIVE=1`: a connection lives on after an answer with a length, as
    /// uvicorn's do, waiting this long for its next request (`STANDIN_KEEPALIVE_IDLE_SECS`).
    pub keepalive: Option<Duration>,
    /// The `/_standin/*` control endpoints are served.
    pub control: bool,
    pub token_delay: Duration,
    /// The engine hangs from this moment on (STANDIN_HANG_AFTER_SECS).
    pub hang_at: Option<Instant>,
    pub health: HealthMode,
}

impl Settings {
    /// A plain engine serving `names`: no API key, metrics on, no access log, answers at once,
    /// closes every connection, no control endpoints, healthy.
    pub fn new(names: Vec<String>) -> Settings {
        Settings {
            model_path: format!("/models/{}", names.first().map_or("m", String::as_str)),
            names,
            max_model_len: 4096,
            api_keys: vec![],
            metrics: true,
            access_log: false,
            keepalive: None,
            control: false,
            token_delay: Duration::ZERO,
            hang_at: None,
            health: HealthMode::Ok,
        }
    }
}

/// Shared state of a serving stand-in.
pub struct Engine {
    pub settings: Settings,
    hung: AtomicBool,
    /// A drain is in progress (`--shutdown-timeout` > 0 and SIGTERM): new requests are refused.
    draining: AtomicBool,
    /// Requests being answered (routed and not yet fully written).
    answering: AtomicU64,
    health: AtomicU8,
    running: AtomicU64,
    waiting: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    finished: [AtomicU64; 4],
    created: f64,
    connections: AtomicUsize,
    /// Connections accepted since the start (`/_standin/state`'s `accepted`).
    accepted: AtomicU64,
    next_id: AtomicU64,
}

fn health_code(m: HealthMode) -> u8 {
    match m {
        HealthMode::Ok => 0,
        HealthMode::Unavailable => 1,
        HealthMode::Hang => 2,
        HealthMode::Drop => 3,
    }
}

fn health_mode(c: u8) -> HealthMode {
    match c {
        1 => HealthMode::Unavailable,
        2 => HealthMode::Hang,
        3 => HealthMode::Drop,
        _ => HealthMode::Ok,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// One generation's outcome.
enum Outcome {
    /// Answer this.
    Reply(u16, Option<&'static str>, Vec<u8>),
    /// Already answered (streaming) with this status.
    Done(u16),
    /// Never answered: the connection was held until the client left.
    Held,
    /// Closed without an answer.
    Dropped,
}

fn json_reply(status: u16, v: &Value) -> Outcome {
    Outcome::Reply(status, Some("application/json"), v.to_string().into_bytes())
}

/// vLLM's error body (`ErrorResponse`).
fn error_reply(status: u16, kind: &str, message: &str, param: Option<&str>) -> Outcome {
    json_reply(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": status}}),
    )
}

/// Keep a connection open without answering until the client closes it (or errors).
fn hold(stream: &TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 512];
    let mut s = stream;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

impl Engine {
    pub fn new(settings: Settings) -> Engine {
        let health = health_code(settings.health);
        Engine {
            settings,
            hung: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            answering: AtomicU64::new(0),
            health: AtomicU8::new(health),
            running: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            finished: Default::default(),
            created: unix_now(),
            connections: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// Whether the engine is hung (knob time passed, or `/_standin/hang`).
    pub fn hung(&self) -> bool {
        self.hung.load(SeqCst) || self.settings.hang_at.is_some_and(|t| Instant::now() >= t)
    }

    /// Requests being answered right now (a drain waits for them: `running` drops before the
    /// last chunk or the reply body is written).
    pub fn answering(&self) -> u64 {
        self.answering.load(SeqCst)
    }

    /// Refuse new completions from now on (a drain has begun).
    pub fn start_draining(&self) {
        self.draining.store(true, SeqCst);
    }

    pub fn set_hung(&self) {
        self.hung.store(true, SeqCst);
    }

    pub fn health(&self) -> HealthMode {
        health_mode(self.health.load(SeqCst))
    }

    pub fn set_health(&self, m: HealthMode) {
        self.health.store(health_code(m), SeqCst);
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(SeqCst)
    }

    pub fn generation_tokens(&self) -> u64 {
        self.generation_tokens.load(SeqCst)
    }

    pub fn running(&self) -> u64 {
        self.running.load(SeqCst)
    }

    fn new_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{:08x}{:016x}",
            std::process::id(),
            self.next_id.fetch_add(1, SeqCst)
        )
    }

    /// Authorised under vLLM's rule: only `/v1`, `/v2`, `/inference`, `/cohere` paths need the
    /// key; `Authorization: Bearer KEY` with any configured key.
    fn authorized(&self, req: &Request) -> bool {
        let guarded = ["/v1", "/v2", "/inference", "/cohere"]
            .iter()
            .any(|p| req.path.starts_with(p));
        if !guarded || self.settings.api_keys.is_empty() {
            return true;
        }
        let Some(h) = req.header("authorization") else {
            return false;
        };
        let Some(token) = h.strip_prefix("Bearer ") else {
            return false;
        };
        self.settings.api_keys.iter().any(|k| k == token.trim())
    }

    fn models(&self) -> Value {
        let s = &self.settings;
        let data: Vec<Value> = s
            .names
            .iter()
            .map(|n| {
                json!({
                    "id": n, "object": "model", "created": self.created as u64, "owned_by": "vllm",
                    "root": s.model_path, "parent": null, "max_model_len": s.max_model_len,
                    "permission": [{
                        "id": self.new_id("modelperm"), "object": "model_permission",
                        "created": self.created as u64, "allow_create_engine": false,
                        "allow_sampling": true, "allow_logprobs": true,
                        "allow_search_indices": false, "allow_view": true,
                        "allow_fine_tuning": false, "organization": "*", "group": null,
                        "is_blocking": false
                    }]
                })
            })
            .collect();
        json!({"object": "list", "data": data})
    }

    fn health_answer(&self, stream: &TcpStream) -> Outcome {
        match self.health() {
            HealthMode::Ok => Outcome::Reply(200, None, Vec::new()),
            HealthMode::Unavailable => Outcome::Reply(503, None, Vec::new()),
            HealthMode::Hang => {
                hold(stream);
                Outcome::Held
            }
            HealthMode::Drop => Outcome::Dropped,
        }
    }

    /// `/_standin/*` (only with STANDIN_CONTROL=1).
    fn control(&self, req: &Request, stream: &TcpStream) -> Outcome {
        let what = &req.path["/_standin/".len()..];
        if req.method == "GET" && what == "state" {
            return json_reply(200, &self.state());
        }
        if req.method != "POST" {
            return json_reply(405, &json!({"detail": "Method Not Allowed"}));
        }
        match what {
            "hang" => {
                crate::log("WARNING", "control: the engine hangs from now on");
                self.set_hung();
                json_reply(200, &self.state())
            }
            "health" => match req
                .query_param("mode")
                .as_deref()
                .and_then(HealthMode::parse)
            {
                Some(m) => {
                    crate::log(
                        "WARNING",
                        &format!("control: /health answers {} from now on", m.as_str()),
                    );
                    self.set_health(m);
                    json_reply(200, &self.state())
                }
                None => error_reply(
                    400,
                    "BadRequestError",
                    "mode must be ok, 503, hang or drop",
                    Some("mode"),
                ),
            },
            "exit" => {
                let code = match req
                    .query_param("code")
                    .unwrap_or_else(|| "0".into())
                    .parse::<u8>()
                {
                    Ok(c) => c,
                    Err(_) => {
                        return error_reply(
                            400,
                            "BadRequestError",
                            "code must be 0-255",
                            Some("code"),
                        )
                    }
                };
                let _ = http::answer(
                    stream,
                    200,
                    Some("application/json"),
                    format!("{{\"exit\":{code}}}").as_bytes(),
                    false,
                );
                crate::log("ERROR", &format!("control: exiting with status {code}"));
                crate::exit_clean(i32::from(code))
            }
            "crash" => {
                let body = b"{\"crash\":true}";
                let _ = http::answer(stream, 200, Some("application/json"), body, false);
                crate::crash()
            }
            _ => json_reply(404, &json!({"detail": "Not Found"})),
        }
    }

    fn state(&self) -> Value {
        json!({
            "pid": std::process::id(), "hung": self.hung(), "health": self.health().as_str(),
            "running": self.running(), "generation_tokens": self.generation_tokens(),
            "prompt_tokens": self.prompt_tokens.load(SeqCst),
            "accepted": self.accepted.load(SeqCst),
        })
    }

    fn route(&self, req: &Request, stream: &TcpStream) -> Outcome {
        let p = req.path.as_str();
        let m = req.method.as_str();
        if !self.authorized(req) {
            return json_reply(401, &json!({"error": "Unauthorized"}));
        }
        let known = |methods: &[&str]| methods.contains(&m);
        match p {
            "/health" if known(&["GET"]) => self.health_answer(stream),
            "/ping" if known(&["GET", "POST"]) => self.health_answer(stream),
            "/version" if known(&["GET"]) => json_reply(200, &json!({"version": VLLM_VERSION})),
            "/v1/models" if known(&["GET"]) => json_reply(200, &self.models()),
            "/v1/completions" if known(&["POST"]) => self.complete(req, stream, false),
            "/v1/chat/completions" if known(&["POST"]) => self.complete(req, stream, true),
            "/metrics" if self.settings.metrics && known(&["GET"]) => Outcome::Reply(
                200,
                Some("text/plain; version=0.0.4; charset=utf-8"),
                self.metrics_text().into_bytes(),
            ),
            _ if self.settings.control && p.starts_with("/_standin/") => self.control(req, stream),
            "/health"
            | "/ping"
            | "/version"
            | "/v1/models"
            | "/v1/completions"
            | "/v1/chat/completions" => json_reply(405, &json!({"detail": "Method Not Allowed"})),
            "/metrics" if self.settings.metrics => {
                json_reply(405, &json!({"detail": "Method Not Allowed"}))
            }
            _ => json_reply(404, &json!({"detail": "Not Found"})),
        }
    }

    /// Serve one connection: one request, one answer (or a held / dropped connection), and
    /// with [`Settings::keepalive`] the next request after an answer with a length.
    pub fn serve_connection(&self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_nodelay(true);
        let mut conn = http::Conn::new(&stream);
        let mut limit = http::REQUEST_DEADLINE;
        while let Some(idle) = self.serve_one(&stream, &mut conn, limit, peer) {
            limit = idle;
        }
    }

    /// One request of a connection and its answer; how long the connection then waits for its
    /// next request, `None` when it ends.
    fn serve_one(
        &self,
        stream: &TcpStream,
        conn: &mut http::Conn,
        limit: Duration,
        peer: SocketAddr,
    ) -> Option<Duration> {
        let req = match conn.next(limit) {
            Ok(r) => r,
            Err(ReadError::Gone) => return None,
            Err(ReadError::Bad(why)) => {
                let _ = http::answer(
                    stream,
                    400,
                    Some("text/plain; charset=utf-8"),
                    format!("Invalid HTTP request: {why}").as_bytes(),
                    false,
                );
                return None;
            }
            Err(ReadError::TooLarge) => {
                let _ = http::answer(
                    stream,
                    413,
                    Some("text/plain; charset=utf-8"),
                    b"Request too large",
                    false,
                );
                return None;
            }
        };
        self.answering.fetch_add(1, SeqCst);
        let mut next = None;
        let status = match self.route(&req, stream) {
            Outcome::Reply(status, ct, body) => {
                let keep = self
                    .settings
                    .keepalive
                    .filter(|_| req.keep_alive && !self.draining.load(SeqCst));
                let sent = http::answer(stream, status, ct, &body, keep.is_some());
                next = keep.filter(|_| sent.is_ok());
                Some(status)
            }
            // A stream ends with the connection (`connection: close`, no length).
            Outcome::Done(status) => Some(status),
            Outcome::Held | Outcome::Dropped => None,
        };
        self.answering.fetch_sub(1, SeqCst);
        if self.settings.access_log {
            let st = status.map_or("-".to_string(), |s| format!("{s} {}", http::reason(s)));
            crate::out_line(&format!(
                "INFO:     {peer} - \"{} {} HTTP/1.1\" {st}",
                req.method, req.path
            ));
        }
        next
    }

    /// Accept connections forever, one thread each (at most [`MAX_CONNECTIONS`] at once).
    pub fn accept_loop(self: &Arc<Self>, listener: TcpListener) {
        for conn in listener.incoming() {
            let stream = match conn {
                Ok(s) => s,
                Err(_) => {
                    // EMFILE and friends: back off, never die.
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            self.accepted.fetch_add(1, SeqCst);
            let Ok(peer) = stream.peer_addr() else {
                continue;
            };
            if self.connections.fetch_add(1, SeqCst) >= MAX_CONNECTIONS {
                self.connections.fetch_sub(1, SeqCst);
                continue;
            }
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("conn".into())
                .spawn(move || {
                    me.serve_connection(stream, peer);
                    me.connections.fetch_sub(1, SeqCst);
                });
            if spawned.is_err() {
                self.connections.fetch_sub(1, SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests;
