//! `export kubernetes`: per enabled model a Deployment, a Service and a PodDisruptionBudget.
//!
//! | Citadel | Kubernetes | why |
//! |---|---|---|
//! | the argv start-model builds ([`launch::argv`]) | `containers[0].command` | the same `vllm serve` line, with `--host 0.0.0.0` (the Service and the kubelet's probes reach the pod IP) |
//! | the environment start-model builds ([`launch::env`]) | `containers[0].env` | the same clean list, less `CUDA_VISIBLE_DEVICES` (the device plugin chooses the GPUs) |
//! | `engine.api_key_file` | `VLLM_API_KEY` from Secret `citadel-api-key`, key `api-key` | never inline; required, because the pod binds a non-loopback address |
//! | `models.X.gpus` | `resources.limits["nvidia.com/gpu"]` = their count | |
//! | `models.X.port` | `containerPort` and the Service's port | |
//! | `models.X.load_timeout_secs` | `startupProbe`: (failureThreshold - 1) x periodSeconds >= it | a slow load is never killed, a stuck one is |
//! | `[monitor]` interval, timeout, failure_threshold | `readinessProbe` on `/health` | out of the Service while it does not answer |
//! | `[monitor] stall_secs` | `livenessProbe` on `/health`, failureThreshold x periodSeconds >= it | see [`liveness`] |
//! | `engine.drain_secs` + `engine.stop_grace_secs` | `terminationGracePeriodSeconds` | SIGTERM drains in-flight requests (`--shutdown-timeout`), then the grace |
//! | a model is not stopped behind the operator's back | PodDisruptionBudget `minAvailable: 1` | |
//! | `paths.models_link` | PVC `citadel-models`, read-only, mounted there | the model path in the argv stays valid |
//! | `paths.cache_dir` | an `emptyDir` mounted there | `HOME`, `VLLM_CACHE_ROOT`, `HF_HOME` stay writable |

use super::notes::{global_notes, model_notes};
use super::{ceil_div, int32, k8s_names, Rendered, IMAGE_REPOSITORY, IMAGE_TAG, MODELS_PVC};
use super::{SECRET_KEY, SECRET_NAME};
use citadel_common::config::{Config, Model};
use citadel_common::{launch, Failure};
use serde_json::{json, Value};

/// The startup probe's period: short enough that a loaded model is seen serving within seconds.
pub const STARTUP_PERIOD_SECS: u64 = 10;
/// How much longer than the load the Deployment may take to progress (scheduling, image pull).
pub const PROGRESS_MARGIN_SECS: u64 = 600;

/// Everything `export kubernetes` renders.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// Notes about the whole config.
    pub notes: Vec<String>,
    pub models: Vec<ModelExport>,
}

/// One model's objects.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelExport {
    pub model: String,
    pub name: String,
    /// Notes about this model alone.
    pub notes: Vec<String>,
    pub docs: Vec<Value>,
}

impl Export {
    /// Everything in one stream (stdout).
    pub fn stream(&self) -> Rendered {
        let mut header = self.notes.clone();
        let mut docs = vec![];
        for m in &self.models {
            header.extend(m.notes.iter().cloned());
            docs.extend(m.docs.iter().cloned());
        }
        Rendered {
            file: String::new(),
            header,
            docs,
        }
    }

    /// One file per model (`--out DIR`).
    pub fn files(&self) -> Vec<Rendered> {
        self.models
            .iter()
            .map(|m| {
                let mut header = self.notes.clone();
                header.extend(m.notes.iter().cloned());
                Rendered {
                    file: format!("{}.yaml", m.name),
                    header,
                    docs: m.docs.clone(),
                }
            })
            .collect()
    }
}

/// Render every enabled model.
pub fn render(cfg: &Config, namespace: Option<&str>) -> Result<Export, Failure> {
    let names = k8s_names(cfg)?;
    let models = cfg
        .enabled_models()
        .map(|m| {
            let name = names[&m.name].clone();
            ModelExport {
                model: m.name.clone(),
                notes: model_notes(cfg, m),
                docs: vec![
                    deployment(cfg, m, &name, namespace),
                    service(m, &name, namespace),
                    disruption_budget(m, &name, namespace),
                ],
                name,
            }
        })
        .collect();
    Ok(Export {
        notes: global_notes(cfg),
        models,
    })
}

/// The config as a pod sees it: the engine binds every address of the pod.
pub fn pod_config(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    c.engine.host = "0.0.0.0".into();
    c
}

/// The engine's argv in the pod: start-model's, with `--host 0.0.0.0`.
pub fn pod_argv(cfg: &Config, m: &Model) -> Vec<String> {
    launch::argv(&pod_config(cfg), m)
}

/// The engine's plain environment in the pod: start-model's, less `CUDA_VISIBLE_DEVICES` (the
/// NVIDIA device plugin exposes the allocated GPUs, numbered from 0) and without the key.
pub fn pod_env(cfg: &Config, m: &Model) -> Vec<(String, String)> {
    launch::env(cfg, m, None)
        .into_iter()
        .filter(|(k, _)| k != "CUDA_VISIBLE_DEVICES")
        .collect()
}

/// `VLLM_API_KEY` from the Secret.
pub fn api_key_env() -> Value {
    json!({
        "name": "VLLM_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": SECRET_KEY, "optional": false}}
    })
}

/// The startup probe covers the load: the kubelet kills the container after `failureThreshold`
/// failures in a row, the first at 0 s, so `(failureThreshold - 1) x periodSeconds` must reach
/// `load_timeout_secs`.
pub fn startup(cfg: &Config, m: &Model) -> Value {
    let period = STARTUP_PERIOD_SECS.min(m.load_timeout_secs.max(1));
    json!({
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": int32(period),
        "timeoutSeconds": int32(cfg.monitor.probe_timeout_secs.max(1)),
        "failureThreshold": int32(ceil_div(m.load_timeout_secs, period) + 1),
        "successThreshold": 1,
    })
}

/// Ready = `/health` answers, polled like the monitor polls it.
pub fn readiness(cfg: &Config) -> Value {
    json!({
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": int32(cfg.monitor.interval_secs.max(1)),
        "timeoutSeconds": int32(cfg.monitor.probe_timeout_secs.max(1)),
        "failureThreshold": int32(u64::from(cfg.monitor.failure_threshold.max(1))),
        "successThreshold": 1,
    })
}

/// The liveness probe never kills a busy engine: it is `/health`, which vLLM's API server
/// answers from its event loop without waiting for the engine (a busy engine answers 200; only
/// a dead engine core answers 503), and it restarts the container only after `/health` has
/// failed in a row for `[monitor] stall_secs`: the time Citadel's monitor gives a frozen
/// engine before it calls it hung. An exec probe running the monitor's deep probe would need
/// Citadel inside the vLLM image; what `/health` cannot see (an engine hung with `/health`
/// 200) is listed in the output's header.
pub fn liveness(cfg: &Config) -> Value {
    let period = cfg.monitor.interval_secs.max(1);
    let threshold =
        ceil_div(cfg.monitor.stall_secs, period).max(u64::from(cfg.monitor.failure_threshold));
    json!({
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": int32(period),
        "timeoutSeconds": int32(cfg.monitor.probe_timeout_secs.max(1)),
        "failureThreshold": int32(threshold.max(1)),
        "successThreshold": 1,
    })
}

/// SIGTERM, then the drain (`--shutdown-timeout`), then the grace before SIGKILL.
pub fn termination_grace(cfg: &Config) -> i64 {
    u64::from(cfg.engine.drain_secs).saturating_add(cfg.engine.stop_grace_secs) as i64
}

fn labels(name: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "citadel-model",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/part-of": "citadel",
        "app.kubernetes.io/managed-by": "citadel-service",
    })
}

fn selector(name: &str) -> Value {
    json!({
        "app.kubernetes.io/part-of": "citadel",
        "app.kubernetes.io/instance": name,
    })
}

fn metadata(m: &Model, name: &str, namespace: Option<&str>) -> Value {
    let mut md = json!({
        "name": name,
        "labels": labels(name),
        "annotations": {"citadel/model": m.name},
    });
    if let Some(ns) = namespace {
        md["namespace"] = json!(ns);
    }
    md
}

/// The model's Deployment: one replica, `Recreate` (a box has no spare GPUs for a surge, and
/// Citadel restarts stop-then-start too).
pub fn deployment(cfg: &Config, m: &Model, name: &str, namespace: Option<&str>) -> Value {
    let mut env: Vec<Value> = pod_env(cfg, m)
        .into_iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    env.push(api_key_env());
    let gpus = m.gpus.len().to_string();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(m, name, namespace),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector(name)},
            "strategy": {"type": "Recreate"},
            "progressDeadlineSeconds": int32(m.load_timeout_secs.saturating_add(PROGRESS_MARGIN_SECS)),
            "template": {
                "metadata": {"labels": labels(name), "annotations": {"citadel/model": m.name}},
                "spec": {
                    "terminationGracePeriodSeconds": termination_grace(cfg),
                    "enableServiceLinks": false,
                    "automountServiceAccountToken": false,
                    "containers": [{
                        "name": "vllm",
                        "image": format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}"),
                        "command": pod_argv(cfg, m),
                        "env": env,
                        "ports": [{"name": "http", "containerPort": m.port, "protocol": "TCP"}],
                        "resources": {
                            "limits": {"nvidia.com/gpu": gpus},
                            "requests": {"nvidia.com/gpu": gpus},
                        },
                        "startupProbe": startup(cfg, m),
                        "readinessProbe": readiness(cfg),
                        "livenessProbe": liveness(cfg),
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "models", "mountPath": cfg.paths.models_link.display().to_string(), "readOnly": true},
                            {"name": "cache", "mountPath": cfg.paths.cache_dir.display().to_string()},
                            {"name": "shm", "mountPath": "/dev/shm"},
                        ],
                    }],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": MODELS_PVC, "readOnly": true}},
                        {"name": "cache", "emptyDir": {}},
                        {"name": "shm", "emptyDir": {"medium": "Memory"}},
                    ],
                },
            },
        },
    })
}

/// The model's Service, on its port.
pub fn service(m: &Model, name: &str, namespace: Option<&str>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(m, name, namespace),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(name),
            "ports": [{"name": "http", "port": m.port, "targetPort": "http", "protocol": "TCP"}],
        },
    })
}

/// Evictions (node drains, the autoscaler) may not take a serving model: it would throw away
/// up to `load_timeout_secs` of loading. A pod that is not serving (loading or broken) does not
/// block a drain (`unhealthyPodEvictionPolicy: AlwaysAllow`).
pub fn disruption_budget(m: &Model, name: &str, namespace: Option<&str>) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(m, name, namespace),
        "spec": {
            "minAvailable": 1,
            "selector": {"matchLabels": selector(name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    })
}

#[cfg(test)]
mod tests;
