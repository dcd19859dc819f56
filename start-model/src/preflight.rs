//! Checks before the engine is spawned. Each failure is one line and the contract's exit code:
//! model files missing or unreadable 69, port still busy 75, GPU missing 69, GPU memory still
//! held by leftover processes 75. Waits are bounded and end early when a stop is asked.

use crate::{stopped, Abort, Failure};
use citadel_common::access::{check_tree_readable, Account};
use citadel_common::config::Model;
use citadel_common::gpu::{GpuProcess, GpuSource};
use citadel_common::notify;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often a bounded wait looks again.
pub const RETRY: Duration = Duration::from_millis(500);

/// The model directory looks complete (config, tokenizer, every shard the index names).
pub fn model_files(dir: &Path) -> Result<(), Failure> {
    citadel_common::modelfiles::check_model_dir(dir)
        .map(|f| log::debug!("{}: {} weight files", dir.display(), f.weights.len()))
        .map_err(|problems| Failure::unavailable(problems.join("\n")))
}

/// When we run as root (the engine then runs as `user` through the unit), the service account
/// must be able to read the whole directory. Not root: the engine runs as us, and the read in
/// [`model_files`] already proved access.
pub fn model_readable(dir: &Path, user: &str) -> Result<(), Failure> {
    if !nix::unistd::geteuid().is_root() {
        log::debug!(
            "not root: skipping the check that {user} can read {}",
            dir.display()
        );
        return Ok(());
    }
    let account =
        Account::lookup(user).map_err(|e| Failure::config(format!("service.user: {e}")))?;
    check_tree_readable(&account, dir).map_err(|e| {
        Failure::unavailable(format!(
            "model directory {} is not readable by the service account: {e}",
            dir.display()
        ))
    })
}

pub use citadel_common::launch::port_free;

/// Wait up to `wait` for the port to be free (a crashed server's port can linger); then 75.
pub fn port(host: &str, port: u16, wait: Duration, stop: &dyn Fn() -> bool) -> Result<(), Abort> {
    let t0 = Instant::now();
    let mut told = false;
    loop {
        if port_free(host, port)? {
            return Ok(());
        }
        if t0.elapsed() >= wait {
            return Err(Failure::temporary(format!(
                "port {port} on {host} is in use (waited {} s, engine.port_wait_secs); another server still holds it",
                wait.as_secs()
            ))
            .into());
        }
        if !told {
            let msg = format!(
                "waiting up to {} s for port {port} on {host} to come free",
                wait.as_secs()
            );
            log::info!("{msg}");
            notify::status(&msg);
            told = true;
        }
        if stop() {
            return Err(stopped(&format!("waiting for port {port}")));
        }
        std::thread::sleep(
            RETRY
                .min(wait.saturating_sub(t0.elapsed()))
                .max(Duration::from_millis(10)),
        );
    }
}

/// Processes on the model's GPUs that do not belong to another model unit: leftovers (an
/// orphaned EngineCore or worker of an earlier start, vLLM issue 55510) or strangers. Another
/// model's processes on a shared GPU are expected, and so are those of this model's other
/// instance during a rollout (`mine` is the unit starting now: the main or the surge one).
pub fn leftovers(
    model: &Model,
    mine: &str,
    gpus: &[citadel_common::gpu::GpuInfo],
) -> Vec<(u32, GpuProcess)> {
    let mut out = Vec::new();
    for g in gpus.iter().filter(|g| model.gpus.contains(&g.index)) {
        for p in &g.processes {
            let other_model = p.unit.as_deref().is_some_and(|u| {
                u != mine && citadel_common::paths::model_of_any_unit(u).is_some()
            });
            if !other_model {
                out.push((g.index, p.clone()));
            }
        }
    }
    out
}

/// One GPU process in words: `PID 4242 (python3 on GPU 0, 30.0 GiB, citadel-model@coder.service)`
/// (the leftovers here, the holders of GPU memory in an incident).
pub fn describe_process(gpu: u32, p: &GpuProcess) -> String {
    let mem = p
        .used_memory_bytes
        .map(|b| format!(", {:.1} GiB", b as f64 / (1u64 << 30) as f64))
        .unwrap_or_default();
    let unit = p
        .unit
        .as_deref()
        .map(|u| format!(", {u}"))
        .unwrap_or_default();
    format!("PID {} ({} on GPU {gpu}{mem}{unit})", p.pid, p.name)
}

fn describe(ps: &[(u32, GpuProcess)]) -> String {
    ps.iter()
        .map(|(gpu, p)| describe_process(*gpu, p))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The model's GPUs exist and no leftover process holds their memory; wait up to `wait` for
/// leftovers to go, naming their PIDs, then 75. Without NVML: skipped, said at info level.
pub fn gpus(
    src: &dyn GpuSource,
    model: &Model,
    mine: &str,
    wait: Duration,
    stop: &dyn Fn() -> bool,
) -> Result<(), Abort> {
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        let snap = match src.snapshot() {
            Ok(s) => s,
            Err(e) => {
                log::info!("NVML not available, skipping GPU preflight ({e})");
                return Ok(());
            }
        };
        for &g in &model.gpus {
            if snap.gpu(g).is_none() {
                return Err(Failure::unavailable(format!(
                    "GPU {g} (models.{}.gpus) does not exist: the driver sees {} GPU(s)",
                    model.name,
                    snap.gpus.len()
                ))
                .into());
            }
        }
        let left = leftovers(model, mine, &snap.gpus);
        if left.is_empty() {
            return Ok(());
        }
        let who = describe(&left);
        if t0.elapsed() >= wait {
            return Err(Failure::temporary(format!(
                "GPU memory still held after {} s (engine.gpu_release_wait_secs) by leftover processes: {who}",
                wait.as_secs()
            ))
            .into());
        }
        if who != last {
            let msg = format!("waiting for leftover processes to release GPU memory: {who}");
            log::warn!("{msg}");
            notify::status(&msg);
            last = who;
        }
        if stop() {
            return Err(stopped("waiting for GPU memory"));
        }
        std::thread::sleep(
            RETRY
                .min(wait.saturating_sub(t0.elapsed()))
                .max(Duration::from_millis(10)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use citadel_common::gpu::FixtureGpu;
    use citadel_common::Exit;
    use std::net::TcpListener;

    fn model(gpus: &[u32]) -> Model {
        Model {
            name: "phi3".into(),
            path: "phi3".into(),
            port: 11403,
            gpus: gpus.to_vec(),
            tensor_parallel_size: gpus.len() as u32,
            gpu_memory_utilization: 0.5,
            max_model_len: None,
            served_model_name: "phi3".into(),
            load_timeout_secs: 60,
            extra_args: vec![],
            enabled: true,
            max_concurrent: None,
            aliases: vec![],
        }
    }

    fn fixture(processes: serde_json::Value) -> FixtureGpu {
        let dev = |i: u32, p: serde_json::Value| {
            serde_json::json!({"index": i, "name": "H200",
                "memory": {"total": 150_000_000_000u64, "used": 1_000_000u64, "free": 149_999_000_000u64},
                "processes": p})
        };
        let v = serde_json::json!({"driver": "580.1", "devices": [dev(0, serde_json::json!([])), dev(1, processes)]});
        FixtureGpu::parse(&v.to_string(), Path::new("test.json")).unwrap()
    }

    #[test]
    fn a_missing_model_directory_is_69() {
        let d = tempfile::tempdir().unwrap();
        let e = model_files(&d.path().join("nope")).unwrap_err();
        assert_eq!(e.exit(), Exit::Unavailable);
        assert!(e.message.contains("nope"));
        assert_eq!(e.message.lines().count(), 1);
    }

    #[test]
    fn an_incomplete_index_is_69_naming_the_shard() {
        let d = tempfile::tempdir().unwrap();
        citadel_common::modelfiles::write_fake_model(d.path(), 2).unwrap();
        model_files(d.path()).unwrap();
        std::fs::remove_file(d.path().join("model-00002-of-00002.safetensors")).unwrap();
        let e = model_files(d.path()).unwrap_err();
        assert_eq!(e.exit(), Exit::Unavailable);
        assert!(
            e.message.contains("model-00002-of-00002.safetensors"),
            "{e}"
        );
    }

    #[test]
    fn a_directory_the_service_account_cannot_read_is_69_when_root() {
        if !nix::unistd::geteuid().is_root() {
            // Not root: the check is skipped by design; nothing to observe.
            assert!(model_readable(Path::new("/nonexistent"), "nobody").is_ok());
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("m");
        citadel_common::modelfiles::write_fake_model(&m, 1).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = model_readable(&m, "nobody").unwrap_err();
        assert_eq!(e.exit(), Exit::Unavailable);
        assert!(e.message.contains("nobody"), "{e}");
        assert!(model_readable(&m, "root").is_ok());
    }

    #[test]
    fn a_busy_port_is_75_after_the_wait() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        assert!(!port_free("127.0.0.1", p).unwrap());
        let t0 = Instant::now();
        let e = port("127.0.0.1", p, Duration::from_millis(700), &|| false)
            .unwrap_err()
            .failure()
            .unwrap();
        assert_eq!(e.exit(), Exit::TempFail);
        assert!(e.message.contains(&format!("port {p}")), "{e}");
        assert!(t0.elapsed() >= Duration::from_millis(700));
        drop(l);
        assert!(port("127.0.0.1", p, Duration::ZERO, &|| false).is_ok());
    }

    #[test]
    fn a_port_freed_during_the_wait_is_fine() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(l);
        });
        port("127.0.0.1", p, Duration::from_secs(10), &|| false).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn a_host_that_is_not_ours_is_a_config_error() {
        let e = port_free("192.0.2.1", 11400).unwrap_err();
        assert_eq!(e.exit(), Exit::Config);
    }

    #[test]
    fn no_nvml_skips_the_gpu_check() {
        let src = FixtureGpu::parse(
            r#"{"error": "libnvidia-ml.so.1 not found"}"#,
            Path::new("x"),
        )
        .unwrap();
        assert!(gpus(
            &src,
            &model(&[0]),
            &model(&[0]).unit(),
            Duration::ZERO,
            &|| false
        )
        .is_ok());
    }

    #[test]
    fn a_missing_gpu_is_69() {
        let e = gpus(
            &fixture(serde_json::json!([])),
            &model(&[2]),
            "citadel-model@phi3.service",
            Duration::ZERO,
            &|| false,
        )
        .unwrap_err()
        .failure()
        .unwrap();
        assert_eq!(e.exit(), Exit::Unavailable);
        assert!(e.message.contains("GPU 2"), "{e}");
    }

    #[test]
    fn leftover_processes_are_75_naming_pids_but_other_models_are_fine() {
        let src = fixture(serde_json::json!([
            {"pid": 4242, "used_memory": 2147483648u64, "name": "VLLM::EngineCore", "unit": "citadel-model@phi3.service"},
            {"pid": 4343, "used_memory": 1073741824u64, "name": "VLLM::EngineCore", "unit": "citadel-model@coder.service"},
            {"pid": 4444, "used_memory": null, "name": "python3"}
        ]));
        let t0 = Instant::now();
        let e = gpus(
            &src,
            &model(&[1]),
            &model(&[1]).unit(),
            Duration::from_millis(600),
            &|| false,
        )
        .unwrap_err()
        .failure()
        .unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(600));
        assert_eq!(e.exit(), Exit::TempFail);
        assert!(
            e.message.contains("PID 4242") && e.message.contains("2.0 GiB"),
            "{e}"
        );
        assert!(e.message.contains("PID 4444"), "{e}");
        assert!(
            !e.message.contains("4343"),
            "another model's process is not a leftover: {e}"
        );
        // GPU 0 has nothing on it.
        assert!(gpus(
            &src,
            &model(&[0]),
            &model(&[0]).unit(),
            Duration::ZERO,
            &|| false
        )
        .is_ok());
    }

    /// Issue 16: the surge instance of a rollout shares the GPU with the main one on purpose.
    #[test]
    fn the_other_instance_of_the_same_model_is_not_a_leftover() {
        let main = serde_json::json!({"pid": 4242, "used_memory": 1, "name": "VLLM::EngineCore", "unit": "citadel-model@phi3.service"});
        let src = fixture(serde_json::json!([main]));
        let surge = citadel_common::paths::surge_unit("phi3");
        assert!(gpus(&src, &model(&[1]), &surge, Duration::ZERO, &|| false).is_ok());
        let e = gpus(
            &src,
            &model(&[1]),
            &model(&[1]).unit(),
            Duration::ZERO,
            &|| false,
        );
        assert!(
            e.is_err(),
            "its own unit's process is a leftover of an earlier start"
        );
        let next = serde_json::json!({"pid": 4343, "used_memory": 1, "name": "VLLM::EngineCore", "unit": surge});
        let src = fixture(serde_json::json!([next]));
        assert!(gpus(
            &src,
            &model(&[1]),
            &model(&[1]).unit(),
            Duration::ZERO,
            &|| false
        )
        .is_ok());
    }

    #[test]
    fn a_stop_ends_the_gpu_wait() {
        let src = fixture(serde_json::json!([{"pid": 1, "used_memory": 1, "name": "x"}]));
        let e = gpus(
            &src,
            &model(&[1]),
            &model(&[1]).unit(),
            Duration::from_secs(60),
            &|| true,
        )
        .unwrap_err();
        assert!(
            matches!(e, Abort::Stopped(ref w) if w == "waiting for GPU memory"),
            "{e}"
        );
    }
}
