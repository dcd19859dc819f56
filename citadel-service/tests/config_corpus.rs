//! The broken-config corpus (tests/configs/broken): one file per validation rule. Each must make
//! `citadel-service check` exit 78, name its key (and value) in a message that names the file,
//! and write nothing anywhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/configs")
        .join(kind);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

/// Every path under `dir` with its size and mtime.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            out.insert(e.path(), (m.len(), m.modified().unwrap()));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

fn check(config: &Path, cwd: &Path, json: bool) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_citadel-service"));
    c.arg("--config").arg(config).arg("check");
    if json {
        c.arg("--json");
    }
    c.current_dir(cwd)
        .env("HOME", cwd)
        .env_remove("CITADEL_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn corpus_has_at_least_twenty_rules() {
    assert!(corpus("broken").len() >= 20);
}

#[test]
fn every_broken_config_exits_78_names_its_key_and_writes_nothing() {
    let mut failures = vec![];
    for file in corpus("broken") {
        let text = std::fs::read_to_string(&file).unwrap();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-key: "))
            .unwrap_or_else(|| panic!("{}: no '# expect-key:' line", file.display()))
            .to_string();
        let work = tempfile::tempdir().unwrap();
        let cfg = work.path().join("citadel.toml");
        std::fs::write(&cfg, &text).unwrap();
        let before = snapshot(work.path());
        let out = check(&cfg, work.path(), false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let after = snapshot(work.path());
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if out.status.code() != Some(78) {
            failures.push(format!(
                "{name}: exit {:?}, want 78\n{stderr}",
                out.status.code()
            ));
        }
        if !stderr.contains(&key) {
            failures.push(format!("{name}: {key:?} not named in\n{stderr}"));
        }
        let cfg_s = cfg.display().to_string();
        if !stderr
            .lines()
            .all(|l| l.starts_with(&format!("error: {cfg_s}")))
        {
            failures.push(format!("{name}: a line does not name the file\n{stderr}"));
        }
        if !out.stdout.is_empty() {
            failures.push(format!("{name}: wrote to stdout without --json"));
        }
        if before != after {
            failures.push(format!("{name}: files changed in the working directory"));
        }
        if Path::new("/nonexistent-citadel-test").exists() {
            failures.push(format!("{name}: created paths from the config"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn json_errors_are_one_document_on_stdout() {
    let file = corpus("broken")
        .into_iter()
        .find(|p| p.to_string_lossy().contains("duplicate-port"))
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = check(&file, work.path(), true);
    assert_eq!(out.status.code(), Some(78));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["key"], "models.phi3.port");
    assert_eq!(errors[0]["value"], "11403");
}

#[test]
fn many_problems_are_reported_together() {
    let text = std::fs::read_to_string(&corpus("valid")[0]).unwrap();
    let bad = text
        .replace("port = 11403", "port = 80")
        .replace("failure_threshold = 3", "failure_threshold = 0")
        .replace("\"--enforce-eager\"", "\"--swap-space\", \"4\"")
        + "\n[models.Bad]\npath = \"x\"\nport = 11406\ngpus = [3]\n";
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("citadel.toml");
    std::fs::write(&cfg, bad).unwrap();
    let out = check(&cfg, work.path(), false);
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "models.phi3.port = 80",
        "monitor.failure_threshold = 0",
        "models.mixtral.extra_args",
        "models.Bad",
        "4 problems found",
    ] {
        assert!(stderr.contains(key), "{key} missing in\n{stderr}");
    }
}

#[test]
fn valid_configs_print_the_plan() {
    for file in corpus("valid") {
        let work = tempfile::tempdir().unwrap();
        let out = check(&file, work.path(), false);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("MODEL"), "{stdout}");
        assert!(stdout.contains("GPU  SHARE"), "{stdout}");
        let out = check(&file, work.path(), true);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["valid"], true);
    }
}

#[test]
fn the_shipped_config_is_valid_and_needs_ten_gpus() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/citadel.toml");
    let work = tempfile::tempdir().unwrap();
    let out = check(&shipped, work.path(), true);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["models"].as_array().unwrap().len(), 7);
    let gpus = v["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 10);
    for g in gpus {
        assert!(g["share"].as_f64().unwrap() <= 1.0);
    }
}
