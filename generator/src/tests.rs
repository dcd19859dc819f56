use super::*;
use citadel_common::config::testing::{config, PHI3_CODER, VISION_DISABLED};

/// `paths`, an engine with its stop and drain times and `extra` keys, then phi3, coder and
/// vision (disabled).
fn cfg_with(paths: &str, extra: &str) -> Config {
    config(&format!(
        "{paths}\n[engine]\nstop_grace_secs = 45\ndrain_secs = 20\n{extra}\n{PHI3_CODER}{VISION_DISABLED}"
    ))
}

fn links(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Link { path, target } => {
                Some(format!("{} -> {}", path.display(), target.display()))
            }
            Item::File { .. } => None,
        })
        .collect()
}

#[test]
fn only_enabled_models_are_wanted() {
    let items = items(&cfg_with("", ""));
    assert_eq!(
        links(&items),
        [
            "citadel-models.target.wants/citadel-model@coder.service -> /lib/systemd/system/citadel-model@.service",
            "citadel-models.target.wants/citadel-model@phi3.service -> /lib/systemd/system/citadel-model@.service",
        ]
    );
    // Default paths: the model drop-in holds only the stop timeout, and the monitor needs none.
    let files: Vec<&Path> = items
        .iter()
        .filter(|i| matches!(i, Item::File { .. }))
        .map(Item::path)
        .collect();
    assert_eq!(
        files,
        [
            Path::new("citadel-model@.service.d/50-citadel-generator.conf"),
            Path::new("citadel-model-next@.service.d/50-citadel-generator.conf")
        ]
    );
}

#[test]
fn the_stop_timeout_covers_the_grace() {
    let c = cfg_with("", "");
    assert_eq!(stop_timeout_secs(&c), 20 + 45 + STOP_MARGIN_SECS);
    let d = model_drop_in(&c);
    assert!(d.contains("\n[Service]\n"), "{d}");
    assert!(d.contains("\nTimeoutStopSec=95\n"), "{d}");
    assert!(!d.contains("ReadWritePaths"), "{d}");
}

#[test]
fn moved_dirs_become_read_write_paths_quoted_and_escaped() {
    let c = cfg_with(
        "[paths]\ncache_dir = \"/srv/cache 100%\"\nruntime_dir = \"/run/cit\\\"adel\"\n",
        "[monitor]\nstate_file = \"/var/lib/citadel-health/health.json\"\n",
    );
    let d = model_drop_in(&c);
    assert!(
        d.contains("\nReadWritePaths=\"-/run/cit\\\"adel\" \"-/srv/cache 100%%\"\n"),
        "{d}"
    );
    let m = monitor_drop_in(&c).expect("the monitor writes outside its defaults");
    assert!(
        m.contains("\nReadWritePaths=\"-/run/cit\\\"adel\" \"-/var/lib/citadel-health\"\n"),
        "{m}"
    );
}

#[test]
fn write_creates_links_and_files_and_undoes_a_partial_write() {
    let d = tempfile::tempdir().unwrap();
    let c = cfg_with("", "");
    let it = items(&c);
    write(d.path(), &it).unwrap();
    let link = d
        .path()
        .join("citadel-models.target.wants/citadel-model@phi3.service");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("/lib/systemd/system/citadel-model@.service")
    );
    assert!(std::fs::read_to_string(
        d.path()
            .join("citadel-model@.service.d/50-citadel-generator.conf")
    )
    .unwrap()
    .contains("TimeoutStopSec=95"));
    // A second run into the same (non-empty) dir fails on the first item and leaves the first
    // run's tree as it was; a run that fails half-way removes what it made.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::create_dir(fresh.path().join("citadel-model@.service.d")).unwrap();
    std::fs::write(
        fresh
            .path()
            .join("citadel-model@.service.d/50-citadel-generator.conf"),
        "",
    )
    .unwrap();
    assert!(write(fresh.path(), &it).is_err());
    assert!(!fresh.path().join("citadel-models.target.wants").exists());
}

#[test]
fn a_moved_api_key_file_is_the_credential_of_every_unit_that_loads_it() {
    // The units' own path: no drop-in line, no gateway drop-in.
    let same = cfg_with("", "api_key_file = \"/etc/citadel/api-key\"");
    assert!(!model_drop_in(&same).contains("LoadCredential"));
    assert_eq!(monitor_drop_in(&same), None);
    assert_eq!(gateway_drop_in(&same), None);
    let moved = cfg_with("", "api_key_file = \"/srv/keys/100%.key\"");
    let want = "\nLoadCredential=\nLoadCredential=api-key:/srv/keys/100%%.key\n";
    assert!(
        model_drop_in(&moved).contains(want),
        "{}",
        model_drop_in(&moved)
    );
    assert!(monitor_drop_in(&moved).unwrap().contains(want));
    assert!(gateway_drop_in(&moved).unwrap().contains(want));
    let files: Vec<String> = items(&moved)
        .iter()
        .filter(|i| matches!(i, Item::File { .. }))
        .map(|i| i.path().display().to_string())
        .collect();
    assert_eq!(
        files,
        [
            "citadel-model@.service.d/50-citadel-generator.conf",
            "citadel-model-next@.service.d/50-citadel-generator.conf",
            "citadel-monitor.service.d/50-citadel-generator.conf",
            "citadel-gateway.service.d/50-citadel-generator.conf",
        ]
    );
}

#[test]
fn the_gateway_follows_the_config_disabled_is_masked_and_listen_is_the_sockets() {
    // The shipped defaults: nothing for the gateway or its socket.
    let plain = cfg_with("", "");
    assert_eq!(socket_drop_in(&plain), None);
    assert!(!items(&plain)
        .iter()
        .any(|i| i.path().starts_with("citadel-gateway.socket")
            || i.path() == Path::new("citadel-gateway.service")));
    // Another listen address: the socket binds it (the reset line first).
    let lan = cfg_with(
        "[gateway]\nlisten = \"10.0.0.5:9000\"\napi_keys_file = \"/etc/citadel/keys\"",
        "",
    );
    let d = socket_drop_in(&lan).unwrap();
    assert!(
        d.contains("[Socket]\nListenStream=\nListenStream=10.0.0.5:9000\n"),
        "{d}"
    );
    assert!(items(&lan)
        .iter()
        .any(|i| i.path() == Path::new("citadel-gateway.socket.d/50-citadel-generator.conf")));
    // Disabled: both units masked, no drop-ins for them.
    let off = cfg_with(
        "[gateway]\nenabled = false\nlisten = \"127.0.0.1:9000\"",
        "",
    );
    let it = items(&off);
    let masked: Vec<String> = it
        .iter()
        .filter_map(|i| match i {
            Item::Link { path, target } if target == Path::new("/dev/null") => {
                Some(path.display().to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        masked,
        ["citadel-gateway.socket", "citadel-gateway.service"]
    );
    assert!(!it.iter().any(
        |i| i.path().to_string_lossy().starts_with("citadel-gateway.")
            && matches!(i, Item::File { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &it).unwrap();
    assert_eq!(
        std::fs::read_link(dir.path().join("citadel-gateway.service")).unwrap(),
        Path::new("/dev/null")
    );
}
