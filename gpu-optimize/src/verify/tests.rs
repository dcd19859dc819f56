use super::*;
use crate::report::Status;
use citadel_common::gpu::{FixtureGpu, GpuProcess, GpuSource};
use std::path::Path;

fn h200() -> Snapshot {
    FixtureGpu::load(&citadel_common::gpu::h200_fixture_path())
        .unwrap()
        .snapshot()
        .unwrap()
}

pub(crate) fn config(gpu: &str, models: &str) -> Config {
    let text =
        format!("[engine]\ncommand = [\"/usr/bin/vllm\", \"serve\"]\n[gpu]\n{gpu}\n{models}");
    Config::parse_with(
        &text,
        Path::new("/etc/citadel/citadel.toml"),
        &Default::default(),
    )
    .unwrap()
}

const ONE_MODEL: &str = "[models.a]\npath = \"a\"\nport = 11400\ngpus = [0]\ntensor_parallel_size = 1\ngpu_memory_utilization = 0.9\n";

fn find<'a>(c: &'a [Check], name: &str) -> &'a Check {
    c.iter()
        .find(|c| c.check == name)
        .unwrap_or_else(|| panic!("no {name} in {c:?}"))
}

#[test]
fn versions_compare_numerically() {
    assert_eq!(compare_versions("580.159.04", "550.54"), Ordering::Greater);
    assert_eq!(compare_versions("550.54", "550.54.14"), Ordering::Less);
    assert_eq!(compare_versions("12.10", "12.4"), Ordering::Greater);
    assert_eq!(compare_versions("13.0", "13"), Ordering::Equal);
    assert_eq!(compare_versions("535.104.05", "535.104.5"), Ordering::Equal);
}

#[test]
fn healthy_h200_passes_everything() {
    let cfg = config(
        "min_driver_version = \"550.54\"\nmin_cuda_version = \"12.4\"",
        ONE_MODEL,
    );
    let c = verify(&h200(), &cfg, false);
    assert!(c.iter().all(|c| c.status == Status::Ok), "{c:#?}");
    assert!(find(&c, "driver").detail.contains("580.159.04"));
    assert!(find(&c, "cuda").detail.contains("13.0"));
}

#[test]
fn old_driver_and_cuda_fail() {
    let cfg = config(
        "min_driver_version = \"590.1\"\nmin_cuda_version = \"13.1\"",
        "",
    );
    let c = verify(&h200(), &cfg, false);
    assert_eq!(find(&c, "driver").status, Status::Fail);
    assert!(find(&c, "driver").detail.contains("590.1"));
    assert_eq!(find(&c, "cuda").status, Status::Fail);
}

#[test]
fn ecc_error_fails() {
    let mut s = h200();
    s.gpus[0].ecc_uncorrected_volatile = Some(2);
    let c = verify(&s, &config("", ""), false);
    let e = find(&c, "ecc");
    assert_eq!(e.status, Status::Fail);
    assert!(e.detail.contains("2 uncorrected"), "{}", e.detail);
    assert!(!e.unavailable);
}

#[test]
fn hot_gpu_fails_at_slowdown_minus_margin() {
    let mut s = h200();
    let cfg = config("temperature_margin_c = 5", "");
    s.gpus[0].temperature_c = Some(83);
    assert_eq!(
        find(&verify(&s, &cfg, false), "temperature").status,
        Status::Ok
    );
    s.gpus[0].temperature_c = Some(84); // 89 - 5
    let c = verify(&s, &cfg, false);
    let t = find(&c, "temperature");
    assert_eq!(t.status, Status::Fail);
    assert!(t.detail.contains("89 C"), "{}", t.detail);
}

#[test]
fn pending_retirement_and_remap_fail() {
    let mut s = h200();
    s.gpus[0].retired_pages_pending = Some(true);
    s.gpus[0].remap_pending = Some(true);
    let c = verify(&s, &config("", ""), false);
    assert_eq!(find(&c, "retired_pages").status, Status::Fail);
    assert_eq!(find(&c, "row_remap").status, Status::Fail);
}

#[test]
fn mig_must_match_policy() {
    let s = h200();
    assert_eq!(
        find(&verify(&s, &config("mig = true", ""), false), "mig").status,
        Status::Fail
    );
    let mut s2 = s.clone();
    s2.gpus[0].mig_pending = Some(true);
    assert_eq!(
        find(&verify(&s2, &config("", ""), false), "mig").status,
        Status::Warn
    );
}

#[test]
fn too_few_gpus_is_unavailable() {
    let two = "[models.b]\npath = \"b\"\nport = 11401\ngpus = [0, 1]\ntensor_parallel_size = 2\ngpu_memory_utilization = 0.5\n";
    let c = verify(&h200(), &config("", two), false);
    let g = find(&c, "gpu_count");
    assert_eq!(g.status, Status::Fail);
    assert!(g.unavailable);
    assert!(
        g.detail.contains("GPU 1") && g.detail.contains('b'),
        "{}",
        g.detail
    );
}

#[test]
fn stale_process_is_reported_with_pid_name_and_unit() {
    let mut s = h200();
    s.gpus[0].processes.push(GpuProcess {
        pid: 4242,
        used_memory_bytes: Some(80 * 1024 * 1024 * 1024),
        name: "python3".into(),
        unit: Some("citadel-model@old.service".into()),
    });
    s.gpus[0].memory_free_bytes -= 80 * 1024 * 1024 * 1024;
    s.gpus[0].memory_used_bytes += 80 * 1024 * 1024 * 1024;
    let c = verify(&s, &config("", ONE_MODEL), false);
    let p = find(&c, "process");
    assert_eq!(p.status, Status::Warn);
    assert!(
        p.detail.contains("PID 4242") && p.detail.contains("python3"),
        "{}",
        p.detail
    );
    assert!(
        p.detail
            .contains("systemctl stop citadel-model@old.service"),
        "{}",
        p.detail
    );
    // 0.9 x 140 GiB does not fit in the ~60 GiB left.
    assert_eq!(find(&c, "memory").status, Status::Fail);
}

#[test]
fn our_own_model_process_counts_as_ours() {
    let mut s = h200();
    let used = 120 * 1024 * 1024 * 1024u64;
    s.gpus[0].processes.push(GpuProcess {
        pid: 777,
        used_memory_bytes: Some(used),
        name: "python3".into(),
        unit: Some("citadel-model@a.service".into()),
    });
    s.gpus[0].memory_free_bytes -= used;
    let c = verify(&s, &config("", ONE_MODEL), false);
    assert_eq!(find(&c, "process").status, Status::Ok);
    assert_eq!(find(&c, "memory").status, Status::Ok);
}

#[test]
fn drift_warns_in_check_and_fails_after_apply() {
    let cfg = config(
        "power_limit_watts = 600\ncompute_mode = \"exclusive_process\"",
        "",
    );
    let s = h200();
    let c = verify(&s, &cfg, false);
    assert_eq!(find(&c, "power_limit").status, Status::Warn);
    assert_eq!(find(&c, "compute_mode").status, Status::Warn);
    let c = verify(&s, &cfg, true);
    assert_eq!(find(&c, "power_limit").status, Status::Fail);
    assert!(find(&c, "power_limit").detail.contains("700 W"));
}
