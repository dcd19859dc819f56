//! citadel-sdbox: boot, use and tear down Citadel boxes (real systemd in systemd-nspawn) by
//! hand, and the demo behind `demo.sh`. See `citadel-sdbox --help`.
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = citadel_system_tests::cli::Cli::parse();
    citadel_system_tests::cli::run(&cli)
}
