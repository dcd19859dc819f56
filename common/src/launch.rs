//! How one model server is launched: the engine's argv vector and its environment, built from
//! the config alone. Pure, so every consumer sees the same thing: start-model spawns exactly
//! this (and prints it with `--dry-run`), and an export to another orchestrator (Kubernetes)
//! writes the same argv and environment.
//!
//! # The argv
//! `engine.command`, the model path (positional, first: `--served-model-name` takes several
//! values and would swallow a positional after it), then the managed flags
//! ([`crate::vllm::MANAGED_FLAGS`], which `extra_args` may not repeat): `--host`, `--port`,
//! `--served-model-name`, `--tensor-parallel-size`, `--gpu-memory-utilization`,
//! `--shutdown-timeout` (`engine.drain_secs`), `--max-model-len` (when set), then the model's
//! `extra_args` verbatim. Never `--model`, `--api-key` or `--swap-space`.
//!
//! # The environment
//! Empty, then exactly:
//!
//! | variable | value | why |
//! |---|---|---|
//! | `PATH` | the engine program's directory, then [`SAFE_PATH`] | venv helpers (ninja) first; never the caller's PATH |
//! | `HOME` | `paths.cache_dir` | a writable home for the service account (caches under `~`) |
//! | `LANG` | `C.UTF-8` | UTF-8 I/O whatever the box's locale |
//! | `CUDA_DEVICE_ORDER` | `PCI_BUS_ID` | GPU N means the same card to CUDA as to NVML/nvidia-smi |
//! | `CUDA_VISIBLE_DEVICES` | the model's `gpus`, e.g. `0,1` | |
//! | `VLLM_NO_USAGE_STATS`, `DO_NOT_TRACK` | `1` | no usage reports to stats.vllm.ai |
//! | `VLLM_CACHE_ROOT` | `paths.cache_dir/vllm` | torch.compile cache survives restarts |
//! | `HF_HOME` | `paths.cache_dir/huggingface` | |
//! | `engine.env` | as configured (e.g. `HF_HUB_OFFLINE=1`) | may override the rows above except the managed ones the config refuses |
//! | `VLLM_API_KEY` | the key, when one is configured | not visible in `ps` / `/proc/*/cmdline` |
//!
//! `VLLM_RPC_BASE_PATH` is left at vLLM's default `/tmp` (the unit gives the engine a private
//! `/tmp`); `NOTIFY_SOCKET` and `CREDENTIALS_DIRECTORY` are not passed on.

use crate::config::{Config, Model};
use std::collections::BTreeMap;
use std::path::Path;

/// `PATH` for the engine: the engine program's own directory (a venv's `bin/`, where vLLM's
/// helpers such as `ninja` live) in front of this fixed list. Never the caller's `PATH`.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What `--dry-run` shows in place of the API key (the key itself is never printed).
pub const REDACTED: &str = "<redacted>";

/// Everything needed to spawn one model server.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LaunchSpec {
    /// The model's name in the config.
    pub model: String,
    /// `argv[0]` is the engine program (absolute path), then its arguments.
    pub argv: Vec<String>,
    /// The engine's whole environment (it starts from an empty one).
    pub env: BTreeMap<String, String>,
    pub port: u16,
    pub gpus: Vec<u32>,
}

/// The engine's argv (see the module documentation for the order and the reasons).
pub fn argv(cfg: &Config, model: &Model) -> Vec<String> {
    let mut v: Vec<String> = cfg.engine.command.clone();
    v.push(
        model
            .resolved_path(&cfg.paths)
            .to_string_lossy()
            .into_owned(),
    );
    let mut flag = |name: &str, value: String| {
        v.push(name.to_string());
        v.push(value);
    };
    flag("--host", cfg.engine.host.clone());
    flag("--port", model.port.to_string());
    flag("--served-model-name", model.served_model_name.clone());
    flag(
        "--tensor-parallel-size",
        model.tensor_parallel_size.to_string(),
    );
    flag(
        "--gpu-memory-utilization",
        format_fraction(model.gpu_memory_utilization),
    );
    flag("--shutdown-timeout", cfg.engine.drain_secs.to_string());
    if let Some(len) = model.max_model_len {
        flag("--max-model-len", len.to_string());
    }
    v.extend(model.extra_args.iter().cloned());
    v
}

/// A fraction as vLLM should see it: the shortest decimal that reads back as the same number
/// (`0.9` -> `"0.9"`, `0.85` -> `"0.85"`, `1.0` -> `"1"`), never `0.8999999999`.
pub fn format_fraction(f: f64) -> String {
    format!("{f}")
}

/// `CUDA_VISIBLE_DEVICES` for a GPU list: `[0, 1]` -> `"0,1"`.
pub fn visible_devices(gpus: &[u32]) -> String {
    gpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The engine's environment (the table in the module documentation).
/// `api_key` is the key itself (or [`REDACTED`] for a dry run); `None` = no key configured.
pub fn env(cfg: &Config, model: &Model, api_key: Option<&str>) -> BTreeMap<String, String> {
    let cache = &cfg.paths.cache_dir;
    let mut e = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        e.insert(k.to_string(), v);
    };
    let program_dir = Path::new(&cfg.engine.command[0])
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.to_string_lossy().into_owned());
    set(
        "PATH",
        match program_dir {
            Some(d) => format!("{d}:{SAFE_PATH}"),
            None => SAFE_PATH.to_string(),
        },
    );
    set("HOME", path_str(cache));
    set("LANG", "C.UTF-8".into());
    set("CUDA_DEVICE_ORDER", "PCI_BUS_ID".into());
    set("CUDA_VISIBLE_DEVICES", visible_devices(&model.gpus));
    set("VLLM_NO_USAGE_STATS", "1".into());
    set("DO_NOT_TRACK", "1".into());
    set("VLLM_CACHE_ROOT", path_str(&cache.join("vllm")));
    set("HF_HOME", path_str(&cache.join("huggingface")));
    // The config refuses engine.env keys that start-model manages (CUDA_*, VLLM_API_KEY,
    // NOTIFY_SOCKET); anything else it names wins over the defaults above.
    for (k, v) in &cfg.engine.env {
        set(k, v.clone());
    }
    if let Some(key) = api_key {
        set("VLLM_API_KEY", key.to_string());
    }
    e
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The whole launch spec; the key as given (use [`REDACTED`] for display).
pub fn build(cfg: &Config, model: &Model, api_key: Option<&str>) -> LaunchSpec {
    LaunchSpec {
        model: model.name.clone(),
        argv: argv(cfg, model),
        env: env(cfg, model, api_key),
        port: model.port,
        gpus: model.gpus.clone(),
    }
}

/// The `--dry-run` document: `{"model", "argv", "env", "port", "gpus"}`; the key is redacted.
pub fn dry_run_json(cfg: &Config, model: &Model, has_key: bool) -> Result<String, crate::Failure> {
    crate::output::to_json(&build(cfg, model, has_key.then_some(REDACTED)))
}

/// Is `host:port` free? A test bind of every address the host resolves to. `Ok(false)` =
/// in use; an address that is not ours is a config error.
pub fn port_free(host: &str, port: u16) -> Result<bool, crate::Failure> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            crate::Failure::config(format!("engine.host = {host:?}: cannot resolve: {e}"))
        })?
        .collect();
    for a in addrs {
        match std::net::TcpListener::bind(a) {
            Ok(l) => drop(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Ok(false),
            Err(e) => {
                return Err(crate::Failure::config(format!(
                    "engine.host = {host:?}: cannot bind {a}: {e}"
                )))
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{PATHS, PHI3_GPU5 as PHI3};

    /// [`PATHS`], an engine with one env value, then `models`.
    fn config(models: &str) -> Config {
        crate::config::testing::config(&format!(
            "{PATHS}[engine]\ncommand = [\"/opt/citadel/venv/bin/vllm\", \"serve\"]\n\
             [engine.env]\nHF_HUB_OFFLINE = \"1\"\n{models}"
        ))
    }

    #[test]
    fn argv_puts_the_model_first_and_managed_flags_in_order() {
        let cfg = config(PHI3);
        let m = cfg.model("phi3").unwrap();
        assert_eq!(
            argv(&cfg, m),
            [
                "/opt/citadel/venv/bin/vllm",
                "serve",
                "/opt/citadel/models/phi-3",
                "--host",
                "127.0.0.1",
                "--port",
                "11403",
                "--served-model-name",
                "phi3",
                "--tensor-parallel-size",
                "1",
                "--gpu-memory-utilization",
                "0.85",
                "--shutdown-timeout",
                "30"
            ]
        );
    }

    #[test]
    fn drain_secs_is_the_shutdown_timeout_and_zero_means_abort() {
        let mut cfg = config(PHI3);
        for (drain, want) in [(0, "0"), (7, "7"), (600, "600")] {
            cfg.engine.drain_secs = drain;
            let a = argv(&cfg, cfg.model("phi3").unwrap());
            let i = a.iter().position(|x| x == "--shutdown-timeout").unwrap();
            assert_eq!(a[i + 1], want);
            assert_eq!(a.iter().filter(|x| *x == "--shutdown-timeout").count(), 1);
        }
    }

    #[test]
    fn max_model_len_and_extra_args_follow_verbatim() {
        let cfg = config(
            r#"
[models.m]
path = "/abs/dir with space"
port = 11400
gpus = [0, 1]
tensor_parallel_size = 2
max_model_len = 32768
served_model_name = "ünï-cødé"
extra_args = ["--chat-template", "{{ 'a b' }} \"q\" ☃", "--enforce-eager", "--limit-mm-per-prompt", "{\"image\": 2}"]
"#,
        );
        let m = cfg.model("m").unwrap();
        let a = argv(&cfg, m);
        assert_eq!(a[2], "/abs/dir with space");
        let tail: Vec<&str> = a[12..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "0.9",
                "--shutdown-timeout",
                "30",
                "--max-model-len",
                "32768",
                "--chat-template",
                "{{ 'a b' }} \"q\" ☃",
                "--enforce-eager",
                "--limit-mm-per-prompt",
                "{\"image\": 2}"
            ]
        );
        assert_eq!(a[8], "ünï-cødé");
        assert_eq!(a[10], "2");
    }

    #[test]
    fn empty_extra_args_add_nothing_and_no_forbidden_flag_appears() {
        let cfg = config(PHI3);
        let a = argv(&cfg, cfg.model("phi3").unwrap());
        assert_eq!(a.len(), 15);
        for bad in [
            "--model",
            "--swap-space",
            "--disable-log-stats",
            "--api-key",
        ] {
            assert!(!a.iter().any(|x| x == bad), "{bad} in {a:?}");
        }
    }

    #[test]
    fn fractions_are_formatted_stably() {
        assert_eq!(format_fraction(0.9), "0.9");
        assert_eq!(format_fraction(0.85), "0.85");
        assert_eq!(format_fraction(0.7), "0.7");
        assert_eq!(format_fraction(0.45), "0.45");
        assert_eq!(format_fraction(1.0), "1");
        assert_eq!(format_fraction(0.1 + 0.2), "0.30000000000000004");
    }

    #[test]
    fn env_is_the_documented_list_plus_engine_env() {
        let cfg = config(
            r#"
[models.m]
path = "m"
port = 11400
gpus = [2, 3]
tensor_parallel_size = 2
"#,
        );
        let e = env(&cfg, cfg.model("m").unwrap(), None);
        let want: BTreeMap<String, String> = [
            ("PATH", format!("/opt/citadel/venv/bin:{SAFE_PATH}")),
            ("HOME", "/srv/cache".into()),
            ("LANG", "C.UTF-8".into()),
            ("CUDA_DEVICE_ORDER", "PCI_BUS_ID".into()),
            ("CUDA_VISIBLE_DEVICES", "2,3".into()),
            ("VLLM_NO_USAGE_STATS", "1".into()),
            ("DO_NOT_TRACK", "1".into()),
            ("VLLM_CACHE_ROOT", "/srv/cache/vllm".into()),
            ("HF_HOME", "/srv/cache/huggingface".into()),
            ("HF_HUB_OFFLINE", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(e, want);
    }

    #[test]
    fn engine_env_values_pass_through_verbatim_and_may_override_defaults() {
        let mut cfg = config(PHI3);
        cfg.engine
            .env
            .insert("VLLM_LOGGING_PREFIX".into(), "[phi3 ☃] \"q\" 'x'".into());
        cfg.engine.env.insert("LANG".into(), "de_DE.UTF-8".into());
        let e = env(&cfg, cfg.model("phi3").unwrap(), None);
        assert_eq!(e["VLLM_LOGGING_PREFIX"], "[phi3 ☃] \"q\" 'x'");
        assert_eq!(e["LANG"], "de_DE.UTF-8");
        assert_eq!(e["CUDA_VISIBLE_DEVICES"], "5");
    }

    #[test]
    fn the_api_key_goes_to_the_environment_never_to_argv() {
        let cfg = config(PHI3);
        let m = cfg.model("phi3").unwrap();
        let s = build(&cfg, m, Some("sk-secret with space"));
        assert_eq!(s.env["VLLM_API_KEY"], "sk-secret with space");
        assert!(!s.argv.iter().any(|a| a.contains("sk-secret")));
    }

    #[test]
    fn dry_run_has_the_documented_shape_and_hides_the_key() {
        let cfg = config(PHI3);
        let m = cfg.model("phi3").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&dry_run_json(&cfg, m, true).unwrap()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, ["argv", "env", "gpus", "model", "port"]);
        assert_eq!(v["model"], "phi3");
        assert_eq!(v["argv"][0], "/opt/citadel/venv/bin/vllm");
        assert_eq!(v["port"], 11403);
        assert_eq!(v["gpus"], serde_json::json!([5]));
        assert_eq!(v["env"]["VLLM_API_KEY"], REDACTED);
        let v: serde_json::Value =
            serde_json::from_str(&dry_run_json(&cfg, m, false).unwrap()).unwrap();
        assert!(v["env"].get("VLLM_API_KEY").is_none());
    }
}
