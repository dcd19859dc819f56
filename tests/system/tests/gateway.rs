//! citadel-gateway under a real systemd (nspawn box, the installed package, stand-in engines):
//! socket activation keeps every connection through restarts, and the model units' IP
//! restriction keeps engines off the network while the gateway serves it. Box names start
//! with `gw-`. Network traffic goes only to loopback and to a veth pair this test creates
//! inside the box's own network namespace, with addresses it assigns.

use citadel_common::paths::{model_unit, SOCKET_GATEWAY, UNIT_GATEWAY};
use citadel_system_tests::citadel::{Citadel, Setup, MODELS};
use citadel_system_tests::run::wait_for;
use citadel_system_tests::sdbox::BootOptions;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const SYSTEM: &str = "system tier: needs root + systemd-nspawn";

fn started(name: &str, setup: Setup) -> Citadel {
    if let Some(why) = citadel_system_tests::sdbox::missing_prerequisite() {
        panic!("{SYSTEM}: {why}");
    }
    let c = Citadel::install(name, setup).unwrap_or_else(|e| panic!("box {name}: {e}"));
    c.start_all().unwrap_or_else(|e| panic!("{e}"));
    c.wait_all_healthy(60 * SEC)
        .unwrap_or_else(|e| panic!("{e}"));
    c
}

fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":2}}"#)
}

#[test]
#[ignore = "system tier: needs root + systemd-nspawn"]
fn gw_restart_under_a_client_loop_fails_no_connection() {
    let c = started("gw-restart", Setup::default());
    assert_eq!(c.active_state(SOCKET_GATEWAY), "active");
    assert_eq!(
        c.active_state(UNIT_GATEWAY),
        "active",
        "{}",
        c.journal_tail(40)
    );
    let (st, body) = c.http(
        "POST",
        "http://127.0.0.1:8000/v1/chat/completions",
        None,
        Some(&chat(MODELS[0].name)),
    );
    assert_eq!(st, 200, "{body}\n{}", c.journal_tail(40));
    // A client loop inside the box: one new connection per request, no retries; each line
    // is curl's exit status and the HTTP status.
    let body = chat(MODELS[1].name);
    let script = format!(
        "end=$((SECONDS+20)); while [ $SECONDS -lt $end ]; do curl -s -o /dev/null -m 10 -w ' %{{http_code}}' -H 'Content-Type: application/json' -d '{body}' http://127.0.0.1:8000/v1/chat/completions; echo \" $?\"; done"
    );
    let sb = &c.sb;
    let pid_before = c.main_pid(UNIT_GATEWAY);
    let out = std::thread::scope(|s| {
        let client = s.spawn(|| sb.exec_t(&["bash", "-c", &script], 60 * SEC));
        std::thread::sleep(2 * SEC);
        for _ in 0..5 {
            let o = sb.exec_t(&["systemctl", "restart", UNIT_GATEWAY], 60 * SEC);
            assert!(o.success(), "{}", o.describe());
            std::thread::sleep(2 * SEC);
        }
        client.join().unwrap()
    });
    assert_ne!(
        c.main_pid(UNIT_GATEWAY),
        pid_before,
        "the gateway was restarted"
    );
    let results: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    assert!(results.len() > 20, "too few requests: {}", out.describe());
    let failed: Vec<&&str> = results.iter().filter(|r| **r != "200 0").collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed (HTTP status, curl exit): {failed:?}\n{}",
        failed.len(),
        results.len(),
        c.unit_log(UNIT_GATEWAY)
    );
    assert_eq!(
        c.prop(UNIT_GATEWAY, "NRestarts"),
        "0",
        "restarted by systemd, not crashed"
    );
    let log = c.unit_log(UNIT_GATEWAY);
    assert!(log.contains("draining"), "{log}");
}

#[test]
#[ignore = "system tier: needs root + systemd-nspawn"]
fn gw_engines_are_unreachable_beyond_loopback_and_the_gateway_is_reachable() {
    let key = "sk-client-0123456789abcdef";
    let setup = Setup {
        api_key: Some("engine-key-0123456789".into()),
        // The engines listen on every address: only the units' IP filter keeps them off the net.
        engine_host: "0.0.0.0",
        gateway: "listen = \"0.0.0.0:8000\"\napi_keys_file = \"/etc/citadel/gateway-api-keys\"\n"
            .into(),
        ..Setup::default()
    };
    if let Some(why) = citadel_system_tests::sdbox::missing_prerequisite() {
        panic!("{SYSTEM}: {why}");
    }
    // The units' IP filter is systemd's BPF firewall: the box must run on cgroup v2 only.
    let opts = BootOptions {
        ip_firewall: true,
        ..BootOptions::default()
    };
    let c = Citadel::install_with("gw-isolation", setup, &opts).unwrap_or_else(|e| panic!("{e}"));

    c.sb.write(
        "/etc/citadel/gateway-api-keys",
        format!("ops:{key}\n").as_bytes(),
        0o640,
    )
    .unwrap();
    c.sb.ok(&["chgrp", "citadel", "/etc/citadel/gateway-api-keys"])
        .unwrap();
    c.sb.write(
        "/etc/systemd/system/citadel-gateway.socket.d/listen.conf",
        b"[Socket]\nListenStream=\nListenStream=0.0.0.0:8000\n",
        0o644,
    )
    .unwrap();
    c.sb.ok(&["systemctl", "daemon-reload"]).unwrap();
    c.start_all().unwrap_or_else(|e| panic!("{e}"));
    c.wait_all_healthy(60 * SEC)
        .unwrap_or_else(|e| panic!("{e}"));
    // systemd says so once, when the first unit with an IP filter starts.
    let fw = c.sb.ok(&[
        "journalctl",
        "-b",
        "--no-pager",
        "-g",
        "BPF/cgroup firewalling",
    ]);
    assert!(
        fw.as_deref()
            .map_or(true, |l| !l.contains("does not support")),
        "systemd in the box cannot filter IP traffic: {fw:?}"
    );
    // A veth pair inside the box's own network namespace: gwh (10.213.7.1) stays, gwc
    // (10.213.7.2) goes into a client namespace made here.
    for argv in [
        &[
            "ip", "link", "add", "gwh", "type", "veth", "peer", "name", "gwc",
        ][..],
        &["ip", "addr", "add", "10.213.7.1/24", "dev", "gwh"],
        &["ip", "link", "set", "gwh", "up"],
        &["ip", "netns", "add", "gwclient"],
        &["ip", "link", "set", "gwc", "netns", "gwclient"],
        &[
            "ip",
            "-n",
            "gwclient",
            "addr",
            "add",
            "10.213.7.2/24",
            "dev",
            "gwc",
        ],
        &["ip", "-n", "gwclient", "link", "set", "gwc", "up"],
        &["ip", "-n", "gwclient", "link", "set", "lo", "up"],
    ] {
        c.sb.ok(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    }
    let from_client = |url: &str, bearer: bool| {
        let auth = format!("Authorization: Bearer {key}");
        let mut argv = vec![
            "ip",
            "netns",
            "exec",
            "gwclient",
            "curl",
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ];
        if bearer {
            argv.extend(["-H", &auth]);
        }
        argv.push(url);
        let o = c.sb.exec_t(&argv, 20 * SEC);
        o.stdout.trim().to_string()
    };
    let alpha = &MODELS[0];
    // The path works: the client namespace reaches the box's address (the gateway).
    let models = wait_for(20 * SEC, Duration::from_millis(200), || {
        let code = from_client("http://10.213.7.1:8000/v1/models", true);
        (code == "200").then_some(code)
    });
    assert_eq!(
        models.as_deref(),
        Some("200"),
        "gateway not reachable from the client namespace\n{}",
        c.journal_tail(60)
    );
    assert_eq!(
        from_client("http://10.213.7.1:8000/v1/models", false),
        "401"
    );
    // Inside the box, on loopback, the engine answers (it listens on every address).
    assert_eq!(c.health(alpha.port), 200);
    let ss = c.sb.ok(&["ss", "-Htln"]).unwrap();
    assert!(ss.contains(&format!("0.0.0.0:{}", alpha.port)), "{ss}");
    // From the network: nothing answers (curl prints 000 when no HTTP answer came).
    for m in &MODELS {
        let code = from_client(&format!("http://10.213.7.1:{}/health", m.port), false);
        assert_eq!(code, "000", "{} reachable from the network", m.name);
    }
    // The documented way to open one model to the LAN on purpose: a drop-in.
    let unit = model_unit(alpha.name);
    c.sb.write(
        &format!("/etc/systemd/system/{unit}.d/lan.conf"),
        b"[Service]\nIPAddressAllow=10.213.7.0/24\n",
        0o644,
    )
    .unwrap();
    c.sb.ok(&["systemctl", "daemon-reload"]).unwrap();
    c.sb.exec_t(&["systemctl", "restart", &unit], 60 * SEC)
        .ok()
        .unwrap();
    let opened = wait_for(20 * SEC, Duration::from_millis(200), || {
        let code = from_client(&format!("http://10.213.7.1:{}/health", alpha.port), false);
        (code == "200").then_some(code)
    });
    assert_eq!(
        opened.as_deref(),
        Some("200"),
        "the drop-in did not open {}",
        alpha.name
    );
    let code = from_client(
        &format!("http://10.213.7.1:{}/health", MODELS[1].port),
        false,
    );
    assert_eq!(code, "000", "the other models stay closed");
}

#[test]
#[ignore = "system tier: needs root + systemd-nspawn"]
fn gw_status_shows_the_gateway_and_health_probes_through_it() {
    let c = started("gw-status", Setup::default());
    let o = c.citadel_service(&["status"], 60 * SEC);
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with("gateway"))
        .unwrap_or_else(|| panic!("no gateway line: {}", o.describe()));
    assert!(
        line.contains(UNIT_GATEWAY) && line.contains("active") && line.contains("127.0.0.1:8000"),
        "{line}"
    );
    let o = c.citadel_service(&["health", "--json"], 60 * SEC);
    assert!(o.success(), "{}", o.describe());
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["gateway"]["healthy"], true, "{}", o.stdout);
    let routable = v["gateway"]["routable"].as_array().unwrap();
    assert_eq!(routable.len(), MODELS.len(), "{}", o.stdout);
    for m in v["models"].as_array().unwrap() {
        assert_eq!(m["via_gateway"], true, "{m}");
    }
    // A stopped model: the gateway stops routing it, health says so.
    c.sb.exec_t(
        &["systemctl", "stop", &model_unit(MODELS[2].name)],
        60 * SEC,
    )
    .ok()
    .unwrap();
    let o = c.citadel_service(&["health", "--json"], 60 * SEC);
    assert!(!o.success(), "{}", o.describe());
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    let routable = v["gateway"]["routable"].as_array().unwrap();
    assert_eq!(routable.len(), MODELS.len() - 1, "{}", o.stdout);
    let (st, body) = c.http(
        "POST",
        "http://127.0.0.1:8000/v1/chat/completions",
        None,
        Some(&chat(MODELS[2].name)),
    );
    assert_eq!(st, 503, "{body}");
}
