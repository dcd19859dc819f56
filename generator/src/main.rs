//! citadel-generator: a systemd generator (run at boot and on every daemon-reload) that makes
//! citadel-models.target want exactly the enabled models of the config. Never fails the boot:
//! it always exits 0 (see lib.rs).
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    citadel_generator::main_with(&args);
    ExitCode::SUCCESS
}
