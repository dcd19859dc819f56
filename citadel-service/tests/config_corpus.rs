//! The broken-config corpus: one case per validation rule, each generated from the one valid
//! base (`tests/configs/valid/three-models.toml`) and a small mutation
//! (`tests/configs/broken/NN-rule.mutation`). Each must make `citadel-service check` exit 78,
//! name its key (and value) in a message that names the file, and write nothing anywhere.
//!
//! A mutation file: its `#` lines head the generated config (a description, then
//! `# expect-key: TEXT`, what the error must name); its `- LINE` lines are one block of the
//! base, which must occur there exactly once; its `+ LINE` lines replace that block (`-` and
//! `+` alone stand for an empty line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The base every broken case is made from: the first valid config, without its comment.
fn base() -> String {
    let text = std::fs::read_to_string(&corpus("valid")[0]).unwrap();
    let body: Vec<&str> = text
        .split('\n')
        .skip_while(|l| l.starts_with('#'))
        .collect();
    body.join("\n")
}

/// Apply one mutation to the base (panics, naming the file, when its block is not there once).
fn mutate(base: &str, mutation: &str, name: &str) -> String {
    let lines: Vec<&str> = mutation.lines().collect();
    let head: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with('#'))
        .collect();
    let side = |mark: char| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix(mark)?;
                Some(rest.strip_prefix(' ').unwrap_or(rest))
            })
            .collect()
    };
    let (old, new) = (side('-'), side('+'));
    let base: Vec<&str> = base.split('\n').collect();
    let at: Vec<usize> = (0..=base.len().saturating_sub(old.len()))
        .filter(|&i| !old.is_empty() && base[i..i + old.len()] == old[..])
        .collect();
    assert_eq!(
        at.len(),
        1,
        "{name}: the '-' block must occur exactly once in the base (found {} times)",
        at.len()
    );
    let i = at[0];
    let mut out: Vec<&str> = head;
    out.extend(&base[..i]);
    out.extend(&new);
    out.extend(&base[i + old.len()..]);
    out.join("\n")
}

/// Every broken case: (file name of its mutation, the generated config).
fn broken() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/configs/broken");
    let base = base();
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "mutation"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let m = std::fs::read_to_string(&p).unwrap();
            let text = mutate(&base, &m, &name);
            (name, text)
        })
        .collect();
    v.sort();
    v
}

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
fn every_mutation_changes_the_valid_base_and_the_base_alone_is_valid() {
    let base = base();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("citadel.toml");
    std::fs::write(&cfg, &base).unwrap();
    let out = check(&cfg, work.path(), false);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, text) in broken() {
        let body: Vec<&str> = text
            .split('\n')
            .skip_while(|l| l.starts_with('#'))
            .collect();
        assert_ne!(body.join("\n"), base, "{name} changes nothing");
    }
}

#[test]
fn corpus_has_at_least_twenty_rules() {
    assert!(broken().len() >= 20);
}

#[test]
fn every_broken_config_exits_78_names_its_key_and_writes_nothing() {
    let mut failures = vec![];
    for (name, text) in broken() {
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect-key: "))
            .unwrap_or_else(|| panic!("{name}: no '# expect-key:' line"))
            .to_string();
        let work = tempfile::tempdir().unwrap();
        let cfg = work.path().join("citadel.toml");
        std::fs::write(&cfg, &text).unwrap();
        let before = snapshot(work.path());
        let out = check(&cfg, work.path(), false);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let after = snapshot(work.path());
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
    let (_, text) = broken()
        .into_iter()
        .find(|(name, _)| name.contains("duplicate-port"))
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("citadel.toml");
    std::fs::write(&file, text).unwrap();
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
