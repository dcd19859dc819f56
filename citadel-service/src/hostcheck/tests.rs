use super::*;
use crate::systemd::fake::unit;
use citadel_common::config::testing::PHI3_CODER;
use citadel_common::gpu::{FixtureGpu, GpuSource};

/// `extra`, then phi3 and coder.
fn cfg(extra: &str) -> Config {
    citadel_common::config::testing::config(&format!("{extra}\n{PHI3_CODER}"))
}

/// Two GPUs of 140 GiB (the fixture), nothing listening, every unit active, the generator's
/// output current, a good key file, both helpers ok.
fn good(c: &Config) -> Facts {
    let gpus = FixtureGpu::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpu-readings.json"),
    )
    .unwrap()
    .snapshot()
    .map_err(|e| e.to_string());
    Facts {
        gpus,
        listening: Ok(BTreeSet::new()),
        units: Ok(Service::All
            .members(c)
            .into_iter()
            .map(|m| (m.unit.clone(), unit(&m.unit, "active", false)))
            .collect()),
        key: None,
        etc_model_links: vec![],
        generated: citadel_generator::items(c)
            .into_iter()
            .map(|i| {
                let now = match &i {
                    citadel_generator::Item::Link { target, .. } => target.display().to_string(),
                    citadel_generator::Item::File { contents, .. } => contents.clone(),
                };
                (i.path().to_path_buf(), Some(now))
            })
            .collect(),
        helpers: HELPERS
            .iter()
            .map(|h| (h.to_string(), Ok((0, format!("{h}: ok\n")))))
            .collect(),
    }
}

fn named<'a>(checks: &'a [HostCheck], name: &str) -> &'a HostCheck {
    checks.iter().find(|c| c.name == name).unwrap()
}

#[test]
fn a_machine_that_matches_the_plan_passes_every_check() {
    let c = cfg("");
    let checks = evaluate(&c, &good(&c));
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "gpus",
            "ports",
            "api-key",
            "units",
            "storage-setup --check",
            "gpu-optimize --check"
        ]
    );
    for ch in &checks {
        assert_eq!(ch.status, Status::Ok, "{ch:?}");
    }
    assert_eq!(summary(&checks), "host: ok");
    assert!(named(&checks, "gpus")
        .detail
        .contains("NVML sees 2 GPUs; the plan uses 0, 1"));
}

#[test]
fn no_gpu_or_too_few_gpus_fail_naming_the_gpu_and_the_model() {
    let c = cfg("");
    let mut f = good(&c);
    f.gpus = Err("NVML: libnvidia-ml.so.1 not found".into());
    let ch = evaluate(&c, &f);
    let g = named(&ch, "gpus");
    assert_eq!(g.status, Status::Fail);
    assert!(
        g.detail
            .contains("the plan needs 2 GPUs (0, 1) but NVML cannot be read"),
        "{g:?}"
    );
    assert_eq!(summary(&ch), "host: 1 check failed");
    let mut f = good(&c);
    if let Ok(s) = &mut f.gpus {
        s.gpus.truncate(1);
    }
    let g = evaluate(&c, &f).remove(0);
    assert_eq!(g.status, Status::Fail);
    assert_eq!(
        g.detail,
        "the plan uses GPU 1 but NVML sees 1 GPU: 0 (models coder)"
    );
}

#[test]
fn memory_held_by_other_processes_fails_the_gpu() {
    let c = cfg("");
    let mut f = good(&c);
    if let Ok(s) = &mut f.gpus {
        let g = &mut s.gpus[1];
        // Something that is not a Citadel model holds 90 % of GPU 1; coder wants 40 %.
        g.processes.clear();
        g.memory_used_bytes = g.memory_total_bytes / 10 * 9;
    }
    let g = evaluate(&c, &f).remove(0);
    assert_eq!(g.status, Status::Fail, "{g:?}");
    assert!(g.detail.starts_with("GPU 1: the models need "), "{g:?}");
    assert!(
        g.detail
            .contains("(0.40 of 140.4 GiB) but other processes hold"),
        "{g:?}"
    );
}

#[test]
fn a_port_taken_by_something_else_fails_and_its_own_unit_is_fine() {
    let c = cfg("");
    let mut f = good(&c);
    f.listening = Ok(BTreeSet::from([11403, 11405]));
    if let Ok(u) = &mut f.units {
        u.insert(
            "citadel-model@coder.service".into(),
            unit("citadel-model@coder.service", "failed", false),
        );
    }
    let p = named(&evaluate(&c, &f), "ports").clone();
    assert_eq!(p.status, Status::Fail);
    assert_eq!(
        p.detail,
        "port 11405 (coder) is taken by another process while citadel-model@coder.service is not running"
    );
    // The gateway's port, held by its socket while the service sleeps: its own.
    f.listening = Ok(BTreeSet::from([8000]));
    if let Ok(u) = &mut f.units {
        u.insert(
            "citadel-gateway.service".into(),
            unit("citadel-gateway.service", "inactive", false),
        );
        u.insert(
            "citadel-gateway.socket".into(),
            unit("citadel-gateway.socket", "active", false),
        );
    }
    assert_eq!(named(&evaluate(&c, &f), "ports").status, Status::Ok);
    if let Ok(u) = &mut f.units {
        u.remove("citadel-gateway.socket");
    }
    let p = named(&evaluate(&c, &f), "ports").clone();
    assert_eq!(p.status, Status::Fail);
    assert!(
        p.detail.starts_with("port 8000 (the gateway) is taken"),
        "{p:?}"
    );
    // Without systemd: in use, but whose is unknown.
    f.units = Err("systemd is not running here".into());
    let ch = evaluate(&c, &f);
    assert_eq!(named(&ch, "ports").status, Status::Warn);
    assert_eq!(named(&ch, "units").status, Status::Warn);
}

#[test]
fn a_moved_key_file_must_be_what_the_units_load() {
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("key");
    std::fs::write(&key, "secret\n").unwrap();
    let c = cfg(&format!("[engine]\napi_key_file = \"{}\"", key.display()));
    let mut f = good(&c);
    f.key = Some(KeyFile {
        path: key.clone(),
        readable: Ok(true),
        mode: Some(0o600),
    });
    assert_eq!(named(&evaluate(&c, &f), "api-key").status, Status::Ok);
    // systemd still runs the drop-in of the old config (no LoadCredential= of the new file).
    let old = cfg("");
    let drop_in = PathBuf::from("citadel-model@.service.d/50-citadel-generator.conf");
    f.generated.insert(
        drop_in.clone(),
        Some(citadel_generator::model_drop_in(&old)),
    );
    let ch = evaluate(&c, &f);
    let k = named(&ch, "api-key");
    assert_eq!(k.status, Status::Fail);
    assert!(
        k.detail.starts_with(
            "the units load the key from /etc/citadel/api-key, not from engine.api_key_file"
        ),
        "{k:?}"
    );
    assert!(k
        .fix
        .as_deref()
        .unwrap()
        .starts_with("systemctl daemon-reload"));
    // The same staleness shows as a unit check.
    let u = named(&ch, "units");
    assert_eq!(u.status, Status::Fail);
    assert!(
        u.detail
            .contains("citadel-model@.service.d/50-citadel-generator.conf"),
        "{u:?}"
    );
    // A key readable by others: a warning with the chmod.
    f.generated
        .insert(drop_in, Some(citadel_generator::model_drop_in(&c)));
    f.key.as_mut().unwrap().mode = Some(0o644);
    let k = named(&evaluate(&c, &f), "api-key").clone();
    assert_eq!(k.status, Status::Warn);
    assert!(k.fix.unwrap().starts_with("chmod 0600 "));
}

#[test]
fn helpers_that_fail_or_are_missing_fail_with_their_last_line() {
    let c = cfg("");
    let mut f = good(&c);
    f.helpers = vec![
        (
            "storage-setup".into(),
            Ok((
                69,
                "ok: mount\nfail: /mnt/citadel-models is not a mount point\n".into(),
            )),
        ),
        (
            "gpu-optimize".into(),
            Err("cannot run /usr/lib/citadel/gpu-optimize: No such file or directory".into()),
        ),
    ];
    let ch = evaluate(&c, &f);
    let s = named(&ch, "storage-setup --check");
    assert_eq!(s.status, Status::Fail);
    assert_eq!(
        s.detail,
        "exited 69: fail: /mnt/citadel-models is not a mount point"
    );
    assert_eq!(named(&ch, "gpu-optimize --check").status, Status::Fail);
    assert_eq!(summary(&ch), "host: 2 checks failed");
    // The failed helper's whole report is printed under it.
    let text = render(&ch);
    assert!(
        text.contains(
            "        | ok: mount\n        | fail: /mnt/citadel-models is not a mount point\n"
        ),
        "{text}"
    );
}

#[test]
fn listening_ports_come_from_the_listen_lines_only() {
    let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:2CCB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
   1: 0100007F:2CCD 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n";
    assert_eq!(parse_proc_net_tcp(t), BTreeSet::from([11467]));
}

#[test]
fn a_boot_link_for_a_model_the_config_does_not_enable_is_a_warning() {
    let c = cfg("");
    let mut f = good(&c);
    // phi3 is enabled in the config: its link is harmless; vision is not in it at all.
    f.etc_model_links = vec![
        "citadel-model@phi3.service".into(),
        "citadel-model@vision.service".into(),
    ];
    let u = named(&evaluate(&c, &f), "units").clone();
    assert_eq!(u.status, Status::Warn);
    assert_eq!(
        u.detail,
        "enabled in /etc but not in the config, so started at boot: citadel-model@vision.service"
    );
    assert!(u.fix.unwrap().starts_with("citadel-service enable"));
}
