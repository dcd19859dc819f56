//! The typed config: one struct per section, [`Config`] and the problems found reading it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// One problem found in the config file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Issue {
    /// Dotted key, e.g. `models.phi3.port`; empty for syntax errors.
    pub key: String,
    /// The offending value as written (TOML syntax), when there is one.
    pub value: Option<String>,
    pub message: String,
    /// 1-based line and column for syntax errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<Issue>,
}

impl ConfigError {
    /// One line per issue: `FILE: KEY = VALUE: MESSAGE`. Control characters in the file name,
    /// key, value or message are escaped ([`crate::text::escape_controls`]): a key with a
    /// newline cannot forge a second line.
    pub fn lines(&self) -> Vec<String> {
        use crate::text::escape_controls as esc;
        let file = self.file.display().to_string();
        let f = esc(&file);
        self.issues
            .iter()
            .map(|i| {
                let (k, m) = (esc(&i.key), esc(&i.message));
                match (i.line, i.key.is_empty(), &i.value) {
                    (Some(l), _, _) => format!("{f}:{l}:{}: {m}", i.column.unwrap_or(1)),
                    (None, true, _) => format!("{f}: {m}"),
                    (None, false, Some(v)) => format!("{f}: {k} = {}: {m}", esc(v)),
                    (None, false, None) => format!("{f}: {k}: {m}"),
                }
            })
            .collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

impl std::error::Error for ConfigError {}

/// `[paths]`: where things live on the box.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Paths {
    pub install_root: PathBuf,
    pub models_link: PathBuf,
    pub models_mount: PathBuf,
    pub models_active: PathBuf,
    pub backup_mount: PathBuf,
    pub cache_dir: PathBuf,
    pub staging_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub state_dir: PathBuf,
}

/// `[service]`: the account the model servers run as.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Service {
    pub user: String,
    pub group: String,
}

/// `[engine]`: how one model server is started.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Engine {
    /// argv prefix; the model path and the managed flags follow.
    pub command: Vec<String>,
    pub host: String,
    /// File holding the API key (read through `$CREDENTIALS_DIRECTORY` under systemd).
    pub api_key_file: Option<PathBuf>,
    /// Extra environment for the engine.
    pub env: BTreeMap<String, String>,
    /// How long a stop lets in-flight requests finish (`vllm serve --shutdown-timeout`);
    /// 0 = abort them at once. At most [`MAX_DRAIN_SECS`](super::MAX_DRAIN_SECS).
    pub drain_secs: u32,
    /// SIGTERM to SIGKILL grace when stopping (after the drain).
    pub stop_grace_secs: u64,
    /// How long to wait for a busy port to come free.
    pub port_wait_secs: u64,
    /// How long to wait for leftover processes to release GPU memory.
    pub gpu_release_wait_secs: u64,
}

/// GPU compute mode (`nvidia-smi -c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeMode {
    Default,
    ExclusiveProcess,
    Prohibited,
}

/// `[gpu]`: what gpu-optimize applies and verifies.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GpuPolicy {
    /// No driver / no GPU: exit 69 when true, warn and exit 0 when false.
    pub required: bool,
    pub persistence_mode: Option<bool>,
    pub power_limit_watts: Option<u32>,
    pub compute_mode: Option<ComputeMode>,
    pub app_memory_clock_mhz: Option<u32>,
    pub app_graphics_clock_mhz: Option<u32>,
    pub locked_graphics_clock_min_mhz: Option<u32>,
    pub locked_graphics_clock_max_mhz: Option<u32>,
    pub min_driver_version: Option<String>,
    pub min_cuda_version: Option<String>,
    /// Fail when a GPU is within this many degrees of its slowdown threshold.
    pub temperature_margin_c: u32,
    /// Expected MIG mode.
    pub mig: bool,
}

/// `[monitor]`: the health monitor's policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MonitorPolicy {
    pub interval_secs: u64,
    pub probe_timeout_secs: u64,
    pub failure_threshold: u32,
    /// 0 disables the deep (one-token completion) probe.
    pub deep_probe_interval_secs: u64,
    pub deep_probe_timeout_secs: u64,
    /// Requests running and no generated token for this long = hung.
    pub stall_secs: u64,
    pub restart_budget: u32,
    pub restart_window_secs: u64,
    pub state_file: PathBuf,
    pub textfile: Option<PathBuf>,
    pub webhook_url: Option<String>,
    pub webhook_timeout_secs: u64,
    /// `json` (default) or `alertmanager` (the `/api/v2/alerts` shape); see `crate::alert`.
    pub webhook_format: crate::alert::Format,
}

/// `[storage]`: storage-setup's policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoragePolicy {
    pub min_free_gib: u64,
    pub backup_required: bool,
    pub backup_min_free_gib: u64,
    /// Mode of the directories Citadel owns (cache, staging, runtime, state).
    pub dir_mode: u32,
}

/// `[models.NAME]`: one model server.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Model {
    pub name: String,
    /// As written: relative to the models link, or absolute.
    pub path: PathBuf,
    pub port: u16,
    pub gpus: Vec<u32>,
    pub tensor_parallel_size: u32,
    pub gpu_memory_utilization: f64,
    pub max_model_len: Option<u32>,
    pub served_model_name: String,
    pub load_timeout_secs: u64,
    pub extra_args: Vec<String>,
    pub enabled: bool,
    /// At most this many requests at once through the gateway (else `gateway.max_concurrent`).
    pub max_concurrent: Option<u32>,
    /// More names the gateway routes to this model.
    pub aliases: Vec<String>,
}

impl Model {
    /// The model directory: `path` if absolute, else under the models link.
    pub fn resolved_path(&self, paths: &Paths) -> PathBuf {
        if self.path.is_absolute() {
            self.path.clone()
        } else {
            paths.models_link.join(&self.path)
        }
    }
    /// The systemd unit that runs this model.
    pub fn unit(&self) -> String {
        crate::paths::model_unit(&self.name)
    }
}

/// A validated config. Only [`Config::load`] and [`Config::parse`] build one.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    pub file: PathBuf,
    pub paths: Paths,
    pub service: Service,
    pub engine: Engine,
    pub gpu: GpuPolicy,
    pub monitor: MonitorPolicy,
    pub storage: StoragePolicy,
    pub gateway: super::gateway::Gateway,
    /// Sorted by name.
    pub models: Vec<Model>,
}

impl Config {
    /// What is legal but probably not meant: one line each, `FILE: KEY: MESSAGE`. An empty (or
    /// absent) `[models]` is a warning, not an error: storage and GPU setup still work, and
    /// `citadel-service check` says that nothing will be served.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = vec![];
        if self.models.is_empty() {
            out.push(format!(
                "{}: models: no models are configured ([models] is empty or absent): nothing will be served",
                crate::text::escape_controls(&self.file.display().to_string())
            ));
        }
        out
    }

    /// Enabled models only.
    pub fn enabled_models(&self) -> impl Iterator<Item = &Model> {
        self.models.iter().filter(|m| m.enabled)
    }

    /// A model by name.
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The highest GPU index any enabled model uses.
    pub fn highest_gpu_index(&self) -> Option<u32> {
        self.enabled_models()
            .flat_map(|m| m.gpus.iter().copied())
            .max()
    }
}
