//! citadel-common: the plumbing every Citadel helper shares.
//!
//! One crate, used by all five binaries, so that a path, an exit code or the way we talk to
//! systemd is written exactly once:
//! - [`config`]: the one TOML file that describes the box, and its validation
//!   ([`config::hostile`]: the rules that keep a hostile config off the system);
//! - [`plan`]: the per-model and per-GPU view of a validated config (`citadel-service check`);
//! - [`output`]: the one aligned table and the one way to print a JSON document (and fail to);
//! - [`exit`]: the exit-code contract shared with the unit files;
//! - [`logging`]: journal-friendly logging (priority prefixes, no timestamps);
//! - [`paths`]: install paths, system tools and unit names;
//! - [`cli`]: the flags every binary takes (`--config`, `-v`, `-q`);
//! - [`notify`]: sd_notify without libsystemd;
//! - [`systemd`]: the one systemd client (unit states and jobs over D-Bus, [`systemd::ActiveState`],
//!   one fake behind the `testing` feature); [`systemctl`]: the one wrapper around `systemctl`;
//! - [`probe`]: bounded HTTP probes of a model server (typed outcomes, one parallel
//!   [`probe::probe_all`]);
//! - [`signals`]: the stop / reload / no-drain signal flags of start-model and health-monitor;
//! - [`promtext`]: Prometheus text format samples (vLLM's `/metrics`);
//! - [`modelfiles`] and [`access`]: "is this model directory complete and readable by the
//!   service account", shared by storage-setup and start-model;
//! - [`fsutil`]: atomic writes; [`safefs`]: fd-relative, symlink-free directory operations and
//!   capped reads of regular files, for helpers that treat every path as hostile;
//! - [`clientkeys`]: the gateway's client keys (`gateway.api_keys_file`), constant-time checks;
//! - [`apikey`]: the model servers' API key (systemd credential, else `engine.api_key_file`);
//! - [`gpu`]: read-only GPU snapshots through NVML (or a readings file: `CITADEL_FAKE_GPU`);
//! - [`launch`]: the argv and environment of one model server (start-model, exports), and
//!   the one "is this port free" test;
//! - [`rollout`]: `citadel-service rollout`'s record (read by start-model and the gateway),
//!   its surge-or-replace decision and its one-key config edit;
//! - [`vllm`]: the flags `vllm serve` 0.33 accepts;
//! - [`classify`] and [`incident`]: why a model went down (the engine's output classified, one
//!   actionable line) and the bounded incident store in `state_dir/incidents`;
//! - [`gpufault`]: GPU faults at run time (Xid lines, NVML health) and what they call for;
//! - [`alert`]: webhook payloads (plain JSON or Alertmanager's `/api/v2/alerts`);
//! - [`text`]: control characters escaped wherever config, engine or state text is printed.

pub mod access;
pub mod alert;
pub mod apikey;
pub mod classify;
pub mod cli;
pub mod clientkeys;
pub mod config;
pub mod exit;
pub mod fsutil;
pub mod gpu;
pub mod gpufault;
pub mod health;
pub mod incident;
pub mod launch;
pub mod logging;
pub mod modelfiles;
pub mod notify;
pub mod output;
pub mod paths;
pub mod plan;
pub mod probe;
pub mod procnet;
pub mod promtext;
pub mod quarantine;
pub mod report;
pub mod rollout;
pub mod safefs;
pub mod salvage;
pub mod signals;
pub mod systemctl;
pub mod systemd;
pub mod text;
pub mod vllm;

pub use exit::{Exit, Failure};
