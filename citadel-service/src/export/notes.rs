//! The header comment of each export: what the cluster must provide, and what Citadel cannot
//! express there (so an operator reads it before applying anything).

use super::{IMAGE_REPOSITORY, IMAGE_TAG, MODELS_PVC, SECRET_KEY, SECRET_NAME};
use citadel_common::config::{Config, Model};
use citadel_common::plan;

/// What the whole config needs or loses in Kubernetes.
pub fn global_notes(cfg: &Config) -> Vec<String> {
    let mut n = vec![
        "Objects: per enabled model a Deployment, a Service and a PodDisruptionBudget.".to_string(),
        String::new(),
    ];
    n.extend(needs(cfg));
    n.push(format!(
        "- an image with the engine at {} (the command is start-model's argv); {IMAGE_REPOSITORY}:{IMAGE_TAG} \
         has vllm on PATH instead: build FROM it with that path, or edit command[0]",
        cfg.engine.command[0]
    ));
    n.push(String::new());
    n.push("What Citadel cannot express here:".into());
    n.extend(limits(cfg));
    n.push(format!(
        "- paths.cache_dir ({}): an emptyDir per pod, so the torch.compile cache does not survive a new pod",
        cfg.paths.cache_dir.display()
    ));
    if cfg.gateway.enabled {
        n.push(format!(
            "- [gateway] (listen {}): no router here; clients use each model's Service (export production-stack \
             maps [gateway] to the chart's router)",
            cfg.gateway.listen
        ));
    }
    n
}

/// What the cluster must provide (both exports).
pub fn needs(cfg: &Config) -> Vec<String> {
    vec![
        "Needed, not created here:".into(),
        format!(
            "- Secret {SECRET_NAME:?} with key {SECRET_KEY:?}: the engines' VLLM_API_KEY (the pods bind 0.0.0.0, and \
             Citadel allows a non-loopback bind only with a key), e.g. kubectl create secret generic \
             {SECRET_NAME} --from-file={SECRET_KEY}={}",
            cfg.engine
                .api_key_file
                .as_deref()
                .unwrap_or(std::path::Path::new("/etc/citadel/api-key"))
                .display()
        ),
        format!(
            "- PersistentVolumeClaim {MODELS_PVC:?} holding what {} holds (ReadOnlyMany if models run on several nodes), \
             mounted read-only at {}",
            cfg.paths.models_active.display(),
            cfg.paths.models_link.display()
        ),
        "- the NVIDIA device plugin (nvidia.com/gpu), and nodes prepared like [gpu] says (driver, persistence, clocks)".into(),
    ]
}

/// What neither export can say (both exports).
pub fn limits(cfg: &Config) -> Vec<String> {
    let mut n = vec![
        "- GPU indexes (models.*.gpus): a pod asks for a number of whole GPUs and the device plugin picks them; \
         CUDA_VISIBLE_DEVICES is left to it"
            .to_string(),
    ];
    let shared: Vec<String> = plan::gpu_shares(cfg)
        .into_iter()
        .filter(|g| g.models.len() > 1)
        .map(|g| {
            let names: Vec<&str> = g.models.iter().map(|(m, _)| m.as_str()).collect();
            format!("GPU {} ({})", g.index, names.join(", "))
        })
        .collect();
    if !shared.is_empty() {
        n.push(format!(
            "- GPU sharing by memory fraction: on the box several models share {}; here each model gets whole \
             GPUs of its own (gpu_memory_utilization stays a fraction of each of them)",
            shared.join(", ")
        ));
    }
    let on_box: std::collections::BTreeSet<u32> = cfg
        .enabled_models()
        .flat_map(|m| m.gpus.iter().copied())
        .collect();
    let asked: usize = cfg.enabled_models().map(|m| m.gpus.len()).sum();
    n.extend([
        format!(
            "- the box's GPU count: the models ask for {} in all (the box uses {})",
            citadel_common::text::count(asked, "GPU"),
            on_box.len()
        ),
        "- the per-GPU init lock: not needed, no two pods share a GPU".into(),
        "- [gpu] (persistence, power, clocks, MIG, driver and CUDA versions) and gpu-optimize: node setup, outside any pod".into(),
        "- [storage] and storage-setup (mounts, free space, model files): a missing model fails its engine's load".into(),
        "- the monitor's deep probe and stall detection ([monitor] deep_probe_*, stall_secs): a kubelet probe sees \
         only an HTTP status, so an engine hung with /health 200 is not restarted; the livenessProbe restarts only \
         after /health failed for stall_secs, so a busy engine is never killed"
            .into(),
        "- [monitor] restart_budget and restart_window_secs: Kubernetes restarts without a budget (CrashLoopBackOff, \
         10 s doubling to 5 min)"
            .into(),
        "- exit 78 (bad config: never restarted on the box): Kubernetes restarts every exit".into(),
        "- [monitor] state_file, textfile, webhook_url: scrape each engine's /metrics instead".into(),
        format!(
            "- [service] user = {:?}: Kubernetes takes numeric IDs (securityContext.runAsUser); the image's user is kept",
            cfg.service.user
        ),
        "- engine.port_wait_secs, engine.gpu_release_wait_secs: pods share no ports and no GPUs".into(),
    ]);
    let disabled: Vec<&str> = cfg
        .models
        .iter()
        .filter(|m| !m.enabled)
        .map(|m| m.name.as_str())
        .collect();
    if !disabled.is_empty() {
        n.push(format!(
            "- disabled models, not rendered: {}",
            disabled.join(", ")
        ));
    }
    if cfg.enabled_models().next().is_none() {
        n.push("- no model is enabled: nothing to render".into());
    }
    n
}

/// What one model loses.
pub fn model_notes(cfg: &Config, m: &Model) -> Vec<String> {
    let mut n = vec![];
    let path = m.resolved_path(&cfg.paths);
    if !path.starts_with(&cfg.paths.models_link) {
        n.push(format!(
            "- models.{}.path = {}: outside {}, so not on the PVC; mount it into the pod yourself",
            m.name,
            path.display(),
            cfg.paths.models_link.display()
        ));
    }
    n
}
