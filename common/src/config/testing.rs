//! Config fixtures for tests, this crate's and the other crates' (the `testing` feature; never
//! in a shipped binary): the one way a test reads a config text ([`config`], [`parse`]) and the
//! model tables that the tests of several crates share.

use super::{Config, ConfigError, Limits};
use std::path::Path;

/// The file every fixture config is read as.
pub const FILE: &str = "/etc/citadel/citadel.toml";

/// `s` read as the config at [`FILE`] with the default limits.
pub fn parse(s: &str) -> Result<Config, ConfigError> {
    Config::parse_with(s, Path::new(FILE), &Limits::default())
}

/// [`parse`], for a text the test means to be valid: an error is the test's bug (panics with it).
pub fn config(s: &str) -> Config {
    parse(s).unwrap_or_else(|e| panic!("{e}"))
}

/// A valid config with an engine command and two models (one on two GPUs, with extra args).
pub const GOOD: &str = r#"
[engine]
command = ["/usr/bin/vllm", "serve"]
[models.a]
path = "a"
port = 11400
gpus = [0]
tensor_parallel_size = 1
gpu_memory_utilization = 0.5
[models.b]
path = "/srv/b"
port = 11401
gpus = [0, 1]
tensor_parallel_size = 2
gpu_memory_utilization = 0.5
max_model_len = 4096
extra_args = ["--enforce-eager", "--dtype", "bfloat16"]
"#;

/// Two enabled models: phi3 on GPU 0 (port 11403), coder on GPU 1 (port 11405).
pub const PHI3_CODER: &str = r#"
[models.phi3]
path = "phi3"
port = 11403
gpus = [0]
gpu_memory_utilization = 0.3
[models.coder]
path = "coder"
port = 11405
gpus = [1]
gpu_memory_utilization = 0.4
"#;

/// A disabled model, vision, on GPU 1 (port 11406): goes after [`PHI3_CODER`].
pub const VISION_DISABLED: &str = r#"
[models.vision]
path = "vision"
port = 11406
gpus = [1]
gpu_memory_utilization = 0.4
enabled = false
"#;

/// Two enabled models, a on GPU 0 (port 11401) and b on GPU 1 (port 11402), 0.6 each.
pub const A_B: &str = r#"
[models.a]
path = "a"
port = 11401
gpus = [0]
gpu_memory_utilization = 0.6
[models.b]
path = "b"
port = 11402
gpus = [1]
gpu_memory_utilization = 0.6
"#;

/// The `[paths]` the engine-argument tests use (cache and runtime dirs moved).
pub const PATHS: &str = r#"
[paths]
cache_dir = "/srv/cache"
runtime_dir = "/run/citadel"
"#;

/// One model, phi3 on GPU 5 (port 11403, 0.85): the engine-argument tests' model.
pub const PHI3_GPU5: &str = r#"
[models.phi3]
path = "phi-3"
port = 11403
gpus = [5]
gpu_memory_utilization = 0.85
"#;
