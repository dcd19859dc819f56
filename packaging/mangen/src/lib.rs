//! Man pages and shell completion generated from the binaries' own clap definitions, so they
//! can never disagree with `--help`. Used by `packaging/build-deb.sh`:
//! `cargo run -p citadel-mangen -- OUT_DIR` writes `OUT_DIR/man/NAME.SECTION` for the five
//! binaries and `OUT_DIR/completions/citadel-service` (bash).

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

/// Render the bash completion of `citadel-service`.
pub fn bash_completion() -> Vec<u8> {
    let mut cmd = citadel_service::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::Bash,
        &mut cmd,
        "citadel-service",
        &mut out,
    );
    out
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
    let p = comp.join("citadel-service");
    std::fs::write(&p, bash_completion())?;
    written.push(p);
    Ok(written)
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
    fn completion_knows_the_subcommands() {
        let text = String::from_utf8(bash_completion()).unwrap();
        assert!(text.contains("complete -F"), "{text}");
        assert!(text.contains("check"), "{text}");
    }

    #[test]
    fn generate_writes_one_page_per_binary_and_the_completion() {
        let d = tempfile::tempdir().unwrap();
        let files = generate(d.path()).unwrap();
        assert_eq!(files.len(), binaries().len() + 1);
        for f in files {
            assert!(
                std::fs::metadata(&f).unwrap().len() > 100,
                "{}",
                f.display()
            );
        }
    }
}
