//! gpu-optimize: apply the `[gpu]` policy to the NVIDIA GPUs and verify them (`--check`: verify
//! only; `--restore`: put back what was saved). Run by citadel-gpu.service. See the crate docs.
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = gpu_optimize::Args::parse();
    args.common.init_logging();
    citadel_common::exit::report(gpu_optimize::run(&args))
}
