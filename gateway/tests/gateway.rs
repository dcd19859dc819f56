//! citadel-gateway against stand-in engines: routing, errors, availability, limits,
//! streaming, keys, signals. Every check is on behaviour; bounds on waiting are liveness
//! limits (the test fails instead of hanging), never timing claims.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

#[test]
fn routes_by_served_name_and_alias_and_404_names_the_models() {
    let a = start_engine("org/a-7b", &[], &[]);
    let b = start_engine("b", &[], &[]);
    let rest = model_toml(
        "a",
        a.port,
        "served_model_name = \"org/a-7b\"\naliases = [\"alpha\", \"gpt-4o-mini\"]",
    ) + &model_toml("b", b.port, "");
    let g = Gateway::start("", &rest);
    for (asked, served) in [
        ("org/a-7b", "org/a-7b"),
        ("alpha", "org/a-7b"),
        ("gpt-4o-mini", "org/a-7b"),
        ("b", "b"),
    ] {
        let (st, _, body) = g.post("/v1/chat/completions", &chat(asked));
        assert_eq!(st, 200, "{asked}: {body}");
        assert_eq!(json(&body)["model"], served, "{asked}: {body}");
    }
    let (st, _, body) = g.post(
        "/v1/completions",
        r#"{"model":"b","prompt":"one two","max_tokens":2}"#,
    );
    assert_eq!(
        (st, json(&body)["choices"][0]["text"].as_str()),
        (200, Some("one two")),
        "{body}"
    );
    let (st, _, body) = g.post("/v1/chat/completions", &chat("gpt-5"));
    assert_eq!(st, 404, "{body}");
    let e = &json(&body)["error"];
    assert_eq!(e["code"], "model_not_found");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("models: alpha, b, gpt-4o-mini, org/a-7b"),
        "{body}"
    );
    let (st, _, body) = g.post("/v1/chat/completions", r#"{"messages":[]}"#);
    assert_eq!(
        (st, json(&body)["error"]["param"].as_str()),
        (400, Some("model"))
    );
    let (st, _, body) = http(g.port, "GET", "/v1/models", &[], "");
    assert_eq!(st, 200);
    let ids: Vec<String> = json(&body)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["org/a-7b", "alpha", "gpt-4o-mini", "b"]);
    assert_eq!(http(g.port, "GET", "/health", &[], "").0, 200);
    assert!(g.metric("citadel_gateway_requests_total", "model=\"a\",code=\"200\"") >= 3.0);
    assert_eq!(
        g.metric("citadel_gateway_requests_total", "model=\"-\",code=\"404\""),
        1.0
    );
    // One access-log line per request, with model and status.
    let log = g.stderr();
    assert!(log.contains("access: key=- model=a status=200"), "{log}");
    assert!(log.contains("model=- status=404"), "{log}");
}

#[test]
fn a_loading_model_gets_503_with_retry_after_and_never_a_refused_connection() {
    let e = start_engine("slow", &[("STANDIN_LOAD_SECS", "3")], &[]);
    let g = Gateway::start("", &model_toml("slow", e.port, ""));
    let t0 = Instant::now();
    let (mut unavailable, mut ok) = (0, 0);
    while ok < 3 {
        assert!(t0.elapsed() < Duration::from_secs(60), "never served");
        // A transport error (refused, reset) panics inside try_http's caller: none allowed.
        let (st, hs, body) = try_http(g.port, "POST", "/v1/chat/completions", &[], &chat("slow"))
            .unwrap_or_else(|err| panic!("the client saw a transport error: {err}"));
        match st {
            503 => {
                assert_eq!(ok, 0, "a 503 after the model served: {body}");
                assert!(header(&hs, "retry-after").is_some(), "{hs:?}");
                assert_eq!(json(&body)["error"]["code"], "model_unavailable", "{body}");
                unavailable += 1;
            }
            200 => ok += 1,
            other => panic!("status {other}: {body}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(unavailable > 0, "the load was never seen as 503");
    assert!(g.metric("citadel_gateway_upstream_errors_total", "kind=\"connect\"") >= 1.0);
}

#[test]
fn the_monitors_state_keeps_requests_away_with_its_reason() {
    let e = start_engine("m", &[], &[]);
    let g = Gateway::start("", &model_toml("m", e.port, ""));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let state = |s: &str, reason: &str| {
        format!(
            r#"{{"schema":1,"updated_unix":{now},"sweep_ms":1,"models":[{{"name":"m","unit":"citadel-model@m.service","port":{},"state":"{s}","unit_state":"activating","main_pid":1,"systemd_restarts":0,"monitor_restarts":1,"consecutive_failures":3,"latency_ms":null,"reason":{reason},"since_unix":{now}}}]}}"#,
            e.port
        )
    };
    std::fs::write(
        g.state_file(),
        state("restarting", "\"hung: no token for 120s\""),
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the state file was followed",
        || g.post("/v1/chat/completions", &chat("m")).0 == 503,
    );
    let asked_before = e.metric("vllm:request_success_total", "");
    let (_, hs, body) = g.post("/v1/chat/completions", &chat("m"));
    assert!(
        body.contains("restarting: hung: no token for 120s"),
        "{body}"
    );
    assert_eq!(
        header(&hs, "retry-after"),
        Some("2"),
        "the monitor's interval"
    );
    let (_, _, models) = http(g.port, "GET", "/v1/models", &[], "");
    assert_eq!(json(&models)["data"], serde_json::json!([]), "{models}");
    // The engine was not asked while the monitor said so.
    assert_eq!(e.metric("vllm:request_success_total", ""), asked_before);
    std::fs::write(g.state_file(), state("healthy", "null")).unwrap();
    eventually(Duration::from_secs(10), "healthy again", || {
        g.post("/v1/chat/completions", &chat("m")).0 == 200
    });
}

#[test]
fn a_hung_model_fills_only_its_own_slots_and_queue_and_never_delays_another() {
    let hung = start_engine("hung", &[("STANDIN_HANG_AFTER_SECS", "0")], &[]);
    let fine = start_engine("fine", &[], &[]);
    let rest =
        model_toml("hung", hung.port, "max_concurrent = 2") + &model_toml("fine", fine.port, "");
    let g = Gateway::start("queue_limit = 1\nqueue_timeout_secs = 2", &rest);
    let port = g.port;
    // Two requests hang at the engine, a third waits in the queue.
    let stuck: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                try_http(port, "POST", "/v1/chat/completions", &[], &chat("hung")).map(|r| r.0)
            })
        })
        .collect();
    eventually(
        Duration::from_secs(20),
        "2 at the hung engine, 1 queued",
        || {
            g.metric("citadel_gateway_in_flight", "model=\"hung\"") == 2.0
                && g.metric("citadel_gateway_queued", "model=\"hung\"") == 1.0
        },
    );
    // The queue is full: 429 at once, in OpenAI's shape.
    let (st, _, body) = g.post("/v1/chat/completions", &chat("hung"));
    assert_eq!(st, 429, "{body}");
    assert_eq!(json(&body)["error"]["code"], "queue_full");
    // Another model answers while the hung one still holds its slots.
    for _ in 0..5 {
        let (st, _, body) = g.post("/v1/chat/completions", &chat("fine"));
        assert_eq!(st, 200, "{body}");
    }
    assert_eq!(g.metric("citadel_gateway_in_flight", "model=\"hung\""), 2.0);
    // The queued request gives up after the queue timeout with a 503.
    eventually(
        Duration::from_secs(20),
        "the queued request timed out",
        || {
            g.metric(
                "citadel_gateway_requests_total",
                "model=\"hung\",code=\"503\"",
            ) == 1.0
        },
    );
    assert_eq!(g.metric("citadel_gateway_in_flight", "model=\"hung\""), 2.0);
    drop(g);
    for t in stuck {
        let _ = t.join();
    }
}

#[test]
fn a_client_that_leaves_mid_stream_closes_the_engine_request() {
    let e = start_engine("s", &[("STANDIN_TOKEN_DELAY_MS", "100")], &[]);
    let g = Gateway::start("", &model_toml("s", e.port, ""));
    let mut c = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    let body = r#"{"model":"s","prompt":"a b c","max_tokens":200,"stream":true}"#;
    write!(
        c,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Read until two events arrived: chunks pass through as the engine makes them.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    while got.windows(6).filter(|w| w == b"data: ").count() < 2 {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(e.metric("vllm:num_requests_running", ""), 1.0);
    drop(c);
    eventually(Duration::from_secs(30), "the engine saw the abort", || {
        e.metric("vllm:request_success_total", "finished_reason=\"abort\"") == 1.0
    });
    assert!(e.metric("vllm:generation_tokens_total", "") < 200.0);
    eventually(Duration::from_secs(10), "the slot was given back", || {
        g.metric("citadel_gateway_in_flight", "model=\"s\"") == 0.0
    });
    assert!(g.stderr().contains("incomplete"), "{}", g.stderr());
}

#[test]
fn client_keys_401_or_pass_and_never_reach_the_log_and_the_engine_key_is_added() {
    let engine_key = "engine-key-0123456789";
    let e = start_engine("k", &[], &["--api-key", engine_key]);
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let alice = "sk-alice-0123456789abcdef";
    std::fs::write(&keys, format!("# clients\nalice:{alice}\n")).unwrap();
    let ek = dir.path().join("engine-key");
    std::fs::write(&ek, format!("{engine_key}\n")).unwrap();
    let rest = format!(
        "[engine]\napi_key_file = \"{}\"\n{}",
        ek.display(),
        model_toml("k", e.port, "")
    );
    let g = Gateway::start(&format!("api_keys_file = \"{}\"", keys.display()), &rest);
    let (st, _, body) = g.post("/v1/chat/completions", &chat("k"));
    assert_eq!(st, 401, "no key: {body}");
    assert_eq!(json(&body)["error"]["code"], "invalid_api_key");
    let wrong = http(
        g.port,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer sk-alice-0123456789abcdeX")],
        &chat("k"),
    );
    assert_eq!(wrong.0, 401);
    let engine_as_client = http(
        g.port,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &format!("Bearer {engine_key}"))],
        &chat("k"),
    );
    assert_eq!(engine_as_client.0, 401);
    let bearer = format!("Bearer {alice}");
    let (st, _, body) = http(
        g.port,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &bearer)],
        &chat("k"),
    );
    assert_eq!(st, 200, "right key (and the engine's key upstream): {body}");
    let (st, _, _) = http(
        g.port,
        "GET",
        "/v1/models",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(st, 200);
    assert_eq!(http(g.port, "GET", "/v1/models", &[], "").0, 401);
    let log = g.stderr();
    assert!(
        log.contains("access: key=alice model=k status=200"),
        "{log}"
    );
    assert!(log.contains("status=401"), "{log}");
    assert!(
        !log.contains(alice) && !log.contains("0123456789"),
        "a key reached the log:\n{log}"
    );
}

fn exit_of(config_text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("citadel.toml");
    std::fs::write(&cfg, config_text).unwrap();
    let out = Command::new(GATEWAY)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_gateway_configs_and_keys_exit_78_with_every_problem() {
    let models = model_toml("a", 21999, "max_concurrent = 0\naliases = [\"\"]");
    let (code, err) = exit_of(&format!(
        "[gateway]\nlisten = \"0.0.0.0:21999\"\nqueue_timeout_secs = 0\ndrain = 5\n{models}"
    ));
    assert_eq!(code, Some(78), "{err}");
    for key in [
        "gateway.listen = \"0.0.0.0:21999\": uses port 21999",
        "gateway.listen = \"0.0.0.0:21999\": listens beyond loopback",
        "gateway.queue_timeout_secs = 0",
        "gateway.drain = 5: unknown key",
        "models.a.max_concurrent = 0",
        "models.a.aliases",
    ] {
        assert!(err.contains(key), "missing {key:?}:\n{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "bob:tooshort\n").unwrap();
    let (code, err) = exit_of(&format!(
        "[gateway]\napi_keys_file = \"{}\"\n",
        keys.display()
    ));
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains(&format!("{}:1:", keys.display())) && !err.contains("tooshort"),
        "{err}"
    );
    let (code, err) = exit_of(&format!(
        "[gateway]\napi_keys_file = \"{}/missing\"\n",
        dir.path().display()
    ));
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("gateway.api_keys_file"), "{err}");
}

fn signal(child: &std::process::Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

#[test]
fn sigterm_finishes_the_stream_in_flight_then_exits_0() {
    let e = start_engine("s", &[("STANDIN_TOKEN_DELAY_MS", "50")], &[]);
    let mut g = Gateway::start("drain_secs = 30", &model_toml("s", e.port, ""));
    let port = g.port;
    let stream = std::thread::spawn(move || {
        http(
            port,
            "POST",
            "/v1/completions",
            &[],
            r#"{"model":"s","prompt":"x","max_tokens":20,"stream":true}"#,
        )
    });
    eventually(Duration::from_secs(20), "the stream started", || {
        e.metric("vllm:num_requests_running", "") == 1.0
    });
    signal(&g.child, nix::sys::signal::Signal::SIGTERM);
    let (st, _, body) = stream.join().unwrap();
    assert_eq!(st, 200);
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(body.matches("data: ").count(), 22, "{body}");
    let status = g.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(g.stderr().contains("draining"), "{}", g.stderr());
}

#[test]
fn sigterm_answers_a_connection_whose_request_comes_after_it_and_closes_a_silent_one() {
    let e = start_engine("f", &[], &[]);
    // A long drain: the silent connection must not hold the exit until its deadline.
    let mut g = Gateway::start("drain_secs = 120", &model_toml("f", e.port, ""));
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    };
    let (mut late, mut silent) = (connect(), connect());
    // Both accepted: the metrics request's own connection is the third.
    eventually(Duration::from_secs(10), "both connections accepted", || {
        g.metric("citadel_gateway_connections", "") >= 3.0
    });
    signal(&g.child, nix::sys::signal::Signal::SIGTERM);
    eventually(Duration::from_secs(10), "the drain began", || {
        g.stderr().contains("draining")
    });
    // The client that had just connected sends its request now: it is answered, not closed.
    let body = chat("f");
    write!(
        late,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    late.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer:?}"
    );
    // The one that never sends is closed once its grace is over, and the gateway exits.
    let mut rest = Vec::new();
    assert_eq!(silent.read_to_end(&mut rest).unwrap(), 0, "{rest:?}");
    let t0 = Instant::now();
    let status = g.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", g.stderr());
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "held until the drain deadline: {}",
        g.stderr()
    );
    assert!(g.stderr().contains("drained, exiting"), "{}", g.stderr());
}

#[test]
fn sighup_reloads_routes_and_keeps_running_on_a_bad_config() {
    let e = start_engine("r", &[], &[]);
    let g = Gateway::start("", &model_toml("r", e.port, ""));
    assert_eq!(g.post("/v1/chat/completions", &chat("new-alias")).0, 404);
    let cfg = Gateway::config_path(g.dir.path());
    let good = Gateway::config(
        g.dir.path(),
        g.port,
        "",
        &model_toml("r", e.port, "aliases = [\"new-alias\"]"),
    );
    std::fs::write(&cfg, &good).unwrap();
    signal(&g.child, nix::sys::signal::Signal::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "the alias routes after SIGHUP",
        || g.post("/v1/chat/completions", &chat("new-alias")).0 == 200,
    );
    std::fs::write(&cfg, format!("{good}\n[gateway.bogus]\n")).unwrap();
    signal(&g.child, nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(10), "the refusal was logged", || {
        g.stderr().contains("reload refused")
    });
    assert_eq!(g.post("/v1/chat/completions", &chat("new-alias")).0, 200);
}

#[test]
fn takes_its_socket_from_systemd_and_refuses_one_that_is_not_gateway_listen() {
    let e = start_engine("sa", &[], &[]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        Gateway::config(dir.path(), port, "", &model_toml("sa", e.port, "")),
    )
    .unwrap();
    let activate = "/usr/bin/systemd-socket-activate";
    assert!(
        std::path::Path::new(activate).exists(),
        "{activate} (package systemd) is needed"
    );
    let mut child = Command::new(activate)
        .args(["-l", &format!("127.0.0.1:{port}"), GATEWAY, "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // systemd-socket-activate runs the gateway at the first connection, like a socket unit;
    // that connection waits in the backlog and is served.
    wait_listening(port, Duration::from_secs(20));
    let (st, _, body) = http(port, "POST", "/v1/chat/completions", &[], &chat("sa"));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(st, 200, "{body}");
    let other = free_port();
    let out = Command::new(activate)
        .args(["-l", &format!("127.0.0.1:{other}"), GATEWAY, "--config"])
        .arg(&cfg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // systemd-socket-activate waits for a connection before it runs the program.
    wait_listening(other, Duration::from_secs(20));
    let out = out.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("citadel-gateway.socket listens on"), "{err}");
}

/// Issue 16 (rollout): the gateway follows the rollout records in runtime_dir/rollout. Switched:
/// NAME goes to the surge instance's port (the monitor's word on the restarting main is not
/// asked); replacing: 503 "rolling out" with Retry-After; record gone: the main port again.
#[test]
fn a_rollout_record_moves_the_traffic_to_the_surge_port_and_replacing_is_503() {
    use citadel_common::rollout::{testing::record, Phase, Record};
    let old = start_engine("m", &[], &[]);
    let new = start_engine("m", &[], &[]);
    let g = Gateway::start("", &model_toml("m", old.port, ""));
    let runtime = g.dir.path().join("run");
    let served = |e: &Engine| e.metric("vllm:request_success_total", "");
    assert_eq!(g.post("/v1/chat/completions", &chat("m")).0, 200);
    let mut r = record("m", Phase::Switched, Some(new.port));
    r.write(&runtime).unwrap();
    // SIGHUP re-reads the records at once (what citadel-service rollout does: systemctl reload).
    signal(&g.child, nix::sys::signal::Signal::SIGHUP);
    eventually(Duration::from_secs(10), "routed to the surge port", || {
        let before = served(&new);
        g.post("/v1/chat/completions", &chat("m")).0 == 200 && served(&new) > before
    });
    // The monitor says the main is restarting: not asked in the switched phase.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(
        g.state_file(),
        format!(
            r#"{{"schema":1,"updated_unix":{now},"sweep_ms":1,"models":[{{"name":"m","unit":"citadel-model@m.service","port":{},"state":"starting","unit_state":"activating","main_pid":1,"systemd_restarts":0,"monitor_restarts":0,"consecutive_failures":0,"latency_ms":null,"reason":"loading","since_unix":{now}}}]}}"#,
            old.port
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let old_before = served(&old);
    for _ in 0..5 {
        let (st, _, body) = g.post("/v1/chat/completions", &chat("m"));
        assert_eq!(st, 200, "{body}");
    }
    assert_eq!(served(&old), old_before, "the old instance got no request");
    std::fs::remove_file(g.state_file()).unwrap();
    r.phase = Phase::Replacing;
    r.surge_port = None;
    r.write(&runtime).unwrap();
    eventually(Duration::from_secs(10), "503 while replacing", || {
        g.post("/v1/chat/completions", &chat("m")).0 == 503
    });
    let (_, hs, body) = g.post("/v1/chat/completions", &chat("m"));
    assert_eq!(header(&hs, "retry-after"), Some("5"), "{hs:?}");
    assert!(body.contains("rolling out"), "{body}");
    Record::remove(&runtime, "m").unwrap();
    eventually(Duration::from_secs(10), "back on the main port", || {
        let before = served(&old);
        g.post("/v1/chat/completions", &chat("m")).0 == 200 && served(&old) > before
    });
    assert!(
        g.stderr().contains("rollout of m: switched"),
        "{}",
        g.stderr()
    );
}

/// How many connections a stand-in engine has accepted (its `/_standin/state` GET included).
fn accepted(e: &Engine) -> u64 {
    let (st, _, body) = http(e.port, "GET", "/_standin/state", &[], "");
    assert_eq!(st, 200, "{body}");
    json(&body)["accepted"].as_u64().expect("accepted")
}

/// One request on the kept-alive client connection `r`; its status.
fn ask_on(r: &mut std::io::BufReader<TcpStream>, model: &str) -> u16 {
    let body = chat(model);
    write!(
        r.get_mut(),
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let (head, _) = citadel_standin::testing::read_response(r);
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn engine_connections_are_kept_alive_and_one_the_engine_closed_idle_is_not_reused() {
    // The engine closes a connection idle for 1.5 s; the gateway keeps one for up to 4 s
    // (upstream::POOL_IDLE), so the request after 3 s finds its pooled connection closed.
    let e = start_engine(
        "ka",
        &[
            ("STANDIN_KEEPALIVE", "1"),
            ("STANDIN_KEEPALIVE_IDLE_SECS", "1.5"),
        ],
        &[],
    );
    let g = Gateway::start("", &model_toml("ka", e.port, ""));
    let before = accepted(&e);
    // One client connection: its requests are served by one worker thread, with one pool.
    let c = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = std::io::BufReader::new(c);
    for _ in 0..5 {
        assert_eq!(ask_on(&mut r, "ka"), 200);
    }
    let after = accepted(&e);
    assert_eq!(after - before - 1, 1, "5 requests, one engine connection");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ask_on(&mut r, "ka"), 200, "{}", g.stderr());
    assert_eq!(accepted(&e) - after - 1, 1, "a new engine connection");
    assert_eq!(
        g.metric("citadel_gateway_upstream_errors_total", ""),
        0.0,
        "{}",
        g.stderr()
    );
}
