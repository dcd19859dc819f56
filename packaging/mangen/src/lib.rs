//! Man pages and shell completion generated from the binaries' own clap definitions, so they
//! can never disagree with `--help`. Used by `packaging/build-deb.sh`:
//! `cargo run -p citadel-mangen -- OUT_DIR` writes under `OUT_DIR/man/` one page per binary
//! (`citadel-service.1`, the helpers in section 8), one per `citadel-service` subcommand
//! (`citadel-service-status.1` ...), and `citadel.toml.5` (the README's config reference),
//! and under `OUT_DIR/completions/` the bash, zsh and fish completion of `citadel-service`.
//!
//! Every page has EXIT STATUS (from `citadel_common::Exit`), FILES, ENVIRONMENT and EXAMPLES
//! (the examples that end the command's `--help`) sections.

pub mod completion;
pub mod roff;

use citadel_common::Exit;
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
    /// The FILES section: (path, what it is).
    pub files: &'static [(&'static str, &'static str)],
    /// The ENVIRONMENT section beyond `CITADEL_CONFIG` and `RUST_LOG`.
    pub env: &'static [(&'static str, &'static str)],
}

const CONFIG_FILE: (&str, &str) = (
    "/etc/citadel/citadel.toml",
    "the config file (see citadel.toml(5)); --config or CITADEL_CONFIG name another",
);
const ENV_FILE: (&str, &str) = (
    "/etc/citadel/citadel-ai.env",
    "environment for every Citadel unit (RUST_LOG, for example)",
);
const STATE_FILE: (&str, &str) = (
    "/run/citadel/health.json",
    "the health monitor's state (monitor.state_file)",
);

/// Every binary the package installs.
pub fn binaries() -> Vec<Binary> {
    vec![
        Binary {
            name: "citadel-service",
            section: "1",
            command: citadel_service::Cli::command,
            files: &[
                CONFIG_FILE,
                STATE_FILE,
                ENV_FILE,
                ("/lib/systemd/system/citadel-*", "the unit files it starts, stops and reads"),
                ("/usr/lib/citadel/", "the helpers the units run (storage-setup, gpu-optimize, start-model, health-monitor, citadel-gateway)"),
                ("/usr/share/doc/citadel/README.md", "the operator's guide: setup on a real box, troubleshooting"),
            ],
            env: &[
                ("NO_COLOR", "set (to anything): no colour even on a terminal"),
            ],
        },
        Binary {
            name: "storage-setup",
            section: "8",
            command: storage_setup::Args::command,
            files: &[
                CONFIG_FILE,
                ("/mnt/citadel-models", "the models mount (paths.models_mount); must be a real mount point"),
                ("/opt/citadel/models", "the models link (paths.models_link) to paths.models_active"),
                ("/run/citadel", "runtime directory: locks, health state"),
            ],
            env: &[],
        },
        Binary {
            name: "gpu-optimize",
            section: "8",
            command: gpu_optimize::Args::command,
            files: &[
                CONFIG_FILE,
                ("/var/lib/citadel/gpu-saved.json", "the GPU settings before the first change, put back by --restore"),
            ],
            env: &[],
        },
        Binary {
            name: "start-model",
            section: "8",
            command: start_model::Cli::command,
            files: &[
                CONFIG_FILE,
                ("/etc/citadel/api-key", "the API key, read through the unit's LoadCredential= (engine.api_key_file)"),
                ("/run/citadel/locks/gpuN.lock", "held while a model initialises on GPU N"),
            ],
            env: &[
                ("CREDENTIALS_DIRECTORY", "set by systemd: where the api-key credential is"),
                ("NOTIFY_SOCKET", "set by systemd: READY=1 and STATUS= go there"),
            ],
        },
        Binary {
            name: "health-monitor",
            section: "8",
            command: health_monitor::Args::command,
            files: &[
                CONFIG_FILE,
                STATE_FILE,
            ],
            env: &[
                ("NOTIFY_SOCKET", "set by systemd: READY=1 after the first sweep, WATCHDOG=1"),
                ("WATCHDOG_USEC", "set by systemd: the watchdog interval"),
            ],
        },
        Binary {
            name: "citadel-gateway",
            section: "8",
            command: citadel_gateway::Args::command,
            files: &[
                CONFIG_FILE,
                STATE_FILE,
                ("/etc/citadel/api-key", "the engines' API key, added upstream (the unit's LoadCredential=)"),
                ("/etc/citadel/gateway-api-keys", "client keys when gateway.api_keys_file names it: one a line, NAME:KEY"),
                ("/lib/systemd/system/citadel-gateway.socket", "the listening socket (ListenStream= must match gateway.listen)"),
            ],
            env: &[
                ("LISTEN_FDS", "set by systemd: the socket of citadel-gateway.socket"),
                ("CREDENTIALS_DIRECTORY", "set by systemd: where the api-key credential is"),
                ("NOTIFY_SOCKET", "set by systemd: READY=1, STATUS= and STOPPING=1 go there"),
            ],
        },
    ]
}

const AQ: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// clap_mangen starts every rendered section with the `Aq` string definition; keep one, first.
fn tidy(page: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&page).replace(AQ, "");
    format!("{AQ}{text}").into_bytes()
}

/// The header every page starts with.
fn title(name: &str, section: &str) -> String {
    format!(
        ".TH {name} {section} \"\" \"citadel {}\" \"Citadel\"\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The examples at the end of a command's `--help` (`Examples:`, then each command indented
/// by two spaces and what it does by six) as (command, what) pairs; the one parser is
/// [`citadel_service::examples::parse`] (every binary's help follows that layout).
pub fn examples(cmd: &clap::Command) -> Vec<(String, String)> {
    let text = cmd
        .get_after_help()
        .map(|t| t.to_string())
        .unwrap_or_default();
    citadel_service::examples::parse(&text)
}

/// EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES and SEE ALSO.
fn common_sections(b: &Binary, cmd: &clap::Command, see_also: &[String]) -> String {
    let mut s = roff::section("EXIT STATUS");
    let codes: Vec<(String, String)> = Exit::ALL
        .iter()
        .map(|e| (e.code().to_string(), e.meaning().to_string()))
        .collect();
    s.push_str(&roff::items(&codes));
    s.push_str(&roff::section("ENVIRONMENT"));
    let mut env = vec![
        (
            "CITADEL_CONFIG".to_string(),
            "the config file, when --config is not given".to_string(),
        ),
        (
            "RUST_LOG".to_string(),
            "log filter; overrides -v and -q (env_logger syntax)".to_string(),
        ),
        (
            "JOURNAL_STREAM".to_string(),
            "set by systemd: log lines carry syslog priority prefixes and no timestamps"
                .to_string(),
        ),
    ];
    env.extend(b.env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    s.push_str(&roff::items(&env));
    s.push_str(&roff::section("FILES"));
    let files: Vec<(String, String)> = b
        .files
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.push_str(&roff::items(&files));
    let ex = examples(cmd);
    if !ex.is_empty() {
        s.push_str(&roff::section("EXAMPLES"));
        s.push_str(&roff::items(&ex));
    }
    s.push_str(&roff::section("SEE ALSO"));
    s.push_str(&roff::escape(&see_also.join(", ")));
    s.push('\n');
    s
}

fn see_also(not: &str) -> Vec<String> {
    let mut v: Vec<String> = binaries()
        .iter()
        .filter(|b| b.name != not)
        .map(|b| format!("{}({})", b.name, b.section))
        .collect();
    v.push("citadel.toml(5)".into());
    v.push("systemctl(1)".into());
    v.push("journalctl(1)".into());
    v
}

/// Render the man page of one binary (roff).
pub fn man_page(b: &Binary) -> io::Result<Vec<u8>> {
    let mut cmd = (b.command)().name(b.name).disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone()).section(b.section);
    let mut out = title(b.name, b.section).into_bytes();
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut out)?;
    }
    out.extend(common_sections(b, &cmd, &see_also(b.name)).into_bytes());
    man.render_version_section(&mut out)?;
    Ok(tidy(out))
}

/// The pages of `citadel-service`'s subcommands: (file name, roff).
pub fn subcommand_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    let b = &binaries()[0];
    let mut cmd = (b.command)().name(b.name).disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![];
    for sub in cmd.get_subcommands() {
        let name = format!("{}-{}", b.name, sub.get_name());
        let man = clap_mangen::Man::new(sub.clone()).section(b.section);
        let mut out = title(&name, b.section).into_bytes();
        man.render_name_section(&mut out)?;
        man.render_synopsis_section(&mut out)?;
        man.render_description_section(&mut out)?;
        man.render_options_section(&mut out)?;
        // Nested subcommands (`export kubernetes`) are described here, not on pages of their own.
        if sub.has_subcommands() {
            out.extend(roff::section("SUBCOMMANDS").into_bytes());
            let list: Vec<(String, String)> = sub
                .get_subcommands()
                .map(|n| {
                    (
                        format!("{} {} {}", b.name, sub.get_name(), n.get_name()),
                        n.get_about().map(|a| a.to_string()).unwrap_or_default(),
                    )
                })
                .collect();
            out.extend(roff::items(&list).into_bytes());
        }
        let mut also = vec![format!("{}({})", b.name, b.section)];
        also.extend(
            cmd.get_subcommands()
                .filter(|o| o.get_name() != sub.get_name())
                .map(|o| format!("{}-{}({})", b.name, o.get_name(), b.section)),
        );
        also.push("citadel.toml(5)".into());
        out.extend(common_sections(b, sub, &also).into_bytes());
        pages.push((format!("{name}.{}", b.section), tidy(out)));
    }
    Ok(pages)
}

/// The README, whose "The config file" section is the body of citadel.toml(5).
pub const README: &str = include_str!("../../../README.md");

/// The README section `## The config file` (up to the next `## ` heading), without its heading.
pub fn config_reference(readme: &str) -> Option<&str> {
    let start = readme.find("\n## The config file\n")? + 1;
    let body = &readme[start..];
    let body = &body[body.find('\n')? + 1..];
    let end = body.find("\n## ").map_or(body.len(), |e| e + 1);
    Some(&body[..end])
}

/// citadel.toml(5): the whole config reference.
pub fn config_page() -> io::Result<Vec<u8>> {
    let body = config_reference(README).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "README.md has no \"## The config file\" section",
        )
    })?;
    let mut s = String::from("'\\\" t\n");
    s.push_str(&title("citadel.toml", "5"));
    s.push_str(&roff::section("NAME"));
    s.push_str("citadel.toml \\- the Citadel configuration file\n");
    s.push_str(&roff::section("SYNOPSIS"));
    s.push_str("\\fI/etc/citadel/citadel.toml\\fR\n");
    s.push_str(&roff::section("DESCRIPTION"));
    s.push_str(&roff::markdown(body));
    s.push_str(&roff::section("EXIT STATUS"));
    s.push_str(&roff::items(&[(
        "78".to_string(),
        format!(
            "{} (every binary, before it touches anything)",
            Exit::Config.meaning()
        ),
    )]));
    s.push_str(&roff::section("FILES"));
    s.push_str(&roff::items(&[
        (CONFIG_FILE.0.to_string(), "the config file".to_string()),
        (
            "/usr/share/doc/citadel/README.md".to_string(),
            "the operator's guide".to_string(),
        ),
    ]));
    s.push_str(&roff::section("EXAMPLES"));
    s.push_str(&roff::items(&[
        (
            "citadel-service check".to_string(),
            "every problem at once, or the plan".to_string(),
        ),
        (
            "citadel-service --config /tmp/new.toml check".to_string(),
            "check a candidate before installing it".to_string(),
        ),
    ]));
    s.push_str(&roff::section("SEE ALSO"));
    s.push_str(&roff::escape(&see_also("").join(", ")));
    s.push('\n');
    Ok(s.into_bytes())
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
    for (name, page) in subcommand_pages()? {
        let p = man.join(name);
        std::fs::write(&p, page)?;
        written.push(p);
    }
    let p = man.join("citadel.toml.5");
    std::fs::write(&p, config_page()?)?;
    written.push(p);
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
        let subcommands = citadel_service::Cli::command().get_subcommands().count();
        assert_eq!(
            files.len(),
            binaries().len() + subcommands + 1 + completions().len()
        );
        for f in files {
            assert!(
                std::fs::metadata(&f).unwrap().len() > 100,
                "{}",
                f.display()
            );
        }
    }
}
