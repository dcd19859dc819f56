//! The command line.

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "Watch every enabled Citadel model: probe in parallel, restart only what is really broken (never a model that is loading or was stopped)",
    after_help = "Examples:
  /usr/lib/citadel/health-monitor --once
      one sweep now, as a table; restarts nothing, writes nothing
  /usr/lib/citadel/health-monitor --once --json
      the same in the state-file schema"
)]
pub struct Args {
    #[command(flatten)]
    pub common: citadel_common::cli::CommonArgs,
    /// Run one sweep, print the result and exit: 0 when every enabled model is healthy, 1
    /// otherwise. Never restarts anything and writes no state file. The sweep waits for the
    /// deep probe when one is configured (up to monitor.deep_probe_timeout_secs).
    #[arg(long)]
    pub once: bool,
    /// With --once: print the result as JSON (the state-file schema) instead of a table.
    #[arg(long, requires = "once")]
    pub json: bool,
    /// Make the monitor running as PID re-read its config (SIGHUP) and wait until it has:
    /// exit 0 when the new config is in use, 78 when the monitor refused it (it keeps the old
    /// one), 75 when it did not answer in time. The unit's ExecReload=.
    #[arg(long, value_name = "PID", conflicts_with = "once")]
    pub reload: Option<i32>,
}
