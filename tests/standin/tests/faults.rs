//! Black-box tests of the remaining fault knobs, the control endpoints, the engine-core child
//! and robustness against misbehaving clients.

mod common;

use common::*;
use nix::sys::signal::Signal;
use nix::unistd::{getpgid, Pid};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(5);
const READY: Duration = Duration::from_secs(20);

/// The engine-core child's PID from the stand-in's stdout.
fn child_pid(s: &Standin) -> i32 {
    let t0 = Instant::now();
    loop {
        if let Some(pid) = s
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("citadel-standin engine-core pid="))
            .and_then(|p| p.trim().parse().ok())
        {
            return pid;
        }
        assert!(t0.elapsed() < T, "no engine-core pid line:\n{}", s.stdout());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pid: i32, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
}

#[test]
fn health_modes() {
    let mut s = Standin::start("m", &[], &[("STANDIN_HEALTH", "503")]);
    s.wait_exit_or_listen();
    assert_eq!(get(&s.url("/health"), None, T).unwrap().0, 503);
    assert_eq!(get(&s.url("/ping"), None, T).unwrap().0, 503);
    assert_eq!(get(&s.url("/version"), None, T).unwrap().0, 200);

    let mut s = Standin::start("m", &[], &[("STANDIN_HEALTH", "hang")]);
    s.wait_exit_or_listen();
    let t0 = Instant::now();
    let e = get(&s.url("/health"), None, Duration::from_millis(800)).unwrap_err();
    assert!(t0.elapsed() >= Duration::from_millis(700), "{e}");
    assert_eq!(
        get(&s.url("/version"), None, T).unwrap().0,
        200,
        "the rest still answers"
    );

    let mut s = Standin::start("m", &[], &[("STANDIN_HEALTH", "drop")]);
    s.wait_exit_or_listen();
    let t0 = Instant::now();
    assert!(get(&s.url("/health"), None, T).is_err());
    assert!(t0.elapsed() < Duration::from_secs(3), "drop closes at once");
    assert_eq!(get(&s.url("/version"), None, T).unwrap().0, 200);
}

#[test]
fn control_endpoints() {
    let mut s = Standin::start("m", &[], &[]);
    s.wait_ready(READY);
    assert_eq!(
        post(&s.url("/_standin/hang"), "", None, T).unwrap().0,
        404,
        "off by default"
    );

    let mut s = Standin::start("m", &[], &[("STANDIN_CONTROL", "1"), ("VLLM_API_KEY", "k")]);
    s.wait_ready(READY);
    let c = r#"{"prompt":"x","max_tokens":3}"#;
    assert_eq!(
        post(&s.url("/v1/completions"), c, Some("k"), T).unwrap().0,
        200
    );
    assert_eq!(
        post(&s.url("/_standin/health?mode=503"), "", None, T)
            .unwrap()
            .0,
        200
    );
    assert_eq!(get(&s.url("/health"), None, T).unwrap().0, 503);
    assert_eq!(
        post(&s.url("/_standin/health?mode=ok"), "", None, T)
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        post(&s.url("/_standin/health?mode=bad"), "", None, T)
            .unwrap()
            .0,
        400
    );
    assert_eq!(get(&s.url("/health"), None, T).unwrap().0, 200);
    assert_eq!(post(&s.url("/_standin/hang"), "", None, T).unwrap().0, 200);
    assert!(post(
        &s.url("/v1/completions"),
        c,
        Some("k"),
        Duration::from_secs(1)
    )
    .is_err());
    assert_eq!(get(&s.url("/health"), None, T).unwrap().0, 200);
    assert_eq!(s.metric("vllm:generation_tokens_total"), 3.0);
    assert_eq!(s.metric("vllm:num_requests_running"), 1.0);
    let (st, state) = get(&s.url("/_standin/state"), None, T).unwrap();
    assert_eq!(st, 200);
    assert!(state.contains("\"hung\":true"), "{state}");
    assert_eq!(
        post(&s.url("/_standin/exit?code=7"), "", None, T)
            .unwrap()
            .0,
        200
    );
    assert_eq!(s.wait_exit(T).code(), Some(7));

    let mut s = Standin::start("m", &[], &[("STANDIN_CONTROL", "1")]);
    s.wait_ready(READY);
    assert_eq!(post(&s.url("/_standin/crash"), "", None, T).unwrap().0, 200);
    assert_eq!(s.wait_exit(T).signal(), Some(Signal::SIGABRT as i32));
}

#[test]
fn token_delay_keeps_counter_moving_while_running() {
    let mut s = Standin::start("m", &[], &[("STANDIN_TOKEN_DELAY_MS", "100")]);
    s.wait_ready(READY);
    let url = s.url("/v1/completions");
    let req = std::thread::spawn(move || {
        post(
            &url,
            r#"{"prompt":"a","max_tokens":20}"#,
            None,
            Duration::from_secs(20),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let running = s.metric("vllm:num_requests_running");
    let a = s.metric("vllm:generation_tokens_total");
    std::thread::sleep(Duration::from_millis(500));
    let b = s.metric("vllm:generation_tokens_total");
    assert_eq!(running, 1.0);
    assert!(b > a && a > 0.0, "counter must move: {a} -> {b}");
    let (st, _) = req.join().unwrap().unwrap();
    assert_eq!(st, 200);
    assert_eq!(s.metric("vllm:generation_tokens_total"), 20.0);
    assert_eq!(s.metric("vllm:num_requests_running"), 0.0);
    // A client that leaves mid-generation aborts its request.
    let url = s.url("/v1/completions");
    assert!(post(
        &url,
        r#"{"prompt":"a","max_tokens":50}"#,
        None,
        Duration::from_millis(400)
    )
    .is_err());
    let t0 = Instant::now();
    while s.metric("vllm:num_requests_running") != 0.0 {
        assert!(t0.elapsed() < T, "the abandoned request kept running");
        std::thread::sleep(Duration::from_millis(50));
    }
    let total = s.metric("vllm:generation_tokens_total");
    assert!(total < 70.0, "{total}");
}

#[test]
fn streaming_ends_with_done() {
    let mut s = Standin::start("m", &[], &[]);
    s.wait_ready(READY);
    let (st, body) = post(
        &s.url("/v1/chat/completions"),
        r#"{"messages":[{"role":"user","content":"one two"}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}"#,
        None,
        T,
    )
    .unwrap();
    assert_eq!(st, 200);
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let text: String = events
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "one two one");
    assert!(body.contains("\"completion_tokens\":3"), "{body}");
}

#[test]
fn engine_core_child_is_stopped_on_sigterm() {
    let mut s = Standin::start("m", &[], &[("STANDIN_ENGINE_CORE", "1")]);
    s.wait_ready(READY);
    let pid = child_pid(&s);
    assert!(alive(pid));
    assert_eq!(
        getpgid(Some(Pid::from_raw(pid))).unwrap(),
        getpgid(Some(Pid::from_raw(s.pid()))).unwrap()
    );
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with("VLLM::EngineCore\0"), "{cmdline:?}");
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(T).code(), Some(0));
    assert!(
        wait_gone(pid, T),
        "engine-core {pid} survived a clean shutdown"
    );
}

#[test]
fn leave_child_orphans_a_term_ignoring_child() {
    let mut s = Standin::start(
        "m",
        &[],
        &[
            ("STANDIN_LEAVE_CHILD", "1"),
            ("STANDIN_CHILD_IGNORE_TERM", "1"),
            ("STANDIN_CHILD_LIFETIME_SECS", "60"),
        ],
    );
    s.wait_ready(READY);
    let pid = child_pid(&s);
    let pgid = getpgid(Some(Pid::from_raw(s.pid()))).unwrap();
    assert_eq!(
        getpgid(Some(Pid::from_raw(pid))).unwrap(),
        pgid,
        "same process group"
    );
    nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(T).code(), Some(0));
    std::thread::sleep(Duration::from_millis(300));
    let survived = alive(pid);
    kill9(pid);
    assert!(survived, "the child must ignore SIGTERM and be left behind");
    assert!(wait_gone(pid, T), "SIGKILL ends it");
}

#[test]
fn crash_leaves_the_engine_core_behind() {
    let mut s = Standin::start(
        "m",
        &[],
        &[("STANDIN_ENGINE_CORE", "1"), ("STANDIN_CONTROL", "1")],
    );
    s.wait_ready(READY);
    let pid = child_pid(&s);
    post(&s.url("/_standin/crash"), "", None, T).unwrap();
    assert_eq!(s.wait_exit(T).signal(), Some(Signal::SIGABRT as i32));
    let survived = alive(pid);
    kill9(pid);
    assert!(
        survived,
        "a crashed API server leaves its engine core (vLLM issue 55510)"
    );
}

#[test]
fn port_in_use_fails_at_once() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "m",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .env("STANDIN_LOAD_SECS", "30")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Address already in use"));
}

#[test]
fn bad_knob_exits_64() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "m", "--port", "0"])
        .env("STANDIN_LOAD_SECS", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("STANDIN_LOAD_SECS=\"soon\""));
}

#[test]
fn disable_log_stats_has_no_metrics() {
    let mut s = Standin::start("m", &["--disable-log-stats"], &[]);
    s.wait_ready(READY);
    assert_eq!(get(&s.url("/metrics"), None, T).unwrap().0, 404);
}

#[test]
fn misbehaving_clients_do_not_hurt_the_server() {
    let mut s = Standin::start("m", &[], &[]);
    s.wait_ready(READY);
    let addr = ("127.0.0.1", s.port);
    // Idle connections, half requests, garbage, an oversized head, a lying content-length.
    let idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.write_all(b"\x00\x01\x02 nonsense\r\n\r\n").unwrap();
    let mut reply = String::new();
    garbage.set_read_timeout(Some(T)).unwrap();
    let _ = garbage.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    let mut liar = TcpStream::connect(addr).unwrap();
    liar.write_all(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{}")
        .unwrap();
    let mut big = TcpStream::connect(addr).unwrap();
    let _ = big.write_all(&vec![b'a'; 100 * 1024]);
    for _ in 0..5 {
        assert_eq!(get(&s.url("/health"), None, T).unwrap().0, 200);
    }
    let (st, _) = post(&s.url("/v1/completions"), "{not json", None, T).unwrap();
    assert_eq!(st, 400);
    assert_eq!(get(&s.url("/nope"), None, T).unwrap().0, 404);
    assert_eq!(post(&s.url("/health"), "", None, T).unwrap().0, 405);
    drop((idle, half, liar, big));
    assert_eq!(get(&s.url("/health"), None, T).unwrap().0, 200);
    assert!(s.child.try_wait().unwrap().is_none());
}

/// What is left on the connection: "" once the server has closed it.
fn rest(r: &mut std::io::BufReader<TcpStream>) -> String {
    let mut s = String::new();
    r.get_ref().set_read_timeout(Some(T)).unwrap();
    r.read_to_string(&mut s).expect("closed within 5 s");
    s
}

const ASK: &str = r#"{"model":"m","prompt":"a b","max_tokens":2}"#;

fn completion(close: bool) -> String {
    format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{}content-length: {}\r\n\r\n{ASK}",
        if close { "connection: close\r\n" } else { "" },
        ASK.len()
    )
}

#[test]
fn keepalive_knob_serves_a_connection_s_requests_until_it_closes() {
    let mut s = Standin::start("m", &[], &[("STANDIN_KEEPALIVE", "1")]);
    s.wait_ready(READY);
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    // Two requests sent at once: the second stays buffered while the first is answered.
    let two = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\n\r\n{}",
        completion(false)
    );
    c.write_all(two.as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(c.try_clone().unwrap());
    for _ in 0..2 {
        let (head, _) = citadel_standin::testing::read_response(&mut r);
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection:"), "{head}");
    }
    // A client's `connection: close` ends it after the answer.
    c.write_all(completion(true).as_bytes()).unwrap();
    let (head, _) = citadel_standin::testing::read_response(&mut r);
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(rest(&mut r), "");
    // A stream ends with its connection.
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let ask = r#"{"model":"m","prompt":"a","max_tokens":2,"stream":true}"#;
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{ask}",
        ask.len()
    )
    .unwrap();
    let all = rest(&mut std::io::BufReader::new(c));
    assert!(all.contains("connection: close"), "{all}");
    assert!(all.trim_end().ends_with("data: [DONE]"), "{all}");
}

#[test]
fn without_the_knob_every_answer_closes_its_connection() {
    let mut s = Standin::start("m", &[], &[]);
    s.wait_ready(READY);
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.write_all(format!("{}{}", completion(false), completion(false)).as_bytes())
        .unwrap();
    let mut r = std::io::BufReader::new(c);
    let (head, _) = citadel_standin::testing::read_response(&mut r);
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(rest(&mut r), "", "the second request was answered");
}
