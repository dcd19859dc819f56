//! Operator experience (issue 18) on a scratch install under a real systemd: a broken config
//! does not lock the operator out (status, logs and stop NAME still work, start refuses),
//! restart with no name exits 2 naming `all`, the installed bash completion completes
//! `citadel-service status ph<TAB>` to `phi3` from that broken config, and the package ships
//! the man pages, the zsh and fish completions and the README; a moved `engine.api_key_file`
//! is what systemd hands the model unit as its credential (the generator's drop-in).
//!
//! System tier (`#[ignore]`, run by `tests/run.sh` with `--ignored` where root and
//! systemd-nspawn exist); run by hand, a missing prerequisite fails the test. Box names start
//! with `ux-`.

use citadel_common::paths::model_unit;
use citadel_system_tests::citadel::{self, Citadel, Setup, CONFIG, MODELS};
use citadel_system_tests::sdbox::{self, BootOptions, SdBox};
use std::path::PathBuf;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

/// A new model with a typo (`prot` for `port`): the config no longer validates.
const BROKEN_MODEL: &str =
    "\n[models.phi3]\npath = \"phi3\"\nprot = 18104\ngpus = [1]\ngpu_memory_utilization = 0.1\n";

#[test]
#[ignore = "system tier: needs root + systemd-nspawn"]
fn ux01_a_broken_config_leaves_status_logs_and_stop_working() {
    citadel::require();
    let c = Citadel::install("ux-lockout", Setup::default())
        .unwrap_or_else(|e| panic!("box ux-lockout: {e}"));
    c.start_all().unwrap_or_else(|e| panic!("{e}"));
    c.wait_all_healthy(60 * SEC)
        .unwrap_or_else(|e| panic!("{e}"));

    // The operator adds a model and makes a typo.
    let mut text = c.sb.ok(&["cat", CONFIG]).unwrap();
    text.push_str(BROKEN_MODEL);
    c.sb.write(CONFIG, text.as_bytes(), 0o644).unwrap();
    let check = c.citadel_service(&["check"], 30 * SEC);
    assert_eq!(check.code(), Some(78), "{}", check.describe());
    assert!(
        check.stderr.contains("models.phi3.prot"),
        "{}",
        check.describe()
    );

    let warning =
        format!("warning: {CONFIG} is invalid (2 problems; citadel-service check lists them)");
    let one_warning = |o: &citadel_system_tests::run::Output| {
        let first = o.stderr.lines().next().unwrap_or("");
        assert!(
            first.starts_with(&warning) && first.contains("phi3"),
            "{}",
            o.describe()
        );
        assert_eq!(
            o.stderr
                .lines()
                .filter(|l| l.contains("is invalid"))
                .count(),
            1,
            "{}",
            o.describe()
        );
    };

    // status: every running model, from systemd; exit 1 only because phi3 (enabled, never
    // started) is not up.
    let st = c.citadel_service(&["status"], 30 * SEC);
    one_warning(&st);
    assert_eq!(st.code(), Some(1), "{}", st.describe());
    for m in &MODELS {
        let row = st
            .stdout
            .lines()
            .find(|l| l.starts_with(m.name))
            .unwrap_or_else(|| panic!("no row for {}: {}", m.name, st.describe()));
        assert!(row.contains("active"), "{row}");
    }
    let js = c.citadel_service(&["status", MODELS[0].name, "--json"], 30 * SEC);
    one_warning(&js);
    let v: serde_json::Value =
        serde_json::from_str(&js.stdout).unwrap_or_else(|e| panic!("{e}: {}", js.describe()));
    assert_eq!(v["services"][0]["state"], "active", "{}", js.stdout);
    assert_eq!(v["all_up"], true, "{}", js.stdout);
    // A bare citadel-service is status.
    let bare = c.citadel_service(&[], 30 * SEC);
    one_warning(&bare);
    assert!(bare.stdout.contains("SERVICE"), "{}", bare.describe());

    // logs: the unit's journal.
    let logs = c.citadel_service(&["logs", MODELS[0].name, "-n", "5"], 30 * SEC);
    one_warning(&logs);
    assert_eq!(logs.code(), Some(0), "{}", logs.describe());
    let n = logs.stdout.lines().filter(|l| !l.starts_with("--")).count();
    assert!((1..=5).contains(&n), "{}", logs.describe());

    // stop NAME: works and waits.
    let unit = model_unit(MODELS[0].name);
    let stop = c.citadel_service(&["stop", MODELS[0].name], 120 * SEC);
    one_warning(&stop);
    assert_eq!(stop.code(), Some(0), "{}", stop.describe());
    assert_eq!(c.active_state(&unit), "inactive");
    // The others keep running.
    assert_eq!(c.active_state(&model_unit(MODELS[1].name)), "active");

    // start needs a valid config.
    let start = c.citadel_service(&["start", MODELS[0].name], 60 * SEC);
    assert_eq!(start.code(), Some(78), "{}", start.describe());
    assert_eq!(c.active_state(&unit), "inactive");

    // restart with no name: exit 2 naming all; nothing restarted.
    let pid = c.main_pid(&model_unit(MODELS[1].name));
    let r = c.citadel_service(&["restart"], 30 * SEC);
    assert_eq!(r.code(), Some(2), "{}", r.describe());
    assert!(
        r.stderr.contains("restart needs a service name")
            && r.stderr.contains("citadel-service restart all"),
        "{}",
        r.describe()
    );
    assert_eq!(c.main_pid(&model_unit(MODELS[1].name)), pid);

    // The installed bash completion, driven the way readline calls it, reads the broken config.
    let script = "source /usr/share/bash-completion/completions/citadel-service || exit 9
COMP_WORDS=(citadel-service status ph); COMP_CWORD=2
_citadel_service citadel-service ph status
printf '%s\\n' \"${COMPREPLY[@]}\"";
    let comp =
        c.sb.exec_t(&["bash", "--norc", "--noprofile", "-c", script], 30 * SEC);
    assert_eq!(comp.code(), Some(0), "{}", comp.describe());
    assert_eq!(comp.stdout.trim(), "phi3", "{}", comp.describe());

    // What the package ships for operators.
    for f in [
        "/usr/share/man/man1/citadel-service.1.gz",
        "/usr/share/man/man1/citadel-service-status.1.gz",
        "/usr/share/man/man1/citadel-service-stop.1.gz",
        "/usr/share/man/man5/citadel.toml.5.gz",
        "/usr/share/man/man8/start-model.8.gz",
        "/usr/share/zsh/vendor-completions/_citadel-service",
        "/usr/share/fish/vendor_completions.d/citadel-service.fish",
        "/usr/share/doc/citadel/README.md",
    ] {
        let o = c.sb.exec(&["test", "-s", f]);
        assert_eq!(o.code(), Some(0), "{f} is not installed");
    }

    // -p, --grep and --kernel reach journalctl (kernel lines merged by an OR of matches).
    for extra in [
        &["-p", "info"][..],
        &["--grep", MODELS[1].name],
        &["--kernel"],
    ] {
        let mut a = vec!["logs", MODELS[1].name, "-n", "20"];
        a.extend_from_slice(extra);
        let o = c.citadel_service(&a, 30 * SEC);
        assert_eq!(o.code(), Some(0), "{}", o.describe());
    }
}

/// citadel-generator: `CITADEL_GENERATOR`, else target/release (built with the .deb), else
/// target/debug.
fn generator() -> PathBuf {
    if let Some(p) = std::env::var_os("CITADEL_GENERATOR") {
        return PathBuf::from(p);
    }
    let t = citadel::workspace_root().join("target");
    [
        t.join("release/citadel-generator"),
        t.join("debug/citadel-generator"),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or_else(|| {
        panic!(
            "no citadel-generator under {} (cargo build -p citadel-generator)",
            t.display()
        )
    })
}

/// An `engine.api_key_file` other than the units' /etc/citadel/api-key: after daemon-reload
/// the generator's drop-in makes systemd (252) hand that file to the shipped model unit as its
/// API key credential, and only that file (the unit's own LoadCredential= is reset), to a
/// service account that cannot read the file itself. A bare box with the generator and the
/// shipped unit; a test drop-in runs `cat %d/api-key` as `nobody` instead of start-model, and
/// the storage and GPU units it requires are stand-ins.
#[test]
#[ignore = "system tier: needs root + systemd-nspawn"]
fn ux02_a_moved_api_key_file_is_the_credential_the_units_load() {
    citadel::require();
    let sb = SdBox::boot(&sdbox::cache_dir(), "ux-apikey", &BootOptions::default())
        .unwrap_or_else(|e| panic!("box ux-apikey: {e}"));
    let unit = model_unit("phi3");
    sb.ok(&[
        "mkdir",
        "-p",
        "/etc/citadel",
        "/srv/keys",
        "/usr/lib/systemd/system-generators",
        &format!("/etc/systemd/system/{unit}.d"),
    ])
    .unwrap();
    let shipped = citadel::workspace_root().join("packaging/systemd/citadel-model@.service");
    sb.install(&shipped, "/lib/systemd/system/citadel-model@.service")
        .unwrap();
    for dep in ["citadel-storage.service", "citadel-gpu.service"] {
        sb.write(
            &format!("/etc/systemd/system/{dep}"),
            b"[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
            0o644,
        )
        .unwrap();
    }
    sb.write(
        &format!("/etc/systemd/system/{unit}.d/99-test.conf"),
        b"[Service]\nType=oneshot\nRestart=no\nExecStart=\nExecStart=/usr/bin/cat %d/api-key\nUser=nobody\nGroup=nogroup\n",
        0o644,
    )
    .unwrap();
    sb.install(
        &generator(),
        "/usr/lib/systemd/system-generators/citadel-generator",
    )
    .unwrap();
    sb.write("/srv/keys/api.key", b"moved-key\n", 0o600)
        .unwrap();
    sb.write("/etc/citadel/api-key", b"old-key\n", 0o600)
        .unwrap();
    let cfg = "[engine]\napi_key_file = \"/srv/keys/api.key\"\n\
               [models.phi3]\npath = \"phi3\"\nport = 11403\ngpus = [0]\ngpu_memory_utilization = 0.3\n";
    let key_seen = |config: &str| -> String {
        sb.write(CONFIG, config.as_bytes(), 0o644).unwrap();
        sb.ok(&["systemctl", "daemon-reload"]).unwrap();
        let _ = sb.exec(&["journalctl", "--rotate"]);
        let _ = sb.exec(&["journalctl", "--vacuum-time=1s"]);
        let start = sb.exec(&["systemctl", "start", &unit]);
        let log = sb.journal(&["-u", &unit, "-o", "cat", "--no-hostname"]);
        assert_eq!(start.code(), Some(0), "{}\n{log}", start.describe());
        log
    };
    let log = key_seen(cfg);
    assert!(
        log.contains("moved-key") && !log.contains("old-key"),
        "{log}"
    );
    // Back to the default path: the unit's own line again.
    let log = key_seen(&cfg.replace("/srv/keys/api.key", "/etc/citadel/api-key"));
    assert!(
        log.lines().rfind(|l| l.contains("-key")) == Some("old-key"),
        "{log}"
    );
}
