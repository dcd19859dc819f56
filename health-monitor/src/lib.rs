//! health-monitor: watch every enabled model, restart only what is really broken, never what
//! is loading or was stopped on purpose.
//!
//! One [`Monitor::sweep`] asks systemd for every model unit (over D-Bus, the one client of
//! [`citadel_common::systemd`]; no process started), probes
//! every active model in parallel (`/health` + `/metrics`, each bounded by the probe timeout),
//! picks up finished deep probes, runs the pure decision ([`decide::decide`]) per model, issues
//! a restart job (`systemctl restart --no-block`'s D-Bus call) where it says so, logs transitions only, and writes the state
//! file and textfile. [`run`] loops it under systemd (`READY=1` after the first sweep,
//! `WATCHDOG=1` each loop, `STATUS=`), or runs one read-only sweep for `--once`.
//!
//! One concern per module: [`args`] (command line), [`settings`] (settings, targets,
//! authority), [`monitor`] (the sweep), [`sweep`] (parallel probes), [`deep`] (deep-probe
//! scheduling), [`decide`] (the pure decision), [`budget`] (restart budget), [`webhook`],
//! [`transitions`] (transition logging), [`signals`], [`reload`] (SIGHUP config reload),
//! [`output`] (state file, textfile, table), [`incidents`] (incidents, GPU faults and
//! quarantine, alerts) and [`run`] (the run loop).

pub mod args;
pub mod budget;
pub mod decide;
pub mod deep;
pub mod incidents;
pub mod metrics;
pub mod monitor;
pub mod output;
pub mod reload;
pub mod run;
pub mod settings;
mod signals;
pub mod sweep;
mod transitions;
pub mod webhook;

pub use args::Args;
pub use monitor::{GpuReader, Monitor, SweepReport};
pub use run::{gpu_reader, gpu_snapshots, run};
pub use settings::{Authority, Settings, StatusOnly, Target};
