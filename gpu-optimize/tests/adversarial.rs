//! Adversarial suite for gpu-optimize (issue #14): `--json` prints exactly one JSON document
//! in every case, errors included.

#[test]
fn adversarial_json_errors_are_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[gpu]\npower_limit_watts = \"x\\u0000\"\n").unwrap();
    for (args, exit) in [
        (vec!["--json"], 78),
        (vec!["--check", "--json"], 78),
        (vec!["--restore", "--json"], 78),
        (vec!["--json", "--no-such-flag"], 2),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpu-optimize"))
            .args(&args)
            .arg("--config")
            .arg(&bad)
            .env_remove("JOURNAL_STREAM")
            .env_remove("CITADEL_FAKE_GPU")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(exit), "{args:?}: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not one JSON document ({e}): {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert_eq!(v["error"]["exit"], exit, "{args:?}: {v}");
    }
}
