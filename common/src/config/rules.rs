//! The rules across keys and models: ports, per-GPU memory shares, served names, exposure;
//! the name predicates; what the host reserves.

use super::read::Reader;
use super::types::*;
use std::collections::BTreeMap;
use toml::Value;

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

/// Model names become unit instance names and file names.
pub fn valid_model_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

pub(super) fn valid_account_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

pub(super) fn is_loopback(host: &str) -> bool {
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

/// One GPU and the enabled models placed on it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GpuRow {
    pub index: u32,
    /// (model, its share of this GPU)
    pub models: Vec<(String, f64)>,
    /// Sum of the shares: must not exceed 1.0.
    pub share: f64,
}

/// Per-GPU sums of the enabled models' memory shares, by GPU index.
pub fn gpu_shares(cfg: &Config) -> Vec<GpuRow> {
    let mut by_gpu: BTreeMap<u32, Vec<(String, f64)>> = BTreeMap::new();
    for m in cfg.enabled_models() {
        for g in &m.gpus {
            by_gpu
                .entry(*g)
                .or_default()
                .push((m.name.clone(), m.gpu_memory_utilization));
        }
    }
    by_gpu
        .into_iter()
        .map(|(index, models)| {
            let share = models.iter().map(|(_, s)| s).sum::<f64>();
            GpuRow {
                index,
                share: (share * 1000.0).round() / 1000.0,
                models,
            }
        })
        .collect()
}

impl Reader {
    pub(super) fn cross_checks(&mut self, cfg: &Config, limits: &Limits) {
        // Paths: no system directory (or parent of one), nothing written inside a system tree,
        // no overlapping roles (super::hostile).
        let mut path_problems: Vec<super::hostile::Problem> = self
            .paths
            .iter()
            .flat_map(super::hostile::path_problems)
            .collect();
        path_problems.extend(super::hostile::overlap_problems(&self.paths));
        for (key, value, message) in path_problems {
            self.issues.push(Issue {
                key,
                value: Some(value),
                message,
                line: None,
                column: None,
            });
        }
        self.gateway_cross_checks(cfg);
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
        for g in gpu_shares(cfg) {
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
    use super::super::testing::{parse, GOOD};
    use super::*;

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
