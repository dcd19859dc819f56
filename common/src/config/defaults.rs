//! The defaults: one `Default` per section, the one place the documented values are written.

use super::types::*;
use std::path::{Path, PathBuf};
use toml::Value;

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

impl Default for Service {
    fn default() -> Service {
        Service {
            user: "citadel".into(),
            group: "citadel".into(),
        }
    }
}

impl Default for Engine {
    fn default() -> Engine {
        Engine {
            command: vec!["/opt/citadel/venv/bin/vllm".into(), "serve".into()],
            host: "127.0.0.1".into(),
            api_key_file: None,
            env: Default::default(),
            drain_secs: 30,
            stop_grace_secs: 60,
            port_wait_secs: 30,
            gpu_release_wait_secs: 60,
        }
    }
}

impl Default for GpuPolicy {
    fn default() -> GpuPolicy {
        GpuPolicy {
            required: true,
            persistence_mode: None,
            power_limit_watts: None,
            compute_mode: None,
            app_memory_clock_mhz: None,
            app_graphics_clock_mhz: None,
            locked_graphics_clock_min_mhz: None,
            locked_graphics_clock_max_mhz: None,
            min_driver_version: None,
            min_cuda_version: None,
            temperature_margin_c: 5,
            mig: false,
        }
    }
}

impl MonitorPolicy {
    /// The defaults for a box whose runtime directory is `paths.runtime_dir` (the state file
    /// lives there).
    pub fn default_for(paths: &Paths) -> MonitorPolicy {
        MonitorPolicy {
            interval_secs: 10,
            probe_timeout_secs: 5,
            failure_threshold: 3,
            deep_probe_interval_secs: 60,
            deep_probe_timeout_secs: 30,
            stall_secs: 120,
            restart_budget: 3,
            restart_window_secs: 3600,
            state_file: crate::paths::health_state_file(&paths.runtime_dir),
            textfile: None,
            webhook_url: None,
            webhook_timeout_secs: 5,
            webhook_format: crate::alert::Format::Json,
        }
    }
}

impl Default for MonitorPolicy {
    fn default() -> MonitorPolicy {
        MonitorPolicy::default_for(&Paths::default())
    }
}

impl Default for StoragePolicy {
    fn default() -> StoragePolicy {
        StoragePolicy {
            min_free_gib: 20,
            backup_required: false,
            backup_min_free_gib: 0,
            dir_mode: 0o750,
        }
    }
}

/// Per-model defaults (a model has required keys, so there is no `Default` for [`Model`]).
pub mod model {
    pub const TENSOR_PARALLEL_SIZE: u32 = 1;
    pub const GPU_MEMORY_UTILIZATION: f64 = 0.9;
    pub const LOAD_TIMEOUT_SECS: u64 = 1800;
    pub const ENABLED: bool = true;
}

#[cfg(test)]
mod tests {
    use super::super::testing::{parse, GOOD};
    use super::*;

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
    fn sections_left_out_read_as_their_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.service, Service::default());
        assert_eq!(
            c.engine,
            Engine {
                command: vec!["/usr/bin/vllm".into(), "serve".into()],
                ..Engine::default()
            }
        );
        assert_eq!(c.gpu, GpuPolicy::default());
        assert_eq!(c.monitor, MonitorPolicy::default());
        assert_eq!(c.storage, StoragePolicy::default());
        let moved = Paths::under(Path::new("/tmp/x"));
        let c = parse(&format!("{}{GOOD}", moved.to_toml())).unwrap();
        assert_eq!(c.monitor, MonitorPolicy::default_for(&moved));
    }
}
