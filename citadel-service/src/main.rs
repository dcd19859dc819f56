//! citadel-service: the one command an operator uses to run the box. See `citadel-service --help`.
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = citadel_service::Cli::parse();
    cli.common.init_logging();
    citadel_common::exit::report(citadel_service::run(&cli))
}
