//! citadel-gateway: the box's one OpenAI endpoint, routing by `model` to the engines.
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = citadel_gateway::Args::parse();
    args.common.init_logging();
    citadel_common::exit::report(citadel_gateway::run(&args))
}
