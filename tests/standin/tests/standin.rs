//! Black-box tests of the built `citadel-standin` binary.

mod common;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(5);
const READY: Duration = Duration::from_secs(20);

#[test]
fn unknown_flag_exits_2_like_argparse() {
    let out = Command::new(BIN)
        .args(["serve", "/models/m", "--port", "1", "--swap-space", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vllm serve: error: unrecognized arguments: --swap-space 4"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["serve", "--port", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("required: model_tag"));
    let out = Command::new(BIN)
        .args(["serve", "m", "--port", "http"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("argument --port: invalid int value: 'http'")
    );
}

#[test]
fn refuses_connections_while_loading_then_serves() {
    let mut s = Standin::start("/models/m", &[], &[("STANDIN_LOAD_SECS", "1.5")]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        s.child.try_wait().unwrap().is_none(),
        "exited while loading"
    );
    assert!(
        refused(s.port),
        "a connection must be refused while loading"
    );
    let waited = s.wait_ready(READY);
    assert!(
        waited >= Duration::from_millis(900),
        "ready after {waited:?}, before the load delay"
    );
    let (st, body) = get(&s.url("/health"), None, T).unwrap();
    assert_eq!((st, body.as_str()), (200, ""));
    let (st, body) = get(&s.url("/version"), None, T).unwrap();
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["version"],
        "0.33.0"
    );
    let log = s.stdout();
    assert!(
        log.contains(&format!(
            "Starting vLLM server on http://127.0.0.1:{}",
            s.port
        )),
        "{log}"
    );
    assert!(log.contains("Application startup complete."), "{log}");
}

#[test]
fn api_key_guards_v1_only() {
    let mut s = Standin::start(
        "/models/mixtral-8x7b",
        &["--served-model-name", "mixtral", "--max-model-len", "32768"],
        &[("VLLM_API_KEY", "sekrit")],
    );
    s.wait_ready(READY);
    assert_eq!(get(&s.url("/v1/models"), None, T).unwrap().0, 401);
    assert_eq!(get(&s.url("/v1/models"), Some("wrong"), T).unwrap().0, 401);
    let c = r#"{"prompt":"hi","max_tokens":1}"#;
    assert_eq!(post(&s.url("/v1/completions"), c, None, T).unwrap().0, 401);
    let (st, body) = get(&s.url("/v1/models"), Some("sekrit"), T).unwrap();
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "mixtral");
    assert_eq!(v["data"][0]["root"], "/models/mixtral-8x7b");
    assert_eq!(v["data"][0]["max_model_len"], 32768);
    for open in ["/health", "/metrics", "/version", "/ping"] {
        assert_eq!(get(&s.url(open), None, T).unwrap().0, 200, "{open}");
    }
    // --api-key on the command line works the same way.
    let mut s = Standin::start("m", &["--api-key", "k2"], &[]);
    s.wait_ready(READY);
    assert_eq!(get(&s.url("/v1/models"), None, T).unwrap().0, 401);
    assert_eq!(get(&s.url("/v1/models"), Some("k2"), T).unwrap().0, 200);
}

#[test]
fn completions_echo_and_count_tokens() {
    let mut s = Standin::start("/models/m", &["--served-model-name", "chat"], &[]);
    s.wait_ready(READY);
    assert_eq!(s.metric("vllm:generation_tokens_total"), 0.0);
    let (st, body) = post(
        &s.url("/v1/completions"),
        r#"{"model":"chat","prompt":"the quick brown fox","max_tokens":6}"#,
        None,
        T,
    )
    .unwrap();
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "chat");
    assert_eq!(v["choices"][0]["text"], "the quick brown fox the quick");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 6);
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(s.metric("vllm:generation_tokens_total"), 6.0);
    assert_eq!(s.metric("vllm:prompt_tokens_total"), 4.0);
    let (st, body) = post(
        &s.url("/v1/chat/completions"),
        r#"{"messages":[{"role":"user","content":"ping"}],"max_tokens":1}"#,
        None,
        T,
    )
    .unwrap();
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "ping");
    assert_eq!(s.metric("vllm:generation_tokens_total"), 7.0);
    assert_eq!(
        s.metric(
            r#"vllm:request_success_total{model_name="chat",engine="0",finished_reason="length"}"#
        ),
        2.0
    );
    assert_eq!(s.metric("vllm:num_requests_running"), 0.0);
    // Unknown model: 404, nothing counted.
    let (st, _) = post(
        &s.url("/v1/completions"),
        r#"{"model":"x","prompt":"a"}"#,
        None,
        T,
    )
    .unwrap();
    assert_eq!(st, 404);
    assert_eq!(s.metric("vllm:generation_tokens_total"), 7.0);
}

#[test]
fn hang_knob_keeps_health_but_freezes_generation() {
    let mut s = Standin::start("m", &[], &[("STANDIN_HANG_AFTER_SECS", "3")]);
    s.wait_ready(READY);
    let body = r#"{"prompt":"a b","max_tokens":2}"#;
    let (st, _) = post(&s.url("/v1/completions"), body, None, T).unwrap();
    assert_eq!(st, 200, "a completion right after start works");
    // Wait for the hang: a completion that times out.
    let t0 = Instant::now();
    loop {
        match post(
            &s.url("/v1/completions"),
            body,
            None,
            Duration::from_secs(1),
        ) {
            Err(e) => {
                assert!(
                    e.to_lowercase().contains("timed out") || e.contains("timeout"),
                    "{e}"
                );
                break;
            }
            Ok(_) => assert!(t0.elapsed() < Duration::from_secs(15), "never hung"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        get(&s.url("/health"), None, T).unwrap().0,
        200,
        "/health stays 200 when hung"
    );
    assert!(s.metric("vllm:num_requests_running") >= 1.0);
    let frozen = s.metric("vllm:generation_tokens_total");
    assert_eq!(frozen % 2.0, 0.0, "only whole requests produced tokens");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(s.metric("vllm:generation_tokens_total"), frozen);
    assert!(s.metric("vllm:num_requests_running") >= 1.0);
}

#[test]
fn exit_after_knob_uses_the_chosen_code() {
    for (code, expect) in [(None, 0), (Some("3"), 3)] {
        let mut env = vec![("STANDIN_EXIT_AFTER_SECS", "0.5")];
        if let Some(c) = code {
            env.push(("STANDIN_EXIT_CODE", c));
        }
        let mut s = Standin::start("m", &[], &env);
        s.wait_ready(READY);
        let st = s.wait_exit(Duration::from_secs(10));
        assert_eq!(st.code(), Some(expect), "{}", s.stdout());
        assert!(s.stdout().contains("died unexpectedly"));
    }
}

#[test]
fn crash_knob_aborts() {
    let mut s = Standin::start("m", &[], &[("STANDIN_CRASH_AFTER_SECS", "0.3")]);
    s.wait_ready(READY);
    let st = s.wait_exit(Duration::from_secs(10));
    assert_eq!(st.signal(), Some(Signal::SIGABRT as i32), "{st}");
}

#[test]
fn fail_at_start_exits_1_without_serving() {
    let mut s = Standin::start(
        "m",
        &[],
        &[("STANDIN_FAIL_AT_START", "1"), ("STANDIN_LOAD_SECS", "0.2")],
    );
    let st = s.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(1));
    assert!(
        s.stderr().contains("Engine core initialization failed"),
        "{}",
        s.stderr()
    );
    assert!(!s.stdout().contains("Application startup complete."));
}

#[test]
fn sigterm_exits_0_promptly() {
    let mut s = Standin::start("m", &[], &[]);
    s.wait_ready(READY);
    s.signal(Signal::SIGTERM);
    let st = s.wait_exit(Duration::from_secs(5));
    assert_eq!(st.code(), Some(0));
    assert!(s
        .stdout()
        .contains("[shutdown] API server: shutdown triggered"));
    // Also while loading.
    let mut s = Standin::start("m", &[], &[("STANDIN_LOAD_SECS", "30")]);
    std::thread::sleep(Duration::from_millis(300));
    s.signal(Signal::SIGINT);
    assert_eq!(s.wait_exit(Duration::from_secs(5)).code(), Some(0));
}

#[test]
fn faults_file_overrides_env_for_one_model() {
    let faults = tempfile::tempdir().unwrap();
    std::fs::write(
        faults.path().join("sick"),
        "# only this one\nSTANDIN_HEALTH=503\n",
    )
    .unwrap();
    let dir = faults.path().to_str().unwrap();
    let env = [("STANDIN_FAULTS_DIR", dir), ("STANDIN_HEALTH", "ok")];
    let mut sick = Standin::start("m", &["--served-model-name", "sick"], &env);
    let mut well = Standin::start("m", &["--served-model-name", "well"], &env);
    well.wait_ready(READY);
    let t0 = Instant::now();
    loop {
        match get(&sick.url("/health"), None, T) {
            Ok((503, _)) => break,
            Ok((200, _)) => panic!("the faults file was not applied"),
            _ => assert!(
                t0.elapsed() < READY,
                "sick never answered:\n{}",
                sick.stderr()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sick.stdout().contains("fault knobs from"));
    assert_eq!(get(&well.url("/health"), None, T).unwrap().0, 200);
    assert!(sick.child.try_wait().unwrap().is_none());
}

#[test]
fn port_0_and_access_log() {
    let mut s = Standin::start("m", &["--enable-uvicorn-access-log"], &[]);
    s.wait_ready(READY);
    let _ = get(&s.url("/nope"), None, T);
    let t0 = Instant::now();
    while !s.stdout().contains("\"GET /nope HTTP/1.1\" 404 Not Found") {
        assert!(t0.elapsed() < T, "no access log line:\n{}", s.stdout());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(s.stdout().contains("\"GET /health HTTP/1.1\" 200 OK"));

    // --port 0: the log names the port it got.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("out");
    let mut child = Command::new(BIN)
        .args(["serve", "m", "--host", "127.0.0.1", "--port", "0"])
        .stdout(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let port: u16 = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(p) = text
            .lines()
            .find_map(|l| l.split("Starting vLLM server on http://127.0.0.1:").nth(1))
        {
            break p.trim().parse().unwrap();
        }
        assert!(t0.elapsed() < READY, "{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let r = get(&format!("http://127.0.0.1:{port}/health"), None, T);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.unwrap().0, 200);
    assert_ne!(port, 0);
}
