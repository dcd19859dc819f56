//! A box with Citadel installed: the .deb from `packaging/build-deb.sh` (built once per run),
//! the stand-in engine at `/usr/local/bin/citadel-standin`, a test config with three models
//! (two of them sharing GPU 0), fake model files on a tmpfs mounted at the models mount, and
//! short monitor intervals.
//!
//! Over 500 lines as one concern: installing Citadel into a box and the helpers the scenarios use
//! to drive and read it.

use crate::run::{wait_for, Output};
use crate::sdbox::{self, BootOptions, Result, SdBox};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where the stand-in engine lives inside the box (the config's `engine.command`).
pub const STANDIN_IN_BOX: &str = "/usr/local/bin/citadel-standin";
/// Per-model fault files of the stand-in (`STANDIN_FAULTS_DIR`), one per served model name.
pub const FAULTS_DIR: &str = "/etc/citadel-standin-faults";
/// The config inside the box.
pub const CONFIG: &str = "/etc/citadel/citadel.toml";
pub const MODELS_MOUNT: &str = "/mnt/citadel-models";
pub const MODELS_ACTIVE: &str = "/mnt/citadel-models/active";
pub const CITADEL_SERVICE: &str = "/usr/bin/citadel-service";

/// One model of the test config.
#[derive(Debug, Clone)]
pub struct TestModel {
    pub name: &'static str,
    pub port: u16,
    pub gpus: &'static [u32],
    pub share: f64,
}

/// The three models: alpha and beta share GPU 0 (0.45 + 0.45 <= 1.0), gamma has GPU 1.
pub const MODELS: [TestModel; 3] = [
    TestModel {
        name: "alpha",
        port: 18101,
        gpus: &[0],
        share: 0.45,
    },
    TestModel {
        name: "beta",
        port: 18102,
        gpus: &[0],
        share: 0.45,
    },
    TestModel {
        name: "gamma",
        port: 18103,
        gpus: &[1],
        share: 0.80,
    },
];

/// Knobs of the test config.
#[derive(Debug, Clone)]
pub struct Setup {
    pub gpu_required: bool,
    /// Mount a tmpfs at the models mount (false: a plain directory, storage must refuse it).
    pub mount_models: bool,
    /// `STANDIN_LOAD_SECS` for every model (per-model: a faults file).
    pub load_secs: f64,
    pub monitor_interval_secs: u64,
    pub failure_threshold: u32,
    pub deep_probe_interval_secs: u64,
    pub stall_secs: u64,
    pub restart_budget: u32,
    /// Write `/etc/citadel/api-key` with this key.
    pub api_key: Option<String>,
    /// Extra `KEY=VALUE` lines per model (`STANDIN_FAULTS_DIR/<name>`), present from the start.
    pub faults: BTreeMap<&'static str, String>,
    /// Per-model `load_timeout_secs`.
    pub load_timeout_secs: u64,
    /// `engine.host` (anything but loopback needs `api_key`).
    pub engine_host: &'static str,
    /// The `[gateway]` table's lines (empty: the defaults).
    pub gateway: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            gpu_required: false,
            mount_models: true,
            load_secs: 0.5,
            monitor_interval_secs: 1,
            failure_threshold: 3,
            deep_probe_interval_secs: 2,
            stall_secs: 4,
            restart_budget: 3,
            api_key: None,
            faults: BTreeMap::new(),
            load_timeout_secs: 120,
            engine_host: "127.0.0.1",
            gateway: String::new(),
        }
    }
}

impl Setup {
    /// The config file text.
    pub fn config(&self) -> String {
        let mut s = format!(
            r#"# Citadel system-test config (written by tests/system).
[service]
user = "citadel"
group = "citadel"

[engine]
command = ["{STANDIN_IN_BOX}", "serve"]
host = "{host}"
{api}stop_grace_secs = 5
port_wait_secs = 10
gpu_release_wait_secs = 5

[engine.env]
HF_HUB_OFFLINE = "1"
STANDIN_FAULTS_DIR = "{FAULTS_DIR}"
STANDIN_CONTROL = "1"
STANDIN_LOAD_SECS = "{load}"
STANDIN_REQUIRE_MODEL_DIR = "1"

[gpu]
required = {req}
persistence_mode = false

[monitor]
interval_secs = {iv}
probe_timeout_secs = 1
failure_threshold = {ft}
deep_probe_interval_secs = {dp}
deep_probe_timeout_secs = 2
stall_secs = {stall}
restart_budget = {budget}
restart_window_secs = 3600

[storage]
min_free_gib = 0
backup_required = false

[gateway]
{gateway}
"#,
            host = self.engine_host,
            gateway = self.gateway,
            api = if self.api_key.is_some() {
                "api_key_file = \"/etc/citadel/api-key\"\n"
            } else {
                ""
            },
            load = self.load_secs,
            req = self.gpu_required,
            iv = self.monitor_interval_secs,
            ft = self.failure_threshold,
            dp = self.deep_probe_interval_secs,
            stall = self.stall_secs,
            budget = self.restart_budget,
        );
        for m in &MODELS {
            let gpus: Vec<String> = m.gpus.iter().map(u32::to_string).collect();
            s.push_str(&format!(
                "\n[models.{n}]\npath = \"{n}\"\nport = {p}\ngpus = [{g}]\ntensor_parallel_size = {tp}\ngpu_memory_utilization = {sh}\nmax_model_len = 2048\nload_timeout_secs = {lt}\n",
                n = m.name,
                p = m.port,
                g = gpus.join(", "),
                tp = m.gpus.len(),
                sh = m.share,
                lt = self.load_timeout_secs,
            ));
        }
        s
    }
}

/// The workspace root (tests/system/../..).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The .deb: `CITADEL_DEB`, the package `tests/run.sh` built (with `packaging/build-deb.sh`)
/// before any test ran. Tests never build it themselves.
pub fn deb() -> Result<PathBuf> {
    match std::env::var_os("CITADEL_DEB") {
        Some(p) if Path::new(&p).is_file() => Ok(PathBuf::from(p)),
        Some(p) => Err(format!(
            "CITADEL_DEB={} is not a file (run bash tests/run.sh, or packaging/build-deb.sh)",
            Path::new(&p).display()
        )),
        None => Err(
            "CITADEL_DEB is not set: bash tests/run.sh builds the .deb and sets it (by hand: CITADEL_DEB=$(packaging/build-deb.sh | tail -1))"
                .into(),
        ),
    }
}

/// The stand-in engine binary: `CITADEL_STANDIN`, else target/release (built with the .deb),
/// else target/debug.
pub fn standin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CITADEL_STANDIN") {
        return Ok(PathBuf::from(p));
    }
    let t = workspace_root().join("target");
    for p in [
        t.join("release/citadel-standin"),
        t.join("debug/citadel-standin"),
    ] {
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(format!(
        "no citadel-standin under {} (cargo build -p citadel-standin)",
        t.display()
    ))
}

/// The system tier's prerequisites (root, systemd-nspawn, ...): a test of that tier is
/// `#[ignore]`d, so it runs only when asked for (`--ignored`), and then a missing prerequisite
/// is a failure, never a silent pass.
pub fn require() {
    if let Some(why) = sdbox::missing_prerequisite() {
        panic!("this system-tier test cannot run here: {why}");
    }
}

/// At most this many boxes at once in one test process (`CITADEL_SYSTEM_TEST_BOXES`, default 2).
fn box_slots() -> &'static (Mutex<usize>, std::sync::Condvar) {
    static S: OnceLock<(Mutex<usize>, std::sync::Condvar)> = OnceLock::new();
    S.get_or_init(|| {
        let n = std::env::var("CITADEL_SYSTEM_TEST_BOXES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
        (Mutex::new(n), std::sync::Condvar::new())
    })
}

/// A slot among the boxes allowed at once; released on drop.
pub struct Slot(());

impl Slot {
    pub fn take() -> Slot {
        let (m, cv) = box_slots();
        let mut free = m.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = cv.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Slot(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (m, cv) = box_slots();
        *m.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        cv.notify_one();
    }
}

/// A booted box with the package installed and the test config written (not started).
/// Field order matters: the box is torn down before the slot is released.
pub struct Citadel {
    pub sb: SdBox,
    pub setup: Setup,
    _slot: Option<Slot>,
}

impl Citadel {
    /// Boot box `name`, install the .deb and the stand-in, write the config and the fake models.
    pub fn install(name: &str, setup: Setup) -> Result<Citadel> {
        Self::install_with(name, setup, &BootOptions::default())
    }

    pub fn install_with(name: &str, setup: Setup, opts: &BootOptions) -> Result<Citadel> {
        let mut c = Self::install_bare(name, opts)?;
        c.setup = setup;
        c.prepare()?;
        Ok(c)
    }

    /// Boot box `name` and install the .deb and the stand-in; no config, no models (the engine
    /// tier writes its own).
    pub fn install_bare(name: &str, opts: &BootOptions) -> Result<Citadel> {
        let deb = deb()?;
        let standin = standin()?;
        let slot = Slot::take();
        let sb = SdBox::boot(&sdbox::cache_dir(), name, opts)?;
        let c = Citadel {
            sb,
            setup: Setup::default(),
            _slot: Some(slot),
        };
        c.sb.install(&deb, "/var/tmp/citadel.deb")?;
        c.sb.ok(&["dpkg", "-i", "/var/tmp/citadel.deb"])?;
        c.sb.install(&standin, STANDIN_IN_BOX)?;
        Ok(c)
    }

    /// Config, API key, models mount, fake model files, fault files.
    pub fn prepare(&self) -> Result<()> {
        let s = &self.setup;
        self.sb.write(CONFIG, s.config().as_bytes(), 0o644)?;
        if let Some(k) = &s.api_key {
            self.sb
                .write("/etc/citadel/api-key", format!("{k}\n").as_bytes(), 0o600)?;
        }
        // install_root: where the vLLM venv would live (the operator's install, not the package's).
        self.sb
            .ok(&["mkdir", "-p", MODELS_MOUNT, FAULTS_DIR, "/opt/citadel"])?;
        if s.mount_models {
            self.sb.ok(&[
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "size=64m,mode=0755",
                "citadel-models",
                MODELS_MOUNT,
            ])?;
        }
        for m in &MODELS {
            let dir = format!("{MODELS_ACTIVE}/{}", m.name);
            let shard = "model-00001-of-00001.safetensors";
            let files: [(&str, &[u8]); 5] = [
                ("config.json", b"{\"architectures\":[\"LlamaForCausalLM\"],\"max_position_embeddings\":2048}\n"),
                ("tokenizer.json", b"{}\n"),
                ("tokenizer_config.json", b"{}\n"),
                (shard, b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "),
                (
                    "model.safetensors.index.json",
                    b"{\"metadata\":{},\"weight_map\":{\"layer.1.weight\":\"model-00001-of-00001.safetensors\"}}",
                ),
            ];
            for (f, body) in files {
                self.sb.write(&format!("{dir}/{f}"), body, 0o644)?;
            }
        }
        self.sb.ok(&["chmod", "-R", "a+rX", MODELS_MOUNT])?;
        for (name, text) in &s.faults {
            self.set_faults(name, text)?;
        }
        // The generator ran at install with the shipped config; now it reads the test config.
        self.sb.ok(&["systemctl", "daemon-reload"]).map(|_| ())
    }

    /// Replace the stand-in fault file of one model (read at its next start).
    pub fn set_faults(&self, model: &str, text: &str) -> Result<()> {
        self.sb
            .write(&format!("{FAULTS_DIR}/{model}"), text.as_bytes(), 0o644)
    }

    pub fn clear_faults(&self, model: &str) -> Result<()> {
        self.sb
            .ok(&["rm", "-f", &format!("{FAULTS_DIR}/{model}")])
            .map(|_| ())
    }

    /// Make the models target want the config's enabled models: citadel-generator reads the
    /// config on daemon-reload (models are no longer enabled one by one).
    pub fn enable_models(&self) -> Result<()> {
        self.sb.ok(&["systemctl", "daemon-reload"]).map(|_| ())
    }

    /// Enable the models and start the whole box; Ok once `systemctl start` returned 0.
    pub fn start_all(&self) -> Result<()> {
        self.enable_models()?;
        self.sb
            .exec_t(
                &["systemctl", "start", citadel_common::paths::TARGET_AI],
                Duration::from_secs(120),
            )
            .ok()
            .map(|_| ())
            .map_err(|e| format!("{e}\n--- journal\n{}", self.journal_tail(80)))
    }

    /// Every citadel unit (targets, infrastructure, monitor, the three models).
    pub fn all_units() -> Vec<String> {
        use citadel_common::paths::*;
        [
            TARGET_AI,
            TARGET_MODELS,
            UNIT_STORAGE,
            UNIT_GPU,
            UNIT_MONITOR,
            UNIT_GATEWAY,
        ]
        .into_iter()
        .map(String::from)
        .chain(MODELS.iter().map(|m| model_unit(m.name)))
        .collect()
    }

    /// `systemctl stop citadel-ai.target`, then wait until every citadel unit is inactive or
    /// failed. `systemctl stop` of the target returns once the target itself is stopped: it is
    /// ordered After= its members, so it stops first and their stop jobs are still running.
    pub fn stop_all(&self, limit: Duration) -> std::result::Result<Duration, String> {
        let t0 = Instant::now();
        self.sb
            .exec_t(
                &["systemctl", "stop", citadel_common::paths::TARGET_AI],
                limit,
            )
            .ok()?;
        let units = Self::all_units();
        let mut busy = Vec::new();
        wait_for(
            limit.saturating_sub(t0.elapsed()),
            Duration::from_millis(100),
            || {
                busy = units
                    .iter()
                    .filter(|u| !matches!(self.active_state(u).as_str(), "inactive" | "failed"))
                    .cloned()
                    .collect();
                busy.is_empty().then_some(())
            },
        )
        .ok_or_else(|| {
            format!(
                "still running after {limit:?}: {busy:?}\n{}",
                self.journal_tail(60)
            )
        })?;
        Ok(t0.elapsed())
    }

    /// `systemctl show -p P1,P2 UNIT` as a map (the `LoadState` is checked: an unknown unit
    /// still exits 0).
    pub fn show(&self, unit: &str, props: &[&str]) -> BTreeMap<String, String> {
        let mut p = props.to_vec();
        p.push("LoadState");
        let out = self
            .sb
            .exec(&["systemctl", "show", "-p", &p.join(","), unit])
            .stdout;
        let m: BTreeMap<String, String> = out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            m.get("LoadState").map(String::as_str),
            Some("loaded"),
            "{unit} is not loaded: {out}"
        );
        m
    }

    pub fn prop(&self, unit: &str, prop: &str) -> String {
        self.show(unit, &[prop]).remove(prop).unwrap_or_default()
    }

    pub fn active_state(&self, unit: &str) -> String {
        self.prop(unit, "ActiveState")
    }

    pub fn main_pid(&self, unit: &str) -> i64 {
        self.prop(unit, "MainPID").parse().unwrap_or(0)
    }

    pub fn n_restarts(&self, unit: &str) -> u64 {
        self.prop(unit, "NRestarts").parse().unwrap_or(0)
    }

    /// Wait until `unit` has ActiveState `state` (and optionally SubState); the last value
    /// seen on timeout.
    pub fn wait_state(
        &self,
        unit: &str,
        state: &str,
        limit: Duration,
    ) -> std::result::Result<(), String> {
        let mut last = String::new();
        wait_for(limit, Duration::from_millis(200), || {
            last = self.active_state(unit);
            (last == state).then_some(())
        })
        .ok_or_else(|| {
            format!(
                "{unit}: still {last:?} after {limit:?}, wanted {state:?}\n{}",
                self.journal_tail(60)
            )
        })
    }

    /// `curl` inside the box; (HTTP status, body). Status 0 = no answer.
    pub fn http(
        &self,
        method: &str,
        url: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        self.http_t(method, url, bearer, body, 5)
    }

    /// [`Citadel::http`] with a timeout of `secs` seconds.
    pub fn http_t(
        &self,
        method: &str,
        url: &str,
        bearer: Option<&str>,
        body: Option<&str>,
        secs: u64,
    ) -> (u16, String) {
        let secs = secs.to_string();
        let mut argv = vec![
            "curl",
            "-s",
            "-m",
            &secs,
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ];
        let auth;
        if let Some(b) = bearer {
            auth = format!("Authorization: Bearer {b}");
            argv.extend(["-H", &auth]);
        }
        if let Some(b) = body {
            argv.extend(["-H", "Content-Type: application/json", "-d", b]);
        }
        argv.push(url);
        let o = self.sb.exec_t(
            &argv,
            Duration::from_secs(secs.parse::<u64>().unwrap_or(5) + 5),
        );
        let (b, code) = o
            .stdout
            .rsplit_once('\n')
            .unwrap_or(("", o.stdout.as_str()));
        (code.trim().parse().unwrap_or(0), b.to_string())
    }

    pub fn health(&self, port: u16) -> u16 {
        self.http(
            "GET",
            &format!("http://127.0.0.1:{port}/health"),
            None,
            None,
        )
        .0
    }

    /// The engine process of a model: the first child of start-model (MainPID) inside the box
    /// (later children are orphans it reaps as subreaper).
    pub fn engine_pid(&self, model: &str) -> Option<i32> {
        let main = self.main_pid(&citadel_common::paths::model_unit(model));
        if main <= 0 {
            return None;
        }
        let o = self.sb.exec(&["pgrep", "-o", "-P", &main.to_string()]);
        o.stdout
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
    }

    /// The last `n` journal lines of the citadel units, for failure messages.
    pub fn journal_tail(&self, n: usize) -> String {
        let n = n.to_string();
        self.sb
            .journal(&["-n", &n, "-o", "short-monotonic", "-u", "citadel-*"])
    }

    /// `journalctl -o cat -u UNIT` since boot.
    pub fn unit_log(&self, unit: &str) -> String {
        self.sb.journal(&["-o", "cat", "-u", unit])
    }

    /// Run `citadel-service ARGS` inside the box.
    pub fn citadel_service(&self, args: &[&str], timeout: Duration) -> Output {
        let mut argv = vec![CITADEL_SERVICE];
        argv.extend_from_slice(args);
        self.sb.exec_t(&argv, timeout)
    }

    /// Wait until every model's `/health` answers 200.
    pub fn wait_all_healthy(&self, limit: Duration) -> std::result::Result<(), String> {
        let t0 = Instant::now();
        for m in &MODELS {
            let left = limit.saturating_sub(t0.elapsed());
            wait_for(left, Duration::from_millis(200), || {
                (self.health(m.port) == 200).then_some(())
            })
            .ok_or_else(|| format!("{} never healthy\n{}", m.name, self.journal_tail(60)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_config_is_valid_for_citadel_common() {
        let d = std::env::temp_dir().join(format!("citadel-st-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("citadel.toml");
        let s = Setup {
            api_key: Some("k".into()),
            ..Setup::default()
        };
        std::fs::write(&p, s.config()).unwrap();
        let cfg = citadel_common::config::Config::load(&p);
        let _ = std::fs::remove_dir_all(&d);
        let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.models.len(), 3);
        assert!(!cfg.gpu.required);
        let on_gpu0 = cfg.models.iter().filter(|m| m.gpus == [0]).count();
        assert_eq!(on_gpu0, 2, "two models share GPU 0");
    }
}
