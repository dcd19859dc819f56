//! citadel-bench: measure what operators feel and write BENCHMARKS.md (see the crate docs).
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = citadel_bench::Args::parse();
    citadel_bench::install_cleanup();
    match citadel_bench::run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("citadel-bench: {e}");
            citadel_bench::cleanup::all();
            ExitCode::from(1)
        }
    }
}
