//! One client request: the gateway's own routes (`/health`, `/metrics`, `GET /v1/models`),
//! the key check, and every `/v1/*` POST routed by its `model` to the engine: availability,
//! a slot in the model's limiter, the upstream request with the engine's key, the response
//! streamed back. Every request ends in one [`Done`]: metrics and one access-log line.

use crate::avail::Availability;
use crate::body::{collect, Body, Finish};
use crate::limit::{Refused, Slot};
use crate::metrics::{Metrics, UpstreamError};
use crate::reply::{self, Reply};
use crate::routes::{Backend, Routes};
use crate::upstream::{self, Failed, Target, Upstream};
use crate::within::within;
use citadel_common::clientkeys::Keys;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Uri};
use serde_json::{json, Value};
use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Everything a reload replaces at once.
pub struct Snapshot {
    pub routes: Routes,
    pub keys: Keys,
    /// `Bearer ENGINE_KEY`, added to every upstream request.
    pub engine_auth: Option<HeaderValue>,
    pub max_request_bytes: u64,
    pub request_timeout: Duration,
    pub access_log: bool,
}

/// What every worker thread shares (its engine connections are its own: [`Upstream`]).
pub struct State {
    current: RwLock<Arc<Snapshot>>,
    pub avail: Arc<Availability>,
    pub metrics: Metrics,
    started_unix: u64,
}

/// How long a client may take to send its request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Headers that belong to one connection, never forwarded.
fn hop_by_hop(h: &HeaderName) -> bool {
    matches!(
        h.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

impl State {
    pub fn new(snapshot: Snapshot, avail: Arc<Availability>) -> State {
        State {
            current: RwLock::new(Arc::new(snapshot)),
            avail,
            metrics: Metrics::default(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().expect("not poisoned"))
    }

    pub fn replace(&self, s: Snapshot) {
        *self.current.write().expect("not poisoned") = Arc::new(s);
    }
}

/// The end of one request: its metrics and its access-log line.
struct Done {
    state: Arc<State>,
    log: bool,
    key: String,
    model: String,
    status: u16,
    method: Method,
    uri: Uri,
    start: Instant,
    _slot: Option<Slot>,
}

impl Finish for Done {
    fn finish(self: Box<Self>, bytes: u64, complete: bool) {
        let took = self.start.elapsed();
        self.state
            .metrics
            .request(or_dash(&self.model), self.status, took);
        if self.log {
            let Done {
                key,
                model,
                status,
                method,
                uri,
                ..
            } = *self;
            // The line's write(2) comes after the answer's (the metrics above count at once).
            crate::after::after_answer(move || {
                log::info!(
                    "access: key={} model={} status={status} duration_ms={} bytes={bytes}{} \"{method} {}\"",
                    or_dash(&key),
                    or_dash(&model),
                    took.as_millis(),
                    if complete { "" } else { " incomplete" },
                    quoted(uri.path()),
                );
            });
        }
    }
}

/// A request path as the access log quotes it: as it is when it is plain ASCII without `"` or
/// `\\` (every path a client library sends; no per-character formatting then), else escaped.
fn quoted(path: &str) -> Cow<'_, str> {
    if path
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(path.escape_debug().to_string())
    }
}

/// `-` for a key or model not known (yet): what the log and the metrics label say then.
fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

struct Ctx {
    state: Arc<State>,
    up: Arc<Upstream>,
    snap: Arc<Snapshot>,
    /// The client key's name; empty without keys.
    key: String,
    /// The model's config name once routed; empty before.
    model: String,
    method: Method,
    /// The request's (a cheap clone: its parts are shared).
    uri: Uri,
    start: Instant,
}

impl Ctx {
    fn end(self, mut r: Reply, slot: Option<Slot>) -> Reply {
        let done = Done {
            log: self.snap.access_log,
            state: self.state,
            key: self.key,
            model: self.model,
            status: r.status().as_u16(),
            method: self.method,
            uri: self.uri,
            start: self.start,
            _slot: slot,
        };
        let body = std::mem::replace(r.body_mut(), Body::empty());
        *r.body_mut() = body.on_finish(Box::new(done));
        r
    }
}

/// The service function; `up` is the calling worker thread's engine connections.
pub async fn handle(
    state: Arc<State>,
    up: Arc<Upstream>,
    req: Request<Incoming>,
) -> Result<Reply, Infallible> {
    let snap = state.snapshot();
    let ctx = Ctx {
        state,
        up,
        snap,
        key: String::new(),
        model: String::new(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        start: Instant::now(),
    };
    Ok(route(ctx, req).await)
}

async fn route(mut ctx: Ctx, req: Request<Incoming>) -> Reply {
    let uri = ctx.uri.clone();
    let path = uri.path();
    let get = req.method() == Method::GET;
    match path {
        "/health" if get => return ctx.end(reply::json_doc(200, &json!({"status": "ok"})), None),
        "/metrics" if get => {
            let t = ctx.state.metrics.render(&ctx.snap.routes);
            return ctx.end(reply::text(200, "text/plain; version=0.0.4", t), None);
        }
        p if p.starts_with("/v1/") => {}
        _ => {
            let r = reply::error(
                404,
                "invalid_request_error",
                "not_found",
                None,
                "no such route",
            );
            return ctx.end(r, None);
        }
    }
    if !ctx.snap.keys.is_empty() {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        match ctx.snap.keys.check(auth) {
            Some(name) => ctx.key = name.to_string(),
            None => return ctx.end(reply::unauthorized(), None),
        }
    }
    if path == "/v1/models" && get {
        let r = models(&ctx).await;
        return ctx.end(r, None);
    }
    if req.method() != Method::POST {
        let r = reply::error(
            405,
            "invalid_request_error",
            "method_not_allowed",
            None,
            "only POST is routed under /v1/ (and GET /v1/models)",
        );
        return ctx.end(r, None);
    }
    forward(ctx, req).await
}

/// `GET /v1/models`: the models serving now, aliases included (OpenAI's list shape). A model
/// the monitor calls serving, or that it does not know, is listed when its engine accepts a
/// connection (all checked at once); a refusal marks it down like a refused request.
async fn models(ctx: &Ctx) -> Reply {
    let candidates: Vec<(&Arc<Backend>, Arc<Target>)> = ctx
        .snap
        .routes
        .backends
        .iter()
        .filter_map(|b| Some((b, b.target_on(ctx.state.avail.route(&b.name).ok()?))))
        .collect();
    let checks: Vec<_> = candidates
        .iter()
        .map(|(_, t)| {
            let t = Arc::clone(t);
            tokio::spawn(async move { upstream::reachable(&t).await })
        })
        .collect();
    let mut data = Vec::new();
    for ((b, t), check) in candidates.into_iter().zip(checks) {
        if !check.await.unwrap_or(false) {
            let why = format!("its engine at {} refused the connection", t.base());
            ctx.state.avail.mark_down(&b.name, why);
            continue;
        }
        for id in std::iter::once(&b.served).chain(&b.aliases) {
            data.push(
                json!({"id": id, "object": "model", "created": ctx.state.started_unix,
                             "owned_by": "citadel", "root": b.served, "parent": null}),
            );
        }
    }
    reply::json_doc(200, &json!({"object": "list", "data": data}))
}

#[derive(serde::Deserialize)]
struct Ask<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

/// The body the engine gets: `model` set to the engine's served name when an alias was used.
fn upstream_body(body: Bytes, asked: &str, b: &Backend) -> Bytes {
    if asked == b.served {
        return body;
    }
    match serde_json::from_slice::<serde_json::Map<String, Value>>(&body) {
        Ok(mut m) => {
            m.insert("model".into(), Value::String(b.served.clone()));
            Bytes::from(serde_json::to_vec(&m).unwrap_or_default())
        }
        Err(_) => body,
    }
}

/// The client's headers as the engine gets them: no hop-by-hop ones, no client key, the
/// engine's `Host:` and key (the body's length is the body's own).
fn upstream_headers(
    mut h: HeaderMap,
    host: &HeaderValue,
    engine_auth: Option<&HeaderValue>,
) -> HeaderMap {
    h.retain_hop_free();
    h.remove(header::CONTENT_LENGTH);
    h.insert(header::HOST, host.clone());
    match engine_auth {
        Some(a) => h.insert(header::AUTHORIZATION, a.clone()),
        None => h.remove(header::AUTHORIZATION),
    };
    h
}

async fn forward(mut ctx: Ctx, req: Request<Incoming>) -> Reply {
    let (parts, incoming) = req.into_parts();
    let max = ctx.snap.max_request_bytes;
    let too_large = || {
        reply::error(
            413,
            "invalid_request_error",
            "request_too_large",
            None,
            &format!("request body larger than {max} bytes (gateway.max_request_bytes)"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return ctx.end(too_large(), None);
    }
    let read = std::pin::pin!(collect(incoming, max));
    let body = match within(BODY_READ_TIMEOUT, read).await {
        Some(Ok(Some(b))) => b,
        Some(Ok(None)) => return ctx.end(too_large(), None),
        Some(Err(_)) | None => {
            let r = reply::error(
                408,
                "invalid_request_error",
                "request_timeout",
                None,
                "the request body did not arrive",
            );
            return ctx.end(r, None);
        }
    };
    let asked = match serde_json::from_slice::<Ask>(&body) {
        Ok(Ask { model: Some(m) }) => m.into_owned(),
        Ok(Ask { model: None }) => {
            let r = reply::bad_request(
                Some("model"),
                "the JSON body has no \"model\": the gateway routes by it",
            );
            return ctx.end(r, None);
        }
        Err(e) => {
            let r = reply::bad_request(None, &format!("the body is not a JSON object: {e}"));
            return ctx.end(r, None);
        }
    };
    let Some(backend) = ctx.snap.routes.get(&asked).cloned() else {
        let r = reply::unknown_model(&asked, &ctx.snap.routes.names());
        return ctx.end(r, None);
    };
    ctx.model = backend.name.clone();
    let target = match ctx.state.avail.route(&backend.name) {
        Ok(port) => backend.target_on(port),
        Err(u) => {
            let r = reply::unavailable(&asked, &u.reason, u.retry_after_secs);
            return ctx.end(r, None);
        }
    };
    let slot = match backend.limiter.acquire().await {
        Ok(s) => s,
        Err(Refused::QueueFull { limit, queue }) => {
            let r = reply::error(
                429,
                "rate_limit_error",
                "queue_full",
                Some("model"),
                &format!("the model {asked:?} is busy: {limit} requests running and {queue} waiting; retry later"),
            );
            return ctx.end(r, None);
        }
        Err(Refused::Timeout(d)) => {
            let r = reply::unavailable(&asked, &format!("no free slot within {}s", d.as_secs()), 1);
            return ctx.end(r, None);
        }
    };
    let pq = match parts.uri.path_and_query() {
        Some(pq) => pq.clone(),
        None => PathAndQuery::from_static("/"),
    };
    let mut up = Request::new(Body::full(upstream_body(body, &asked, &backend)));
    *up.method_mut() = Method::POST;
    *up.uri_mut() = Uri::from(pq);
    *up.headers_mut() = upstream_headers(
        parts.headers,
        &target.authority,
        ctx.snap.engine_auth.as_ref(),
    );
    let timeout = ctx.snap.request_timeout;
    let answer = {
        let send = std::pin::pin!(ctx.up.send(&target, up));
        within(timeout, send).await
    };
    let upstream::Answer { response, lease } = match answer {
        Some(Ok(a)) => a,
        Some(Err(Failed::Connect(e))) => {
            ctx.state
                .metrics
                .upstream_error(&backend.name, UpstreamError::Connect);
            log::debug!("{}: connect: {e}", backend.name);
            let why = format!("its engine at {} refused the connection", target.base());
            ctx.state.avail.mark_down(&backend.name, why.clone());
            return ctx.end(reply::unavailable(&asked, &why, 1), None);
        }
        Some(Err(Failed::Protocol(e))) => {
            ctx.state
                .metrics
                .upstream_error(&backend.name, UpstreamError::Protocol);
            log::warn!("{}: upstream request failed: {e:?}", backend.name);
            let r = reply::error(
                502,
                "api_error",
                "upstream_error",
                None,
                &format!("the engine of {asked:?} failed the request"),
            );
            return ctx.end(r, None);
        }
        None => {
            ctx.state
                .metrics
                .upstream_error(&backend.name, UpstreamError::Timeout);
            let r = reply::error(
                504,
                "api_error",
                "upstream_timeout",
                None,
                &format!("the engine of {asked:?} did not answer within {}s (gateway.request_timeout_secs)", timeout.as_secs()),
            );
            return ctx.end(r, None);
        }
    };
    ctx.state.avail.mark_up(&backend.name);
    let (mut rp, incoming) = response.into_parts();
    rp.headers.retain_hop_free();
    let r = hyper::Response::from_parts(rp, Body::stream(incoming, timeout, lease));
    ctx.end(r, Some(slot))
}

trait RetainHopFree {
    fn retain_hop_free(&mut self);
}

impl RetainHopFree for HeaderMap {
    fn retain_hop_free(&mut self) {
        if !self.keys().any(hop_by_hop) {
            return;
        }
        let drop: Vec<HeaderName> = self.keys().filter(|k| hop_by_hop(k)).cloned().collect();
        for k in drop {
            self.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_log_quotes_a_path_that_needs_it() {
        assert!(matches!(
            quoted("/v1/chat/completions?x=1"),
            Cow::Borrowed(_)
        ));
        assert_eq!(quoted("/a\"b\\c"), "/a\\\"b\\\\c");
        assert_eq!(quoted("/ü"), "/ü");
        assert_eq!(quoted("/a\u{7f}"), "/a\\u{7f}");
    }

    #[test]
    fn headers_forwarded_without_hop_by_hop_host_or_client_key() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(header::HOST, HeaderValue::from_static("gw"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert("x-request-id", HeaderValue::from_static("r1"));
        let engine = HeaderValue::from_static("127.0.0.1:11400");
        let up = upstream_headers(
            h.clone(),
            &engine,
            Some(&HeaderValue::from_static("Bearer engine")),
        );
        assert_eq!(up.len(), 3, "{up:?}");
        assert_eq!(up[header::AUTHORIZATION], "Bearer engine");
        assert_eq!(up[header::HOST], "127.0.0.1:11400");
        assert_eq!(up["x-request-id"], "r1");
        assert!(upstream_headers(h, &engine, None)
            .get(header::AUTHORIZATION)
            .is_none());
    }
}
