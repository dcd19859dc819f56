//! health-monitor: watch every enabled model, restart only what is really broken.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: health_monitor::Args = citadel_common::exit::parse_args();
    args.common.init_logging();
    citadel_common::exit::report_as(health_monitor::run(&args), args.json)
}
