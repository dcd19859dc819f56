use super::*;

fn gpu(index: u32, pci: &str) -> GpuInfo {
    let mut g: GpuInfo = serde_json::from_value(serde_json::json!({
        "index": index, "name": "H200", "uuid": format!("GPU-{index}"), "pci_bus_id": pci,
        "memory_total_bytes": 1, "memory_used_bytes": 0, "memory_free_bytes": 1,
        "clocks": {}, "processes": [], "refused": {}
    }))
    .unwrap();
    g.index = index;
    g
}

#[test]
fn xid_lines_parse_as_the_driver_prints_them() {
    let x = parse_xid("kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.").unwrap();
    assert_eq!((x.pci.as_str(), x.xid), ("0000:3b:00", 79));
    assert!(x.text.starts_with("pid=1234"));
    assert!(parse_xid("NVRM: loading NVIDIA UNIX x86_64 Kernel Module").is_none());
}

#[test]
fn fatal_xids_quarantine_and_contained_ones_restart() {
    for (xid, a) in [
        (79, Action::Quarantine),
        (48, Action::Quarantine),
        (95, Action::Quarantine),
        (119, Action::Quarantine),
        (94, Action::RestartModel),
        (13, Action::RestartModel),
        (63, Action::Note),
        (999, Action::Note),
    ] {
        let x = Xid {
            pci: "0000:01:00".into(),
            xid,
            text: String::new(),
        };
        assert_eq!(xid_action(&x).0, a, "Xid {xid}");
    }
    let reset = Xid {
        pci: "x".into(),
        xid: 154,
        text: "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)".into(),
    };
    assert_eq!(xid_action(&reset).0, Action::Quarantine);
    let none = Xid {
        pci: "x".into(),
        xid: 154,
        text: "GPU recovery action changed from 0x1 (GPU Reset Required) to 0x0 (None)".into(),
    };
    assert_eq!(xid_action(&none).0, Action::Note);
}

#[test]
fn the_pci_address_names_the_gpu() {
    let gpus = [gpu(0, "00000000:1A:00.0"), gpu(1, "00000000:3B:00.0")];
    let lines = vec![
        "NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus.".to_string(),
        "NVRM: Xid (PCI:0000:99:00): 48, pid=1, DBE".to_string(),
    ];
    let (f, unknown) = xid_faults(&lines, &gpus);
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].gpu, f[0].xid, f[0].action),
        (1, Some(79), Action::Quarantine)
    );
    assert_eq!(unknown.len(), 1);
}

#[test]
fn nvml_health_changes_are_faults() {
    let mut a = gpu(2, "00000000:1A:00.0");
    a.ecc_uncorrected_volatile = Some(0);
    let mut b = a.clone();
    assert!(health_faults(Some(&a), &b).is_empty());
    b.ecc_uncorrected_volatile = Some(1);
    b.remap_pending = Some(true);
    let f = health_faults(Some(&a), &b);
    assert_eq!(f.len(), 2);
    assert!(f
        .iter()
        .all(|f| f.action == Action::Quarantine && f.gpu == 2));
    // Once seen, the same reading is not a new fault.
    assert!(health_faults(Some(&b), &b).is_empty());
}

#[test]
fn the_file_log_returns_only_new_whole_lines() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("kmsg");
    let mut log = FileLog::new(p.clone());
    assert!(log.new_lines().unwrap().is_empty());
    std::fs::write(&p, "one\ntwo\npart").unwrap();
    assert_eq!(log.new_lines().unwrap(), vec!["one", "two"]);
    std::fs::write(&p, "one\ntwo\npartial\nthree\n").unwrap();
    assert_eq!(log.new_lines().unwrap(), vec!["partial", "three"]);
    assert!(log.new_lines().unwrap().is_empty());
}

#[test]
fn the_boot_started_at_the_clock_minus_the_uptime() {
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
    assert_eq!(
        boot_started("3600.25 7000.00\n", now),
        Some(1_800_000_000 - 3601 - 1)
    );
    assert_eq!(boot_started("0.5 0.1", now), Some(1_800_000_000 - 1 - 1));
    for bad in ["", "x y", "-5 1", "NaN 1", "inf 1"] {
        assert_eq!(boot_started(bad, now), None, "{bad:?}");
    }
    assert!(
        boot_started_unix().is_some(),
        "this machine has /proc/uptime"
    );
}
