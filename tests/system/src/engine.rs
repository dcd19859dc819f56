//! The engine tier's box: the .deb installed in a real-systemd box whose engine is the REAL vLLM
//! (CPU build), not the stand-in.
//!
//! - The venv is built once and cached on the host by `tests/system/engine/setup-vllm.sh`
//!   (`/var/cache/citadel-test/vllm`, `CITADEL_VLLM_VENV` overrides) with Debian's own
//!   `/usr/bin/python3`, and bind-mounted read-only into the box at the same path (outside
//!   `/root` and `/tmp`: the model unit has `ProtectHome=yes` and `PrivateTmp=yes`).
//! - The box boots from [`sdbox::ENGINE_BASE`], a second cached rootfs with what vLLM needs at
//!   run time (libnuma1, g++, python3-dev), so the shared base never changes.
//! - The tiny random-weight model is generated inside the box, into the models mount, by the
//!   repository's own `tests/system/engine/make-tiny-model.py` (run with the venv's python).

use crate::citadel::{self, Citadel};
use crate::run;
use crate::sdbox::{self, BootOptions, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The default venv (the same path inside the box).
pub const DEFAULT_VENV: &str = "/var/cache/citadel-test/vllm";
/// Where the tiny model is generated inside the box (under `models_active`).
pub const TINY: &str = "/mnt/citadel-models/active/tiny";
/// The tiny model's `max_position_embeddings` (make-tiny-model.py).
pub const TINY_MAX_POSITIONS: u32 = 512;

/// The venv: `CITADEL_VLLM_VENV` or [`DEFAULT_VENV`].
pub fn venv_path() -> PathBuf {
    std::env::var_os("CITADEL_VLLM_VENV").map_or_else(|| PathBuf::from(DEFAULT_VENV), PathBuf::from)
}

/// Build the venv unless cached (setup-vllm.sh: a stamp, a lock; seconds when cached).
pub fn ensure_venv() -> Result<PathBuf> {
    let v = venv_path();
    let script = citadel::workspace_root().join("tests/system/engine/setup-vllm.sh");
    let mut c = Command::new("/bin/bash");
    c.arg(&script).arg(&v);
    let o = run::run(c, None, Duration::from_secs(3600));
    if !o.success() {
        return Err(format!("{} failed:\n{}", script.display(), o.describe()));
    }
    Ok(v)
}

/// Why the engine tier cannot run here, if it cannot (checked before anything is built).
pub fn missing_prerequisite() -> Option<String> {
    sdbox::missing_prerequisite()
}

/// One model of an engine-tier config.
#[derive(Debug, Clone)]
pub struct EngineModel {
    pub name: &'static str,
    pub port: u16,
    pub gpu: u32,
    pub max_model_len: u32,
    pub enabled: bool,
}

/// The engine-tier config.
#[derive(Debug, Clone)]
pub struct EngineSetup {
    pub models: Vec<EngineModel>,
    pub drain_secs: u32,
    pub stop_grace_secs: u64,
    pub monitor_interval_secs: u64,
    pub probe_timeout_secs: u64,
    pub failure_threshold: u32,
    pub deep_probe_interval_secs: u64,
    pub deep_probe_timeout_secs: u64,
    pub stall_secs: u64,
}

impl EngineSetup {
    /// The config file text: the real vLLM through the venv's python (`-m
    /// vllm.entrypoints.cli.main serve` is `vllm serve`), the CPU build first on PYTHONPATH.
    pub fn config(&self, venv: &std::path::Path) -> String {
        let v = venv.display();
        let mut s = format!(
            r#"# Citadel engine-tier config (written by tests/system/src/engine.rs): the real vLLM.
[service]
user = "citadel"
group = "citadel"

[engine]
command = ["{v}/bin/python", "-m", "vllm.entrypoints.cli.main", "serve"]
host = "127.0.0.1"
drain_secs = {drain}
stop_grace_secs = {grace}
port_wait_secs = 10
gpu_release_wait_secs = 5

[engine.env]
PYTHONPATH = "{v}/cpu"
VLLM_TARGET_DEVICE = "cpu"
VLLM_CPU_KVCACHE_SPACE = "1"
HF_HUB_OFFLINE = "1"

[gpu]
required = false
persistence_mode = false

[monitor]
interval_secs = {iv}
probe_timeout_secs = {pt}
failure_threshold = {ft}
deep_probe_interval_secs = {dp}
deep_probe_timeout_secs = {dpt}
stall_secs = {stall}
restart_budget = 3
restart_window_secs = 3600

[storage]
min_free_gib = 0
backup_required = false
"#,
            drain = self.drain_secs,
            grace = self.stop_grace_secs,
            iv = self.monitor_interval_secs,
            pt = self.probe_timeout_secs,
            ft = self.failure_threshold,
            dp = self.deep_probe_interval_secs,
            dpt = self.deep_probe_timeout_secs,
            stall = self.stall_secs,
        );
        for m in &self.models {
            s.push_str(&format!(
                "\n[models.{n}]\npath = \"tiny\"\nport = {p}\ngpus = [{g}]\ngpu_memory_utilization = 0.5\nmax_model_len = {len}\nload_timeout_secs = 1200\nenabled = {en}\n",
                n = m.name,
                p = m.port,
                g = m.gpu,
                len = m.max_model_len,
                en = m.enabled,
            ));
        }
        s
    }
}

/// Boot an engine box named `name`: the engine rootfs, the venv bind-mounted, the .deb
/// installed, the config written, the models mount (a tmpfs) with the tiny model in it.
pub fn install(name: &str, setup: &EngineSetup, keep: bool) -> Result<Citadel> {
    let venv = ensure_venv()?;
    let opts = BootOptions {
        rootfs: sdbox::ENGINE_BASE,
        bind_ro: vec![venv.clone()],
        keep,
        // The engine rootfs is bigger and the 2-core host busy: boot may take longer.
        boot_timeout: Duration::from_secs(180),
        stop_timeout: Duration::from_secs(120),
        ..BootOptions::default()
    };
    let c = Citadel::install_bare(name, &opts)?;
    write_config(&c, setup, &venv)?;
    c.sb.ok(&["mkdir", "-p", citadel::MODELS_MOUNT, "/opt/citadel"])?;
    // The compile cache (cache_dir, under the mount) survives restarts: later loads are warm.
    c.sb.ok(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=2g,mode=0755",
        "citadel-models",
        citadel::MODELS_MOUNT,
    ])?;
    let script = citadel::workspace_root().join("tests/system/engine/make-tiny-model.py");
    c.sb.install(&script, "/usr/local/lib/citadel-test/make-tiny-model.py")?;
    let py = format!("{}/bin/python", venv.display());
    let o = c.sb.exec_t(
        &[&py, "/usr/local/lib/citadel-test/make-tiny-model.py", TINY],
        Duration::from_secs(600),
    );
    if !o.success() {
        return Err(format!("make-tiny-model.py in the box:\n{}", o.describe()));
    }
    c.sb.ok(&["chmod", "-R", "a+rX", citadel::MODELS_MOUNT])?;
    Ok(c)
}

/// (Re)write the box's config (read by each start of a model).
pub fn write_config(c: &Citadel, setup: &EngineSetup, venv: &std::path::Path) -> Result<()> {
    c.sb.write(citadel::CONFIG, setup.config(venv).as_bytes(), 0o644)
}

// ------------------------------------------------------------------------------------------
// The request script, run against the real engine and the stand-in alike

/// What one request of the script answered: its status and the shape of its answer (JSON
/// shapes, or for `/metrics` the metric family names).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub request: &'static str,
    pub status: u16,
    /// Dotted paths with their JSON type (`choices[].finish_reason: string`), or metric names.
    pub shape: std::collections::BTreeSet<String>,
}

/// The JSON shape of a value: one `path: type` per leaf (arrays by their first element).
pub fn json_shape(v: &serde_json::Value) -> std::collections::BTreeSet<String> {
    fn walk(v: &serde_json::Value, path: &str, out: &mut std::collections::BTreeSet<String>) {
        use serde_json::Value::*;
        match v {
            Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(x, &p, out);
                }
            }
            Array(a) if !a.is_empty() => walk(&a[0], &format!("{path}[]"), out),
            _ => {
                let t = match v {
                    Null => "null",
                    Bool(_) => "bool",
                    Number(_) => "number",
                    String(_) => "string",
                    Array(_) => "empty array",
                    Object(_) => "empty object",
                };
                out.insert(format!("{path}: {t}"));
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(v, "", &mut out);
    out
}

/// Metric family names of a Prometheus text page (`vllm:num_requests_running`, ...).
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Run the script against `port` inside the box: `/health`, `/v1/models`, one completion, one
/// streamed completion (its first and last data chunks, and whether `[DONE]` ends it),
/// `/metrics`.
pub fn request_script(c: &Citadel, port: u16, model: &str) -> Vec<Answer> {
    let base = format!("http://127.0.0.1:{port}");
    let mut out = Vec::new();
    let (st, _) = c.http_t("GET", &format!("{base}/health"), None, None, 30);
    out.push(Answer {
        request: "GET /health",
        status: st,
        shape: Default::default(),
    });
    let json = |b: &str| {
        serde_json::from_str::<serde_json::Value>(b)
            .map(|v| json_shape(&v))
            .unwrap_or_else(|e| [format!("not JSON: {e}: {b}")].into())
    };
    let (st, b) = c.http_t("GET", &format!("{base}/v1/models"), None, None, 30);
    out.push(Answer {
        request: "GET /v1/models",
        status: st,
        shape: json(&b),
    });
    let body = format!(r#"{{"model":"{model}","prompt":"hello world","max_tokens":4}}"#);
    let (st, b) = c.http_t(
        "POST",
        &format!("{base}/v1/completions"),
        None,
        Some(&body),
        60,
    );
    out.push(Answer {
        request: "POST /v1/completions",
        status: st,
        shape: json(&b),
    });
    let body =
        format!(r#"{{"model":"{model}","prompt":"hello world","max_tokens":4,"stream":true}}"#);
    let (st, b) = c.http_t(
        "POST",
        &format!("{base}/v1/completions"),
        None,
        Some(&body),
        60,
    );
    let data: Vec<&str> = b.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    let mut shape = std::collections::BTreeSet::new();
    if let Some(first) = data.first() {
        shape.extend(json(first).into_iter().map(|s| format!("first chunk {s}")));
    }
    let chunks: Vec<&&str> = data.iter().filter(|d| **d != "[DONE]").collect();
    if let Some(last) = chunks.last() {
        shape.extend(json(last).into_iter().map(|s| format!("last chunk {s}")));
    }
    shape.insert(format!(
        "ends with [DONE]: {}",
        data.last() == Some(&"[DONE]")
    ));
    out.push(Answer {
        request: "POST /v1/completions stream",
        status: st,
        shape,
    });
    let (st, b) = c.http_t("GET", &format!("{base}/metrics"), None, None, 30);
    out.push(Answer {
        request: "GET /metrics",
        status: st,
        shape: metric_names(&b),
    });
    out
}
