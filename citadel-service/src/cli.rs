//! The command line of citadel-service: [`Cli`], its [`Command`]s and their arguments (clap),
//! with the examples of each `--help` from [`crate::examples`].

use crate::{examples, export, logs};
use citadel_common::cli::CommonArgs;
use citadel_common::Failure;
use clap::{Args, Parser, Subcommand};

/// Run the Citadel LLM box: start, stop, status, logs, health, check and deploy.
#[derive(Debug, Parser)]
#[command(
    name = "citadel-service",
    version,
    about,
    propagate_version = true,
    after_help = examples::MAIN
)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    /// No command: `status`.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The command to run: a bare `citadel-service` is `status`.
    pub fn command_or_status(&self) -> Command {
        self.command.clone().unwrap_or(Command::Status {
            service: ServiceArg::default(),
            json: false,
            probe: false,
        })
    }
}

/// The service a command acts on.
#[derive(Debug, Clone, Default, Args)]
pub struct ServiceArg {
    /// all, storage, gpu, models, monitor, gateway, or a model name from the config. `stop` and
    /// `restart` need it spelled out (`all` for everything); the others default to `all`.
    #[arg(value_name = "SERVICE")]
    pub service: Option<String>,
}

impl ServiceArg {
    /// The name given, or `all`.
    pub fn or_all(&self) -> &str {
        self.service.as_deref().unwrap_or("all")
    }

    /// The name given; none is a usage error naming `all` (stopping or restarting every model
    /// is a long outage, so it is never a default).
    pub fn required(&self, verb: &str) -> Result<&str, Failure> {
        self.service.as_deref().ok_or_else(|| {
            Failure::usage(format!(
                "{verb} needs a service name: a model, storage, gpu, models, monitor, gateway, or all \
                 for every Citadel unit (citadel-service {verb} all)"
            ))
        })
    }
}

/// How `start`/`restart` wait. Every `--timeout SECS` of citadel-service means the same: the
/// longest it waits for any one unit (or, for `health`, one model's `/health`); what it waits
/// for together is waited for side by side.
#[derive(Debug, Clone, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub service: ServiceArg,
    /// Queue the jobs and return without waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting for each unit after this many seconds (all side by side; weights can
    /// take long to load).
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Validate the config and print the plan: one row per model and one per GPU.
    #[command(after_help = examples::CHECK)]
    Check {
        /// Print the plan (or the errors) as one JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Also check the plan against this machine: GPUs (NVML), ports, the API key file,
        /// the units, storage-setup --check and gpu-optimize --check (exit 1 when one fails).
        #[arg(long)]
        host: bool,
    },
    /// Start the service(s) and wait until they are up or have failed (root).
    #[command(after_help = examples::START)]
    Start(StartArgs),
    /// Stop the service(s) gracefully, wait, and report anything left running (root).
    #[command(after_help = examples::STOP)]
    Stop {
        #[command(flatten)]
        service: ServiceArg,
        /// Queue the stop jobs and return without waiting.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting for each unit after this many seconds (all side by side).
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        timeout: u64,
    },
    /// Restart the service(s) and wait until they are up or have failed (root).
    #[command(after_help = examples::RESTART)]
    Restart(StartArgs),
    /// One table: state, PID, uptime, restarts, port, health and GPU memory per unit.
    #[command(after_help = examples::STATUS)]
    Status {
        #[command(flatten)]
        service: ServiceArg,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Probe each model's /health now instead of reading the monitor's state file.
        #[arg(long)]
        probe: bool,
    },
    /// Full-screen live view: per model state, health, requests, tokens/s, KV cache, GPU; q quits.
    #[command(after_help = examples::TOP)]
    Top {
        /// Redraw every SECS seconds.
        #[arg(long, value_name = "SECS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
    },
    /// Show the journal of the service(s).
    #[command(after_help = examples::LOGS)]
    Logs {
        #[command(flatten)]
        service: ServiceArg,
        /// Follow new lines (journalctl -f).
        #[arg(short, long)]
        follow: bool,
        /// Show the last N lines (journalctl -n).
        #[arg(short = 'n', long, value_name = "N")]
        lines: Option<u32>,
        /// Only lines since this time (journalctl --since, e.g. "-1h", "today").
        #[arg(long, value_name = "WHEN", allow_hyphen_values = true)]
        since: Option<String>,
        /// Only lines of this priority or more urgent (journalctl -p: err, warning, 0-7, ...).
        #[arg(short, long, value_name = "PRIO", value_parser = logs::parse_priority)]
        priority: Option<String>,
        /// Only lines matching this pattern (journalctl --grep, PCRE2; case-insensitive when
        /// all lower case).
        #[arg(long, value_name = "PATTERN")]
        grep: Option<String>,
        /// Merge in the kernel's lines of the same time range (NVIDIA Xid, OOM killer).
        #[arg(long)]
        kernel: bool,
    },
    /// Start the box at boot: target, infrastructure, monitor, gateway; the models the config enables (root).
    #[command(after_help = examples::ENABLE)]
    Enable,
    /// Do not start any Citadel unit at boot (root).
    #[command(after_help = examples::DISABLE)]
    Disable,
    /// Probe every enabled model now and check CPU, memory, disk and GPU use.
    #[command(after_help = examples::HEALTH)]
    Health {
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Give up waiting for each model's /health after this many seconds (all side by side;
        /// default: [monitor] probe_timeout_secs).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Apply the edited config: restart only what changed, one model at a time (root).
    #[command(after_help = examples::APPLY)]
    Apply {
        /// Print the plan and change nothing (no root needed).
        #[arg(long)]
        dry_run: bool,
        /// Print the plan (or the errors) as one JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Give up waiting for each unit after this many seconds (one model at a time).
        #[arg(long, value_name = "SECS", default_value_t = 1800)]
        timeout: u64,
    },
    /// Switch a model to a new version of its weights (surge or replace), with rollback (root).
    #[command(after_help = examples::ROLLOUT)]
    Rollout {
        /// The model (a [models.NAME] table of the config).
        #[arg(value_name = "NAME")]
        name: String,
        /// The new models.NAME.path: the new version's directory (typically under
        /// paths.staging_dir; relative paths are under paths.models_link, as in the config).
        #[arg(long, value_name = "PATH", value_hint = clap::ValueHint::DirPath)]
        path: std::path::PathBuf,
        /// Print the plan (mode and why, spare port, steps) and change nothing (no root needed).
        #[arg(long)]
        dry_run: bool,
        /// Print the plan and the outcome as one JSON document on stdout (progress on stderr).
        #[arg(long)]
        json: bool,
        /// Give up waiting for each unit after this many seconds (the new version's load
        /// included: a slower one is rolled back).
        #[arg(long, value_name = "SECS", default_value_t = 1800)]
        timeout: u64,
        /// Also send this prompt to the new version before the switch (a completion)...
        #[arg(long, value_name = "TEXT", requires = "golden_expect")]
        golden_prompt: Option<String>,
        /// ...whose text must contain this.
        #[arg(long, value_name = "TEXT", requires = "golden_prompt")]
        golden_expect: Option<String>,
    },
    /// Phased rollout: 1 storage+gpu, 2 a test model, 3 all enabled models, 4 monitor+gateway+target (root).
    #[command(after_help = examples::DEPLOY)]
    Deploy {
        /// Run only this phase (1-4).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=4))]
        phase: Option<u8>,
        /// The model phase 2 starts and checks (default: the first enabled model of the config).
        #[arg(long, value_name = "NAME")]
        test_model: Option<String>,
        /// Give up waiting for each unit after this many seconds (a phase's units side by side).
        #[arg(long, value_name = "SECS", default_value_t = 1800)]
        timeout: u64,
    },
    /// Why a model is not serving: its state, the latest incident's cause, the fix, the log.
    #[command(after_help = examples::WHY)]
    Why {
        /// The model (a [models.NAME] table of the config).
        #[arg(value_name = "NAME")]
        name: String,
        /// Print the answer (state, incident, quarantined GPUs) as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// GPU quarantine: `gpu clear N` lifts the quarantine of GPU N after a fatal fault (root).
    #[command(after_help = examples::GPU)]
    Gpu {
        #[command(subcommand)]
        action: GpuAction,
    },
    /// Render the config for the cluster a box is outgrown into (stdout, or files in --out DIR).
    #[command(after_help = examples::EXPORT)]
    Export {
        #[command(subcommand)]
        target: ExportTarget,
    },
}

/// What `gpu` does.
#[derive(Debug, Clone, Subcommand)]
pub enum GpuAction {
    /// Lift the quarantine of GPU N (its models stay stopped until started).
    Clear {
        /// The GPU index (NVML / nvidia-smi order).
        #[arg(value_name = "N")]
        gpu: u32,
    },
}

/// What `export` renders.
#[derive(Debug, Clone, Subcommand)]
pub enum ExportTarget {
    /// Kubernetes manifests: per enabled model a Deployment, a Service and a PodDisruptionBudget.
    Kubernetes {
        /// Put every object in this namespace (default: none, so kubectl's current one).
        #[arg(long, value_name = "NS", value_parser = export::parse_namespace)]
        namespace: Option<String>,
        /// Write one file per model (DIR/citadel-NAME.yaml) instead of stdout.
        #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
        out: Option<std::path::PathBuf>,
    },
    /// A values file for vLLM production-stack's Helm chart (servingEngineSpec, routerSpec).
    ProductionStack {
        /// Write DIR/values.yaml instead of stdout.
        #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
        out: Option<std::path::PathBuf>,
    },
}

impl Cli {
    /// Was `--json` asked for (check, status, health)? Then every outcome, errors included, is
    /// one JSON document on stdout.
    pub fn json(&self) -> bool {
        matches!(
            self.command,
            Some(
                Command::Check { json: true, .. }
                    | Command::Status { json: true, .. }
                    | Command::Health { json: true, .. }
                    | Command::Rollout { json: true, .. }
            )
        )
    }
}
