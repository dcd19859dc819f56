//! health-monitor: watch every enabled model, restart only what is really broken.
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = health_monitor::Args::parse();
    args.common.init_logging();
    citadel_common::exit::report(health_monitor::run(&args))
}
