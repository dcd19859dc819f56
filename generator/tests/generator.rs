//! The built generator, as systemd runs it: three directory arguments, the config from
//! CITADEL_CONFIG, the kernel log replaced by a file (CITADEL_KMSG).

use std::path::{Path, PathBuf};
use std::process::Command;

fn tree(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(d).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

struct Run {
    _tmp: tempfile::TempDir,
    normal: PathBuf,
    kmsg: String,
    code: Option<i32>,
}

fn run(config_text: &str) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("citadel.toml");
    std::fs::write(&cfg, config_text).unwrap();
    let [normal, early, late] = ["normal", "early", "late"].map(|d| tmp.path().join(d));
    for d in [&normal, &early, &late] {
        std::fs::create_dir(d).unwrap();
    }
    let kmsg = tmp.path().join("kmsg");
    std::fs::write(&kmsg, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_citadel-generator"))
        .args([&normal, &early, &late])
        .env("CITADEL_CONFIG", &cfg)
        .env("CITADEL_KMSG", &kmsg)
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "a generator prints nothing on stdout"
    );
    for d in [&early, &late] {
        assert!(tree(d).is_empty(), "nothing in {}", d.display());
    }
    Run {
        kmsg: std::fs::read_to_string(&kmsg).unwrap(),
        normal,
        code: out.status.code(),
        _tmp: tmp,
    }
}

const GOOD: &str = r#"
[models.phi3]
path = "phi3"
port = 11403
gpus = [0]
gpu_memory_utilization = 0.3
[models.gone]
path = "gone"
port = 11404
gpus = [1]
gpu_memory_utilization = 0.3
enabled = false
"#;

#[test]
fn a_valid_config_wants_its_enabled_models() {
    let r = run(GOOD);
    assert_eq!(r.code, Some(0));
    assert_eq!(
        tree(&r.normal),
        [
            "citadel-model-next@.service.d/50-citadel-generator.conf",
            "citadel-model@.service.d/50-citadel-generator.conf",
            "citadel-models.target.wants/citadel-model@phi3.service",
        ]
    );
    assert_eq!(r.kmsg, "", "nothing logged on success");
}

#[test]
fn a_broken_config_writes_nothing_logs_one_line_and_exits_0() {
    let r = run(&format!(
        "{GOOD}\n[models.phi3x]\npath = \"p\"\nport = 11403\ngpus = [0]\nbogus = 1\n"
    ));
    assert_eq!(r.code, Some(0), "a generator never fails the boot");
    assert!(tree(&r.normal).is_empty(), "{:?}", tree(&r.normal));
    assert_eq!(r.kmsg.lines().count(), 1, "{}", r.kmsg);
    assert!(r.kmsg.starts_with("<3>citadel-generator["), "{}", r.kmsg);
    assert!(
        r.kmsg.contains("citadel.toml"),
        "names the file: {}",
        r.kmsg
    );
    assert!(r.kmsg.contains("more problem"), "{}", r.kmsg);
}

#[test]
fn a_missing_config_or_a_syntax_error_writes_nothing() {
    let r = run("[models.phi3\n\u{1b}[31m");
    assert_eq!(r.code, Some(0));
    assert!(tree(&r.normal).is_empty());
    assert_eq!(r.kmsg.lines().count(), 1, "{}", r.kmsg);
    assert!(
        !r.kmsg.contains('\u{1b}'),
        "control characters escaped: {}",
        r.kmsg
    );
}

#[test]
fn no_arguments_is_logged_and_still_exit_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_citadel-generator"))
        .env("CITADEL_KMSG", "/nonexistent-dir/kmsg")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: citadel-generator"));
}
