//! Man pages and shell completion generated from the binaries' own clap definitions, so they
//! can never disagree with `--help`. Used by `packaging/build-deb.sh`:
//! `cargo run -p citadel-mangen -- OUT_DIR` writes `OUT_DIR/man/NAME.SECTION` for the five
//! binaries and `OUT_DIR/completions/citadel-service` (bash).

pub mod completion;

use clap::CommandFactory;
use std::io;
use std::path::{Path, PathBuf};

/// One installed binary: its name, man section and clap definition.
pub struct Binary {
    pub name: &'static str,
    /// 1 for `citadel-service` (on `$PATH`), 8 for the helpers that systemd runs from
    /// `/usr/lib/citadel`.
    pub section: &'static str,
    pub command: fn() -> clap::Command,
}

/// Every binary the package installs.
pub fn binaries() -> Vec<Binary> {
    vec![
        Binary {
            name: "citadel-service",
            section: "1",
            command: citadel_service::Cli::command,
        },
        Binary {
            name: "storage-setup",
            section: "8",
            command: storage_setup::Args::command,
        },
        Binary {
            name: "gpu-optimize",
            section: "8",
            command: gpu_optimize::Args::command,
        },
        Binary {
            name: "start-model",
            section: "8",
            command: start_model::Cli::command,
        },
        Binary {
            name: "health-monitor",
            section: "8",
            command: health_monitor::Args::command,
        },
    ]
}

/// Render the man page of one binary (roff).
pub fn man_page(b: &Binary) -> io::Result<Vec<u8>> {
    let cmd = (b.command)().name(b.name);
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .section(b.section)
        .manual("Citadel")
        .source(concat!("citadel ", env!("CARGO_PKG_VERSION")))
        .render(&mut out)?;
    Ok(out)
}

/// What the completion scripts are generated from.
pub fn completion_spec() -> completion::Spec {
    completion::Spec::from_command(
        citadel_service::Cli::command(),
        &citadel_service::services::FIXED_NAMES,
    )
}

/// The completion scripts: (file name under `completions/`, text) for bash, zsh and fish.
pub fn completions() -> Vec<(&'static str, String)> {
    let spec = completion_spec();
    vec![
        ("citadel-service", completion::bash(&spec)),
        ("_citadel-service", completion::zsh(&spec)),
        ("citadel-service.fish", completion::fish(&spec)),
    ]
}

/// Write every man page and the completion under `out`; returns the files written.
pub fn generate(out: &Path) -> io::Result<Vec<PathBuf>> {
    let man = out.join("man");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    let mut written = Vec::new();
    for b in binaries() {
        let p = man.join(format!("{}.{}", b.name, b.section));
        std::fs::write(&p, man_page(&b)?)?;
        written.push(p);
    }
    for (name, text) in completions() {
        let p = comp.join(name);
        std::fs::write(&p, text)?;
        written.push(p);
    }
    Ok(written)
}

/// The usage line of `citadel-mangen`.
pub const USAGE: &str = "usage: citadel-mangen OUT_DIR\n\
Writes OUT_DIR/man/*.{1,5,8} (one page per binary and per citadel-service subcommand, and\n\
citadel.toml(5)) and OUT_DIR/completions/ (bash, zsh, fish). OUT_DIR must not start with '-'.";

/// `citadel-mangen ARGS`: `--help`/`-h` print the usage (exit 0); anything but exactly one
/// argument that does not start with `-` is a usage error (exit 2), so `--help` never becomes a
/// directory named `--help`.
pub fn cli_main(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    use std::process::ExitCode;
    match args {
        [a] if a == "--help" || a == "-h" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        [out] if !out.to_string_lossy().starts_with('-') => match generate(Path::new(out)) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("citadel-mangen: {}: {e}", Path::new(out).display());
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_names_its_binary_and_section() {
        for b in binaries() {
            (b.command)().debug_assert();
            let page = String::from_utf8(man_page(&b).unwrap()).unwrap();
            assert!(
                page.contains(&format!(".TH {} {}", b.name, b.section)),
                "{}: {}",
                b.name,
                &page[..page.len().min(300)]
            );
            assert!(
                page.contains("\\-\\-config"),
                "{}: no --config in the page",
                b.name
            );
        }
    }

    #[test]
    fn the_citadel_service_page_lists_export() {
        let page = String::from_utf8(man_page(&binaries()[0]).unwrap()).unwrap();
        assert!(
            page.contains("citadel\\-service\\-export") || page.contains("export"),
            "{page}"
        );
        assert!(page.contains("Render the config for the cluster"), "{page}");
    }

    #[test]
    fn completion_knows_the_subcommands_and_the_service_names() {
        let spec = completion_spec();
        let names: Vec<&str> = spec.subs.iter().map(|s| s.name.as_str()).collect();
        assert!(
            names.contains(&"status") && names.contains(&"help"),
            "{names:?}"
        );
        let status = spec.subs.iter().find(|s| s.name == "status").unwrap();
        assert_eq!(status.positional, Some(completion::Values::Services));
        assert_eq!(spec.fixed_services[0], "all");
    }

    #[test]
    fn generate_writes_one_page_per_binary_and_the_completion() {
        let d = tempfile::tempdir().unwrap();
        let files = generate(d.path()).unwrap();
        assert_eq!(files.len(), binaries().len() + completions().len());
        for f in files {
            assert!(
                std::fs::metadata(&f).unwrap().len() > 100,
                "{}",
                f.display()
            );
        }
    }
}
