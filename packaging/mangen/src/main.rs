//! citadel-mangen OUT_DIR: write the man pages and the bash completion (packaging step).
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: citadel-mangen OUT_DIR");
        return ExitCode::from(2);
    };
    match citadel_mangen::generate(std::path::Path::new(&out)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "citadel-mangen: {}: {e}",
                std::path::Path::new(&out).display()
            );
            ExitCode::FAILURE
        }
    }
}
