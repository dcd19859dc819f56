//! Drain on stop, against the stand-in (which honours `--shutdown-timeout` like vLLM: new
//! requests refused, running ones finished, then exit). The same claims against the real vLLM
//! are the engine tier's scenario 3 (tests/system/tests/engine.rs).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{group_members, sigterm, wait_exit, Setup, TestBox};

const LONG: Duration = Duration::from_secs(30);

/// A streamed completion of `tokens` tokens in a thread. The receiver gets `()` at the first
/// chunk; the join handle gives the whole body.
fn stream(port: u16, tokens: u32) -> (mpsc::Receiver<()>, std::thread::JoinHandle<String>) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = format!(r#"{{"prompt":"one two three","max_tokens":{tokens},"stream":true}}"#);
        write!(
            s,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let mut first = Some(tx);
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("data: ") {
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    });
    (rx, h)
}

fn setup(drain: u32) -> Setup {
    Setup {
        engine_extra: format!("drain_secs = {drain}\nstop_grace_secs = 20\nport_wait_secs = 1\n"),
        ..Setup::default()
    }
    .env("STANDIN_TOKEN_DELAY_MS", "100")
}

/// A stop with a stream in flight: the stream ends with its finish_reason, the engine exits by
/// itself (no SIGKILL), well before drain + grace; the unit's stop timeout is extended.
#[test]
fn a_stop_drains_the_stream_in_flight_then_the_engine_exits_by_itself() {
    let b = TestBox::new(setup(10));
    let (mut sm, engine) = b.start_ready();
    let (first, client) = stream(b.port, 20);
    first.recv_timeout(LONG).expect("no first chunk");
    let t0 = Instant::now();
    sigterm(sm.id());
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(0)), "{}", b.stderr());
    let took = t0.elapsed();
    let body = client.join().unwrap();
    assert!(
        body.contains(r#""finish_reason":"length""#) && body.contains("data: [DONE]"),
        "the stream was cut:\n{body}"
    );
    // 20 tokens at 100 ms: the drain waited for the rest of them, and no longer.
    assert!(took >= Duration::from_millis(1000), "stop took {took:?}");
    assert!(took < Duration::from_secs(8), "stop took {took:?}");
    let err = b.stderr();
    assert!(err.contains("drained and exited with status 0"), "{err}");
    assert!(!err.contains("killed"), "{err}");
    let extend = b
        .notify
        .all()
        .into_iter()
        .find(|m| m.starts_with("EXTEND_TIMEOUT_USEC="))
        .expect("no EXTEND_TIMEOUT_USEC during the stop");
    let usec: u64 = extend["EXTEND_TIMEOUT_USEC=".len()..]
        .trim()
        .parse()
        .unwrap();
    // drain 10 + grace 20 + 15 s margin, counted from the start of the stop.
    assert!(
        (40_000_000..=45_000_000).contains(&usec),
        "EXTEND_TIMEOUT_USEC={usec}"
    );
    assert!(group_members(engine).is_empty());
}

/// drain_secs = 0 (abort, vLLM's own default): the stream is cut without a finish_reason.
#[test]
fn drain_secs_0_aborts_the_stream() {
    let b = TestBox::new(setup(0));
    let (mut sm, engine) = b.start_ready();
    let (first, client) = stream(b.port, 50);
    first.recv_timeout(LONG).expect("no first chunk");
    let t0 = Instant::now();
    sigterm(sm.id());
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(0)), "{}", b.stderr());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let body = client.join().unwrap();
    assert!(!body.contains("finish_reason\":\""), "not cut:\n{body}");
    assert!(group_members(engine).is_empty());
}

/// After the monitor's SIGUSR1 (it restarts a broken model), the stop skips the drain: the
/// group is killed at once, whatever is in flight.
#[test]
fn after_the_no_drain_signal_a_stop_kills_at_once() {
    let b = TestBox::new(setup(30));
    let (mut sm, engine) = b.start_ready();
    let (first, client) = stream(b.port, 100);
    first.recv_timeout(LONG).expect("no first chunk");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sm.id() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        sm.try_wait().unwrap().is_none(),
        "SIGUSR1 alone ended start-model"
    );
    let t0 = Instant::now();
    sigterm(sm.id());
    assert_eq!(wait_exit(&mut sm, LONG), Some(Some(0)), "{}", b.stderr());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(b.stderr().contains("skipping the drain"), "{}", b.stderr());
    let body = client.join().unwrap();
    assert!(!body.contains("finish_reason\":\""), "not cut:\n{body}");
    assert!(group_members(engine).is_empty());
}
