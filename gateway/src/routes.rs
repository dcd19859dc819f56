//! The routing table: every name a client may put in `model` (served name or alias) to the
//! engine that serves it, with that model's concurrency limit and queue. Built from the
//! config; replaced whole on SIGHUP.

use crate::limit::Limiter;
use crate::upstream::Target;
use citadel_common::config::Config;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One model's engine, as the gateway reaches it.
#[derive(Debug)]
pub struct Backend {
    /// The config name (`[models.NAME]`): metrics and log label, monitor state key.
    pub name: String,
    /// What the engine itself accepts in `model`.
    pub served: String,
    pub aliases: Vec<String>,
    /// Where its engine listens.
    pub target: Arc<Target>,
    pub limiter: Limiter,
}

impl Backend {
    /// The engine, or the same host on `port` (a rollout's surge instance).
    pub fn target_on(&self, port: Option<u16>) -> Arc<Target> {
        match port {
            Some(p) => Arc::new(self.target.on(p)),
            None => Arc::clone(&self.target),
        }
    }
}

/// Name -> backend, plus what a 404 lists.
#[derive(Debug)]
pub struct Routes {
    by_name: BTreeMap<String, Arc<Backend>>,
    pub backends: Vec<Arc<Backend>>,
}

/// The engine's address as the gateway dials it: loopback when the engine listens on every
/// address (the gateway runs on the same box).
fn dial_host(host: &str) -> String {
    match host {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1".into(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_string(),
    }
}

impl Routes {
    /// The enabled models of `cfg`. `old` hands over the limiters of models whose limit did
    /// not change, so a reload never lets more requests through than the limit.
    pub fn build(cfg: &Config, old: Option<&Routes>) -> Routes {
        let g = &cfg.gateway;
        let host = dial_host(&cfg.engine.host);
        let mut by_name = BTreeMap::new();
        let mut backends = Vec::new();
        for m in cfg.enabled_models() {
            let limit = g.limit_of(m);
            let limiter = old
                .and_then(|o| o.backends.iter().find(|b| b.name == m.name))
                .and_then(|b| b.limiter.reuse(limit, g.queue_limit))
                .unwrap_or_else(|| {
                    Limiter::new(
                        limit,
                        g.queue_limit,
                        Duration::from_secs(g.queue_timeout_secs),
                    )
                });
            let b = Arc::new(Backend {
                name: m.name.clone(),
                served: m.served_model_name.clone(),
                aliases: m.aliases.clone(),
                target: Arc::new(Target::new(&host, m.port)),
                limiter,
            });
            by_name.insert(m.served_model_name.clone(), Arc::clone(&b));
            for a in &m.aliases {
                by_name.insert(a.clone(), Arc::clone(&b));
            }
            backends.push(b);
        }
        Routes { by_name, backends }
    }

    pub fn get(&self, model: &str) -> Option<&Arc<Backend>> {
        self.by_name.get(model)
    }

    /// Every routable name, sorted (the 404 lists them).
    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn served_names_and_aliases_route_disabled_models_do_not() {
        let cfg = Config::parse_with(
            r#"
[engine]
host = "0.0.0.0"
api_key_file = "/etc/citadel/api-key"
[models.a]
path = "a"
port = 11400
gpus = [0]
gpu_memory_utilization = 0.4
served_model_name = "org/a-7b"
aliases = ["a", "gpt-4o-mini"]
max_concurrent = 2
[models.off]
path = "off"
port = 11401
gpus = [0]
gpu_memory_utilization = 0.4
enabled = false
"#,
            Path::new("/c.toml"),
            &Default::default(),
        )
        .unwrap();
        let r = Routes::build(&cfg, None);
        assert_eq!(r.names(), ["a", "gpt-4o-mini", "org/a-7b"]);
        let b = r.get("gpt-4o-mini").unwrap();
        assert_eq!(b.name, "a");
        assert_eq!(b.served, "org/a-7b");
        assert_eq!(b.target.base(), "http://127.0.0.1:11400");
        assert!(Arc::ptr_eq(&b.target_on(None), &b.target));
        assert_eq!(b.target_on(Some(11450)).base(), "http://127.0.0.1:11450");
        assert!(r.get("off").is_none());
        assert_eq!(b.limiter.limit(), 2);
        let again = Routes::build(&cfg, Some(&r));
        assert!(again.get("a").unwrap().limiter.shares_with(&b.limiter));
    }

    #[test]
    fn dial_hosts() {
        assert_eq!(dial_host("::1"), "[::1]");
        assert_eq!(dial_host("10.0.0.2"), "10.0.0.2");
        assert_eq!(dial_host("::"), "127.0.0.1");
    }
}
