//! Service names on the command line and the units they stand for.
//!
//! `all` -> `citadel-ai.target`, `storage` -> `citadel-storage.service`, `gpu` ->
//! `citadel-gpu.service`, `models` -> `citadel-models.target`, `monitor` ->
//! `citadel-monitor.service`, `gateway` -> `citadel-gateway.service`, and a model name from the config -> `citadel-model@NAME.service`.
//! `all` and `models` expand to the units behind them (the enabled models' instances) for
//! starting, waiting and reporting.

use citadel_common::config::Config;
use citadel_common::{paths, Failure};

/// The fixed service names, in the order `--help` lists them.
pub const FIXED_NAMES: [&str; 6] = ["all", "storage", "gpu", "models", "monitor", "gateway"];

/// One service name, resolved against the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    All,
    Storage,
    Gpu,
    Models,
    Monitor,
    Gateway,
    Model(String),
}

/// What kind of unit a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Target,
    Storage,
    Gpu,
    Model,
    Monitor,
    Gateway,
}

/// One unit a command acts on or reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The service name an operator types (`storage`, `phi3`, `all` for the target).
    pub service: String,
    pub unit: String,
    pub kind: Kind,
    /// Models: `enabled` in the config. Everything else: true.
    pub enabled: bool,
    /// Models: the port they serve on; the gateway: its listen port.
    pub port: Option<u16>,
    /// The gateway: its listen address (`gateway.listen`).
    pub listen: Option<String>,
}

impl Service {
    /// Resolve a name; an unknown one is a usage error (exit 2) listing the valid names.
    pub fn parse(name: &str, cfg: &Config) -> Result<Service, Failure> {
        Ok(match name {
            "all" => Service::All,
            "storage" => Service::Storage,
            "gpu" => Service::Gpu,
            "models" => Service::Models,
            "monitor" => Service::Monitor,
            "gateway" => Service::Gateway,
            n if cfg.model(n).is_some() => Service::Model(n.to_string()),
            n => {
                return Err(Failure::usage(format!(
                    "unknown service {n:?}; valid names: {}",
                    valid_names(cfg).join(", ")
                )))
            }
        })
    }

    /// The one unit this name maps to.
    pub fn unit(&self) -> String {
        match self {
            Service::All => paths::TARGET_AI.to_string(),
            Service::Storage => paths::UNIT_STORAGE.to_string(),
            Service::Gpu => paths::UNIT_GPU.to_string(),
            Service::Models => paths::TARGET_MODELS.to_string(),
            Service::Monitor => paths::UNIT_MONITOR.to_string(),
            Service::Gateway => paths::UNIT_GATEWAY.to_string(),
            Service::Model(n) => paths::model_unit(n),
        }
    }

    /// The units behind this name, in start order: targets first, then storage, gpu, every
    /// model of the config (disabled ones marked), monitor.
    pub fn members(&self, cfg: &Config) -> Vec<Member> {
        let fixed = |service: &str, unit: &str, kind| Member {
            service: service.to_string(),
            unit: unit.to_string(),
            kind,
            enabled: true,
            port: None,
            listen: None,
        };
        let gateway = || Member {
            service: "gateway".into(),
            unit: paths::UNIT_GATEWAY.into(),
            kind: Kind::Gateway,
            enabled: cfg.gateway.enabled,
            port: Some(cfg.gateway.listen.port()),
            listen: Some(cfg.gateway.listen.to_string()),
        };
        let models = || {
            cfg.models.iter().map(|m| Member {
                service: m.name.clone(),
                unit: m.unit(),
                kind: Kind::Model,
                enabled: m.enabled,
                // 0: a model read from a broken config without a valid port.
                port: (m.port != 0).then_some(m.port),
                listen: None,
            })
        };
        match self {
            Service::All => {
                let mut v = vec![
                    fixed("all", paths::TARGET_AI, Kind::Target),
                    fixed("models", paths::TARGET_MODELS, Kind::Target),
                    fixed("storage", paths::UNIT_STORAGE, Kind::Storage),
                    fixed("gpu", paths::UNIT_GPU, Kind::Gpu),
                ];
                v.extend(models());
                v.push(fixed("monitor", paths::UNIT_MONITOR, Kind::Monitor));
                v.push(gateway());
                v
            }
            Service::Storage => vec![fixed("storage", paths::UNIT_STORAGE, Kind::Storage)],
            Service::Gpu => vec![fixed("gpu", paths::UNIT_GPU, Kind::Gpu)],
            Service::Models => {
                let mut v = vec![fixed("models", paths::TARGET_MODELS, Kind::Target)];
                v.extend(models());
                v
            }
            Service::Monitor => vec![fixed("monitor", paths::UNIT_MONITOR, Kind::Monitor)],
            Service::Gateway => vec![gateway()],
            Service::Model(n) => models().filter(|m| &m.service == n).collect(),
        }
    }

    /// The members to start: everything but the models disabled in the config (a model named
    /// explicitly is started even when disabled).
    pub fn to_start(&self, cfg: &Config) -> Vec<Member> {
        let explicit = matches!(self, Service::Model(_));
        self.members(cfg)
            .into_iter()
            .filter(|m| m.enabled || explicit)
            .collect()
    }
}

/// Every valid service name: the fixed ones, then the config's models (sorted).
pub fn valid_names(cfg: &Config) -> Vec<String> {
    FIXED_NAMES
        .iter()
        .map(|s| s.to_string())
        .chain(cfg.models.iter().map(|m| m.name.clone()))
        .collect()
}

/// The units `enable` turns on so the box comes up at boot, and the per-model links it removes.
/// Models are not enabled one by one: citadel-generator makes the models target want exactly
/// the enabled models of the config at boot and on every daemon-reload. Links that older
/// versions made with `systemctl enable citadel-model@NAME` would pull a model whatever the
/// config says, so `enable` and `disable` remove them (every model of the config, plus
/// `legacy`: the instances found linked in /etc).
pub fn boot_units(cfg: &Config, legacy: &[String]) -> (Vec<String>, Vec<String>) {
    let mut on = vec![
        paths::TARGET_AI.to_string(),
        paths::TARGET_MODELS.to_string(),
        paths::UNIT_STORAGE.to_string(),
        paths::UNIT_GPU.to_string(),
        paths::UNIT_MONITOR.to_string(),
    ];
    let mut off: Vec<String> = cfg.models.iter().map(|m| m.unit()).collect();
    for u in legacy {
        if !off.contains(u) {
            off.push(u.clone());
        }
    }
    let gateway = [
        paths::SOCKET_GATEWAY.to_string(),
        paths::UNIT_GATEWAY.to_string(),
    ];
    if cfg.gateway.enabled {
        on.extend(gateway);
    } else {
        off.extend(gateway);
    }
    (on, off)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use citadel_common::config::testing::{config, PHI3_CODER, VISION_DISABLED};

    /// phi3 and coder, and vision disabled; named `test.toml` (the messages the tests here, in
    /// control and in deploy look for name the file).
    pub(crate) fn cfg() -> Config {
        let mut c = config(&format!("{PHI3_CODER}{VISION_DISABLED}"));
        c.file = "test.toml".into();
        c
    }

    #[test]
    fn every_name_maps_to_its_unit() {
        let c = cfg();
        let unit = |n| Service::parse(n, &c).unwrap().unit();
        assert_eq!(unit("all"), "citadel-ai.target");
        assert_eq!(unit("storage"), "citadel-storage.service");
        assert_eq!(unit("gpu"), "citadel-gpu.service");
        assert_eq!(unit("models"), "citadel-models.target");
        assert_eq!(unit("monitor"), "citadel-monitor.service");
        assert_eq!(unit("phi3"), "citadel-model@phi3.service");
        assert_eq!(unit("vision"), "citadel-model@vision.service");
    }

    #[test]
    fn unknown_names_are_usage_errors_listing_the_valid_ones() {
        let e = Service::parse("mixtral", &cfg()).unwrap_err();
        assert_eq!(e.exit(), citadel_common::Exit::Usage);
        assert_eq!(
            e.message,
            "unknown service \"mixtral\"; valid names: all, storage, gpu, models, monitor, gateway, coder, phi3, vision"
        );
        assert_eq!(e.message.lines().count(), 1);
    }

    #[test]
    fn all_and_models_expand_to_the_enabled_instances() {
        let c = cfg();
        let units =
            |s: Service| -> Vec<String> { s.to_start(&c).into_iter().map(|m| m.unit).collect() };
        assert_eq!(
            units(Service::All),
            [
                "citadel-ai.target",
                "citadel-models.target",
                "citadel-storage.service",
                "citadel-gpu.service",
                "citadel-model@coder.service",
                "citadel-model@phi3.service",
                "citadel-monitor.service",
                "citadel-gateway.service"
            ]
        );
        assert_eq!(
            units(Service::Models),
            [
                "citadel-models.target",
                "citadel-model@coder.service",
                "citadel-model@phi3.service"
            ]
        );
        // A disabled model named explicitly is started; `all` reports it, marked disabled.
        assert_eq!(
            units(Service::Model("vision".into())),
            ["citadel-model@vision.service"]
        );
        let all = Service::All.members(&c);
        assert!(all.iter().any(|m| m.service == "vision" && !m.enabled));
    }

    #[test]
    fn boot_units_follow_the_config() {
        let legacy = ["citadel-model@old.service".to_string()];
        let (on, off) = boot_units(&cfg(), &legacy);
        assert!(on.contains(&"citadel-ai.target".to_string()));
        assert!(
            !on.iter().any(|u| u.starts_with("citadel-model@")),
            "{on:?}"
        );
        assert_eq!(
            off,
            [
                "citadel-model@coder.service",
                "citadel-model@phi3.service",
                "citadel-model@vision.service",
                "citadel-model@old.service"
            ]
        );
    }
}
