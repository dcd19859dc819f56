//! The one config file that describes the whole box (`/etc/citadel/citadel.toml`).
//!
//! Loading is done in two steps: the TOML is parsed into a table (syntax errors carry line and
//! column), then every section is read key by key into typed structs while *every* problem is
//! collected: unknown keys, wrong types, out-of-range values and the cross-model rules
//! (duplicate ports, per-GPU memory shares, tensor parallel vs GPUs, vLLM flags). Nothing is
//! reported one at a time: an operator fixes the file once.
//!
//! Each problem names the file, the key (`models.phi3.port`) and the value.

use crate::vllm;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use toml::{Table, Value};

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
    /// One line per issue: `FILE: KEY = VALUE: MESSAGE`.
    pub fn lines(&self) -> Vec<String> {
        let f = self.file.display();
        self.issues
            .iter()
            .map(|i| match (i.line, i.key.is_empty(), &i.value) {
                (Some(l), _, _) => format!("{f}:{l}:{}: {}", i.column.unwrap_or(1), i.message),
                (None, true, _) => format!("{f}: {}", i.message),
                (None, false, Some(v)) => format!("{f}: {} = {v}: {}", i.key, i.message),
                (None, false, None) => format!("{f}: {}: {}", i.key, i.message),
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

impl Default for Paths {
    /// The paths of the design; the one place they are written down.
    fn default() -> Paths {
        Paths {
            install_root: "/opt/citadel".into(),
            models_link: "/opt/citadel/models".into(),
            models_mount: "/mnt/citadel-models".into(),
            models_active: "/mnt/citadel-models/active".into(),
            backup_mount: "/mnt/citadel-backup".into(),
            cache_dir: "/mnt/citadel-models/cache".into(),
            staging_dir: "/mnt/citadel-models/staging".into(),
            runtime_dir: "/run/citadel".into(),
            state_dir: "/var/lib/citadel".into(),
        }
    }
}

impl Paths {
    fn fields(&self) -> [(&'static str, &PathBuf); 9] {
        [
            ("install_root", &self.install_root),
            ("models_link", &self.models_link),
            ("models_mount", &self.models_mount),
            ("models_active", &self.models_active),
            ("backup_mount", &self.backup_mount),
            ("cache_dir", &self.cache_dir),
            ("staging_dir", &self.staging_dir),
            ("runtime_dir", &self.runtime_dir),
            ("state_dir", &self.state_dir),
        ]
    }

    /// The default layout moved under `root` (`/opt/citadel` -> `ROOT/opt/citadel`): a whole
    /// box in a temporary directory, for tests and benchmarks.
    pub fn under(root: &Path) -> Paths {
        let d = Paths::default();
        let r = |p: &PathBuf| root.join(p.strip_prefix("/").unwrap_or(p));
        Paths {
            install_root: r(&d.install_root),
            models_link: r(&d.models_link),
            models_mount: r(&d.models_mount),
            models_active: r(&d.models_active),
            backup_mount: r(&d.backup_mount),
            cache_dir: r(&d.cache_dir),
            staging_dir: r(&d.staging_dir),
            runtime_dir: r(&d.runtime_dir),
            state_dir: r(&d.state_dir),
        }
    }

    /// The `[paths]` table that configures exactly these paths (values TOML-quoted).
    pub fn to_toml(&self) -> String {
        let mut s = String::from("[paths]\n");
        for (k, v) in self.fields() {
            s.push_str(&format!(
                "{k} = {}\n",
                Value::String(v.display().to_string())
            ));
        }
        s
    }
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
    /// 0 = abort them at once. At most [`MAX_DRAIN_SECS`].
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
    /// Sorted by name.
    pub models: Vec<Model>,
}

impl Config {
    /// Read and validate a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            issues: vec![Issue {
                key: String::new(),
                value: None,
                message: format!("cannot read config file: {e}"),
                line: None,
                column: None,
            }],
        })?;
        Self::parse(&text, file)
    }

    /// Validate config text; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Self::parse_with(text, file, &Limits::from_host())
    }

    /// Validate config text against explicit host limits (tests).
    pub fn parse_with(text: &str, file: &Path, limits: &Limits) -> Result<Config, ConfigError> {
        let fail = |issues| ConfigError {
            file: file.to_path_buf(),
            issues,
        };
        let table: Table = match text.parse::<Table>() {
            Ok(t) => t,
            Err(e) => return Err(fail(vec![syntax_issue(text, &e)])),
        };
        let mut r = Reader::default();
        let cfg = r.config(&table, file, limits);
        if r.issues.is_empty() {
            Ok(cfg)
        } else {
            Err(fail(r.issues))
        }
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

/// What the host reserves, which ports must not collide with.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`): outgoing connections
    /// take ports from it, so a server port there can be taken at random.
    pub ephemeral_ports: (u16, u16),
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ephemeral_ports: (32768, 60999),
        }
    }
}

impl Limits {
    /// Read the limits of this host (defaults where unreadable).
    pub fn from_host() -> Limits {
        let mut l = Limits::default();
        if let Ok(s) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
            let v: Vec<u16> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() == 2 && v[0] <= v[1] {
                l.ephemeral_ports = (v[0], v[1]);
            }
        }
        l
    }
}

fn syntax_issue(text: &str, e: &toml::de::Error) -> Issue {
    let (line, column) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (Some(line), Some(col))
        }
        None => (None, None),
    };
    Issue {
        key: String::new(),
        value: None,
        message: format!("syntax error: {}", e.message().trim().replace('\n', "; ")),
        line,
        column,
    }
}

/// Render a TOML value compactly for messages.
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(", ")),
        Value::Table(t) => format!(
            "{{ {} }}",
            t.iter()
                .map(|(k, v)| format!("{k} = {}", show(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// Model names become unit instance names and file names.
pub fn valid_model_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn valid_account_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// The longest `engine.drain_secs` accepted: a stop (and every restart) waits up to this long
/// for in-flight requests, and an operator must not wait more than ten minutes for one.
pub const MAX_DRAIN_SECS: u32 = 600;

/// Environment variables start-model sets itself; the config may not override them.
pub const MANAGED_ENV: &[&str] = &[
    "CUDA_VISIBLE_DEVICES",
    "CUDA_DEVICE_ORDER",
    "VLLM_API_KEY",
    "NOTIFY_SOCKET",
];

fn normal_abs(p: &Path) -> bool {
    p.is_absolute() && p.components().all(|c| !matches!(c, Component::ParentDir))
}

/// Collects issues while reading the table.
#[derive(Default)]
struct Reader {
    issues: Vec<Issue>,
}

/// A table being read: remembers which keys were consumed, to report the rest as unknown.
struct Tab<'t> {
    t: Option<&'t Table>,
    prefix: String,
    known: BTreeSet<&'static str>,
}

impl<'t> Tab<'t> {
    fn key(&self, k: &str) -> String {
        if self.prefix.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.prefix)
        }
    }
}

impl Reader {
    fn issue(&mut self, key: String, value: Option<&Value>, message: impl Into<String>) {
        self.issues.push(Issue {
            key,
            value: value.map(show),
            message: message.into(),
            line: None,
            column: None,
        });
    }

    fn section<'t>(&mut self, root: &'t Table, name: &str) -> Tab<'t> {
        let t = match root.get(name) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(v) => {
                self.issue(name.to_string(), Some(v), "must be a table");
                None
            }
        };
        Tab {
            t,
            prefix: name.to_string(),
            known: BTreeSet::new(),
        }
    }

    fn raw<'t>(&mut self, tab: &mut Tab<'t>, k: &'static str) -> Option<&'t Value> {
        tab.known.insert(k);
        tab.t.and_then(|t| t.get(k))
    }

    fn finish(&mut self, tab: Tab<'_>) {
        let Some(t) = tab.t else { return };
        for (k, v) in t {
            if !tab.known.contains(k.as_str()) {
                let known: Vec<&str> = tab.known.iter().copied().collect();
                self.issue(
                    tab.key(k),
                    Some(v),
                    format!("unknown key (known keys: {})", known.join(", ")),
                );
            }
        }
    }

    fn string(&mut self, tab: &mut Tab<'_>, k: &'static str) -> Option<String> {
        match self.raw(tab, k) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                self.issue(tab.key(k), Some(v), "must be a string");
                None
            }
        }
    }

    fn string_or(&mut self, tab: &mut Tab<'_>, k: &'static str, default: &str) -> String {
        self.string(tab, k).unwrap_or_else(|| default.to_string())
    }

    fn abs_path(&mut self, tab: &mut Tab<'_>, k: &'static str, default: &str) -> PathBuf {
        let v = self.raw(tab, k).cloned();
        let s = self.string_or(tab, k, default);
        let p = PathBuf::from(&s);
        if !normal_abs(&p) {
            self.issue(
                tab.key(k),
                v.as_ref(),
                "must be an absolute path without '..'",
            );
        }
        p
    }

    fn opt_abs_path(&mut self, tab: &mut Tab<'_>, k: &'static str) -> Option<PathBuf> {
        let v = self.raw(tab, k).cloned();
        let s = self.string(tab, k)?;
        if s.is_empty() {
            return None;
        }
        let p = PathBuf::from(&s);
        if !normal_abs(&p) {
            self.issue(
                tab.key(k),
                v.as_ref(),
                "must be an absolute path without '..'",
            );
        }
        Some(p)
    }

    fn boolean(&mut self, tab: &mut Tab<'_>, k: &'static str) -> Option<bool> {
        match self.raw(tab, k) {
            None => None,
            Some(Value::Boolean(b)) => Some(*b),
            Some(v) => {
                self.issue(tab.key(k), Some(v), "must be true or false");
                None
            }
        }
    }

    /// An integer in `min..=max`.
    fn int(&mut self, tab: &mut Tab<'_>, k: &'static str, min: i64, max: i64) -> Option<i64> {
        match self.raw(tab, k) {
            None => None,
            Some(v @ Value::Integer(i)) => {
                if *i < min || *i > max {
                    self.issue(
                        tab.key(k),
                        Some(v),
                        format!("must be between {min} and {max}"),
                    );
                    None
                } else {
                    Some(*i)
                }
            }
            Some(v) => {
                self.issue(tab.key(k), Some(v), "must be an integer");
                None
            }
        }
    }

    fn u64_or(&mut self, tab: &mut Tab<'_>, k: &'static str, min: i64, default: u64) -> u64 {
        self.int(tab, k, min, i64::from(u32::MAX))
            .map_or(default, |i| i as u64)
    }

    fn u32_opt(&mut self, tab: &mut Tab<'_>, k: &'static str, min: i64) -> Option<u32> {
        self.int(tab, k, min, i64::from(u32::MAX)).map(|i| i as u32)
    }

    fn str_list(&mut self, tab: &mut Tab<'_>, k: &'static str) -> Option<Vec<String>> {
        match self.raw(tab, k) {
            None => None,
            Some(v @ Value::Array(a)) => {
                let mut out = Vec::new();
                for x in a {
                    match x {
                        Value::String(s) => out.push(s.clone()),
                        _ => {
                            self.issue(tab.key(k), Some(v), "must be a list of strings");
                            return None;
                        }
                    }
                }
                Some(out)
            }
            Some(v) => {
                self.issue(tab.key(k), Some(v), "must be a list of strings");
                None
            }
        }
    }

    fn config(&mut self, root: &Table, file: &Path, limits: &Limits) -> Config {
        const SECTIONS: &[&str] = &[
            "paths", "service", "engine", "gpu", "monitor", "storage", "models",
        ];
        for (k, v) in root {
            if !SECTIONS.contains(&k.as_str()) {
                self.issue(
                    k.clone(),
                    Some(v),
                    format!("unknown section (known: {})", SECTIONS.join(", ")),
                );
            }
        }
        let paths = self.paths(root);
        let service = self.service(root);
        let engine = self.engine(root);
        let gpu = self.gpu(root);
        let monitor = self.monitor(root, &paths);
        let storage = self.storage(root);
        let models = self.models(root);
        let cfg = Config {
            file: file.to_path_buf(),
            paths,
            service,
            engine,
            gpu,
            monitor,
            storage,
            models,
        };
        self.cross_checks(&cfg, limits);
        cfg
    }

    fn paths(&mut self, root: &Table) -> Paths {
        let mut t = self.section(root, "paths");
        let d = Paths::default();
        let mut path = |r: &mut Reader, k: &'static str, default: &PathBuf| {
            r.abs_path(&mut t, k, &default.display().to_string())
        };
        let p = Paths {
            install_root: path(self, "install_root", &d.install_root),
            models_link: path(self, "models_link", &d.models_link),
            models_mount: path(self, "models_mount", &d.models_mount),
            models_active: path(self, "models_active", &d.models_active),
            backup_mount: path(self, "backup_mount", &d.backup_mount),
            cache_dir: path(self, "cache_dir", &d.cache_dir),
            staging_dir: path(self, "staging_dir", &d.staging_dir),
            runtime_dir: path(self, "runtime_dir", &d.runtime_dir),
            state_dir: path(self, "state_dir", &d.state_dir),
        };
        if !p.models_active.starts_with(&p.models_mount) {
            let v = Value::String(p.models_active.display().to_string());
            self.issue(
                "paths.models_active".into(),
                Some(&v),
                format!(
                    "must be inside paths.models_mount ({})",
                    p.models_mount.display()
                ),
            );
        }
        self.finish(t);
        p
    }

    fn service(&mut self, root: &Table) -> Service {
        let mut t = self.section(root, "service");
        let mut s = Service {
            user: String::new(),
            group: String::new(),
        };
        for (k, out) in [("user", &mut s.user), ("group", &mut s.group)] {
            let v = self.raw(&mut t, k).cloned();
            *out = self.string_or(&mut t, k, "citadel");
            if !valid_account_name(out) {
                self.issue(
                    t.key(k),
                    v.as_ref(),
                    "must be a valid account name ([a-z_][a-z0-9_-]*, at most 32 characters)",
                );
            }
        }
        self.finish(t);
        s
    }

    fn engine(&mut self, root: &Table) -> Engine {
        let mut t = self.section(root, "engine");
        let command_v = self.raw(&mut t, "command").cloned();
        let command = self
            .str_list(&mut t, "command")
            .unwrap_or_else(|| vec!["/opt/citadel/venv/bin/vllm".into(), "serve".into()]);
        if command.is_empty() || !Path::new(&command[0]).is_absolute() {
            self.issue(
                "engine.command".into(),
                command_v.as_ref(),
                "must be a non-empty list whose first element is an absolute program path",
            );
        }
        let host = self.string_or(&mut t, "host", "127.0.0.1");
        if host.is_empty() || host.contains(char::is_whitespace) {
            let v = Value::String(host.clone());
            self.issue(
                "engine.host".into(),
                Some(&v),
                "must be a host name or address",
            );
        }
        let api_key_file = self.opt_abs_path(&mut t, "api_key_file");
        let mut env = BTreeMap::new();
        match self.raw(&mut t, "env") {
            None => {}
            Some(Value::Table(e)) => {
                for (k, v) in e {
                    let key = format!("engine.env.{k}");
                    let valid = !k.is_empty()
                        && !k.starts_with(|c: char| c.is_ascii_digit())
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !valid {
                        self.issue(key, Some(v), "is not a valid environment variable name");
                    } else if MANAGED_ENV.contains(&k.as_str()) {
                        self.issue(
                            key,
                            Some(v),
                            "is set by start-model itself (from gpus / api_key_file)",
                        );
                    } else if let Value::String(s) = v {
                        env.insert(k.clone(), s.clone());
                    } else {
                        self.issue(key, Some(v), "must be a string");
                    }
                }
            }
            Some(v) => self.issue("engine.env".into(), Some(v), "must be a table of strings"),
        }
        let e = Engine {
            command,
            host,
            api_key_file,
            env,
            drain_secs: self
                .int(&mut t, "drain_secs", 0, i64::from(MAX_DRAIN_SECS))
                .map_or(30, |i| i as u32),
            stop_grace_secs: self.u64_or(&mut t, "stop_grace_secs", 1, 60),
            port_wait_secs: self.u64_or(&mut t, "port_wait_secs", 0, 30),
            gpu_release_wait_secs: self.u64_or(&mut t, "gpu_release_wait_secs", 0, 60),
        };
        self.finish(t);
        e
    }

    fn gpu(&mut self, root: &Table) -> GpuPolicy {
        let mut t = self.section(root, "gpu");
        let compute_v = self.raw(&mut t, "compute_mode").cloned();
        let compute_mode = match self.string(&mut t, "compute_mode").as_deref() {
            None => None,
            Some("default") => Some(ComputeMode::Default),
            Some("exclusive_process") => Some(ComputeMode::ExclusiveProcess),
            Some("prohibited") => Some(ComputeMode::Prohibited),
            Some(_) => {
                self.issue(
                    "gpu.compute_mode".into(),
                    compute_v.as_ref(),
                    "must be one of default, exclusive_process, prohibited",
                );
                None
            }
        };
        let version = |r: &mut Reader, t: &mut Tab<'_>, k: &'static str| {
            let v = r.raw(t, k).cloned();
            let s = r.string(t, k)?;
            if s.split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            {
                Some(s)
            } else {
                r.issue(t.key(k), v.as_ref(), "must be a version such as \"550.54\"");
                None
            }
        };
        let g = GpuPolicy {
            required: self.boolean(&mut t, "required").unwrap_or(true),
            persistence_mode: self.boolean(&mut t, "persistence_mode"),
            power_limit_watts: self.u32_opt(&mut t, "power_limit_watts", 1),
            compute_mode,
            app_memory_clock_mhz: self.u32_opt(&mut t, "app_memory_clock_mhz", 1),
            app_graphics_clock_mhz: self.u32_opt(&mut t, "app_graphics_clock_mhz", 1),
            locked_graphics_clock_min_mhz: self.u32_opt(&mut t, "locked_graphics_clock_min_mhz", 1),
            locked_graphics_clock_max_mhz: self.u32_opt(&mut t, "locked_graphics_clock_max_mhz", 1),
            min_driver_version: version(self, &mut t, "min_driver_version"),
            min_cuda_version: version(self, &mut t, "min_cuda_version"),
            temperature_margin_c: self.u32_opt(&mut t, "temperature_margin_c", 0).unwrap_or(5),
            mig: self.boolean(&mut t, "mig").unwrap_or(false),
        };
        if g.app_memory_clock_mhz.is_some() != g.app_graphics_clock_mhz.is_some() {
            self.issue(
                "gpu.app_graphics_clock_mhz".into(),
                None,
                "app_memory_clock_mhz and app_graphics_clock_mhz must be set together",
            );
        }
        match (g.locked_graphics_clock_min_mhz, g.locked_graphics_clock_max_mhz) {
            (Some(lo), Some(hi)) if lo > hi => self.issue(
                "gpu.locked_graphics_clock_min_mhz".into(),
                Some(&Value::Integer(lo.into())),
                format!("must not exceed locked_graphics_clock_max_mhz ({hi})"),
            ),
            (Some(_), None) | (None, Some(_)) => self.issue(
                "gpu.locked_graphics_clock_max_mhz".into(),
                None,
                "locked_graphics_clock_min_mhz and locked_graphics_clock_max_mhz must be set together",
            ),
            _ => {}
        }
        self.finish(t);
        g
    }

    fn monitor(&mut self, root: &Table, paths: &Paths) -> MonitorPolicy {
        let mut t = self.section(root, "monitor");
        let default_state = crate::paths::health_state_file(&paths.runtime_dir);
        let state_v = self.raw(&mut t, "state_file").cloned();
        let state_file = self
            .opt_abs_path(&mut t, "state_file")
            .unwrap_or(default_state);
        let _ = state_v;
        let webhook_v = self.raw(&mut t, "webhook_url").cloned();
        let webhook_url = self.string(&mut t, "webhook_url").filter(|s| !s.is_empty());
        if let Some(u) = &webhook_url {
            let rest = u.strip_prefix("http://").unwrap_or("");
            if rest.is_empty() || rest.starts_with('/') {
                self.issue(
                    "monitor.webhook_url".into(),
                    webhook_v.as_ref(),
                    "must be an http:// URL (no TLS: point it at a local relay such as Alertmanager)",
                );
            }
        }
        let m = MonitorPolicy {
            interval_secs: self.u64_or(&mut t, "interval_secs", 1, 10),
            probe_timeout_secs: self.u64_or(&mut t, "probe_timeout_secs", 1, 5),
            failure_threshold: self.u64_or(&mut t, "failure_threshold", 1, 3) as u32,
            deep_probe_interval_secs: self.u64_or(&mut t, "deep_probe_interval_secs", 0, 60),
            deep_probe_timeout_secs: self.u64_or(&mut t, "deep_probe_timeout_secs", 1, 30),
            stall_secs: self.u64_or(&mut t, "stall_secs", 1, 120),
            restart_budget: self.u64_or(&mut t, "restart_budget", 0, 3) as u32,
            restart_window_secs: self.u64_or(&mut t, "restart_window_secs", 1, 3600),
            state_file,
            textfile: self.opt_abs_path(&mut t, "textfile"),
            webhook_url,
            webhook_timeout_secs: self.u64_or(&mut t, "webhook_timeout_secs", 1, 5),
        };
        if m.probe_timeout_secs >= m.interval_secs && m.interval_secs > 1 {
            self.issue(
                "monitor.probe_timeout_secs".into(),
                Some(&Value::Integer(m.probe_timeout_secs as i64)),
                format!(
                    "must be shorter than monitor.interval_secs ({})",
                    m.interval_secs
                ),
            );
        }
        self.finish(t);
        m
    }

    fn storage(&mut self, root: &Table) -> StoragePolicy {
        let mut t = self.section(root, "storage");
        let mode_v = self.raw(&mut t, "dir_mode").cloned();
        let dir_mode = match self.string(&mut t, "dir_mode") {
            None => 0o750,
            Some(s) => match u32::from_str_radix(&s, 8) {
                Ok(m) if m <= 0o777 && s.len() >= 3 => m,
                _ => {
                    self.issue(
                        "storage.dir_mode".into(),
                        mode_v.as_ref(),
                        "must be an octal mode string such as \"0750\"",
                    );
                    0o750
                }
            },
        };
        let s = StoragePolicy {
            min_free_gib: self.u64_or(&mut t, "min_free_gib", 0, 20),
            backup_required: self.boolean(&mut t, "backup_required").unwrap_or(false),
            backup_min_free_gib: self.u64_or(&mut t, "backup_min_free_gib", 0, 0),
            dir_mode,
        };
        self.finish(t);
        s
    }

    fn models(&mut self, root: &Table) -> Vec<Model> {
        let mut out = Vec::new();
        let tables = match root.get("models") {
            None => return out,
            Some(Value::Table(t)) => t,
            Some(v) => {
                self.issue(
                    "models".into(),
                    Some(v),
                    "must be a table of [models.NAME] tables",
                );
                return out;
            }
        };
        for (name, v) in tables {
            let key = format!("models.{name}");
            if !valid_model_name(name) {
                self.issue(
                    key.clone(),
                    None,
                    format!(
                        "invalid model name {name:?}: must match [a-z0-9][a-z0-9_-]{{0,31}} (it becomes a unit instance and file name)"
                    ),
                );
            }
            let Value::Table(mt) = v else {
                self.issue(key, Some(v), "must be a table");
                continue;
            };
            if let Some(m) = self.model(name, mt) {
                out.push(m);
            }
        }
        out
    }

    fn model(&mut self, name: &str, mt: &Table) -> Option<Model> {
        let mut t = Tab {
            t: Some(mt),
            prefix: format!("models.{name}"),
            known: BTreeSet::new(),
        };
        let path_v = self.raw(&mut t, "path").cloned();
        let path = self.string(&mut t, "path");
        match (&path, &path_v) {
            (None, None) => self.issue(t.key("path"), None, "is required"),
            (Some(p), _)
                if p.is_empty()
                    || Path::new(p)
                        .components()
                        .any(|c| matches!(c, Component::ParentDir)) =>
            {
                self.issue(
                    t.key("path"),
                    path_v.as_ref(),
                    "must be a directory under the models link (or an absolute path) without '..'",
                )
            }
            _ => {}
        }
        let port_v = self.raw(&mut t, "port").cloned();
        let port = self.int(&mut t, "port", 1, 65535);
        if port_v.is_none() {
            self.issue(t.key("port"), None, "is required");
        }
        let gpus_v = self.raw(&mut t, "gpus").cloned();
        let gpus: Option<Vec<u32>> = match &gpus_v {
            None => {
                self.issue(
                    t.key("gpus"),
                    None,
                    "is required (a list of GPU indexes, e.g. [0])",
                );
                None
            }
            Some(Value::Array(a)) => {
                let ids: Vec<Option<u32>> = a
                    .iter()
                    .map(|x| {
                        x.as_integer()
                            .and_then(|i| u32::try_from(i).ok())
                            .filter(|i| *i < 1024)
                    })
                    .collect();
                if a.is_empty() || ids.iter().any(Option::is_none) {
                    self.issue(
                        t.key("gpus"),
                        gpus_v.as_ref(),
                        "must be a non-empty list of GPU indexes (integers from 0)",
                    );
                    None
                } else {
                    let ids: Vec<u32> = ids.into_iter().flatten().collect();
                    let uniq: BTreeSet<u32> = ids.iter().copied().collect();
                    if uniq.len() != ids.len() {
                        self.issue(t.key("gpus"), gpus_v.as_ref(), "lists a GPU more than once");
                    }
                    Some(ids)
                }
            }
            Some(v) => {
                self.issue(t.key("gpus"), Some(v), "must be a list of GPU indexes");
                None
            }
        };
        let tp = self
            .int(&mut t, "tensor_parallel_size", 1, 1024)
            .map(|i| i as u32);
        let gmu_v = self.raw(&mut t, "gpu_memory_utilization").cloned();
        let gmu = match &gmu_v {
            None => Some(0.9),
            Some(v @ Value::Float(f)) => {
                if *f > 0.0 && *f <= 1.0 {
                    Some(*f)
                } else {
                    self.issue(
                        t.key("gpu_memory_utilization"),
                        Some(v),
                        "must be in (0, 1]: the fraction of each GPU's total memory this model takes",
                    );
                    None
                }
            }
            Some(v @ Value::Integer(1)) => {
                let _ = v;
                Some(1.0)
            }
            Some(v) => {
                self.issue(
                    t.key("gpu_memory_utilization"),
                    Some(v),
                    "must be a number in (0, 1], e.g. 0.45",
                );
                None
            }
        };
        let max_model_len = self
            .int(&mut t, "max_model_len", 1, i64::from(u32::MAX))
            .map(|i| i as u32);
        let served = self.string(&mut t, "served_model_name");
        if let Some(s) = &served {
            if s.is_empty() || s.contains(char::is_whitespace) {
                let v = Value::String(s.clone());
                self.issue(
                    t.key("served_model_name"),
                    Some(&v),
                    "must be a non-empty name without spaces",
                );
            }
        }
        let load_timeout_secs = self.u64_or(&mut t, "load_timeout_secs", 1, 1800);
        let extra_v = self.raw(&mut t, "extra_args").cloned();
        let extra_args = self.str_list(&mut t, "extra_args").unwrap_or_default();
        for problem in vllm::check_extra_args(&extra_args) {
            self.issue(t.key("extra_args"), extra_v.as_ref(), problem);
        }
        let enabled = self.boolean(&mut t, "enabled").unwrap_or(true);
        self.finish(t);

        let gpus = gpus?;
        let tp = tp.unwrap_or(1);
        if tp as usize != gpus.len() {
            self.issue(
                format!("models.{name}.tensor_parallel_size"),
                Some(&Value::Integer(tp.into())),
                format!(
                    "must equal the number of gpus ({} in {})",
                    gpus.len(),
                    show(gpus_v.as_ref().unwrap_or(&Value::Array(vec![])))
                ),
            );
        }
        Some(Model {
            name: name.to_string(),
            path: PathBuf::from(path?),
            port: port? as u16,
            gpus,
            tensor_parallel_size: tp,
            gpu_memory_utilization: gmu?,
            max_model_len,
            served_model_name: served.unwrap_or_else(|| name.to_string()),
            load_timeout_secs,
            extra_args,
            enabled,
        })
    }

    fn cross_checks(&mut self, cfg: &Config, limits: &Limits) {
        // Ports: unique, not privileged, not in the kernel's ephemeral range.
        let mut by_port: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
        for m in &cfg.models {
            by_port.entry(m.port).or_default().push(&m.name);
            let pv = Value::Integer(m.port.into());
            if m.port < 1024 {
                self.issue(
                    format!("models.{}.port", m.name),
                    Some(&pv),
                    "ports below 1024 are reserved for system services",
                );
            }
            let (lo, hi) = limits.ephemeral_ports;
            if (lo..=hi).contains(&m.port) {
                self.issue(
                    format!("models.{}.port", m.name),
                    Some(&pv),
                    format!(
                        "is in the kernel's ephemeral port range {lo}-{hi} (net.ipv4.ip_local_port_range), where outgoing connections can take it"
                    ),
                );
            }
        }
        for (port, names) in &by_port {
            if names.len() > 1 {
                for n in &names[1..] {
                    self.issue(
                        format!("models.{n}.port"),
                        Some(&Value::Integer((*port).into())),
                        format!("duplicate port: also used by models.{}", names[0]),
                    );
                }
            }
        }
        // Served names must be unique among enabled models (one box, one name space per client).
        let mut served: BTreeMap<&str, &str> = BTreeMap::new();
        for m in cfg.enabled_models() {
            if let Some(other) = served.insert(&m.served_model_name, &m.name) {
                self.issue(
                    format!("models.{}.served_model_name", m.name),
                    Some(&Value::String(m.served_model_name.clone())),
                    format!("duplicate served model name: also served by models.{other}"),
                );
            }
        }
        // Per GPU: the enabled models' memory shares must fit in one GPU.
        for g in crate::plan::gpu_shares(cfg) {
            if g.share > 1.0 + 1e-9 {
                let keys: Vec<String> = g
                    .models
                    .iter()
                    .map(|(n, _)| format!("models.{n}.gpu_memory_utilization"))
                    .collect();
                let values: Vec<String> = g.models.iter().map(|(_, s)| s.to_string()).collect();
                self.issues.push(Issue {
                    key: keys.join(" + "),
                    value: Some(format!("{} = {:.2}", values.join(" + "), g.share)),
                    message: format!(
                        "GPU {} is over-committed: the enabled models on it ask for more than 1.0 of its memory (vLLM takes each fraction of the GPU's total memory; the last one to start fails)",
                        g.index
                    ),
                    line: None,
                    column: None,
                });
            }
        }
        // Exposed beyond loopback without a key: anyone on the network can use the GPUs.
        if !is_loopback(&cfg.engine.host) && cfg.engine.api_key_file.is_none() {
            self.issue(
                "engine.host".into(),
                Some(&Value::String(cfg.engine.host.clone())),
                "binds beyond loopback but engine.api_key_file is not set: the models would be open to the network",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[engine]
command = ["/usr/bin/vllm", "serve"]
[models.a]
path = "a"
port = 11400
gpus = [0]
tensor_parallel_size = 1
gpu_memory_utilization = 0.5
[models.b]
path = "/srv/b"
port = 11401
gpus = [0, 1]
tensor_parallel_size = 2
gpu_memory_utilization = 0.5
max_model_len = 4096
extra_args = ["--enforce-eager", "--dtype", "bfloat16"]
"#;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse_with(
            s,
            Path::new("/etc/citadel/citadel.toml"),
            &Limits::default(),
        )
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.models.len(), 2);
        let a = c.model("a").unwrap();
        assert_eq!(a.served_model_name, "a");
        assert_eq!(
            a.resolved_path(&c.paths),
            PathBuf::from("/opt/citadel/models/a")
        );
        let b = c.model("b").unwrap();
        assert_eq!(b.resolved_path(&c.paths), PathBuf::from("/srv/b"));
        assert_eq!(b.max_model_len, Some(4096));
        assert_eq!(c.engine.host, "127.0.0.1");
        assert_eq!(
            c.monitor.state_file,
            PathBuf::from("/run/citadel/health.json")
        );
        assert_eq!(c.storage.dir_mode, 0o750);
        assert_eq!(c.highest_gpu_index(), Some(1));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = GOOD
            .replace("port = 11401", "port = 80")
            .replace("0.5\nmax", "0.7\nmax")
            + "\n[paths]\nbogus = 1\n";
        let e = parse(&bad).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("models.b.port = 80"), "{text}");
        assert!(text.contains("paths.bogus = 1: unknown key"), "{text}");
        assert!(text.contains("GPU 0 is over-committed"), "{text}");
        assert!(text.contains("0.5 + 0.7 = 1.20"), "{text}");
        assert_eq!(e.issues.len(), 3, "{text}");
        for l in e.lines() {
            assert!(l.starts_with("/etc/citadel/citadel.toml"), "{l}");
        }
    }

    #[test]
    fn drain_secs_defaults_to_30_and_stays_within_0_and_600() {
        assert_eq!(parse(GOOD).unwrap().engine.drain_secs, 30);
        let with = |v: &str| GOOD.replace("[engine]\n", &format!("[engine]\ndrain_secs = {v}\n"));
        assert_eq!(parse(&with("0")).unwrap().engine.drain_secs, 0);
        assert_eq!(parse(&with("600")).unwrap().engine.drain_secs, 600);
        for bad in ["601", "-1", "\"30\"", "1.5"] {
            let e = parse(&with(bad)).unwrap_err();
            assert_eq!(e.issues.len(), 1, "{e}");
            assert_eq!(e.issues[0].key, "engine.drain_secs", "{e}");
            assert!(
                e.to_string()
                    .contains(&format!("engine.drain_secs = {bad}")),
                "{e}"
            );
        }
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let e = parse("[models.a]\nport = = 3\n").unwrap_err();
        assert_eq!(e.issues[0].line, Some(2));
        assert!(
            e.to_string().starts_with("/etc/citadel/citadel.toml:2:"),
            "{e}"
        );
    }

    #[test]
    fn paths_under_a_root_round_trip_through_toml() {
        let root = Path::new("/tmp/box with space");
        let p = Paths::under(root);
        assert_eq!(
            p.state_dir,
            PathBuf::from("/tmp/box with space/var/lib/citadel")
        );
        assert_eq!(p.models_active, root.join("mnt/citadel-models/active"));
        let c = parse(&format!("{}{GOOD}", p.to_toml())).unwrap();
        assert_eq!(c.paths, p);
        assert_eq!(parse(GOOD).unwrap().paths, Paths::default());
    }

    #[test]
    fn model_names() {
        assert!(valid_model_name("phi3"));
        assert!(valid_model_name("0-a_b"));
        assert!(!valid_model_name("Phi3"));
        assert!(!valid_model_name("a/b"));
        assert!(!valid_model_name(".."));
        assert!(!valid_model_name("-a"));
        assert!(!valid_model_name(&"a".repeat(33)));
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("::1"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("0.0.0.0"));
    }
}
