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
mod tests {
    use super::*;
    use citadel_common::config::Limits;
    use std::path::Path;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            r#"
[engine]
command = ["/opt/citadel/venv/bin/vllm", "serve"]
drain_secs = 20
stop_grace_secs = 45
[engine.env]
HF_HUB_OFFLINE = "1"
[monitor]
interval_secs = 10
probe_timeout_secs = 4
failure_threshold = 3
stall_secs = 120
[models.phi3]
path = "phi-3"
port = 11403
gpus = [5]
gpu_memory_utilization = 0.45
load_timeout_secs = 900
[models.big_one]
path = "/srv/big"
port = 11400
gpus = [0, 1]
tensor_parallel_size = 2
[models.coder]
path = "coder"
port = 11405
gpus = [5]
gpu_memory_utilization = 0.45
extra_args = ["--enforce-eager"]
{extra}
"#
        );
        Config::parse_with(
            &text,
            Path::new("/etc/citadel/citadel.toml"),
            &Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn deploy_of<'a>(e: &'a Export, model: &str) -> &'a Value {
        &e.models.iter().find(|m| m.model == model).unwrap().docs[0]
    }

    #[test]
    fn argv_is_start_models_with_the_pod_bind() {
        let c = cfg("");
        let m = c.model("coder").unwrap();
        let mut want = launch::argv(&c, m);
        let host = want.iter().position(|a| a == "--host").unwrap();
        want[host + 1] = "0.0.0.0".into();
        let e = render(&c, None).unwrap();
        let d = deploy_of(&e, "coder");
        let got: Vec<String> = serde_json::from_value(
            d["spec"]["template"]["spec"]["containers"][0]["command"].clone(),
        )
        .unwrap();
        assert_eq!(got, want);
        assert!(
            got.windows(2).any(|w| w == ["--shutdown-timeout", "20"]),
            "{got:?}"
        );
        assert_eq!(got.last().unwrap(), "--enforce-eager");
    }

    #[test]
    fn env_is_start_models_without_gpu_indexes_and_the_key_from_the_secret() {
        let c = cfg("");
        let m = c.model("phi3").unwrap();
        let e = render(&c, None).unwrap();
        let env = deploy_of(&e, "phi3")["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .clone();
        let mut want: Vec<Value> = launch::env(&c, m, None)
            .into_iter()
            .filter(|(k, _)| k != "CUDA_VISIBLE_DEVICES")
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        want.push(json!({"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": "citadel-api-key", "key": "api-key", "optional": false}}}));
        assert_eq!(env, want);
        assert!(env.iter().any(|v| v["name"] == "HF_HUB_OFFLINE"));
        assert!(env.iter().all(|v| v["name"] != "CUDA_VISIBLE_DEVICES"));
    }

    #[test]
    fn the_key_is_never_inline_even_when_the_box_has_one() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("key");
        std::fs::write(&key, "sk-very-secret\n").unwrap();
        let mut c = cfg("");
        c.engine.api_key_file = Some(key);
        let text = render(&c, None).unwrap().stream().text("kubernetes");
        assert!(!text.contains("sk-very-secret"));
        assert!(text.contains("secretKeyRef"));
    }

    #[test]
    fn gpus_become_whole_gpu_limits() {
        let e = render(&cfg(""), None).unwrap();
        let r = &deploy_of(&e, "big_one")["spec"]["template"]["spec"]["containers"][0]["resources"];
        assert_eq!(r["limits"]["nvidia.com/gpu"], "2");
        assert_eq!(r["requests"]["nvidia.com/gpu"], "2");
    }

    #[test]
    fn the_startup_probe_covers_the_load_timeout() {
        let c = cfg("");
        for (model, load) in [("phi3", 900u64), ("coder", 1800)] {
            let p = startup(&c, c.model(model).unwrap());
            let f = p["failureThreshold"].as_u64().unwrap();
            let per = p["periodSeconds"].as_u64().unwrap();
            assert!((f - 1) * per >= load, "{model}: {p}");
            assert!(
                (f - 2) * per < load,
                "{model}: not much longer than needed: {p}"
            );
        }
        let mut c = cfg("");
        c.models[0].load_timeout_secs = 3;
        let p = startup(&c, &c.models[0]);
        assert_eq!(
            (p["periodSeconds"].as_u64(), p["failureThreshold"].as_u64()),
            (Some(3), Some(2))
        );
    }

    #[test]
    fn liveness_waits_for_stall_secs_readiness_follows_the_monitor() {
        let c = cfg("");
        let l = liveness(&c);
        assert_eq!(l["httpGet"]["path"], "/health");
        assert!(
            l["failureThreshold"].as_u64().unwrap() * l["periodSeconds"].as_u64().unwrap() >= 120
        );
        let r = readiness(&c);
        assert_eq!(
            (
                r["periodSeconds"].as_u64(),
                r["timeoutSeconds"].as_u64(),
                r["failureThreshold"].as_u64()
            ),
            (Some(10), Some(4), Some(3))
        );
        assert_eq!(r["httpGet"]["path"], "/health");
    }

    #[test]
    fn grace_covers_drain_and_grace() {
        let e = render(&cfg(""), None).unwrap();
        assert_eq!(
            deploy_of(&e, "phi3")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            65
        );
    }

    #[test]
    fn objects_share_names_selectors_and_the_namespace() {
        let e = render(&cfg(""), Some("ml")).unwrap();
        let m = e.models.iter().find(|m| m.model == "big_one").unwrap();
        assert_eq!(m.name, "citadel-big-one");
        let kinds: Vec<&str> = m.docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["Deployment", "Service", "PodDisruptionBudget"]);
        for d in &m.docs {
            assert_eq!(d["metadata"]["name"], "citadel-big-one");
            assert_eq!(d["metadata"]["namespace"], "ml");
            assert_eq!(d["metadata"]["annotations"]["citadel/model"], "big_one");
        }
        let sel = &m.docs[1]["spec"]["selector"];
        assert_eq!(&m.docs[0]["spec"]["selector"]["matchLabels"], sel);
        assert_eq!(&m.docs[2]["spec"]["selector"]["matchLabels"], sel);
        for (k, v) in sel.as_object().unwrap() {
            assert_eq!(&m.docs[0]["spec"]["template"]["metadata"]["labels"][k], v);
        }
        assert_eq!(m.docs[1]["spec"]["ports"][0]["port"], 11400);
        assert!(
            render(&cfg(""), None).unwrap().models[0].docs[0]["metadata"]
                .get("namespace")
                .is_none()
        );
    }

    #[test]
    fn the_model_volume_is_a_pvc_at_the_models_link() {
        let c = cfg("");
        let e = render(&c, None).unwrap();
        let spec = &deploy_of(&e, "phi3")["spec"]["template"]["spec"];
        assert_eq!(
            spec["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "citadel-models"
        );
        assert_eq!(
            spec["containers"][0]["volumeMounts"][0]["mountPath"],
            "/opt/citadel/models"
        );
        // The absolute path outside the models link is named in the header.
        let big = e.models.iter().find(|m| m.model == "big_one").unwrap();
        assert!(
            big.notes.iter().any(|n| n.contains("/srv/big")),
            "{:?}",
            big.notes
        );
    }

    #[test]
    fn the_header_names_shared_gpus_and_disabled_models() {
        let c = cfg("[models.off]\npath = \"o\"\nport = 11409\ngpus = [7]\nenabled = false\n");
        let e = render(&c, None).unwrap();
        let t = e.notes.join("\n");
        assert!(
            t.contains("several models share GPU 5 (coder, phi3)"),
            "{t}"
        );
        assert!(t.contains("disabled models, not rendered: off"), "{t}");
        assert!(t.contains("ask for 4 GPUs in all (the box uses 3)"), "{t}");
        assert!(e.models.iter().all(|m| m.model != "off"));
    }

    #[test]
    fn two_models_with_one_kubernetes_name_are_a_config_error() {
        let c = cfg("[models.coder_]\npath = \"c2\"\nport = 11409\ngpus = [7]\n");
        let e = render(&c, None).unwrap_err();
        assert_eq!(e.exit, citadel_common::Exit::Config);
        assert!(e.message.contains("models.coder and models.coder_"), "{e}");
        assert!(e.message.contains("\"citadel-coder\""), "{e}");
        assert!(!e.message.contains('\n'));
    }
}
