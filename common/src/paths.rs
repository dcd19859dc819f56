//! Install paths, system tools and unit names. No other file spells these out.

use std::path::Path;

/// The config file every binary reads unless `--config` / `CITADEL_CONFIG` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/citadel/citadel.toml";
/// Where the package installs the helper binaries.
pub const LIBEXEC_DIR: &str = "/usr/lib/citadel";

/// System tools, by absolute path (never looked up in `$PATH`).
pub const SYSTEMCTL: &str = "/usr/bin/systemctl";
pub const JOURNALCTL: &str = "/usr/bin/journalctl";
/// The system bus systemd answers on (D-Bus address).
pub const DBUS_SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";
/// Exists only while systemd is PID 1 (sd_booted(3)).
pub const SYSTEMD_RUN_DIR: &str = "/run/systemd/system";

/// Where the package installs its unit files (Debian 12: /lib is /usr/lib).
pub const SYSTEM_UNIT_DIR: &str = "/lib/systemd/system";
/// Where `systemctl enable` puts its links.
pub const ETC_UNIT_DIR: &str = "/etc/systemd/system";
/// The kernel log: where a systemd generator logs (generators have no journal).
pub const KMSG: &str = "/dev/kmsg";

/// Units.
pub const TARGET_AI: &str = "citadel-ai.target";
pub const TARGET_MODELS: &str = "citadel-models.target";
pub const UNIT_STORAGE: &str = "citadel-storage.service";
pub const UNIT_GPU: &str = "citadel-gpu.service";
pub const UNIT_MONITOR: &str = "citadel-monitor.service";
pub const UNIT_GATEWAY: &str = "citadel-gateway.service";
/// The gateway's listening socket (socket activation: restarts refuse no connection).
pub const SOCKET_GATEWAY: &str = "citadel-gateway.socket";

/// The template every model unit is an instance of.
pub const MODEL_TEMPLATE: &str = "citadel-model@.service";

/// The template instance that runs one model.
pub fn model_unit(name: &str) -> String {
    format!("citadel-model@{name}.service")
}

/// The template of a model's surge instance during `citadel-service rollout` (its new version
/// on a spare port, before the switch).
pub const SURGE_TEMPLATE: &str = "citadel-model-next@.service";

/// The surge instance of model `name`.
pub fn surge_unit(name: &str) -> String {
    format!("citadel-model-next@{name}.service")
}

/// The model name of a `citadel-model@NAME.service` or `citadel-model-next@NAME.service` unit.
pub fn model_of_any_unit(unit: &str) -> Option<&str> {
    model_of_unit(unit).or_else(|| {
        unit.strip_prefix("citadel-model-next@")?
            .strip_suffix(".service")
    })
}

/// The model name of a `citadel-model@NAME.service` unit, if it is one.
pub fn model_of_unit(unit: &str) -> Option<&str> {
    unit.strip_prefix("citadel-model@")?
        .strip_suffix(".service")
}

/// Files under the runtime dir.
pub fn health_state_file(runtime_dir: &Path) -> std::path::PathBuf {
    runtime_dir.join("health.json")
}

/// The lock taken while a model initialises on a GPU (see start-model).
pub fn gpu_lock_file(runtime_dir: &Path, gpu: u32) -> std::path::PathBuf {
    runtime_dir.join("locks").join(format!("gpu{gpu}.lock"))
}

/// Name of the systemd credential (`LoadCredential=`) that holds the API key.
pub const API_KEY_CREDENTIAL: &str = "api-key";
/// The file the shipped units load the API key credential from (`LoadCredential=api-key:...`);
/// an `engine.api_key_file` elsewhere gets a generator drop-in that loads that file instead.
pub const API_KEY_FILE: &str = "/etc/citadel/api-key";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_units_round_trip() {
        assert_eq!(model_unit("phi3"), "citadel-model@phi3.service");
        assert_eq!(model_of_unit("citadel-model@phi3.service"), Some("phi3"));
        assert_eq!(model_of_unit("citadel-gpu.service"), None);
        assert_eq!(surge_unit("phi3"), "citadel-model-next@phi3.service");
        assert_eq!(model_of_unit(&surge_unit("phi3")), None);
        assert_eq!(model_of_any_unit(&surge_unit("phi3")), Some("phi3"));
        assert_eq!(model_of_any_unit(&model_unit("phi3")), Some("phi3"));
    }
}
