//! gpu-optimize: apply the `[gpu]` policy to the NVIDIA GPUs and verify them (`--check`: verify
//! only; `--restore`: put back what was saved). Run by citadel-gpu.service. See the crate docs.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: gpu_optimize::Args = citadel_common::exit::parse_args();
    args.common.init_logging();
    citadel_common::exit::report_as(gpu_optimize::run(&args), args.json)
}
