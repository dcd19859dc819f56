//! citadel-service: the one command an operator uses to run the box. See `citadel-service --help`.
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli: citadel_service::Cli = citadel_common::exit::parse_args();
    cli.common.init_logging();
    citadel_common::exit::report_as(citadel_service::run(&cli), cli.json())
}
