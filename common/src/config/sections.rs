//! Reading each section, with the rules that concern one key or one section.
//!
//! Over 500 lines as one concern: one reader method per section, each with the rules of its own
//! keys (the cross-section rules are in `rules` and `hostile`).

use super::defaults::model;
use super::hostile::{self, Text};
use super::read::{show, Reader, Tab};
use super::rules::{valid_account_name, valid_model_name, Limits, MANAGED_ENV, MAX_DRAIN_SECS};
use super::types::*;
use crate::vllm;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use toml::{Table, Value};

impl Reader {
    pub(super) fn config(&mut self, root: &Table, file: &Path, limits: &Limits) -> Config {
        const SECTIONS: &[&str] = &[
            "paths", "service", "engine", "gpu", "monitor", "storage", "gateway", "models",
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
        let gateway = self.gateway(root);
        let models = self.models(root);
        let cfg = Config {
            file: file.to_path_buf(),
            paths,
            service,
            engine,
            gpu,
            monitor,
            storage,
            gateway,
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
        let d = Service::default();
        let mut s = d.clone();
        for (k, out, default) in [
            ("user", &mut s.user, &d.user),
            ("group", &mut s.group, &d.group),
        ] {
            let v = self.raw(&mut t, k).cloned();
            *out = self.string_or(&mut t, k, default);
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
        let d = Engine::default();
        let command_v = self.raw(&mut t, "command").cloned();
        let command = self
            .str_list(&mut t, "command")
            .unwrap_or_else(|| d.command.clone());
        if command.is_empty() || !Path::new(&command[0]).is_absolute() {
            self.issue(
                "engine.command".into(),
                command_v.as_ref(),
                "must be a non-empty list whose first element is an absolute program path",
            );
        }
        let host = self.string_or(&mut t, "host", &d.host);
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
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
                        match hostile::string_problem(s, Text::Any) {
                            Some(p) => self.issue(key, Some(v), p),
                            None => {
                                env.insert(k.clone(), s.clone());
                            }
                        }
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
                .map_or(d.drain_secs, |i| i as u32),
            stop_grace_secs: self.u64_or(&mut t, "stop_grace_secs", 1, d.stop_grace_secs),
            port_wait_secs: self.u64_or(&mut t, "port_wait_secs", 0, d.port_wait_secs),
            gpu_release_wait_secs: self.u64_or(
                &mut t,
                "gpu_release_wait_secs",
                0,
                d.gpu_release_wait_secs,
            ),
        };
        self.finish(t);
        e
    }

    fn gpu(&mut self, root: &Table) -> GpuPolicy {
        let mut t = self.section(root, "gpu");
        let d = GpuPolicy::default();
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
            required: self.boolean(&mut t, "required").unwrap_or(d.required),
            persistence_mode: self.boolean(&mut t, "persistence_mode"),
            power_limit_watts: self.u32_opt(&mut t, "power_limit_watts", 1),
            compute_mode,
            app_memory_clock_mhz: self.u32_opt(&mut t, "app_memory_clock_mhz", 1),
            app_graphics_clock_mhz: self.u32_opt(&mut t, "app_graphics_clock_mhz", 1),
            locked_graphics_clock_min_mhz: self.u32_opt(&mut t, "locked_graphics_clock_min_mhz", 1),
            locked_graphics_clock_max_mhz: self.u32_opt(&mut t, "locked_graphics_clock_max_mhz", 1),
            min_driver_version: version(self, &mut t, "min_driver_version"),
            min_cuda_version: version(self, &mut t, "min_cuda_version"),
            temperature_margin_c: self
                .u32_opt(&mut t, "temperature_margin_c", 0)
                .unwrap_or(d.temperature_margin_c),
            mig: self.boolean(&mut t, "mig").unwrap_or(d.mig),
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
        let d = MonitorPolicy::default_for(paths);
        let state_file = self
            .opt_abs_path(&mut t, "state_file")
            .unwrap_or(d.state_file);
        let webhook_v = self.raw(&mut t, "webhook_url").cloned();
        let webhook_url = self.string(&mut t, "webhook_url").filter(|s| !s.is_empty());
        if let Some(u) = &webhook_url {
            let rest = u.strip_prefix("http://").unwrap_or("");
            if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_control) {
                self.issue(
                    "monitor.webhook_url".into(),
                    webhook_v.as_ref(),
                    "must be an http:// URL (no TLS: point it at a local relay such as Alertmanager)",
                );
            }
        }
        let format_v = self.raw(&mut t, "webhook_format").cloned();
        let webhook_format = match self.string(&mut t, "webhook_format") {
            None => d.webhook_format,
            Some(f) => crate::alert::Format::parse(&f).unwrap_or_else(|| {
                self.issue(
                    "monitor.webhook_format".into(),
                    format_v.as_ref(),
                    format!("must be one of {}", crate::alert::Format::NAMES.join(", ")),
                );
                d.webhook_format
            }),
        };
        let m = MonitorPolicy {
            interval_secs: self.u64_or(&mut t, "interval_secs", 1, d.interval_secs),
            probe_timeout_secs: self.u64_or(&mut t, "probe_timeout_secs", 1, d.probe_timeout_secs),
            failure_threshold: self.u64_or(
                &mut t,
                "failure_threshold",
                1,
                d.failure_threshold.into(),
            ) as u32,
            deep_probe_interval_secs: self.u64_or(
                &mut t,
                "deep_probe_interval_secs",
                0,
                d.deep_probe_interval_secs,
            ),
            deep_probe_timeout_secs: self.u64_or(
                &mut t,
                "deep_probe_timeout_secs",
                1,
                d.deep_probe_timeout_secs,
            ),
            stall_secs: self.u64_or(&mut t, "stall_secs", 1, d.stall_secs),
            restart_budget: self.u64_or(&mut t, "restart_budget", 0, d.restart_budget.into())
                as u32,
            restart_window_secs: self.u64_or(
                &mut t,
                "restart_window_secs",
                1,
                d.restart_window_secs,
            ),
            state_file,
            textfile: self.opt_abs_path(&mut t, "textfile"),
            webhook_url,
            webhook_timeout_secs: self.u64_or(
                &mut t,
                "webhook_timeout_secs",
                1,
                d.webhook_timeout_secs,
            ),
            webhook_format,
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
        let d = StoragePolicy::default();
        let mode_v = self.raw(&mut t, "dir_mode").cloned();
        let dir_mode = match self.string(&mut t, "dir_mode") {
            None => d.dir_mode,
            Some(s) => match u32::from_str_radix(&s, 8) {
                Ok(m) if m <= 0o777 && s.len() >= 3 => m,
                _ => {
                    self.issue(
                        "storage.dir_mode".into(),
                        mode_v.as_ref(),
                        "must be an octal mode string such as \"0750\"",
                    );
                    d.dir_mode
                }
            },
        };
        let s = StoragePolicy {
            min_free_gib: self.u64_or(&mut t, "min_free_gib", 0, d.min_free_gib),
            backup_required: self
                .boolean(&mut t, "backup_required")
                .unwrap_or(d.backup_required),
            backup_min_free_gib: self.u64_or(
                &mut t,
                "backup_min_free_gib",
                0,
                d.backup_min_free_gib,
            ),
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
            (Some(p), _) if hostile::string_problem(p, Text::Plain).is_some() => self.issue(
                t.key("path"),
                path_v.as_ref(),
                hostile::string_problem(p, Text::Plain).unwrap_or_default(),
            ),
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
            None => Some(model::GPU_MEMORY_UTILIZATION),
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
            if let Some(problem) = hostile::served_name_problem(s) {
                let v = Value::String(s.clone());
                self.issue(t.key("served_model_name"), Some(&v), problem);
            }
        }
        let load_timeout_secs =
            self.u64_or(&mut t, "load_timeout_secs", 1, model::LOAD_TIMEOUT_SECS);
        let extra_v = self.raw(&mut t, "extra_args").cloned();
        let extra_args = self.str_list(&mut t, "extra_args").unwrap_or_default();
        for problem in vllm::check_extra_args(&extra_args) {
            self.issue(t.key("extra_args"), extra_v.as_ref(), problem);
        }
        let enabled = self.boolean(&mut t, "enabled").unwrap_or(model::ENABLED);
        let gw = self.gateway_model_keys(&mut t);
        self.finish(t);

        let gpus = gpus?;
        let tp = tp.unwrap_or(model::TENSOR_PARALLEL_SIZE);
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
            max_concurrent: gw.max_concurrent,
            aliases: gw.aliases,
        })
    }
}
