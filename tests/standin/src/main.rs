//! citadel-standin: a stand-in for `vllm serve` (see the crate docs for the knobs).
//!
//! The command line is vLLM's, not clap's: `citadel-standin serve MODEL_PATH [vllm serve flags]`,
//! checked against the project's copy of vLLM 0.33's flag list, so it is parsed by
//! [`citadel_standin::cli`] rather than clap.
use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    ExitCode::from(citadel_standin::main_with(&argv))
}
