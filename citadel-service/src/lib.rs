//! citadel-service: start, stop, inspect and check the whole Citadel box through systemd.
//!
//! Reads the config (`--config`, default `/etc/citadel/citadel.toml`) and the health monitor's
//! state file; talks to systemd only through `systemctl`/`journalctl` argv vectors.
//!
//! Exit codes: 0 ok; 1 failure; 2 usage (unknown service name); 69 systemd unavailable;
//! 78 invalid config.

pub mod check;

use citadel_common::cli::CommonArgs;
use citadel_common::{Exit, Failure};
use clap::{Parser, Subcommand};

/// Run the Citadel LLM box: start, stop, status, logs, health, check and deploy.
#[derive(Debug, Parser)]
#[command(name = "citadel-service", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config and print the plan: one row per model and one per GPU.
    Check {
        /// Print the plan (or the errors) as one JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// Run one command.
pub fn run(cli: &Cli) -> Result<Exit, Failure> {
    match &cli.command {
        Command::Check { json } => check::run(&cli.common.config, *json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
