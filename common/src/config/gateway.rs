//! `[gateway]` and the gateway's per-model keys (`max_concurrent`, `aliases`): citadel-gateway,
//! the box's one OpenAI endpoint. Read by the same [`Reader`] as every other section, so its
//! problems are reported together with all the others.

use super::read::{Reader, Tab};
use super::rules::is_loopback;
use super::types::{Config, Model};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use toml::{Table, Value};

/// The default listen address: loopback only (anything else needs `api_keys_file`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";

/// `[gateway]`: citadel-gateway's policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Gateway {
    pub enabled: bool,
    /// `IP:PORT` the gateway serves on (the socket unit's `ListenStream=` must match it).
    pub listen: SocketAddr,
    /// Client keys, one a line, optionally `name:key` (the name goes to the access log).
    pub api_keys_file: Option<PathBuf>,
    /// Largest request body accepted (413 above it).
    pub max_request_bytes: u64,
    /// Requests one model serves at once through the gateway, unless the model sets its own.
    pub max_concurrent: u32,
    /// Requests that may wait per model once `max_concurrent` are running (429 beyond it).
    pub queue_limit: u32,
    /// How long a request waits in a model's queue before a 503.
    pub queue_timeout_secs: u64,
    /// Deadline for the engine's response head, and for each gap between body chunks.
    pub request_timeout_secs: u64,
    /// Client connections open at once (keep-alive included); more wait in the listen backlog.
    pub max_connections: u32,
    /// On SIGTERM: how long in-flight requests may take to finish before the gateway exits.
    pub drain_secs: u64,
    /// One line per request to the journal.
    pub access_log: bool,
}

impl Default for Gateway {
    fn default() -> Gateway {
        Gateway {
            enabled: true,
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            api_keys_file: None,
            max_request_bytes: 16 << 20,
            max_concurrent: 64,
            queue_limit: 256,
            queue_timeout_secs: 30,
            request_timeout_secs: 600,
            max_connections: 4096,
            drain_secs: 30,
            access_log: true,
        }
    }
}

impl Gateway {
    /// A model's concurrency limit through the gateway.
    pub fn limit_of(&self, m: &Model) -> u32 {
        m.max_concurrent.unwrap_or(self.max_concurrent)
    }
}

/// What the gateway's per-model keys hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ModelKeys {
    pub max_concurrent: Option<u32>,
    pub aliases: Vec<String>,
}

/// A name a client may put in `model`: non-empty, printable, no spaces.
fn valid_route_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.chars().all(|c| c.is_ascii_graphic())
}

impl Reader {
    pub(super) fn gateway(&mut self, root: &Table) -> Gateway {
        let mut t = self.section(root, "gateway");
        let d = Gateway::default();
        let listen_v = self.raw(&mut t, "listen").cloned();
        let listen = match self.string(&mut t, "listen") {
            None => d.listen,
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(a) if a.port() != 0 => a,
                _ => {
                    self.issue(
                        t.key("listen"),
                        listen_v.as_ref(),
                        "must be IP:PORT, e.g. \"127.0.0.1:8000\" or \"[::1]:8000\" (port 1-65535)",
                    );
                    d.listen
                }
            },
        };
        let g = Gateway {
            enabled: self.boolean(&mut t, "enabled").unwrap_or(d.enabled),
            listen,
            api_keys_file: self.opt_abs_path(&mut t, "api_keys_file"),
            max_request_bytes: self
                .int(&mut t, "max_request_bytes", 1024, 1 << 30)
                .map_or(d.max_request_bytes, |i| i as u64),
            max_concurrent: self
                .int(&mut t, "max_concurrent", 1, 65535)
                .map_or(d.max_concurrent, |i| i as u32),
            queue_limit: self
                .int(&mut t, "queue_limit", 0, 65535)
                .map_or(d.queue_limit, |i| i as u32),
            queue_timeout_secs: self.u64_or(&mut t, "queue_timeout_secs", 1, d.queue_timeout_secs),
            request_timeout_secs: self.u64_or(
                &mut t,
                "request_timeout_secs",
                1,
                d.request_timeout_secs,
            ),
            max_connections: self
                .int(&mut t, "max_connections", 1, 1 << 20)
                .map_or(d.max_connections, |i| i as u32),
            drain_secs: self.u64_or(&mut t, "drain_secs", 0, d.drain_secs),
            access_log: self.boolean(&mut t, "access_log").unwrap_or(d.access_log),
        };
        self.finish(t);
        g
    }

    /// `models.NAME.max_concurrent` and `models.NAME.aliases`.
    pub(super) fn gateway_model_keys(&mut self, t: &mut Tab<'_>) -> ModelKeys {
        let max_concurrent = self.int(t, "max_concurrent", 1, 65535).map(|i| i as u32);
        let aliases_v = self.raw(t, "aliases").cloned();
        let aliases = self.str_list(t, "aliases").unwrap_or_default();
        if aliases.iter().any(|a| !valid_route_name(a)) {
            self.issue(
                t.key("aliases"),
                aliases_v.as_ref(),
                "must be a list of non-empty names without spaces or control characters",
            );
        }
        ModelKeys {
            max_concurrent,
            aliases,
        }
    }

    /// Rules across sections: one name space for served names and aliases, the listen port
    /// apart from the models' ports, and keys for a listen address beyond loopback.
    pub(super) fn gateway_cross_checks(&mut self, cfg: &Config) {
        let g = &cfg.gateway;
        let mut names: BTreeMap<&str, String> = BTreeMap::new();
        for m in cfg.enabled_models() {
            names.insert(&m.served_model_name, format!("models.{}", m.name));
        }
        for m in cfg.enabled_models() {
            for a in &m.aliases {
                if let Some(other) = names.get(a.as_str()) {
                    self.issue(
                        format!("models.{}.aliases", m.name),
                        Some(&Value::String(a.clone())),
                        format!("already names {other} (served names and aliases route requests, each must be unique)"),
                    );
                } else {
                    names.insert(a, format!("models.{}", m.name));
                }
            }
        }
        if !g.enabled {
            return;
        }
        for m in &cfg.models {
            if m.port == g.listen.port() {
                self.issue(
                    "gateway.listen".into(),
                    Some(&Value::String(g.listen.to_string())),
                    format!("uses port {} of models.{}", m.port, m.name),
                );
            }
        }
        if !is_loopback(&g.listen.ip().to_string()) && g.api_keys_file.is_none() {
            self.issue(
                "gateway.listen".into(),
                Some(&Value::String(g.listen.to_string())),
                "listens beyond loopback but gateway.api_keys_file is not set: every model would be open to the network",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError, Limits};
    use std::path::Path;

    const MODELS: &str = r#"
[models.a]
path = "a"
port = 11400
gpus = [0]
gpu_memory_utilization = 0.4
aliases = ["alpha", "gpt-4o-mini"]
max_concurrent = 4
[models.b]
path = "b"
port = 11401
gpus = [0]
gpu_memory_utilization = 0.4
"#;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse_with(s, Path::new("/c.toml"), &Limits::default())
    }

    #[test]
    fn defaults_and_per_model_keys() {
        let c = parse(MODELS).unwrap();
        assert!(c.gateway.enabled);
        assert_eq!(c.gateway.listen.to_string(), "127.0.0.1:8000");
        let a = c.model("a").unwrap();
        assert_eq!(a.aliases, ["alpha", "gpt-4o-mini"]);
        assert_eq!(c.gateway.limit_of(a), 4);
        assert_eq!(c.gateway.limit_of(c.model("b").unwrap()), 64);
    }

    #[test]
    fn every_gateway_problem_at_once() {
        let bad = format!(
            "{MODELS}aliases = [\"a\", \"has space\"]\nmax_concurrent = 0\n[gateway]\nlisten = \"0.0.0.0:11400\"\nqueue_limit = -1\nbogus = 1\n"
        );
        let e = parse(&bad).unwrap_err();
        let t = e.to_string();
        for want in [
            "models.b.aliases = [\"a\", \"has space\"]: must be a list of non-empty names",
            "models.b.max_concurrent = 0: must be between 1 and 65535",
            "models.b.aliases = \"a\": already names models.a",
            "gateway.listen = \"0.0.0.0:11400\": uses port 11400 of models.a",
            "gateway.listen = \"0.0.0.0:11400\": listens beyond loopback but gateway.api_keys_file is not set",
            "gateway.queue_limit = -1: must be between 0 and 65535",
            "gateway.bogus = 1: unknown key",
        ] {
            assert!(t.contains(want), "missing {want:?} in:\n{t}");
        }
        assert_eq!(e.issues.len(), 7, "{t}");
    }

    #[test]
    fn listen_must_be_an_address_with_a_port() {
        for v in ["localhost:8000", "127.0.0.1", "127.0.0.1:0", ""] {
            let e = parse(&format!("[gateway]\nlisten = {v:?}\n")).unwrap_err();
            assert!(e.to_string().contains("gateway.listen"), "{v}: {e}");
        }
        let c = parse("[gateway]\nlisten = \"[::1]:9000\"\napi_keys_file = \"/etc/k\"\n").unwrap();
        assert_eq!(c.gateway.listen.port(), 9000);
        let c = parse("[gateway]\nlisten = \"10.0.0.1:8000\"\napi_keys_file = \"/etc/k\"\n");
        assert!(c.is_ok(), "{c:?}");
    }
}
