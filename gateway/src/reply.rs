//! Answers the gateway makes itself: OpenAI's error JSON, JSON documents, plain text.

use crate::body::Body;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

pub type Reply = Response<Body>;

/// `{"error": {"message", "type", "param", "code"}}` with `status`.
pub fn error(status: u16, kind: &str, code: &str, param: Option<&str>, message: &str) -> Reply {
    let v = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    json_doc(status, &v)
}

pub fn json_doc(status: u16, v: &Value) -> Reply {
    let mut r = Response::new(Body::full(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub fn text(status: u16, content_type: &'static str, body: String) -> Reply {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn unauthorized() -> Reply {
    error(
        401,
        "invalid_request_error",
        "invalid_api_key",
        None,
        "missing or wrong API key: send Authorization: Bearer KEY",
    )
}

pub fn unknown_model(asked: &str, names: &[&str]) -> Reply {
    error(
        404,
        "invalid_request_error",
        "model_not_found",
        Some("model"),
        &format!(
            "the model {asked:?} is not served here; models: {}",
            names.join(", ")
        ),
    )
}

pub fn unavailable(model: &str, reason: &str, retry_after_secs: u64) -> Reply {
    let mut r = error(
        503,
        "service_unavailable_error",
        "model_unavailable",
        Some("model"),
        &format!("the model {model:?} is not serving now ({reason}); retry later"),
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

pub fn bad_request(param: Option<&str>, message: &str) -> Reply {
    error(400, "invalid_request_error", "bad_request", param, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shapes() {
        let r = unavailable("phi3", "starting: loading", 10);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[RETRY_AFTER], "10");
        let r = unknown_model("gpt-5", &["a", "b"]);
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }
}
