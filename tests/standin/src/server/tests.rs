use super::*;

fn engine() -> Engine {
    Engine::new(Settings {
        model_path: "/models/m".into(),
        max_model_len: 64,
        api_keys: vec!["k".into()],
        ..Settings::new(vec!["m\"x".into(), "alias".into()])
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
        keep_alive: true,
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
        r#"vllm:request_success_total{model_name="m\"x",engine="0",finished_reason="length"} 0.0"#
            .to_string(),
    ] {
        assert!(m.lines().any(|x| x == line), "missing {line:?} in\n{m}");
    }
    assert!(!m.contains("gpu_cache_usage_perc"));
}
