//! The one config file that describes the whole box (`/etc/citadel/citadel.toml`).
//!
//! Loading is done in two steps: the TOML is parsed into a table (syntax errors carry line and
//! column), then every section is read key by key into typed structs while *every* problem is
//! collected: unknown keys, wrong types, out-of-range values and the cross-model rules
//! (duplicate ports, per-GPU memory shares, tensor parallel vs GPUs, vLLM flags). Nothing is
//! reported one at a time: an operator fixes the file once.
//!
//! Each problem names the file, the key (`models.phi3.port`) and the value.
//!
//! One concern per module:
//! - [`types`]: the typed sections, [`Config`], [`Issue`] and [`ConfigError`];
//! - [`defaults`]: one `Default` per section (the values the README documents);
//! - [`read`]: loading, TOML syntax errors and the key-by-key reader;
//! - [`sections`]: reading each section, with its per-key rules;
//! - `gateway`: `[gateway]` and the gateway's per-model keys, with their rules;
//! - [`rules`]: the cross-model rules (ports, per-GPU shares, served names, exposure), the
//!   name predicates and the host limits;
//! - [`hostile`]: the rules that keep a hostile or careless config off the system (system
//!   directories, overlapping roles, maxima of every timeout, NUL and control characters),
//!   general so that every key, new ones included, goes through them.

pub mod defaults;
mod gateway;
pub mod hostile;
pub mod read;
pub mod rules;
mod sections;
pub mod types;

pub use gateway::{Gateway, DEFAULT_LISTEN};
pub use read::{show, MAX_CONFIG_BYTES};
pub use rules::{gpu_shares, valid_model_name, GpuRow, Limits, MANAGED_ENV, MAX_DRAIN_SECS};
pub use types::*;

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use std::path::Path;

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

    pub fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse_with(
            s,
            Path::new("/etc/citadel/citadel.toml"),
            &Limits::default(),
        )
    }
}
