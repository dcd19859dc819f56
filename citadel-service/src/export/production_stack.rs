//! `export production-stack`: a values file for vLLM production-stack's Helm chart
//! (`vllm-stack`, checked against the chart's `helm/values.schema.json`, copied with its source
//! and commit into `citadel-service/tests/fixtures/production-stack/`).
//!
//! The chart builds the engine's command line itself: `vllm serve MODEL_URL --host 0.0.0.0
//! --port CONTAINER_PORT`, then flags from `vllmConfig`, then `vllmConfig.extraArgs`. So the
//! argv start-model builds ([`launch::argv`]) is taken apart: the model path becomes
//! `modelURL`, `--tensor-parallel-size`, `--gpu-memory-utilization` and `--max-model-len` the
//! matching `vllmConfig` keys, `--host`/`--port` are the chart's, and every other flag
//! (`--served-model-name`, `--shutdown-timeout`, then `extra_args` verbatim) goes to
//! `extraArgs` in order. `enablePrefixCaching` is always true: the chart passes
//! `--no-enable-prefix-caching` when it is unset, and prefix caching is on by default in
//! vLLM 0.33 (an `extra_args` flag still wins: it comes later on the line).

use super::kubernetes::{self, pod_env};
use super::notes;
use super::{ceil_div, int32, k8s_names, Rendered, IMAGE_REPOSITORY, IMAGE_TAG, MODELS_PVC};
use super::{SECRET_KEY, SECRET_NAME};
use citadel_common::config::{Config, Model};
use citadel_common::{launch, Failure};
use serde_json::{json, Map, Value};

/// The port every engine listens on in the chart (`servingEngineSpec.containerPort`).
pub const CONTAINER_PORT: u16 = 8000;
/// Environment the chart sets itself for every engine (a second definition would shadow it).
pub const CHART_ENV: &[&str] = &[
    "HF_HOME",
    "PYTHONHASHSEED",
    "POD_IP",
    "PROMETHEUS_MULTIPROC_DIR",
];

/// The values file.
pub fn render(cfg: &Config) -> Result<Rendered, Failure> {
    let names = k8s_names(cfg)?;
    let models: Vec<Value> = cfg
        .enabled_models()
        .map(|m| model_spec(cfg, m, names[&m.name].trim_start_matches("citadel-")))
        .collect();
    let values = json!({
        "servingEngineSpec": {
            "enableEngine": true,
            "containerPort": CONTAINER_PORT,
            "strategy": {"type": "Recreate"},
            "vllmApiKey": {"secretName": SECRET_NAME, "secretKey": SECRET_KEY},
            "startupProbe": startup(cfg),
            "readinessProbe": probe(&kubernetes::readiness(cfg)),
            "livenessProbe": probe(&kubernetes::liveness(cfg)),
            "modelSpec": models,
        },
        "routerSpec": router(cfg),
    });
    Ok(Rendered {
        file: "values.yaml".into(),
        header: notes(cfg),
        docs: vec![values],
    })
}

/// One `servingEngineSpec.modelSpec` entry.
pub fn model_spec(cfg: &Config, m: &Model, name: &str) -> Value {
    let argv = launch::argv(cfg, m);
    let head = cfg.engine.command.len();
    let managed = &argv[head + 1..argv.len() - m.extra_args.len()];
    let mut vllm = Map::new();
    let mut extra: Vec<String> = vec![];
    let mut i = 0;
    while i < managed.len() {
        let (flag, value) = (&managed[i], managed.get(i + 1));
        let key = match flag.as_str() {
            "--host" | "--port" => Some(None),
            "--tensor-parallel-size" => Some(Some("tensorParallelSize")),
            "--gpu-memory-utilization" => Some(Some("gpuMemoryUtilization")),
            "--max-model-len" => Some(Some("maxModelLen")),
            _ => None,
        };
        match (key, value) {
            (Some(None), Some(_)) => i += 2,
            (Some(Some(k)), Some(v)) => {
                let n: Value = serde_json::from_str(v).unwrap_or_else(|_| json!(v));
                vllm.insert(k.into(), n);
                i += 2;
            }
            _ => {
                extra.push(flag.clone());
                i += 1;
            }
        }
    }
    extra.extend(m.extra_args.iter().cloned());
    vllm.insert("enablePrefixCaching".into(), json!(true));
    vllm.insert("extraArgs".into(), json!(extra));
    let env: Vec<Value> = pod_env(cfg, m)
        .into_iter()
        .filter(|(k, _)| !CHART_ENV.contains(&k.as_str()))
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    let gpus = m.gpus.len().to_string();
    json!({
        "name": name,
        "enabled": true,
        "annotations": {"citadel/model": m.name},
        "repository": IMAGE_REPOSITORY,
        "tag": IMAGE_TAG,
        "modelURL": argv[head],
        "replicaCount": 1,
        "resources": {
            "limits": {"nvidia.com/gpu": gpus},
            "requests": {"nvidia.com/gpu": gpus},
        },
        "vllmConfig": vllm,
        "env": env,
        "extraVolumes": [
            {"name": "citadel-models", "persistentVolumeClaim": {"claimName": MODELS_PVC, "readOnly": true}},
            {"name": "citadel-cache", "emptyDir": {}},
        ],
        "extraVolumeMounts": [
            {"name": "citadel-models", "mountPath": cfg.paths.models_link.display().to_string(), "readOnly": true},
            {"name": "citadel-cache", "mountPath": cfg.paths.cache_dir.display().to_string()},
        ],
        "pdb": {"enabled": true, "minAvailable": 1},
    })
}

/// A Kubernetes probe as the chart's probe values (its `httpGet.port` is the container port).
fn probe(k8s: &Value) -> Value {
    let mut p = k8s.clone();
    p["httpGet"]["port"] = json!(CONTAINER_PORT);
    if let Some(o) = p.as_object_mut() {
        o.remove("successThreshold");
    }
    p
}

/// One startup probe for every engine (the chart has no per-model probes): it covers the
/// longest `load_timeout_secs` of the enabled models.
pub fn startup(cfg: &Config) -> Value {
    let longest = cfg
        .enabled_models()
        .map(|m| m.load_timeout_secs)
        .max()
        .unwrap_or(0);
    let period = kubernetes::STARTUP_PERIOD_SECS.min(longest.max(1));
    json!({
        "httpGet": {"path": "/health", "port": CONTAINER_PORT},
        "periodSeconds": int32(period),
        "timeoutSeconds": int32(cfg.monitor.probe_timeout_secs.max(1)),
        "failureThreshold": int32(ceil_div(longest, period) + 1),
    })
}

/// The router: production-stack's one endpoint, as `[gateway]` is the box's. It discovers the
/// engines through Kubernetes (only ready pods get requests, as the gateway sends none to a model
/// that is not serving), routes by the request's `model`, and sends the engines' key. From
/// `[gateway]`: `enabled` is `enableRouter`, the port of `listen` the Service's `servicePort`;
/// the Service stays `ClusterIP` (inside the cluster only, as loopback is on the box). What the
/// router has no value for is in the header ([`gateway_notes`]).
pub fn router(cfg: &Config) -> Value {
    json!({
        "enableRouter": cfg.gateway.enabled,
        "serviceDiscovery": "k8s",
        "routingLogic": "roundrobin",
        "serviceType": "ClusterIP",
        "servicePort": cfg.gateway.listen.port(),
        "vllmApiKey": {"secretName": SECRET_NAME, "secretKey": SECRET_KEY},
    })
}

/// What `[gateway]` and the models' gateway keys cannot say in the chart's `routerSpec`.
pub fn gateway_notes(cfg: &Config) -> Vec<String> {
    let g = &cfg.gateway;
    if !g.enabled {
        return vec![
            "- gateway.enabled = false: no router (enableRouter: false); clients use each model's own Service".into(),
        ];
    }
    let mut n = vec![];
    if !g.listen.ip().is_loopback() {
        n.push(format!(
            "- gateway.listen ({}): the router's Service is ClusterIP on port {}; serving clients outside the              cluster takes an Ingress or a LoadBalancer Service (routerSpec.ingress, serviceType), not made here",
            g.listen,
            g.listen.port()
        ));
    }
    if let Some(f) = &g.api_keys_file {
        n.push(format!(
            "- gateway.api_keys_file ({}): the router checks no client keys (vllmApiKey is the engines' key); put              an authenticating Ingress or proxy in front of it",
            f.display()
        ));
    }
    for m in cfg.enabled_models().filter(|m| !m.aliases.is_empty()) {
        n.push(format!(
            "- models.{}.aliases ({}): the router has no aliases; clients name the model {:?}",
            m.name,
            m.aliases.join(", "),
            m.served_model_name
        ));
    }
    let limited: Vec<String> = cfg
        .enabled_models()
        .map(|m| {
            format!(
                "{} {}",
                m.name,
                m.max_concurrent.unwrap_or(g.max_concurrent)
            )
        })
        .collect();
    n.push(format!(
        "- per-model concurrency and queue (max_concurrent: {}; gateway.queue_limit = {}, queue_timeout_secs = {}): \
         the router has none; a slow model's requests wait in its engine instead of getting 429 or 503",
        limited.join(", "),
        g.queue_limit,
        g.queue_timeout_secs
    ));
    n.push(format!(
        "- gateway.request_timeout_secs = {}, max_request_bytes = {}, max_connections = {}, drain_secs = {}, \
         access_log = {}: the chart has no router values for them (its defaults apply)",
        g.request_timeout_secs, g.max_request_bytes, g.max_connections, g.drain_secs, g.access_log
    ));
    n
}

/// The header: what the values need and what they cannot say.
pub fn notes(cfg: &Config) -> Vec<String> {
    let mut n = vec![
        "Values for vLLM production-stack's Helm chart (vllm-stack 0.1.12): helm install citadel vllm/vllm-stack -f values.yaml".to_string(),
        String::new(),
    ];
    n.extend(notes::needs(cfg));
    n.push(format!(
        "- the image {IMAGE_REPOSITORY}:{IMAGE_TAG} (the chart runs `vllm serve` from PATH, not engine.command = {})",
        cfg.engine.command[0]
    ));
    n.push(String::new());
    n.push("What Citadel cannot express here:".into());
    let max = cfg.enabled_models().map(|m| m.load_timeout_secs).max();
    let longest = match max {
        Some(max) => {
            let names: Vec<&str> = cfg
                .enabled_models()
                .filter(|m| m.load_timeout_secs == max)
                .map(|m| m.name.as_str())
                .collect();
            format!("{} ({max} s)", names.join(", "))
        }
        None => "none".into(),
    };
    n.extend([
        format!(
            "- models.*.port: every engine listens on servingEngineSpec.containerPort ({CONTAINER_PORT}) behind its \
             own Service; clients use the router (routerSpec)"
        ),
        format!(
            "- per-model probes: one startupProbe for all engines, covering the longest load_timeout_secs: {longest}; \
             the chart waits its own initialDelaySeconds (15 s) first"
        ),
        format!(
            "- terminationGracePeriodSeconds: the chart has no value for it, so Kubernetes' 30 s applies, not \
             engine.drain_secs + engine.stop_grace_secs = {} s",
            kubernetes::termination_grace(cfg)
        ),
        format!(
            "- the engine's environment: the chart sets {} itself (HF_HOME=/tmp without pvcStorage)",
            CHART_ENV.join(", ")
        ),
        "- the container's securityContext and enableServiceLinks: the chart's".into(),
        format!(
            "- paths.cache_dir ({}): an emptyDir per pod, so the torch.compile cache does not survive a new pod",
            cfg.paths.cache_dir.display()
        ),
    ]);
    n.extend(notes::limits(cfg));
    n.extend(gateway_notes(cfg));
    for m in cfg.enabled_models() {
        n.extend(notes::model_notes(cfg, m));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        citadel_common::config::testing::config(
            r#"
[engine]
drain_secs = 25
[models.mixtral]
path = "mixtral"
port = 11400
gpus = [0, 1]
tensor_parallel_size = 2
max_model_len = 32768
served_model_name = "mixtral-8x7b"
extra_args = ["--enable-chunked-prefill", "--chat-template", "{{ x }} \"q\""]
[models.phi3]
path = "phi3"
port = 11403
gpus = [2]
gpu_memory_utilization = 0.6
load_timeout_secs = 900
"#,
        )
    }

    fn spec(v: &Rendered, i: usize) -> Value {
        v.docs[0]["servingEngineSpec"]["modelSpec"][i].clone()
    }

    #[test]
    fn the_argv_maps_to_model_url_vllm_config_and_extra_args() {
        let r = render(&cfg()).unwrap();
        let m = spec(&r, 0);
        assert_eq!(m["name"], "mixtral");
        assert_eq!(m["modelURL"], "/opt/citadel/models/mixtral");
        let v = &m["vllmConfig"];
        assert_eq!(v["tensorParallelSize"], 2);
        assert_eq!(v["gpuMemoryUtilization"], 0.9);
        assert_eq!(v["maxModelLen"], 32768);
        assert_eq!(v["enablePrefixCaching"], true);
        // Managed flags the chart has no key for, in start-model's order, then extra_args
        // verbatim.
        assert_eq!(
            v["extraArgs"],
            json!([
                "--served-model-name",
                "mixtral-8x7b",
                "--shutdown-timeout",
                "25",
                "--enable-chunked-prefill",
                "--chat-template",
                "{{ x }} \"q\""
            ])
        );
        let p = spec(&r, 1);
        assert_eq!(p["vllmConfig"]["gpuMemoryUtilization"], 0.6);
        assert!(p["vllmConfig"].get("maxModelLen").is_none());
        assert_eq!(p["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(m["resources"]["limits"]["nvidia.com/gpu"], "2");
    }

    #[test]
    fn env_is_start_models_less_what_the_chart_sets_and_the_key_is_a_secret() {
        let c = cfg();
        let r = render(&c).unwrap();
        let env = spec(&r, 1)["env"].clone();
        let names: Vec<&str> = env
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"VLLM_CACHE_ROOT") && names.contains(&"CUDA_DEVICE_ORDER"),
            "{names:?}"
        );
        for gone in ["HF_HOME", "CUDA_VISIBLE_DEVICES", "VLLM_API_KEY"] {
            assert!(!names.contains(&gone), "{gone} in {names:?}");
        }
        let s = &r.docs[0]["servingEngineSpec"];
        assert_eq!(
            s["vllmApiKey"],
            json!({"secretName": "citadel-api-key", "secretKey": "api-key"})
        );
        assert_eq!(r.docs[0]["routerSpec"]["vllmApiKey"], s["vllmApiKey"]);
    }

    #[test]
    fn one_startup_probe_covers_the_longest_load() {
        let r = render(&cfg()).unwrap();
        let p = &r.docs[0]["servingEngineSpec"]["startupProbe"];
        let (f, per) = (
            p["failureThreshold"].as_u64().unwrap(),
            p["periodSeconds"].as_u64().unwrap(),
        );
        assert!((f - 1) * per >= 1800, "{p}");
        assert_eq!(p["httpGet"], json!({"path": "/health", "port": 8000}));
        let l = &r.docs[0]["servingEngineSpec"]["livenessProbe"];
        assert_eq!(l["httpGet"]["port"], 8000);
        assert!(
            r.header.iter().any(|h| h.contains("mixtral (1800 s)")),
            "{:?}",
            r.header
        );
        assert!(
            r.header.iter().any(|h| h.contains("= 85 s")),
            "{:?}",
            r.header
        );
    }

    #[test]
    fn the_gateway_section_maps_to_the_router_and_the_rest_is_in_the_header() {
        let c = cfg();
        let r = router(&c);
        assert_eq!(r["enableRouter"], true);
        assert_eq!(r["servicePort"], 8000);
        assert_eq!(r["serviceType"], "ClusterIP");
        let text = format!(
            "{}{}",
            "[gateway]\nlisten = \"0.0.0.0:9000\"\napi_keys_file = \"/etc/citadel/keys\"\nqueue_limit = 7\n",
            "[models.a]\npath = \"a\"\nport = 11400\ngpus = [0]\naliases = [\"gpt-4\"]\nmax_concurrent = 3\n"
        );
        let lan = citadel_common::config::testing::config(&text);
        assert_eq!(router(&lan)["servicePort"], 9000);
        let n = gateway_notes(&lan).join("\n");
        for want in [
            "gateway.listen (0.0.0.0:9000)",
            "gateway.api_keys_file (/etc/citadel/keys): the router checks no client keys",
            "models.a.aliases (gpt-4): the router has no aliases; clients name the model \"a\"",
            "max_concurrent: a 3; gateway.queue_limit = 7",
        ] {
            assert!(n.contains(want), "{want:?} not in:\n{n}");
        }
        // Loopback and no keys: nothing to say about either.
        let n = gateway_notes(&c).join("\n");
        assert!(
            !n.contains("gateway.listen") && !n.contains("api_keys_file"),
            "{n}"
        );
        let off = citadel_common::config::testing::config(
            "[gateway]\nenabled = false\n[models.a]\npath = \"a\"\nport = 11400\ngpus = [0]\n",
        );
        assert_eq!(router(&off)["enableRouter"], false);
        assert_eq!(gateway_notes(&off).len(), 1);
    }
}
