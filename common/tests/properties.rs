//! Property tests (proptest) over the config loader and the HTTP probe (issue #14): whatever
//! the input, no panic, every error line is one line naming the file with control characters
//! escaped, and what validation accepts carries no NUL byte and no out-of-range timeout.

use citadel_common::config::{Config, Limits};
use citadel_common::probe::Prober;
use proptest::prelude::*;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

const FILE: &str = "/etc/citadel/citadel.toml";

fn base() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/configs/valid/three-models.toml"),
    )
    .unwrap()
}

fn parse(text: &str) -> Result<Config, citadel_common::config::ConfigError> {
    Config::parse_with(text, Path::new(FILE), &Limits::default())
}

/// Every error line names the file and is one line without raw control characters.
fn errors_are_clean(e: &citadel_common::config::ConfigError) -> Result<(), TestCaseError> {
    prop_assert!(!e.issues.is_empty());
    for l in e.lines() {
        prop_assert!(l.starts_with(FILE), "{l:?}");
        prop_assert!(!l.chars().any(char::is_control), "{l:?}");
    }
    Ok(())
}

/// Strings with the characters that make trouble: controls, NUL, quotes, escapes, unicode.
fn nasty_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just('\0'),
            Just('\n'),
            Just('\r'),
            Just('\u{1b}'),
            Just('\u{7}'),
            Just('\u{9b}'),
            Just('"'),
            Just('\\'),
            Just('/'),
            Just('-'),
            Just('.'),
            Just(' '),
            Just('é'),
            prop::char::range('a', 'z'),
            any::<char>(),
        ],
        0..24,
    )
    .prop_map(|v| v.into_iter().collect())
}

/// A TOML basic string for `s` (every character escaped where it must be).
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const STRING_KEYS: &[(&str, &str)] = &[
    ("paths", "state_dir"),
    ("paths", "runtime_dir"),
    ("paths", "cache_dir"),
    ("paths", "models_mount"),
    ("engine", "host"),
    ("monitor", "textfile"),
    ("monitor", "state_file"),
    ("monitor", "webhook_url"),
    ("models.phi3", "served_model_name"),
    ("models.phi3", "path"),
    ("storage", "dir_mode"),
];

const INT_KEYS: &[(&str, &str)] = &[
    ("engine", "stop_grace_secs"),
    ("engine", "port_wait_secs"),
    ("engine", "gpu_release_wait_secs"),
    ("monitor", "interval_secs"),
    ("monitor", "probe_timeout_secs"),
    ("monitor", "failure_threshold"),
    ("monitor", "deep_probe_interval_secs"),
    ("monitor", "deep_probe_timeout_secs"),
    ("monitor", "stall_secs"),
    ("monitor", "restart_budget"),
    ("monitor", "restart_window_secs"),
    ("monitor", "webhook_timeout_secs"),
    ("models.phi3", "load_timeout_secs"),
];

/// `base` with `section.key` set to `value` (TOML syntax).
fn with_key(section: &str, key: &str, value: &str) -> String {
    let mut t: toml::Table = base().parse().unwrap();
    let mut cur = &mut t;
    for part in section.split('.') {
        cur = cur
            .entry(part)
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .unwrap();
    }
    let v: toml::Table = format!("x = {value}").parse().unwrap();
    cur.insert(key.to_string(), v["x"].clone());
    toml::to_string(&t).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any text at all: no panic; an error is clean lines.
    #[test]
    fn any_text_is_loaded_or_refused_cleanly(text in nasty_string()) {
        if let Err(e) = parse(&text) {
            errors_are_clean(&e)?;
        }
    }

    /// Any string at a string key: accepted values carry no NUL (nor control characters in
    /// paths, names, hosts and URLs); refused ones give clean lines.
    #[test]
    fn any_string_value_is_accepted_only_when_safe(
        k in prop::sample::select(STRING_KEYS),
        v in nasty_string(),
    ) {
        let mut t: toml::Table = base().parse().unwrap();
        let mut cur = &mut t;
        for part in k.0.split('.') {
            cur = cur.entry(part).or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut().unwrap();
        }
        cur.insert(k.1.to_string(), toml::Value::String(v.clone()));
        let text = toml::to_string(&t).unwrap();
        match parse(&text) {
            Ok(_) => prop_assert!(!v.chars().any(char::is_control), "accepted {v:?} at {k:?}"),
            Err(e) => errors_are_clean(&e)?,
        }
        // The same value, written by hand as a TOML string, is read the same way.
        let _ = parse(&with_key(k.0, k.1, &toml_string(&v)));
    }

    /// Any string in extra_args, engine.env and engine.command: a NUL byte is always refused.
    #[test]
    fn nul_bytes_never_pass(v in nasty_string(), which in 0..3usize) {
        let value = toml_string(&v);
        let text = match which {
            0 => with_key("models.phi3", "extra_args", &format!("[{value}]")),
            1 => with_key("engine.env", "EXTRA", &value),
            _ => with_key("engine", "command", &format!("[\"/usr/bin/x\", {value}]")),
        };
        match parse(&text) {
            Ok(cfg) => {
                prop_assert!(!v.contains('\0'));
                prop_assert!(cfg.models.iter().all(|m| m.extra_args.iter().all(|a| !a.contains('\0'))));
            }
            Err(e) => errors_are_clean(&e)?,
        }
    }

    /// Any integer at a timeout, interval or count: accepted only within its documented
    /// maximum.
    #[test]
    fn timeouts_are_accepted_only_up_to_their_maximum(
        k in prop::sample::select(INT_KEYS),
        v in prop_oneof![0i64..100_000, any::<i64>(), Just(i64::from(u32::MAX))],
    ) {
        let text = with_key(k.0, k.1, &v.to_string());
        let full = format!("{}.{}", k.0, k.1);
        let max = citadel_common::config::hostile::max_for(&full).unwrap();
        match parse(&text) {
            Ok(_) => prop_assert!(v <= max, "{full} = {v} accepted, maximum {max}"),
            Err(e) => errors_are_clean(&e)?,
        }
        if v > max {
            let e = parse(&text).unwrap_err();
            prop_assert!(e.issues.iter().any(|i| i.key == full), "{full} = {v}: {e}");
        }
    }
}

/// A server answering every connection with `reply` (then closing).
fn server(reply: Vec<u8>) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let reply = reply.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(&reply);
            });
        }
    });
    port
}

fn http_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (
            100u16..700,
            prop::collection::vec(any::<u8>(), 0..256),
            any::<u32>()
        )
            .prop_map(|(status, body, len)| {
                let mut v =
                    format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\n\r\n").into_bytes();
                v.extend(body);
                v
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever a server answers, a probe ends within its timeout (plus slack), never panics,
    /// and never returns more body than its cap.
    #[test]
    fn a_probe_of_any_answer_is_bounded(reply in http_like()) {
        let port = server(reply);
        let t0 = Instant::now();
        let r = Prober::with_max_body(Duration::from_millis(500), 128)
            .get(&format!("http://127.0.0.1:{port}/health"), None);
        prop_assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        if let Ok(reply) = r {
            prop_assert!(reply.body.len() <= 128 * 3, "{}", reply.body.len());
        }
    }
}
