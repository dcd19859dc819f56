//! The change corpus, `tests/configs/changes/CASE/`: `old.toml` (the running snapshot; absent
//! = none recorded), `new.toml` (the edited config) and `plan.json` (the expected exit code and
//! the expected keys of `apply --dry-run --json`). `@ROOT@` stands for the test's temporary
//! root; a file without a `[paths]` table gets the default layout under that root.
//! After an intended change of the plans, `CITADEL_UPDATE_CORPUS=1 cargo test -p citadel-service
//! --test changes_corpus` rewrites the expected keys from the output (review the diff).

use citadel_common::config::Paths;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/configs/changes")
}

fn materialise(text: &str, root: &Path) -> String {
    let text = text.replace("@ROOT@", &root.display().to_string());
    if text.contains("[paths]") {
        text
    } else {
        format!("{}{text}", Paths::under(root).to_toml())
    }
}

fn check(case: &Path) -> Result<(), String> {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let new = materialise(
        &std::fs::read_to_string(case.join("new.toml")).unwrap(),
        root,
    );
    let file = root.join("citadel.toml");
    std::fs::write(&file, &new).unwrap();
    if let Ok(old) = std::fs::read_to_string(case.join("old.toml")) {
        let old = materialise(&old, root);
        // The snapshot lives in the running config's state dir, which is the edited one's
        // unless the edit moves it.
        let state = Paths::under(root).state_dir;
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("applied.toml"), old).unwrap();
    }
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(case.join("plan.json"))
            .unwrap()
            .replace("@ROOT@", &root.display().to_string()),
    )
    .map_err(|e| format!("plan.json: {e}"))?;
    let out = Command::new(env!("CARGO_BIN_EXE_citadel-service"))
        .args(["--config"])
        .arg(&file)
        .args(["apply", "--dry-run", "--json"])
        .env_remove("CITADEL_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let code = out.status.code();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let got: Value =
        serde_json::from_str(&stdout).map_err(|e| format!("stdout is not JSON ({e}): {stdout}"))?;
    let want_code = expected["exit"].as_i64().unwrap_or(0);
    if code != Some(want_code as i32) {
        return Err(format!(
            "exit {code:?}, expected {want_code}; stderr: {stderr}"
        ));
    }
    if std::env::var_os("CITADEL_UPDATE_CORPUS").is_some() {
        // After an intended change: the expected keys (and the gateway's) become what the
        // binary printed now; review the diff before committing it.
        let mut e = expected.clone();
        if let Some(plan) = e["plan"].as_object_mut() {
            let keys: Vec<String> = plan.keys().cloned().chain(["gateway".into()]).collect();
            for k in keys {
                if !got[&k].is_null() {
                    plan.insert(k.clone(), got[&k].clone());
                }
            }
        }
        let text = serde_json::to_string_pretty(&e)
            .unwrap()
            .replace(&root.display().to_string(), "@ROOT@");
        std::fs::write(case.join("plan.json"), format!("{text}\n")).unwrap();
        return Ok(());
    }
    for (k, v) in expected["plan"]
        .as_object()
        .ok_or("plan.json has no \"plan\" object")?
    {
        if &got[k] != v {
            return Err(format!(
                "key {k}: got {}\nexpected {}",
                serde_json::to_string_pretty(&got[k]).unwrap(),
                serde_json::to_string_pretty(v).unwrap()
            ));
        }
    }
    // Error messages: one line each, naming the file and the key.
    if let Some(keys) = expected["error_keys"].as_array() {
        for k in keys.iter().filter_map(Value::as_str) {
            if !stderr.contains(k) || !stderr.contains(&file.display().to_string()) {
                return Err(format!("stderr does not name {k} and the file: {stderr}"));
            }
        }
    }
    // A dry run writes nothing: the snapshot (or its absence) is as it was.
    let snap = Paths::under(root).state_dir.join("applied.toml");
    match std::fs::read_to_string(case.join("old.toml")) {
        Ok(old) => {
            if std::fs::read_to_string(&snap).ok() != Some(materialise(&old, root)) {
                return Err("the dry run changed the snapshot".into());
            }
        }
        Err(_) => {
            if snap.exists() {
                return Err("the dry run wrote a snapshot".into());
            }
        }
    }
    Ok(())
}

#[test]
fn every_change_case_plans_as_expected() {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 15, "the corpus has {} cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            check(c)
                .err()
                .map(|e| format!("{}: {e}", c.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
