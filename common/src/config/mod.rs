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
//!   general so that every key, new ones included, goes through them;
//! - [`testing`] (tests only, the `testing` feature): the one way a test reads a config text,
//!   and the model tables the tests of several crates share.

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

#[cfg(any(test, feature = "testing"))]
pub mod testing;
