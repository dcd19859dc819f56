//! start-model: run one model server for `citadel-model@NAME.service`. See `start-model --help`
//! and the crate documentation (lib.rs) for the steps, the engine's environment and exit codes.
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli: start_model::Cli = citadel_common::exit::parse_args();
    cli.common.init_logging();
    citadel_common::exit::report(start_model::run(&cli))
}
