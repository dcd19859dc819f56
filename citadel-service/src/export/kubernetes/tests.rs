use super::*;

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
    citadel_common::config::testing::config(&text)
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
    let got: Vec<String> =
        serde_json::from_value(d["spec"]["template"]["spec"]["containers"][0]["command"].clone())
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
    assert!(l["failureThreshold"].as_u64().unwrap() * l["periodSeconds"].as_u64().unwrap() >= 120);
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
    assert_eq!(e.exit(), citadel_common::Exit::Config);
    assert!(e.message.contains("models.coder and models.coder_"), "{e}");
    assert!(e.message.contains("\"citadel-coder\""), "{e}");
    assert!(!e.message.contains('\n'));
}
