//! The command line: every command and service name parses; unknown service names exit 2
//! listing the valid ones; clap rejects bad options with 2; `health` runs end to end against
//! local HTTP servers.

use citadel_service::{Cli, Command};
use clap::{CommandFactory, Parser};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Output;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_citadel-service"));
    c.args(args)
        .env_remove("CITADEL_CONFIG")
        .env("NO_COLOR", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn parse(args: &[&str]) -> Cli {
    let mut v = vec!["citadel-service"];
    v.extend(args);
    Cli::try_parse_from(v).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

const SERVICES: [&str; 9] = [
    "all", "storage", "gpu", "models", "monitor", "phi3", "coder", "vision", "anything",
];

#[test]
fn cli_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn every_command_and_service_name_parses() {
    for cmd in ["start", "stop", "restart", "status", "logs"] {
        // start, status and logs default to all; stop and restart refuse to (below).
        let cli = parse(&[cmd]);
        let arg = match cli.command_or_status() {
            Command::Start(a) | Command::Restart(a) => a.service,
            Command::Stop { service, .. }
            | Command::Status { service, .. }
            | Command::Logs { service, .. } => service,
            c => panic!("{c:?}"),
        };
        assert_eq!(arg.or_all(), "all");
        assert_eq!(arg.service, None);
        for s in SERVICES {
            parse(&[cmd, s]);
        }
    }
    parse(&["start", "phi3", "--no-wait", "--timeout", "60"]);
    parse(&["restart", "models", "--timeout", "60"]);
    parse(&["stop", "all", "--no-wait", "--timeout", "10"]);
    parse(&["status", "--json", "--probe"]);
    let cli = parse(&["logs", "phi3", "-f", "-n", "50", "--since", "-1h"]);
    assert!(matches!(
        cli.command,
        Some(Command::Logs { follow: true, lines: Some(50), ref since, .. }) if since.as_deref() == Some("-1h")
    ));
    assert!(matches!(
        parse(&["logs", "phi3", "-p", "err", "--grep", "Xid", "--kernel"]).command,
        Some(Command::Logs { ref priority, ref grep, kernel: true, .. })
            if priority.as_deref() == Some("err") && grep.as_deref() == Some("Xid")
    ));
    parse(&["enable"]);
    parse(&["disable"]);
    parse(&["health", "--json", "--timeout", "3"]);
    parse(&["check", "--json"]);
    let cli = parse(&["deploy", "--phase", "2", "--test-model", "coder"]);
    assert!(matches!(
        cli.command,
        Some(Command::Deploy { phase: Some(2), ref test_model, timeout: 1800 }) if test_model.as_deref() == Some("coder")
    ));
    assert!(matches!(
        parse(&["deploy"]).command,
        Some(Command::Deploy {
            test_model: None,
            ..
        })
    ));
    let cli = parse(&["deploy", "--config", "/x.toml"]);
    assert_eq!(cli.common.config, PathBuf::from("/x.toml"));
}

#[test]
fn a_bare_citadel_service_is_status_of_all() {
    let cli = parse(&[]);
    assert!(cli.command.is_none());
    assert!(matches!(
        cli.command_or_status(),
        Command::Status { ref service, json: false, probe: false } if service.service.is_none()
    ));
}

#[test]
fn stop_and_restart_without_a_name_exit_2_naming_all() {
    // Before the config is read: a missing config file changes nothing.
    for cmd in ["stop", "restart"] {
        let o = run(&["--config", "/nonexistent/citadel.toml", cmd], &[]);
        assert_eq!(o.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("{cmd} needs a service name"))
                && err.contains(&format!("citadel-service {cmd} all")),
            "{cmd}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn every_help_ends_with_examples() {
    let mut cmds = vec![vec![]];
    for s in Cli::command().get_subcommands() {
        if s.get_name() != "help" {
            cmds.push(vec![s.get_name().to_string()]);
        }
    }
    for c in cmds {
        let mut args: Vec<&str> = c.iter().map(String::as_str).collect();
        args.push("--help");
        let o = run(&args, &[]);
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&o.stdout);
        let tail = &text[text
            .rfind("Examples:")
            .unwrap_or_else(|| panic!("{args:?}: {text}"))..];
        let first = tail.lines().nth(1).unwrap_or("");
        assert!(first.starts_with("  citadel-service"), "{args:?}: {tail}");
    }
}

#[test]
fn bad_command_lines_exit_2() {
    for args in [
        vec!["frobnicate"],
        vec!["deploy", "--phase", "5"],
        vec!["deploy", "--phase", "0"],
        vec!["start", "--timeout", "soon"],
        vec!["logs", "-n", "many"],
        vec!["logs", "phi3", "-p", "loud"],
        vec!["enable", "phi3"],
    ] {
        let o = run(&args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn unknown_service_names_exit_2_listing_the_valid_ones() {
    let cfg = fixture("citadel.toml");
    let cfg = cfg.to_str().unwrap();
    for cmd in ["start", "stop", "restart", "status", "logs"] {
        let o = run(&["--config", cfg, cmd, "mixtral"], &[]);
        assert_eq!(o.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(
                "unknown service \"mixtral\"; valid names: all, storage, gpu, models, monitor, gateway, coder, phi3, vision"
            ),
            "{cmd}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(o.stdout.is_empty());
    }
}

/// The output fixture config plus a new model with a typo (`prot`): two problems.
fn broken_config(d: &tempfile::TempDir) -> PathBuf {
    let p = d.path().join("citadel.toml");
    let good = std::fs::read_to_string(fixture("citadel.toml")).unwrap();
    std::fs::write(
        &p,
        format!("{good}\n[models.mistral]\npath = \"m\"\nprot = 11407\ngpus = [3]\n"),
    )
    .unwrap();
    p
}

#[test]
fn a_broken_config_does_not_lock_out_read_commands_and_stop() {
    let d = tempfile::tempdir().unwrap();
    let p = broken_config(&d);
    let cfg = p.to_str().unwrap();
    for args in [
        vec!["status"],
        vec!["status", "phi3", "--json"],
        vec!["logs", "phi3", "-n", "1"],
        vec!["health", "--timeout", "1"],
        vec!["stop", "phi3"],
        // The model with the typo can still be named (its unit is systemd's).
        vec!["stop", "mistral"],
        vec![],
    ] {
        let mut a = vec!["--config", cfg];
        a.extend(&args);
        let o = run(&a, &[("RUST_LOG", "warn")]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(78), "{args:?}: {err}");
        assert_ne!(o.status.code(), Some(2), "{args:?}: {err}");
        let first = err.lines().next().unwrap_or("");
        assert!(
            first.starts_with(&format!(
                "warning: {cfg} is invalid (2 problems; citadel-service check lists them)"
            )) && first.contains("mistral"),
            "{args:?}: {err}"
        );
        assert_eq!(
            err.lines().filter(|l| l.contains("is invalid")).count(),
            1,
            "{err}"
        );
    }
}

#[test]
fn commands_that_need_a_valid_config_refuse_a_broken_one() {
    let d = tempfile::tempdir().unwrap();
    let p = broken_config(&d);
    let cfg = p.to_str().unwrap();
    for args in [
        vec!["check"],
        vec!["start", "phi3"],
        vec!["restart", "phi3"],
        vec!["deploy"],
        vec!["enable"],
        vec!["rollout", "phi3", "--path", "/tmp/x", "--dry-run"],
    ] {
        let mut a = vec!["--config", cfg];
        a.extend(&args);
        let o = run(&a, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(78), "{args:?}: {err}");
        assert!(err.contains("models.mistral.prot"), "{args:?}: {err}");
        assert!(!err.contains("warning:"), "{args:?}: {err}");
    }
}

#[test]
fn an_invalid_config_exits_78_before_touching_systemd() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.toml");
    std::fs::write(&p, "[models.x]\nport = 80\n").unwrap();
    let o = run(&["--config", p.to_str().unwrap(), "start"], &[]);
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains("models.x"));
}

/// A port outside the ephemeral range that nothing listens on (config validation refuses
/// ephemeral ports), and a listener on another one.
fn listener() -> (TcpListener, u16) {
    for p in 11_700..12_700 {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", p)) {
            return (l, p);
        }
    }
    panic!("no free port");
}

#[test]
fn health_probes_every_enabled_model_and_exits_1_when_one_is_down() {
    let (ok, ok_port) = listener();
    let (closed, closed_port) = listener();
    drop(closed);
    std::thread::spawn(move || {
        for s in ok.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("citadel.toml");
    std::fs::write(
        &cfg,
        format!(
            "[monitor]\nstate_file = \"{}/health.json\"\n\
             [models.up]\npath = \"a\"\nport = {ok_port}\ngpus = [0]\ngpu_memory_utilization = 0.3\n\
             [models.down]\npath = \"b\"\nport = {closed_port}\ngpus = [1]\ngpu_memory_utilization = 0.3\n",
            d.path().display()
        ),
    )
    .unwrap();
    let gpu = fixture("gpu-readings.json");
    let o = run(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "health",
            "--json",
            "--timeout",
            "2",
        ],
        &[("CITADEL_FAKE_GPU", gpu.to_str().unwrap())],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["healthy"], false);
    let models = v["models"].as_array().unwrap();
    assert_eq!(models[0]["name"], "down");
    assert_eq!(models[0]["error"], "connection refused");
    assert_eq!(models[1]["name"], "up");
    assert_eq!(models[1]["http_status"], 200);
    // Where systemd runs and the unit is not active, the model is not healthy either.
    let unit_ok = models[1]["unit_state"].is_null() || models[1]["unit_state"] == "active";
    assert_eq!(models[1]["healthy"], unit_ok);
    assert_eq!(v["gpu_source"], "nvml");
    assert_eq!(v["gpus"][1]["temperature_c"], 47);
    assert!(v["resources"]["memory_total_bytes"].as_u64().unwrap() > 0);

    // The table goes to stdout, without colour (NO_COLOR and not a terminal).
    let o = run(
        &["--config", cfg.to_str().unwrap(), "health"],
        &[("CITADEL_FAKE_GPU", gpu.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("MODEL"), "{text}");
    assert!(text.contains("unhealthy: 1 of 2 enabled models"), "{text}");
    assert!(!text.contains('\x1b'));
}

#[test]
fn check_says_one_gpu_and_one_model_without_an_s() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("citadel.toml");
    std::fs::write(
        &cfg,
        "[models.solo]\npath = \"a\"\nport = 11403\ngpus = [0]\ngpu_memory_utilization = 0.3\n",
    )
    .unwrap();
    let o = run(&["--config", cfg.to_str().unwrap(), "check"], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("\nok: 1 model (1 enabled) on 1 GPU (the plan only: check --host compares it with this machine)\n"),
        "{out}"
    );
}

#[test]
fn check_host_compares_the_plan_with_the_gpus_and_the_ports() {
    // The plan names GPU 5 (the readings file has GPUs 0 and 1), and something else listens on
    // the model's port.
    let (busy, port) = listener();
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("citadel.toml");
    std::fs::write(
        &cfg,
        format!(
            "[models.big]\npath = \"a\"\nport = {port}\ngpus = [5]\ngpu_memory_utilization = 0.3\n"
        ),
    )
    .unwrap();
    let gpu = fixture("gpu-readings.json");
    let env = [("CITADEL_FAKE_GPU", gpu.to_str().unwrap())];
    let o = run(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "check",
            "--host",
            "--json",
        ],
        &env,
    );
    drop(busy);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    assert_eq!(o.status.code(), Some(1), "{doc}");
    assert_eq!(doc["valid"], true, "{doc}");
    assert_eq!(doc["host"]["ok"], false, "{doc}");
    let checks = doc["host"]["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "gpus",
            "ports",
            "api-key",
            "units",
            "storage-setup --check",
            "gpu-optimize --check"
        ],
        "{doc}"
    );
    assert_eq!(checks[0]["status"], "fail", "{doc}");
    assert_eq!(
        checks[0]["detail"], "the plan uses GPU 5 but NVML sees 2 GPUs: 0, 1 (models big)",
        "{doc}"
    );
    // Its unit is not running (or systemd is not here to say): in use is never "ok".
    assert_ne!(checks[1]["status"], "ok", "{doc}");
    assert!(
        checks[1]["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("port {port} (big) ")),
        "{doc}"
    );
    // The human form: one line per check, its fix, and the one summary.
    let o = run(
        &["--config", cfg.to_str().unwrap(), "check", "--host"],
        &env,
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("\n  fail  gpus "), "{out}");
    assert!(
        out.contains("fix: fix models.NAME.gpus (nvidia-smi -L lists the GPUs)"),
        "{out}"
    );
    assert!(
        out.contains("\nok: 1 model (1 enabled) on 1 GPU; host: "),
        "{out}"
    );
}

#[test]
fn every_timeout_has_one_meaning() {
    let cmd = Cli::command();
    let mut seen = vec![];
    for sub in cmd.get_subcommands() {
        let Some(a) = sub.get_arguments().find(|a| a.get_id() == "timeout") else {
            continue;
        };
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        let name = sub.get_name();
        assert_eq!(
            a.get_value_names().map(|v| v.to_vec()),
            Some(vec!["SECS".into()]),
            "{name}"
        );
        assert!(
            help.starts_with("Give up waiting for each unit after this many seconds (")
                || (name == "health"
                    && help.starts_with(
                        "Give up waiting for each model's /health after this many seconds ("
                    )),
            "{name} --timeout: {help}"
        );
        seen.push(name.to_string());
    }
    assert_eq!(
        seen,
        ["start", "stop", "restart", "health", "apply", "rollout", "deploy"],
        "the commands that wait"
    );
}

/// `rollout --dry-run` needs no systemd and no root: the plan (mode, why, steps) on stdout, or
/// one JSON document; nothing is written. Files that are not a complete model: 69.
#[test]
fn rollout_dry_run_prints_the_plan_and_touches_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    // As root the new files must be readable by the service account: nobody, through 0755.
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let paths = citadel_common::config::Paths::under(d.path());
    let text = format!(
        "{}[service]\nuser = \"nobody\"\ngroup = \"nogroup\"\n\n[models.a]\npath = \"a\"\nport = 11401\ngpus = [0]\ngpu_memory_utilization = 0.4\n",
        paths.to_toml()
    );
    let p = d.path().join("citadel.toml");
    std::fs::write(&p, &text).unwrap();
    let new = paths.staging_dir.join("a-v2");
    citadel_common::modelfiles::write_fake_model(&new, 1).unwrap();
    let (cfg, newp) = (p.to_str().unwrap(), new.to_str().unwrap());
    let o = run(
        &["--config", cfg, "rollout", "a", "--path", newp, "--dry-run"],
        &[],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.starts_with(&format!("rollout of a: a -> {newp}\nmode: ")),
        "{out}"
    );
    assert!(out.contains("why: "), "{out}");
    assert!(out.contains("steps:\n  1. "), "{out}");
    let o = run(
        &[
            "--config",
            cfg,
            "rollout",
            "a",
            "--path",
            newp,
            "--dry-run",
            "--json",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model"], "a");
    assert_eq!(v["result"], "planned");
    assert_eq!(v["dry_run"], true);
    assert!(v["mode"] == "surge" || v["mode"] == "replace", "{v}");
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        text,
        "the config untouched"
    );
    assert!(!paths.runtime_dir.join("rollout").exists());
    // Incomplete files: 69 (as JSON too), one line naming the directory.
    let half = paths.staging_dir.join("half");
    std::fs::create_dir_all(&half).unwrap();
    let o = run(
        &[
            "--config",
            cfg,
            "rollout",
            "a",
            "--path",
            half.to_str().unwrap(),
            "--dry-run",
            "--json",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(69));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("config.json is missing"), "{msg}");
    // A golden prompt needs its expected text.
    let o = run(
        &[
            "--config",
            cfg,
            "rollout",
            "a",
            "--path",
            newp,
            "--golden-prompt",
            "x",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
}
