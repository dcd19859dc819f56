//! The exports against the real schemas, for the shipped config and every valid test config:
//! every Kubernetes manifest with PyPI's `kubernetes-validate --strict` for Kubernetes
//! [`KUBERNETES`] (its OpenAPI schemas; unknown fields are errors), and the production-stack
//! values with `jsonschema` against the chart's `values.schema.json` (fixture, see
//! tests/fixtures/production-stack/SOURCE.md). Both read the files as YAML (PyYAML), as kubectl
//! and Helm do.
//!
//! Root tier: the venv lives under /var/cache (`bash tests/kubernetes-validate-venv.sh`, run by
//! tests/run.sh as root); `CITADEL_K8S_VALIDATE_VENV` points elsewhere. A missing venv fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Kubernetes version the manifests are validated for.
const KUBERNETES: &str = "1.37.0";

fn venv() -> PathBuf {
    let v = std::env::var_os("CITADEL_K8S_VALIDATE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/citadel-test/kubernetes-validate".into());
    assert!(
        v.join("bin/kubernetes-validate").is_file(),
        "no kubernetes-validate venv at {} (bash tests/kubernetes-validate-venv.sh makes it)",
        v.display()
    );
    v
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn configs() -> Vec<PathBuf> {
    let mut v = vec![repo().join("packaging/citadel.toml")];
    let mut t: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/configs/valid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    t.sort();
    v.extend(t);
    v
}

fn citadel(args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_citadel-service"))
        .args(args)
        .env_remove("CITADEL_CONFIG")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn kubernetes_validate(files: &[PathBuf]) -> Output {
    Command::new(venv().join("bin/kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES])
        .args(files)
        .output()
        .unwrap()
}

const VALIDATE_VALUES: &str = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
cls = jsonschema.validators.validator_for(schema)
cls.check_schema(schema)
bad = 0
for f in sys.argv[2:]:
    values = yaml.safe_load(open(f))
    for e in sorted(cls(schema).iter_errors(values), key=str):
        bad += 1
        print(f"{f}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
    print(f"{f}: checked against {schema.get('$schema')}")
sys.exit(1 if bad else 0)
"#;

fn validate_values(files: &[PathBuf]) -> Output {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/production-stack/values.schema.json");
    Command::new(venv().join("bin/python"))
        .arg("-c")
        .arg(VALIDATE_VALUES)
        .arg(schema)
        .args(files)
        .output()
        .unwrap()
}

#[test]
#[ignore = "root tier: needs root and the kubernetes-validate venv that tests/run.sh installs under /var/cache"]
fn every_manifest_passes_kubernetes_validate_strict() {
    let work = tempfile::tempdir().unwrap();
    let mut files = vec![];
    let mut resources = 0;
    for (i, cfg) in configs().iter().enumerate() {
        let c = cfg.to_str().unwrap();
        let dir = work.path().join(format!("{i}"));
        citadel(&[
            "--config",
            c,
            "export",
            "kubernetes",
            "--out",
            dir.to_str().unwrap(),
        ]);
        let mut here: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        here.sort();
        assert!(!here.is_empty(), "{c}: no files");
        // Each model file holds three objects.
        resources += 3 * here.len();
        files.extend(here);
        // stdout, in a namespace, as one stream.
        let o = citadel(&[
            "--config",
            c,
            "export",
            "kubernetes",
            "--namespace",
            "citadel-test",
        ]);
        let f = work.path().join(format!("{i}-stream.yaml"));
        std::fs::write(&f, &o.stdout).unwrap();
        resources += 3 * here_models(&o.stdout);
        files.push(f);
    }
    let o = kubernetes_validate(&files);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    print!("{out}{err}");
    assert_eq!(
        o.status.code(),
        Some(0),
        "kubernetes-validate failed:\n{out}{err}"
    );
    let passed = format!("against version {}", &KUBERNETES[..4]);
    assert_eq!(
        out.lines()
            .chain(err.lines())
            .filter(|l| l.contains(" passed for resource ") && l.contains(&passed))
            .count(),
        resources,
        "{out}{err}"
    );
    println!(
        "{resources} objects from {} configs passed kubernetes-validate --strict for Kubernetes {KUBERNETES}",
        configs().len()
    );
}

fn here_models(stream: &[u8]) -> usize {
    String::from_utf8_lossy(stream)
        .matches("\"kind\": \"Deployment\"")
        .count()
}

#[test]
#[ignore = "root tier: needs root and the kubernetes-validate venv that tests/run.sh installs under /var/cache"]
fn kubernetes_validate_rejects_a_broken_manifest() {
    // The check can fail: an unknown field and a wrong type in a rendered manifest.
    let work = tempfile::tempdir().unwrap();
    let o = citadel(&[
        "--config",
        repo()
            .join("tests/configs/valid/three-models.toml")
            .to_str()
            .unwrap(),
        "export",
        "kubernetes",
    ]);
    let text = String::from_utf8(o.stdout).unwrap();
    for (i, bad) in [
        text.replacen("\"replicas\": 1", "\"replicas\": 1, \"replika\": 1", 1),
        text.replacen("\"replicas\": 1", "\"replicas\": \"one\"", 1),
    ]
    .into_iter()
    .enumerate()
    {
        assert_ne!(bad, text);
        let f = work.path().join(format!("bad{i}.yaml"));
        std::fs::write(&f, bad).unwrap();
        let o = kubernetes_validate(&[f]);
        assert_ne!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

#[test]
#[ignore = "root tier: needs root and the kubernetes-validate venv that tests/run.sh installs under /var/cache"]
fn production_stack_values_pass_the_charts_json_schema() {
    let work = tempfile::tempdir().unwrap();
    let mut files = vec![];
    for (i, cfg) in configs().iter().enumerate() {
        let dir = work.path().join(format!("{i}"));
        citadel(&[
            "--config",
            cfg.to_str().unwrap(),
            "export",
            "production-stack",
            "--out",
            dir.to_str().unwrap(),
        ]);
        files.push(dir.join("values.yaml"));
    }
    let o = validate_values(&files);
    let out = String::from_utf8_lossy(&o.stdout);
    print!("{out}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert_eq!(out.matches("checked against").count(), files.len());
    // The check can fail.
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let bad = work.path().join("bad.yaml");
    std::fs::write(
        &bad,
        text.replacen("\"replicaCount\": 1", "\"replicaCount\": \"one\"", 1),
    )
    .unwrap();
    let o = validate_values(&[bad]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("replicaCount"));
}
