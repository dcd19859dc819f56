//! citadel-mangen OUT_DIR: write the man pages and the shell completions (packaging step).
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    citadel_mangen::cli_main(&args)
}
