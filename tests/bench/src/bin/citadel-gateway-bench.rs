//! citadel-gateway-bench: the gateway benchmark of issue 15 (see `citadel_bench::gateway`).
//! `cargo build --release -p citadel-gateway -p citadel-standin -p citadel-bench` first; then
//! `target/release/citadel-gateway-bench [--quick] [--no-rt] [--engine-keepalive] [--out
//! BENCHMARKS.md] [--ab BIN]` (as root: SCHED_FIFO for the measured processes unless
//! `--no-rt`). Prints the table and writes it into BENCHMARKS.md between the markers of its
//! kind of run (the rest of the file is left as it is). `--callgrind [BIN ...] [--keep DIR]`:
//! instructions per request of each gateway build (default this tree's) and of nginx, under
//! valgrind; prints them and writes nothing. `--help` lists the flags.
use std::process::ExitCode;

fn main() -> ExitCode {
    citadel_bench::install_cleanup();
    match citadel_bench::gateway::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("citadel-gateway-bench: {e}");
            citadel_bench::cleanup::all();
            ExitCode::from(1)
        }
    }
}
