//! The plan of a validated config: one row per model and one per GPU. Printed by
//! `citadel-service check`. The per-GPU sums are the validation rule's
//! ([`crate::config::rules::gpu_shares`]); the plan only shows them.

pub use crate::config::rules::{gpu_shares, GpuRow};
use crate::config::Config;
use crate::output::table;
use serde::Serialize;

/// One model as it will run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRow {
    pub name: String,
    pub enabled: bool,
    pub unit: String,
    pub port: u16,
    pub gpus: Vec<u32>,
    pub gpu_memory_utilization: f64,
    pub tensor_parallel_size: u32,
    pub max_model_len: Option<u32>,
    pub served_model_name: String,
    pub path: String,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub config: String,
    pub models: Vec<ModelRow>,
    pub gpus: Vec<GpuRow>,
}

impl Plan {
    pub fn of(cfg: &Config) -> Plan {
        Plan {
            config: cfg.file.display().to_string(),
            models: cfg
                .models
                .iter()
                .map(|m| ModelRow {
                    name: m.name.clone(),
                    enabled: m.enabled,
                    unit: m.unit(),
                    port: m.port,
                    gpus: m.gpus.clone(),
                    gpu_memory_utilization: m.gpu_memory_utilization,
                    tensor_parallel_size: m.tensor_parallel_size,
                    max_model_len: m.max_model_len,
                    served_model_name: m.served_model_name.clone(),
                    path: m.resolved_path(&cfg.paths).display().to_string(),
                })
                .collect(),
            gpus: gpu_shares(cfg),
        }
    }

    /// Human-readable tables.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "config: {}\n\n",
            crate::text::escape_controls(&self.config)
        ));
        let mut rows = vec![vec![
            "MODEL".to_string(),
            "ENABLED".into(),
            "PORT".into(),
            "GPUS".into(),
            "MEM".into(),
            "TP".into(),
            "MAX_LEN".into(),
            "PATH".into(),
        ]];
        for m in &self.models {
            rows.push(vec![
                m.name.clone(),
                if m.enabled { "yes" } else { "no" }.into(),
                m.port.to_string(),
                join(&m.gpus),
                format!("{:.2}", m.gpu_memory_utilization),
                m.tensor_parallel_size.to_string(),
                m.max_model_len.map_or("auto".into(), |l| l.to_string()),
                m.path.clone(),
            ]);
        }
        s.push_str(&table(&rows));
        s.push('\n');
        let mut rows = vec![vec!["GPU".to_string(), "SHARE".into(), "MODELS".into()]];
        for g in &self.gpus {
            rows.push(vec![
                g.index.to_string(),
                format!("{:.2}", g.share),
                g.models
                    .iter()
                    .map(|(n, v)| format!("{n} ({v:.2})"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
        s.push_str(&table(&rows));
        s
    }
}

fn join(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_summed_per_gpu_over_enabled_models() {
        let c = crate::config::testing::config(
            r#"
[models.a]
path = "a"
port = 11400
gpus = [0, 1]
tensor_parallel_size = 2
gpu_memory_utilization = 0.4
[models.b]
path = "b"
port = 11401
gpus = [1]
gpu_memory_utilization = 0.5
[models.c]
path = "c"
port = 11402
gpus = [1]
gpu_memory_utilization = 0.9
enabled = false
"#,
        );
        let p = Plan::of(&c);
        assert_eq!(p.gpus.len(), 2);
        assert_eq!(p.gpus[0].share, 0.4);
        assert_eq!(p.gpus[1].share, 0.9);
        assert_eq!(p.gpus[1].models.len(), 2);
        let text = p.render();
        assert!(text.contains("a (0.40), b (0.50)"), "{text}");
        assert!(text.contains("c      no"), "{text}");
    }
}
