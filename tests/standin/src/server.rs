//! The serving half: shared engine state, routes, completions, metrics, control endpoints.

use crate::http::{self, ReadError, Request};
use crate::knobs::HealthMode;
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The vLLM version the stand-in impersonates.
pub const VLLM_VERSION: &str = "0.33.0";
/// Connections served at once; more are closed at once (the server itself stays up).
pub const MAX_CONNECTIONS: usize = 512;
/// Read and write timeout of every connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
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
    /// The `/_standin/*` control endpoints are served.
    pub control: bool,
    pub token_delay: Duration,
    /// The engine hangs from this moment on (STANDIN_HANG_AFTER_SECS).
    pub hang_at: Option<Instant>,
    pub health: HealthMode,
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

/// prometheus_client's `floatToGoString`: `12.0`, `0.25`, `1.732636e+09`.
pub fn prom_float(d: f64) -> String {
    if d.is_nan() {
        return "NaN".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let s = format!("{d:?}");
    match s.find('.') {
        Some(dot) if d > 0.0 && dot > 6 && !s.contains('e') => {
            let mantissa = format!("{}.{}{}", &s[..1], &s[1..dot], &s[dot + 1..]);
            let mantissa = mantissa.trim_end_matches(['0', '.']);
            format!("{mantissa}e+0{}", dot - 1)
        }
        _ => s,
    }
}

/// Escape a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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

/// Whether the client has closed its side (a non-blocking peek sees EOF or an error).
fn client_gone(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let r = stream.peek(&mut b);
    let _ = stream.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// Decrements `num_requests_running` when a request ends, unless it hung (then it stays).
struct Running<'a>(&'a Engine, bool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.running.fetch_sub(1, SeqCst);
        }
    }
}

/// The text of an OpenAI message `content`: a string, or an array of `{type:"text",text}` parts.
fn content_text(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// What a completion request asks for, validated.
struct Ask {
    model: String,
    prompt_tokens: u64,
    echo: Vec<String>,
    n: u64,
    finish: usize,
    stream: bool,
    include_usage: bool,
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

    /// The Prometheus text `/metrics` answers (vLLM 0.33 names, `model_name` and `engine` labels).
    pub fn metrics_text(&self) -> String {
        let labels = format!(
            "model_name=\"{}\",engine=\"0\"",
            label(&self.settings.names[0])
        );
        let created = prom_float(self.created);
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: f64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {}\n",
                prom_float(v)
            ));
        };
        let running = self.running() as f64;
        gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            running,
        );
        gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            self.waiting.load(SeqCst) as f64,
        );
        gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            (running * 0.05).min(1.0),
        );
        let mut counter = |name: &str, help: &str, samples: &[(String, u64)]| {
            out.push_str(&format!(
                "# HELP {name}_total {help}\n# TYPE {name}_total counter\n"
            ));
            for (extra, v) in samples {
                out.push_str(&format!(
                    "{name}_total{{{labels}{extra}}} {}\n",
                    prom_float(*v as f64)
                ));
            }
            out.push_str(&format!(
                "# HELP {name}_created {help}\n# TYPE {name}_created gauge\n"
            ));
            for (extra, _) in samples {
                out.push_str(&format!("{name}_created{{{labels}{extra}}} {created}\n"));
            }
        };
        counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            &[(String::new(), 0)],
        );
        counter(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            &[(String::new(), self.prompt_tokens.load(SeqCst))],
        );
        counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            &[(String::new(), self.generation_tokens())],
        );
        let finished: Vec<(String, u64)> = FINISH_REASONS
            .iter()
            .zip(&self.finished)
            .map(|(r, c)| (format!(",finished_reason=\"{r}\""), c.load(SeqCst)))
            .collect();
        counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            &finished,
        );
        out
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

    /// Validate a completion request body.
    fn ask(&self, req: &Request, chat: bool) -> Result<Ask, Outcome> {
        let bad = |m: &str| error_reply(400, "BadRequestError", m, None);
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Err(bad("the request body must be a JSON object")),
            Err(e) => return Err(bad(&format!("JSON decode error: {e}"))),
        };
        let model = match body.get("model") {
            None | Some(Value::Null) => self.settings.names[0].clone(),
            Some(Value::String(m)) if self.settings.names.contains(m) => m.clone(),
            Some(m) => {
                let m = m
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| m.to_string());
                return Err(error_reply(
                    404,
                    "NotFoundError",
                    &format!("The model `{m}` does not exist."),
                    Some("model"),
                ));
            }
        };
        let (all, echo) = if chat {
            let Some(msgs) = body.get("messages").and_then(Value::as_array) else {
                return Err(bad("'messages' is required and must be an array"));
            };
            let texts: Vec<(String, String)> = msgs
                .iter()
                .map(|m| {
                    let role = m
                        .get("role")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    (role, m.get("content").map(content_text).unwrap_or_default())
                })
                .collect();
            let all = texts
                .iter()
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let echo = texts
                .iter()
                .rev()
                .find(|(r, _)| r == "user")
                .or(texts.last())
                .map(|(_, t)| t.clone())
                .unwrap_or_default();
            (all, echo)
        } else {
            let text = match body.get("prompt") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(a)) if !a.is_empty() => a
                    .iter()
                    .map(|p| match p {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => return Err(bad("'prompt' is required (a string or an array)")),
            };
            (text.clone(), text)
        };
        let prompt_tokens = all.split_whitespace().count().max(1) as u64;
        let mut echo: Vec<String> = echo.split_whitespace().map(str::to_string).collect();
        if echo.is_empty() {
            echo.push("ok".into());
        }
        let max_tokens = match body.get("max_tokens").filter(|v| !v.is_null()).or_else(|| {
            chat.then(|| body.get("max_completion_tokens"))
                .flatten()
                .filter(|v| !v.is_null())
        }) {
            None => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Some(n),
                _ => return Err(bad(&format!("max_tokens must be at least 1, got {v}."))),
            },
        };
        let len = self.settings.max_model_len;
        let room = len.saturating_sub(prompt_tokens);
        if let Some(m) = max_tokens {
            if prompt_tokens + m > len {
                return Err(bad(&format!(
                    "This model's maximum context length is {len} tokens. However, you requested {} tokens ({prompt_tokens} in the messages, {m} in the completion). Please reduce the length of the messages or completion.",
                    prompt_tokens + m
                )));
            }
        } else if room == 0 {
            return Err(bad(&format!(
                "This model's maximum context length is {len} tokens. However, your request has {prompt_tokens} input tokens. Please reduce the length of the input messages."
            )));
        }
        let (n, finish) = match max_tokens {
            Some(m) => (m, LENGTH),
            None => {
                let want = echo.len().min(DEFAULT_ECHO_TOKENS) as u64;
                if want > room {
                    (room, LENGTH)
                } else {
                    (want, STOP)
                }
            }
        };
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Ask {
            model,
            prompt_tokens,
            echo,
            n,
            finish,
            stream,
            include_usage,
        })
    }

    /// `POST /v1/completions` and `/v1/chat/completions`: echo the prompt, one token (word) at a
    /// time, counting tokens as they are produced.
    fn complete(&self, req: &Request, stream: &TcpStream, chat: bool) -> Outcome {
        if self.draining.load(SeqCst) {
            return error_reply(
                503,
                "ServiceUnavailableError",
                "The server is shutting down",
                None,
            );
        }
        let ask = match self.ask(req, chat) {
            Ok(a) => a,
            Err(o) => return o,
        };
        let id = self.new_id(if chat { "chatcmpl" } else { "cmpl" });
        let created = unix_now() as u64;
        self.running.fetch_add(1, SeqCst);
        let mut running = Running(self, false);
        self.prompt_tokens.fetch_add(ask.prompt_tokens, SeqCst);
        let chunk = |delta: &str, first: bool, finish: Option<&str>| -> Value {
            if chat {
                let d = match (first, finish) {
                    (_, Some(_)) => json!({}),
                    (true, None) => json!({"role": "assistant", "content": delta}),
                    (false, None) => json!({"content": delta}),
                };
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": ask.model,
                       "choices": [{"index": 0, "delta": d, "logprobs": null, "finish_reason": finish, "stop_reason": null}]})
            } else {
                json!({"id": id, "object": "text_completion", "created": created, "model": ask.model,
                       "choices": [{"index": 0, "text": delta, "logprobs": null, "finish_reason": finish, "stop_reason": null}]})
            }
        };
        let mut out = stream;
        if ask.stream {
            let h = http::head(200, Some("text/event-stream; charset=utf-8"), None);
            if out.write_all(h.as_bytes()).is_err() {
                self.finished[ABORT].fetch_add(1, SeqCst);
                return Outcome::Done(200);
            }
        }
        let mut text = String::new();
        for i in 0..ask.n {
            let delay = self.settings.token_delay;
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            if self.hung() {
                // A hung engine: the request stays "running", no token comes, no answer.
                running.1 = true;
                hold(stream);
                return Outcome::Held;
            }
            let word = &ask.echo[i as usize % ask.echo.len()];
            let piece = if i == 0 {
                word.clone()
            } else {
                format!(" {word}")
            };
            // The token was produced (and counted) even if its client has just left.
            self.generation_tokens.fetch_add(1, SeqCst);
            if !delay.is_zero() && client_gone(stream) {
                self.finished[ABORT].fetch_add(1, SeqCst);
                return Outcome::Dropped;
            }
            if ask.stream {
                let ev = format!("data: {}\n\n", chunk(&piece, i == 0, None));
                if out
                    .write_all(ev.as_bytes())
                    .and_then(|_| out.flush())
                    .is_err()
                {
                    self.finished[ABORT].fetch_add(1, SeqCst);
                    return Outcome::Done(200);
                }
            }
            text.push_str(&piece);
        }
        let finish = FINISH_REASONS[ask.finish];
        let usage = json!({"prompt_tokens": ask.prompt_tokens, "total_tokens": ask.prompt_tokens + ask.n, "completion_tokens": ask.n});
        self.finished[ask.finish].fetch_add(1, SeqCst);
        drop(running);
        if ask.stream {
            let mut ev = format!("data: {}\n\n", chunk("", ask.n == 0, Some(finish)));
            if ask.include_usage {
                let mut u = chunk("", false, None);
                u["choices"] = json!([]);
                u["usage"] = usage;
                ev.push_str(&format!("data: {u}\n\n"));
            }
            ev.push_str("data: [DONE]\n\n");
            let _ = out.write_all(ev.as_bytes()).and_then(|_| out.flush());
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return Outcome::Done(200);
        }
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text, "tool_calls": []},
                   "logprobs": null, "finish_reason": finish, "stop_reason": null})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish, "stop_reason": null})
        };
        json_reply(
            200,
            &json!({"id": id, "object": if chat { "chat.completion" } else { "text_completion" },
                    "created": created, "model": ask.model, "choices": [choice], "usage": usage}),
        )
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
                let _ = http::respond(
                    stream,
                    200,
                    Some("application/json"),
                    format!("{{\"exit\":{code}}}").as_bytes(),
                );
                crate::log("ERROR", &format!("control: exiting with status {code}"));
                crate::exit_clean(i32::from(code))
            }
            "crash" => {
                let _ = http::respond(stream, 200, Some("application/json"), b"{\"crash\":true}");
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

    /// Serve one connection: one request, one answer (or a held / dropped connection).
    pub fn serve_connection(&self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_nodelay(true);
        let req = match http::read_request(&stream) {
            Ok(r) => r,
            Err(ReadError::Gone) => return,
            Err(ReadError::Bad(why)) => {
                let _ = http::respond(
                    &stream,
                    400,
                    Some("text/plain; charset=utf-8"),
                    format!("Invalid HTTP request: {why}").as_bytes(),
                );
                return;
            }
            Err(ReadError::TooLarge) => {
                let _ = http::respond(
                    &stream,
                    413,
                    Some("text/plain; charset=utf-8"),
                    b"Request too large",
                );
                return;
            }
        };
        self.answering.fetch_add(1, SeqCst);
        let status = match self.route(&req, &stream) {
            Outcome::Reply(status, ct, body) => {
                let _ = http::respond(&stream, status, ct, &body);
                Some(status)
            }
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
mod tests {
    use super::*;

    fn engine() -> Engine {
        Engine::new(Settings {
            names: vec!["m\"x".into(), "alias".into()],
            model_path: "/models/m".into(),
            max_model_len: 64,
            api_keys: vec!["k".into()],
            metrics: true,
            access_log: false,
            control: false,
            token_delay: Duration::ZERO,
            hang_at: None,
            health: HealthMode::Ok,
        })
    }

    fn req(method: &str, path: &str, body: &str, auth: Option<&str>) -> Request {
        let mut headers = vec![];
        if let Some(a) = auth {
            headers.push(("authorization".to_string(), a.to_string()));
        }
        Request {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn python_float_formatting() {
        assert_eq!(prom_float(0.0), "0.0");
        assert_eq!(prom_float(12.0), "12.0");
        assert_eq!(prom_float(0.25), "0.25");
        assert_eq!(prom_float(1234567.0), "1.234567e+06");
        assert_eq!(prom_float(1732636123.5), "1.7326361235e+09");
    }

    #[test]
    fn auth_follows_vllm_paths() {
        let e = engine();
        assert!(!e.authorized(&req("GET", "/v1/models", "", None)));
        assert!(!e.authorized(&req("GET", "/v1/models", "", Some("Bearer nope"))));
        assert!(!e.authorized(&req("GET", "/v1/models", "", Some("k"))));
        assert!(e.authorized(&req("GET", "/v1/models", "", Some("Bearer k"))));
        for open in ["/health", "/metrics", "/version", "/ping"] {
            assert!(e.authorized(&req("GET", open, "", None)), "{open}");
        }
    }

    #[test]
    fn asks_are_validated() {
        let e = engine();
        let r = |b: &str| e.ask(&req("POST", "/v1/completions", b, None), false);
        let a = r(r#"{"prompt":"one two three"}"#).ok().unwrap();
        assert_eq!((a.prompt_tokens, a.n, a.finish), (3, 3, STOP));
        assert_eq!(a.model, "m\"x");
        let a = r(r#"{"model":"alias","prompt":"a","max_tokens":5}"#)
            .ok()
            .unwrap();
        assert_eq!((a.n, a.finish, a.model.as_str()), (5, LENGTH, "alias"));
        for bad in [
            "nope",
            "[]",
            r#"{"model":"other","prompt":"a"}"#,
            r#"{"max_tokens":3}"#,
            r#"{"prompt":"a","max_tokens":0}"#,
            r#"{"prompt":"a","max_tokens":64}"#,
        ] {
            assert!(r(bad).is_err(), "{bad}");
        }
        let c = e
            .ask(
                &req(
                    "POST",
                    "/v1/chat/completions",
                    r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi there"}]}],"max_completion_tokens":2,"stream":true,"stream_options":{"include_usage":true}}"#,
                    None,
                ),
                true,
            )
            .ok()
            .unwrap();
        assert_eq!(c.echo, vec!["hi", "there"]);
        assert_eq!(
            (c.prompt_tokens, c.n, c.stream, c.include_usage),
            (4, 2, true, true)
        );
    }

    #[test]
    fn metrics_have_vllm_names_and_labels() {
        let e = engine();
        e.generation_tokens.fetch_add(7, SeqCst);
        let m = e.metrics_text();
        let l = r#"{model_name="m\"x",engine="0"}"#;
        for line in [
            format!("vllm:num_requests_running{l} 0.0"),
            format!("vllm:num_requests_waiting{l} 0.0"),
            format!("vllm:kv_cache_usage_perc{l} 0.0"),
            format!("vllm:prompt_tokens_total{l} 0.0"),
            format!("vllm:generation_tokens_total{l} 7.0"),
            "# TYPE vllm:generation_tokens_total counter".to_string(),
            r#"vllm:request_success_total{model_name="m\"x",engine="0",finished_reason="length"} 0.0"#.to_string(),
        ] {
            assert!(m.lines().any(|x| x == line), "missing {line:?} in\n{m}");
        }
        assert!(!m.contains("gpu_cache_usage_perc"));
    }
}
