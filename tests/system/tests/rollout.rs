//! Issue 16 part 3 under a real systemd (nspawn box, the installed package, stand-in engines):
//! `citadel-service rollout NAME --path NEW_PATH`. Surge mode with a client loop through the
//! gateway sees zero errors; replace mode sees only 503s with `Retry-After`, for a bounded
//! window; a new version that crashes, hangs or loads too slowly is rolled back and the old
//! one serves again, with the config unchanged. Box names start with `ro-`.

use citadel_common::paths::{model_unit, surge_unit};
use citadel_system_tests::citadel::{Citadel, Setup, CONFIG, MODELS_ACTIVE, MODELS_MOUNT};
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);
const SYSTEM: &str = "system tier: needs root + systemd-nspawn";
const STAGING: &str = "/mnt/citadel-models/staging";
const GATEWAY: &str = "http://127.0.0.1:8000/v1/chat/completions";

/// A started box whose config is `setup`'s, with gamma's share lowered to 0.40 (so GPU 1 has
/// room for a second gamma: surge) while alpha and beta fill GPU 0 (0.45 + 0.45: replace).
fn started(name: &str) -> Citadel {
    if let Some(why) = citadel_system_tests::sdbox::missing_prerequisite() {
        panic!("{SYSTEM}: {why}");
    }
    let setup = Setup::default();
    let c = Citadel::install(name, setup.clone()).unwrap_or_else(|e| panic!("box {name}: {e}"));
    let text = setup.config().replace(
        "port = 18103\ngpus = [1]\ntensor_parallel_size = 1\ngpu_memory_utilization = 0.8\n",
        "port = 18103\ngpus = [1]\ntensor_parallel_size = 1\ngpu_memory_utilization = 0.4\n",
    );
    assert!(text.contains("gpu_memory_utilization = 0.4\n"), "{text}");
    c.sb.write(CONFIG, text.as_bytes(), 0o644).unwrap();
    c.start_all().unwrap_or_else(|e| panic!("{e}"));
    c.wait_all_healthy(60 * SEC)
        .unwrap_or_else(|e| panic!("{e}"));
    c
}

/// A copy of model `of`'s files as a new version under staging, with a `standin-faults` file
/// (the stand-in reads it from the model directory) when `faults` is not empty.
fn stage(c: &Citadel, of: &str, version: &str, faults: &str) -> String {
    let dir = format!("{STAGING}/{version}");
    c.sb.ok(&["mkdir", "-p", STAGING]).unwrap();
    c.sb.ok(&["cp", "-a", &format!("{MODELS_ACTIVE}/{of}"), &dir])
        .unwrap();
    if !faults.is_empty() {
        c.sb.write(&format!("{dir}/standin-faults"), faults.as_bytes(), 0o644)
            .unwrap();
    }
    dir
}

fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"max_tokens":2}}"#)
}

/// A client loop through the gateway inside the box for `secs` seconds: one new connection per
/// request, no retries; each line `SECONDS HTTP_STATUS CURL_EXIT RETRY_AFTER_HEADERS`.
fn client_loop(model: &str, secs: u64) -> String {
    let body = chat(model);
    format!(
        "end=$((SECONDS+{secs})); while [ $SECONDS -lt $end ]; do code=$(curl -s -o /dev/null -D /tmp/ro-h -m 10 -w '%{{http_code}}' -H 'Content-Type: application/json' -d '{body}' {GATEWAY}); rc=$?; ra=$(grep -ci '^retry-after:' /tmp/ro-h 2>/dev/null); echo \"$SECONDS $code $rc ${{ra:-0}}\"; sleep 0.05; done"
    )
}

/// Run `rollout` while the client loop runs; (rollout output, loop lines).
fn rollout_under_load(
    c: &Citadel,
    model: &str,
    path: &str,
    loop_secs: u64,
) -> (
    citadel_system_tests::run::Output,
    Vec<(u64, String, String, u32)>,
) {
    let sb = &c.sb;
    let script = client_loop(model, loop_secs);
    let (ro, out) = std::thread::scope(|s| {
        let client = s.spawn(|| {
            sb.exec_t(
                &["bash", "-c", &script],
                Duration::from_secs(loop_secs + 60),
            )
        });
        std::thread::sleep(2 * SEC);
        let ro = c.citadel_service(
            &["rollout", model, "--path", path, "--timeout", "60"],
            180 * SEC,
        );
        (ro, client.join().unwrap())
    });
    let lines = out
        .stdout
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((
                w.first()?.parse().ok()?,
                w.get(1)?.to_string(),
                w.get(2)?.to_string(),
                w.get(3)?.parse().ok()?,
            ))
        })
        .collect();
    (ro, lines)
}

fn config_path_of(c: &Citadel, model: &str) -> String {
    let text = c.sb.ok(&["cat", CONFIG]).unwrap();
    let start = text.find(&format!("[models.{model}]")).unwrap();
    let line = text[start..]
        .lines()
        .find(|l| l.starts_with("path = "))
        .unwrap();
    line.trim_start_matches("path = ")
        .trim_matches('"')
        .to_string()
}

/// The model serves (its port, and through the gateway), no record is left, no surge runs.
fn serves_and_clean(c: &Citadel, model: &str, port: u16) {
    assert_eq!(c.health(port), 200, "{model} serves on {port}");
    let (st, body) = c.http("POST", GATEWAY, None, Some(&chat(model)));
    assert_eq!(st, 200, "{body}\n{}", c.journal_tail(40));
    let rec =
        c.sb.exec(&["test", "-e", &format!("/run/citadel/rollout/{model}.json")]);
    assert!(!rec.success(), "a rollout record was left behind");
    let surge = c.active_state(&surge_unit(model));
    assert!(
        surge == "inactive" || surge == "failed",
        "surge unit: {surge}"
    );
}

#[test]
#[ignore = "system tier: needs root + systemd-nspawn"]
fn ro_surge_under_a_client_loop_sees_no_error_and_a_hung_or_slow_version_is_rolled_back() {
    let c = started("ro-surge");
    let v2 = stage(&c, "gamma", "gamma-v2", "");
    let dry = c.citadel_service(&["rollout", "gamma", "--path", &v2, "--dry-run"], 30 * SEC);
    assert!(dry.success(), "{}", dry.describe());
    assert!(dry.stdout.contains("mode: surge"), "{}", dry.stdout);
    let pid_before = c.main_pid(&model_unit("gamma"));
    let (ro, lines) = rollout_under_load(&c, "gamma", &v2, 25);
    assert!(ro.success(), "{}\n{}", ro.describe(), c.journal_tail(80));
    assert!(
        ro.stdout.contains("rolled out: gamma serves"),
        "{}",
        ro.stdout
    );
    assert!(lines.len() > 20, "too few requests: {lines:?}");
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l.1 != "200" || l.2 != "0")
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed (SECONDS, HTTP status, curl exit, Retry-After): {failed:?}\n{}\n{}",
        failed.len(),
        lines.len(),
        ro.stdout,
        c.unit_log(citadel_common::paths::UNIT_GATEWAY)
    );
    assert_eq!(
        config_path_of(&c, "gamma"),
        v2,
        "the config names the new path"
    );
    assert_ne!(
        c.main_pid(&model_unit("gamma")),
        pid_before,
        "restarted on the new path"
    );
    let cmd =
        c.sb.ok(&["ps", "-o", "args=", "-C", "citadel-standin"])
            .unwrap();
    assert!(cmd.contains(&format!("serve {v2} ")), "{cmd}");
    serves_and_clean(&c, "gamma", 18103);

    // A new version that hangs (completions never answer, /health still 200): the deep probe
    // times out on the surge instance; rolled back, the config unchanged.
    let hang = stage(&c, "gamma", "gamma-hang", "HANG_AFTER_SECS=0\n");
    let o = c.citadel_service(&["rollout", "gamma", "--path", &hang], 180 * SEC);
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert!(
        o.stderr.contains("rollout of gamma failed at step 1/6"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("deep probe"), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("rolled back: gamma serves the old version"),
        "{}",
        o.stderr
    );
    assert_eq!(config_path_of(&c, "gamma"), v2);
    serves_and_clean(&c, "gamma", 18103);

    // One that loads too slowly for --timeout: rolled back.
    let slow = stage(&c, "gamma", "gamma-slow", "LOAD_SECS=300\n");
    let o = c.citadel_service(
        &["rollout", "gamma", "--path", &slow, "--timeout", "5"],
        180 * SEC,
    );
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert!(o.stderr.contains("timed out after"), "{}", o.stderr);
    assert!(o.stderr.contains("rolled back"), "{}", o.stderr);
    assert_eq!(config_path_of(&c, "gamma"), v2);
    serves_and_clean(&c, "gamma", 18103);
    let _ = MODELS_MOUNT;
}

#[test]
#[ignore = "system tier: needs root + systemd-nspawn"]
fn ro_replace_sees_only_503_with_retry_after_and_a_crashing_version_is_rolled_back() {
    let c = started("ro-replace");
    let v2 = stage(&c, "alpha", "alpha-v2", "");
    let dry = c.citadel_service(&["rollout", "alpha", "--path", &v2, "--dry-run"], 30 * SEC);
    assert!(dry.stdout.contains("mode: replace"), "{}", dry.describe());
    assert!(
        dry.stdout
            .contains("no room for a second instance on GPU 0"),
        "{}",
        dry.stdout
    );
    let (ro, lines) = rollout_under_load(&c, "alpha", &v2, 30);
    assert!(ro.success(), "{}\n{}", ro.describe(), c.journal_tail(80));
    assert!(lines.len() > 20, "too few requests: {lines:?}");
    let bad: Vec<_> = lines
        .iter()
        .filter(|l| l.2 != "0" || !(l.1 == "200" || (l.1 == "503" && l.3 > 0)))
        .collect();
    assert!(
        bad.is_empty(),
        "requests other than 200 or 503 with Retry-After: {bad:?}\n{}",
        ro.stdout
    );
    let unavailable: Vec<u64> = lines.iter().filter(|l| l.1 == "503").map(|l| l.0).collect();
    assert!(
        !unavailable.is_empty(),
        "the replace window was never seen: {lines:?}"
    );
    let window = unavailable.last().unwrap() - unavailable.first().unwrap();
    assert!(window <= 20, "503s for {window} s: {lines:?}");
    assert_eq!(
        lines.last().unwrap().1,
        "200",
        "serving at the end: {lines:?}"
    );
    assert_eq!(config_path_of(&c, "alpha"), v2);
    serves_and_clean(&c, "alpha", 18101);

    // A new version that crashes at start: rolled back, the old one serves, config unchanged.
    let crash = stage(&c, "alpha", "alpha-crash", "FAIL_AT_START=1\n");
    let o = c.citadel_service(&["rollout", "alpha", "--path", &crash], 180 * SEC);
    assert_eq!(o.code(), Some(1), "{}", o.describe());
    assert!(
        o.stderr.contains("rollout of alpha failed at step 3/5"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr
            .contains("rolled back: alpha serves the old version"),
        "{}",
        o.stderr
    );
    assert_eq!(config_path_of(&c, "alpha"), v2);
    serves_and_clean(&c, "alpha", 18101);
    let cmd =
        c.sb.ok(&["ps", "-o", "args=", "-C", "citadel-standin"])
            .unwrap();
    assert!(!cmd.contains("alpha-crash"), "{cmd}");
}
