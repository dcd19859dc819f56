//! GPU faults at run time (issue 17) under a real systemd: the monitor, run by the shipped
//! hardened `citadel-monitor.service` (ProtectKernelLogs=, ProtectSystem=strict, one
//! capability), reads an NVIDIA Xid line from the kernel log through the journal
//! (`journalctl _TRANSPORT=kernel`, no test hook) and quarantines that GPU: its model is
//! stopped and stays down with an incident, the other GPU's models keep their main process,
//! and start-model refuses the quarantined GPU (exit 69).
//!
//! How a kernel line gets into the box's journal: a container has no kernel log of its own
//! (nspawn gives it no /dev/kmsg, and journald reads none there), so the test writes the entry
//! the way journald would have stored it, `_TRANSPORT=kernel` with the box's boot ID (the
//! host's kernel, so the same), with the host's `systemd-journal-remote` (journal export
//! format in, a journal file out: Debian's package systemd-journal-remote, installed by
//! tests/run.sh) into the box's journal directory, where journalctl reads every `*.journal`
//! file. The GPUs are the readings file of `CITADEL_FAKE_GPU` (two H200s), given to the monitor
//! by a drop-in.
//!
//! System tier (`#[ignore]`, run by `tests/run.sh` with `--ignored` where root and
//! systemd-nspawn exist); run by hand, a missing prerequisite fails the test. Box name `xid-fault`.

use citadel_common::paths::model_unit;
use citadel_system_tests::citadel::{self, Citadel, Setup};
use citadel_system_tests::run::{run, wait_for};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SEC: Duration = Duration::from_secs(1);
const JOURNAL_REMOTE: &str = "/usr/lib/systemd/systemd-journal-remote";
const FAKE_GPU: &str = "/etc/citadel/fake-gpu.json";
/// GPU 1's PCI bus id in the readings file, and the Xid line naming it (NVIDIA's format).
const GPU1_PCI: &str = "00000000:3B:00.0";
const XID_79: &str =
    "NVRM: Xid (PCI:0000:3b:00): 79, pid=4711, name=python3, GPU has fallen off the bus.";

fn gpu(index: u32, pci: &str) -> serde_json::Value {
    serde_json::json!({
        "index": index, "name": "NVIDIA H200", "uuid": format!("GPU-{index}"),
        "pci_bus_id": pci, "memory_total_bytes": 150754820096u64, "memory_used_bytes": 0,
        "memory_free_bytes": 150754820096u64, "ecc_enabled": true, "ecc_uncorrected_volatile": 0,
        "remap_pending": false, "clocks": {}, "processes": [], "refused": {}
    })
}

/// `CLOCK_MONOTONIC` in microseconds (the box shares the host's kernel, so its clock too).
fn monotonic_usec() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `t`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000
}

/// One kernel-transport entry in journal export format.
fn kernel_entry(boot_id: &str, message: &str) -> String {
    let realtime = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros();
    format!(
        "__REALTIME_TIMESTAMP={realtime}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID={boot_id}\n\
         _TRANSPORT=kernel\nPRIORITY=3\nSYSLOG_FACILITY=0\nSYSLOG_IDENTIFIER=kernel\n\
         _HOSTNAME=xid-fault\nMESSAGE={message}\n\n",
        monotonic_usec()
    )
}

#[test]
#[ignore = "system tier: needs root + systemd-nspawn"]
fn xid01_a_kernel_xid_79_read_through_the_journal_quarantines_that_gpu_only() {
    citadel::require();
    assert!(
        Path::new(JOURNAL_REMOTE).is_file(),
        "{JOURNAL_REMOTE} is missing (apt-get install systemd-journal-remote; tests/run.sh does)"
    );
    let c = Citadel::install("xid-fault", Setup::default())
        .unwrap_or_else(|e| panic!("box xid-fault: {e}"));
    let readings = serde_json::json!({
        "driver_version": "580.95.05", "cuda_driver_version": "13.0", "nvml_version": null,
        "gpus": [gpu(0, "00000000:1A:00.0"), gpu(1, GPU1_PCI)]
    });
    c.sb.write(FAKE_GPU, readings.to_string().as_bytes(), 0o644)
        .unwrap();
    c.sb.write(
        "/etc/systemd/system/citadel-monitor.service.d/fake-gpu.conf",
        format!("[Service]\nEnvironment=CITADEL_FAKE_GPU={FAKE_GPU}\n").as_bytes(),
        0o644,
    )
    .unwrap();
    c.sb.ok(&["systemctl", "daemon-reload"]).unwrap();
    c.start_all().unwrap_or_else(|e| panic!("{e}"));
    c.wait_all_healthy(60 * SEC)
        .unwrap_or_else(|e| panic!("{e}"));
    // alpha and beta are on GPU 0, gamma on GPU 1 (tests/system/src/citadel.rs MODELS).
    let (alpha, beta, gamma) = (model_unit("alpha"), model_unit("beta"), model_unit("gamma"));
    let pid_alpha = c.main_pid(&alpha);
    let pid_beta = c.main_pid(&beta);
    let monitor_pid = c.main_pid("citadel-monitor.service");
    assert!(pid_alpha > 0 && pid_beta > 0 && monitor_pid > 0);
    // A few sweeps with nothing in the kernel log: nothing is stopped.
    std::thread::sleep(3 * SEC);
    assert_eq!(c.active_state(&gamma), "active");

    // The kernel line, as journald stores one, in the box's journal directory.
    let boot_id =
        c.sb.ok(&["cat", "/proc/sys/kernel/random/boot_id"])
            .unwrap()
            .trim()
            .replace('-', "");
    let machine_id =
        c.sb.ok(&["cat", "/etc/machine-id"])
            .unwrap()
            .trim()
            .to_string();
    let dir = ["/var/log/journal", "/run/log/journal"]
        .iter()
        .map(|d| format!("{d}/{machine_id}"))
        .find(|d| c.sb.exec(&["test", "-d", d]).success())
        .unwrap_or_else(|| panic!("the box has no journal directory for machine {machine_id}"));
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("kernel-xid.journal");
    let mut cmd = Command::new(JOURNAL_REMOTE);
    cmd.arg(format!("--output={}", file.display()))
        .args(["--split-mode=none", "-"]);
    let text = format!(
        "{}{}",
        kernel_entry(
            &boot_id,
            "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  580.95.05"
        ),
        kernel_entry(&boot_id, XID_79)
    );
    let out = run(cmd, Some(text.as_bytes()), 30 * SEC);
    assert!(
        out.success() && file.is_file(),
        "systemd-journal-remote: {}",
        out.describe()
    );
    c.sb.install(&file, &format!("{dir}/kernel-xid.journal"))
        .unwrap();
    // The box's journalctl sees it as a kernel line of this boot (what the monitor asks).
    let seen = c.sb.journal(&["_TRANSPORT=kernel", "-b", "-o", "cat"]);
    assert!(seen.contains(XID_79), "journalctl in the box: {seen:?}");

    // The monitor quarantines GPU 1: gamma is stopped and stays down.
    c.wait_state(&gamma, "inactive", 20 * SEC)
        .unwrap_or_else(|e| panic!("{e}\n{}", c.unit_log("citadel-monitor.service")));
    let log = c.unit_log("citadel-monitor.service");
    assert!(log.contains("Xid 79"), "monitor log: {log}");
    assert_eq!(
        c.main_pid("citadel-monitor.service"),
        monitor_pid,
        "the monitor restarted"
    );
    // GPU 0's models are untouched.
    assert_eq!(c.active_state(&alpha), "active");
    assert_eq!(c.main_pid(&alpha), pid_alpha);
    assert_eq!(c.main_pid(&beta), pid_beta);
    // The incident says why and what to do.
    let why = c.citadel_service(&["why", "gamma", "--json"], 30 * SEC);
    let v: serde_json::Value = serde_json::from_str(&why.stdout)
        .unwrap_or_else(|e| panic!("why --json: {e}: {}", why.describe()));
    let inc = &v["incident"];
    assert_eq!(inc["class"], "gpu_fault", "{v}");
    assert_eq!(inc["xid"], 79, "{v}");
    assert!(
        inc["fix"].as_str().unwrap_or("").contains("gpu clear 1"),
        "{v}"
    );
    // It stays down: a start of gamma is refused by start-model (69), alpha keeps serving.
    let _ = c.sb.exec_t(&["systemctl", "start", &gamma], 30 * SEC);
    let down = wait_for(15 * SEC, SEC / 5, || {
        let p = c.show(&gamma, &["ActiveState", "ExecMainStatus"]);
        (p.get("ActiveState").map(String::as_str) != Some("activating")
            && p.get("ExecMainStatus").map(String::as_str) == Some("69"))
        .then_some(p)
    });
    assert!(
        down.is_some(),
        "gamma was not refused with 69: {:?}\n{}",
        c.show(&gamma, &["ActiveState", "ExecMainStatus", "NRestarts"]),
        c.unit_log(&gamma)
    );
    assert_eq!(c.health(18101), 200, "alpha stopped serving");
}
