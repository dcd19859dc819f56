//! `citadel-service top` against stand-ins, for citadel-service/tests/top.rs (which runs it in
//! tmux): the real `top` code with a fake systemd (every unit of the config active, disabled
//! models inactive) and, on each enabled model's port, a stand-in vLLM `/metrics` (2 requests
//! running, 1 waiting, KV cache 25 %, 40 generated tokens per second). The monitor's state file
//! and the GPUs (`CITADEL_FAKE_GPU`) are whatever the config and the environment name.
//!
//! Usage: top_fake CONFIG [INTERVAL_SECS]. With `TOP_FAKE_EXIT_FILE` set, the exit code is also
//! written there (tmux 3.3 does not always reap a pane's process promptly, so its
//! `pane_dead_status` can stay empty).

use citadel_common::config::Config;
use citadel_service::services::Service;
use citadel_service::systemd::fake::{unit, FakeHost};
use citadel_service::top;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn serve_metrics(port: u16, name: String) {
    let l = TcpListener::bind(("127.0.0.1", port)).expect("bind the stand-in /metrics port");
    let start = Instant::now();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let tokens = 40.0 * start.elapsed().as_secs_f64();
            let l = format!("{{engine=\"0\",model_name=\"{name}\"}}");
            let body = format!(
                "vllm:num_requests_running{l} 2.0\nvllm:num_requests_waiting{l} 1.0\n\
                 vllm:kv_cache_usage_perc{l} 0.25\nvllm:generation_tokens_total{l} {tokens:.1}\n"
            );
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(file) = args.first() else {
        eprintln!("usage: top_fake CONFIG [INTERVAL_SECS]");
        return ExitCode::from(2);
    };
    let interval = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let cfg = match Config::load(std::path::Path::new(file)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(78);
        }
    };
    let mut host = FakeHost::new();
    host.boot = Duration::from_secs(100_000);
    for (i, m) in Service::All.members(&cfg).iter().enumerate() {
        let mut u = unit(
            &m.unit,
            if m.enabled { "active" } else { "inactive" },
            false,
        );
        if m.enabled {
            u.active_enter_monotonic_usec = (100_000 - 185) * 1_000_000;
            u.main_pid = 2100 + i as u32;
        }
        host = host.with(&m.unit, vec![u]);
    }
    for m in cfg.enabled_models() {
        serve_metrics(m.port, m.name.clone());
    }
    let opts = top::TopOptions {
        interval: Duration::from_secs(interval),
        color: citadel_service::output::use_color(),
    };
    let live = top::Live {
        host: &host,
        cfg: &cfg,
    };
    let code = match top::run(&live, opts) {
        Ok(e) => e.code(),
        Err(e) => {
            eprintln!("error: {e}");
            e.exit().code()
        }
    };
    if let Some(f) = std::env::var_os("TOP_FAKE_EXIT_FILE") {
        let _ = std::fs::write(f, code.to_string());
    }
    ExitCode::from(code)
}
