//! storage-setup: verify and prepare Citadel's storage (mounts, models link, directories, model
//! files) before any model starts. Run by citadel-storage.service; see `storage-setup --help`
//! and the crate docs (lib.rs) for checks, modes and exit codes.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: storage_setup::Args = citadel_common::exit::parse_args();
    args.common.init_logging();
    citadel_common::exit::report_as(storage_setup::run(&args), args.json)
}
