//! The citadel-mangen binary: `--help` prints usage and creates nothing.

use std::process::Command;

fn mangen(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_citadel-mangen"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn help_prints_usage_and_creates_nothing() {
    let d = tempfile::tempdir().unwrap();
    for a in [&["--help"][..], &["-h"]] {
        let out = mangen(d.path(), a);
        assert_eq!(out.status.code(), Some(0), "{a:?}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage: citadel-mangen OUT_DIR"));
    }
    for a in [&[][..], &["--out"], &["a", "b"]] {
        let out = mangen(d.path(), a);
        assert_eq!(out.status.code(), Some(2), "{a:?}");
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("usage: citadel-mangen"));
    }
    let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    let out = mangen(d.path(), &["gen"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(d.path().join("gen/man/citadel-service.1").is_file());
}
