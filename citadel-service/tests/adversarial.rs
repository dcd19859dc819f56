//! Adversarial suite for the config loader as `citadel-service check` runs it (issue #14):
//! hostile configs (`tests/configs/adversarial/*.toml`, fragments merged over
//! `tests/configs/valid/three-models.toml`), and config files that are not files at all.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Merge `over` into `base`, tables recursively, other values replaced.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn base() -> toml::Table {
    std::fs::read_to_string(repo("tests/configs/valid/three-models.toml"))
        .unwrap()
        .parse()
        .unwrap()
}

/// `citadel-service --config CONFIG check [--json]`, killed (and failed) after 20 s.
fn check(config: &Path, cwd: &Path, json: bool) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_citadel-service"));
    c.arg("--config").arg(config).arg("check");
    if json {
        c.arg("--json");
    }
    let mut child = c
        .current_dir(cwd)
        .env("HOME", cwd)
        .env_remove("CITADEL_CONFIG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("check of {} hung", config.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn files() -> Vec<PathBuf> {
    let dir = repo("tests/configs/adversarial");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn adversarial_configs_exit_78_name_their_key_and_forge_no_line() {
    let files = files();
    assert!(files.len() >= 30, "{} files", files.len());
    let mut failures = vec![];
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-key: "))
            .unwrap_or_else(|| panic!("{name}: no '# expect-key:' line"))
            .to_string();
        let mut cfg = base();
        merge(
            &mut cfg,
            text.parse().unwrap_or_else(|e| panic!("{name}: {e}")),
        );
        let work = tempfile::tempdir().unwrap();
        let path = work.path().join("citadel.toml");
        std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
        let out = check(&path, work.path(), false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(78) {
            failures.push(format!(
                "{name}: exit {:?}, want 78\n{stderr}",
                out.status.code()
            ));
            continue;
        }
        if !stderr.contains(&key) {
            failures.push(format!("{name}: {key:?} not named in\n{stderr}"));
        }
        let prefix = format!("error: {}: ", path.display());
        if let Some(l) = stderr.lines().find(|l| !l.starts_with(&prefix)) {
            failures.push(format!(
                "{name}: a line that is not one of the file's errors: {l:?}"
            ));
        }
        if stderr.chars().any(|c| c.is_control() && c != '\n') {
            failures.push(format!(
                "{name}: a raw control character on stderr: {stderr:?}"
            ));
        }
        if std::fs::read_dir(work.path()).unwrap().count() != 1 {
            failures.push(format!("{name}: files written in the working directory"));
        }
        if Path::new("/nonexistent-citadel-test").exists() {
            failures.push(format!("{name}: created paths from the config"));
        }
        // --json: one document, the same exit code.
        let out = check(&path, work.path(), true);
        match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Ok(v) if v["valid"] == false && out.status.code() == Some(78) => {}
            other => failures.push(format!(
                "{name}: --json gave {other:?}, exit {:?}",
                out.status.code()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn adversarial_an_empty_models_table_is_a_warning_that_says_so() {
    let mut cfg = base();
    cfg.insert("models".into(), toml::Value::Table(toml::Table::new()));
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("citadel.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let out = check(&path, work.path(), false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: ") && stderr.contains("models: no models are configured"),
        "{stderr}"
    );
    let out = check(&path, work.path(), true);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("no models are configured"),
        "{v}"
    );
}

#[test]
fn adversarial_a_config_that_is_not_a_small_regular_file_is_refused_at_once() {
    let work = tempfile::tempdir().unwrap();
    let fifo = work.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let huge = work.path().join("huge.toml");
    let mut text = toml::to_string(&base()).unwrap();
    text.push_str(&format!("\n# {}\n", "x".repeat(2 << 20)));
    std::fs::write(&huge, text).unwrap();
    for (path, want) in [
        (fifo.as_path(), "a FIFO, not a regular file"),
        (
            Path::new("/dev/zero"),
            "a character device, not a regular file",
        ),
        (huge.as_path(), "too large"),
        (work.path(), "a directory"),
    ] {
        for json in [false, true] {
            let out = check(path, work.path(), json);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(78), "{}: {stderr}", path.display());
            assert!(stderr.contains(want), "{}: {stderr}", path.display());
            assert!(stderr.contains(&path.display().to_string()), "{stderr}");
            if json {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert_eq!(v["valid"], false, "{v}");
            }
        }
    }
}

/// The monitor's state file is writable by the service account: its reasons and states reach
/// the operator's terminal only with their control characters escaped.
#[test]
fn adversarial_status_escapes_what_the_state_file_says() {
    use citadel_common::health::HealthState;
    use citadel_service::services::Service;
    use citadel_service::status::{self, HealthSource};
    use citadel_service::systemd::Unit;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cfg = citadel_common::config::Config::load(&fixtures.join("citadel.toml")).unwrap();
    let members = Service::All.members(&cfg);
    let units: Vec<Unit> =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("units.json")).unwrap())
            .unwrap();
    let state = HealthState::read(&fixtures.join("health-state-hostile.json"))
        .unwrap()
        .unwrap();
    let src = HealthSource {
        kind: "monitor".into(),
        state_file: Some("/run/citadel/health.json".into()),
        updated_unix: Some(state.updated_unix),
        stale: false,
        note: None,
    };
    let r = status::build(
        "tests/fixtures/citadel.toml",
        &members,
        &units,
        Duration::from_secs(100_000),
        &status::cells_from_state(&state),
        src,
        None,
    );
    let text = status::render_table(&r, state.updated_unix + 5, false);
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "a raw control character in:\n{text:?}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("error: forged")),
        "{text}"
    );
    assert!(text.contains("\\u{1b}]0;owned\\u{7}"), "{text}");
    // --json carries them as JSON escapes: still one valid document.
    let v: serde_json::Value = serde_json::from_str(&status::to_json(&r).unwrap()).unwrap();
    assert!(v.to_string().contains("forged line"));
}

/// A state file that is a FIFO, a device or huge is refused at once, not read.
#[test]
fn adversarial_the_state_file_is_read_only_as_a_small_regular_file() {
    use citadel_common::health::HealthState;
    let work = tempfile::tempdir().unwrap();
    let fifo = work.path().join("health.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let huge = work.path().join("huge.json");
    std::fs::write(&huge, vec![b' '; (16 << 20) + 1]).unwrap();
    let t0 = Instant::now();
    for (p, want) in [
        (fifo.as_path(), "a FIFO"),
        (Path::new("/dev/zero"), "a character device"),
        (huge.as_path(), "too large"),
    ] {
        let e = HealthState::read(p).unwrap_err();
        assert!(e.contains(want), "{e}");
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
}

/// `--json` prints exactly one JSON document in every case, with the same exit code: status
/// with a broken config (salvaged, then systemd unreachable on this machine: 69; or whatever
/// the box says), an unknown service name and a usage error (2), a failed check (78).
#[test]
fn adversarial_json_errors_are_one_document() {
    let work = tempfile::tempdir().unwrap();
    let bad = work.path().join("bad.toml");
    std::fs::write(&bad, "[paths]\nstate_dir = \"/etc\"\n").unwrap();
    let good = repo("tests/configs/valid/three-models.toml");
    let (bad, good) = (bad.display().to_string(), good.display().to_string());
    // (arguments, the exit code if it is fixed; None: any failure, stated in the document)
    let cases: Vec<(Vec<&str>, Option<i32>)> = vec![
        (vec!["--config", &bad, "status", "--json"], None),
        (
            vec!["--config", &good, "status", "--json", "no-such-model"],
            Some(2),
        ),
        (
            vec!["--config", &good, "status", "--json", "--bogus"],
            Some(2),
        ),
        (
            vec!["--config", &good, "health", "--json", "--timeout", "x"],
            Some(2),
        ),
        (vec!["--config", &bad, "check", "--json"], Some(78)),
    ];
    for (args, exit) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_citadel-service"))
            .args(&args)
            .env_remove("CITADEL_CONFIG")
            .env_remove("JOURNAL_STREAM")
            .current_dir(work.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code().unwrap();
        match exit {
            Some(e) => assert_eq!(code, e, "{args:?}: {stderr}"),
            None if code == 0 => continue,
            None => {}
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not one JSON document ({e}): {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        if v.get("error").is_some() || exit.is_some() {
            assert_eq!(v["error"]["exit"], code, "{args:?}: {v}");
        }
    }
}
