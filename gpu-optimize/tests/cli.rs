//! Black-box tests of the built binary: the real NVML path on this machine (no driver here:
//! `CITADEL_FAKE_GPU` unset) and the fake H200 through `CITADEL_FAKE_GPU`.

use citadel_common::gpu::{FixtureGpu, GpuSource, Snapshot};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_gpu-optimize");

fn h200_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../common/data/h200-nvml-readings.json")
}

struct Box_ {
    dir: tempfile::TempDir,
}

impl Box_ {
    /// A config with `[gpu]` = `gpu` and one model on GPU 0; state dir inside the temp dir.
    fn new(gpu: &str) -> Box_ {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[paths]\nstate_dir = {:?}\n[engine]\ncommand = [\"/usr/bin/vllm\", \"serve\"]\n[gpu]\n{gpu}\n\
             [models.a]\npath = \"a\"\nport = 11400\ngpus = [0]\ntensor_parallel_size = 1\ngpu_memory_utilization = 0.9\n",
            dir.path().join("state").display().to_string()
        );
        std::fs::write(dir.path().join("citadel.toml"), text).unwrap();
        std::fs::copy(h200_file(), dir.path().join("gpu.json")).unwrap();
        Box_ { dir }
    }
    fn gpu_file(&self) -> PathBuf {
        self.dir.path().join("gpu.json")
    }
    fn saved(&self) -> PathBuf {
        self.dir.path().join("state/gpu-saved.json")
    }
    /// Run with the fake GPU (`fake = true`) or the real NVML.
    fn run(&self, fake: bool, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("CITADEL_CONFIG", self.dir.path().join("citadel.toml"))
            .env_remove("CITADEL_FAKE_GPU")
            .env_remove("NOTIFY_SOCKET");
        if fake {
            c.env("CITADEL_FAKE_GPU", self.gpu_file());
        }
        c.output().unwrap()
    }
    fn readings(&self) -> Snapshot {
        FixtureGpu::load(&self.gpu_file())
            .unwrap()
            .snapshot()
            .unwrap()
    }
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn nvml_present() -> bool {
    citadel_common::gpu::Nvml::init().is_ok()
}

#[test]
#[ignore = "needs a machine without the NVIDIA driver"]
fn no_driver_required_true_exits_69_with_one_line() {
    assert!(!nvml_present(), "NVML is present on this machine");
    let b = Box_::new("required = true");
    for args in [&["--check", "--json"][..], &["--json"][..]] {
        let o = b.run(false, args);
        assert_eq!(o.status.code(), Some(69), "{args:?}: {}", stderr(&o));
        let v = json(&o);
        assert_eq!(v["driver"], Value::Null);
        assert_eq!(v["exit"], 69);
        assert_eq!(v["checks"][0]["check"], "driver");
        assert_eq!(v["checks"][0]["status"], "fail");
        assert_eq!(v["checks"][0]["gpu"], Value::Null);
        let detail = v["checks"][0]["detail"].as_str().unwrap();
        assert!(
            detail.contains("libnvidia-ml.so.1") && detail.contains("install the NVIDIA driver"),
            "{detail}"
        );
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains("libnvidia-ml.so.1"), "{err}");
    }
    assert!(!b.saved().exists());
    // Text mode: the same exit, a table on stdout.
    let o = b.run(false, &["--check"]);
    assert_eq!(o.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&o.stdout).contains("driver"));
}

#[test]
#[ignore = "needs a machine without the NVIDIA driver"]
fn no_driver_required_false_warns_and_exits_0() {
    assert!(!nvml_present(), "NVML is present on this machine");
    let b = Box_::new("required = false");
    for args in [&["--check", "--json"][..], &["--json"][..]] {
        let o = b.run(false, args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        let v = json(&o);
        assert_eq!(v["exit"], 0);
        assert_eq!(v["checks"][0]["status"], "warn");
        assert!(stderr(&o).contains("libnvidia-ml.so.1"), "{}", stderr(&o));
        assert!(stderr(&o).contains("required = false"), "{}", stderr(&o));
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver"]
fn real_nvml_check_is_read_only_when_present() {
    assert!(
        nvml_present(),
        "no NVML on this machine (libnvidia-ml.so.1 / driver missing)"
    );
    // Only --check: never apply on a real card.
    let b = Box_::new("required = true");
    let o = b.run(false, &["--check", "--json"]);
    let v = json(&o);
    println!("{}", serde_json::to_string_pretty(&v).unwrap());
    assert!(v["driver"]["driver_version"].is_string());
    assert!(
        matches!(o.status.code(), Some(0 | 1 | 69)),
        "{}",
        stderr(&o)
    );
    assert!(!b.saved().exists());
}

#[test]
fn fake_apply_check_restore_round_trip() {
    let b = Box_::new(
        "persistence_mode = true\npower_limit_watts = 600\ncompute_mode = \"exclusive_process\"",
    );
    let original = b.readings();

    let o = b.run(true, &["--check", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["mode"], "check");
    assert_eq!(v["driver"]["driver_version"], "580.159.04");
    assert_eq!(v["gpus"][0]["power_limit_mw"], 700000);
    let power = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "power_limit")
        .unwrap();
    assert_eq!(power["status"], "warn");
    assert_eq!(b.readings(), original, "--check changed the card");
    assert!(!b.saved().exists());

    let o = b.run(true, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(b.saved().exists());
    let now = b.readings();
    assert_eq!(now.gpus[0].power_limit_mw, Some(600_000));
    assert_eq!(
        now.gpus[0].compute_mode.as_deref(),
        Some("exclusive_process")
    );

    let o = b.run(true, &["--restore", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&o)["mode"], "restore");
    assert_eq!(b.readings(), original);
    assert!(!b.saved().exists());

    let o = b.run(true, &["--restore"]);
    assert_eq!(o.status.code(), Some(0));
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(all.contains("nothing to restore"), "{all}");
}

#[test]
fn fake_power_limit_out_of_range_exits_78_and_changes_nothing() {
    let b = Box_::new("power_limit_watts = 800");
    let before = std::fs::read(b.gpu_file()).unwrap();
    let o = b.run(true, &[]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("gpu.power_limit_watts = 800"), "{err}");
    assert!(err.contains("200 W-700 W"), "{err}");
    assert_eq!(std::fs::read(b.gpu_file()).unwrap(), before);
    assert!(!b.saved().exists());
}

#[test]
fn fake_stale_process_and_ecc_error() {
    let b = Box_::new("");
    let mut v: Value = serde_json::from_slice(&std::fs::read(b.gpu_file()).unwrap()).unwrap();
    let me = std::process::id();
    v["devices"][0]["processes"] = serde_json::json!([{"pid": me, "used_memory": 1073741824u64}]);
    v["devices"][0]["ecc_uncorrected_volatile"] = serde_json::json!(4);
    std::fs::write(b.gpu_file(), v.to_string()).unwrap();
    let o = b.run(true, &["--check", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let r = json(&o);
    let checks = r["checks"].as_array().unwrap();
    let p = checks.iter().find(|c| c["check"] == "process").unwrap();
    assert_eq!(p["status"], "warn");
    assert_eq!(p["gpu"], 0);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("PID {me} ")),
        "{p}"
    );
    let e = checks.iter().find(|c| c["check"] == "ecc").unwrap();
    assert_eq!(e["status"], "fail");
    assert!(stderr(&o).contains("gpu 0: ecc: fail"), "{}", stderr(&o));
}

#[test]
fn fake_without_driver_behaves_like_no_driver() {
    let b = Box_::new("required = true");
    std::fs::write(
        b.gpu_file(),
        r#"{"error": "NVML unavailable: libnvidia-ml.so.1 not found (install the NVIDIA driver)"}"#,
    )
    .unwrap();
    let o = b.run(true, &["--check", "--json"]);
    assert_eq!(o.status.code(), Some(69));
}

#[test]
fn bad_config_exits_78() {
    let b = Box_::new("power_limit_watts = \"lots\"");
    let o = b.run(true, &["--check"]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("gpu.power_limit_watts"),
        "{}",
        stderr(&o)
    );
}
