//! citadel-generator: the config decides which models run.
//!
//! Installed as `/usr/lib/systemd/system-generators/citadel-generator`; systemd runs it at boot
//! and on every `daemon-reload` with three directories (normal, early, late). It reads
//! `/etc/citadel/citadel.toml` (`CITADEL_CONFIG` overrides it, for tests) and writes into the
//! normal directory:
//!
//! - `citadel-models.target.wants/citadel-model@NAME.service`, a link to the template, for every
//!   enabled model (a model removed from the config, or `enabled = false`, has no link, so it is
//!   not started at boot and `citadel-models.target` no longer pulls it);
//! - `citadel-model@.service.d/50-citadel-generator.conf`: `TimeoutStopSec=` covering the
//!   engine's drain (`engine.drain_secs`) and stop grace (`engine.stop_grace_secs`), and `ReadWritePaths=` for a moved `cache_dir`/`runtime_dir`;
//!   the same file for `citadel-model-next@.service` (a rollout's surge instance);
//! - `citadel-monitor.service.d/50-citadel-generator.conf` when the monitor must write outside
//!   the unit's default paths (moved runtime dir, state file, textfile);
//! - for an `engine.api_key_file` other than the units' `/etc/citadel/api-key`: in the model,
//!   monitor and gateway drop-ins, `LoadCredential=api-key:FILE` instead (systemd reads the
//!   file as root and hands it over as the credential, so the service account never needs to
//!   read it; without this the units would load the old path and the account could not read
//!   the new one).
//!
//! - with `gateway.enabled = false`: `citadel-gateway.socket` and `.service` masked (links to
//!   `/dev/null`); otherwise `citadel-gateway.socket.d/50-citadel-generator.conf` with
//!   `ListenStream=` from a `gateway.listen` other than the socket unit's `127.0.0.1:8000`.
//!
//! It never fails the boot: on a broken config (or any error) it writes nothing (or removes what
//! it wrote), logs one line to the kernel log (`/dev/kmsg`: generators run before the journal;
//! `CITADEL_KMSG` overrides it, for tests) and exits 0. The units then fail with 78 as they
//! would without the generator.

use citadel_common::config::{Config, Paths};
use citadel_common::paths;
use citadel_common::text::escape_controls;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Seconds systemd allows on top of drain + grace before it SIGKILLs a model's cgroup.
pub const STOP_MARGIN_SECS: u64 = 30;
/// The file name of every drop-in the generator writes.
pub const DROP_IN: &str = "50-citadel-generator.conf";
/// Default write paths of the monitor unit (`ReadWritePaths=` in citadel-monitor.service).
const MONITOR_TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";

/// One thing the generator creates, relative to its output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A symlink at `path` pointing to `target`.
    Link { path: PathBuf, target: PathBuf },
    /// A regular file at `path`.
    File { path: PathBuf, contents: String },
}

impl Item {
    pub fn path(&self) -> &Path {
        match self {
            Item::Link { path, .. } | Item::File { path, .. } => path,
        }
    }
}

/// The seconds systemd waits for a model to stop: drain, then the SIGTERM-to-SIGKILL grace,
/// then a margin.
pub fn stop_timeout_secs(cfg: &Config) -> u64 {
    u64::from(cfg.engine.drain_secs)
        .saturating_add(cfg.engine.stop_grace_secs)
        .saturating_add(STOP_MARGIN_SECS)
}

/// What the config implies, in a fixed order (links sorted by model name).
pub fn items(cfg: &Config) -> Vec<Item> {
    let wants = PathBuf::from(format!("{}.wants", paths::TARGET_MODELS));
    let template = Path::new(paths::SYSTEM_UNIT_DIR).join(paths::MODEL_TEMPLATE);
    let mut out: Vec<Item> = cfg
        .enabled_models()
        .map(|m| Item::Link {
            path: wants.join(m.unit()),
            target: template.clone(),
        })
        .collect();
    // The surge instance of a rollout (citadel-model-next@) runs like a model: the same drop-in.
    for template in [paths::MODEL_TEMPLATE, paths::SURGE_TEMPLATE] {
        out.push(Item::File {
            path: Path::new(&format!("{template}.d")).join(DROP_IN),
            contents: model_drop_in(cfg),
        });
    }
    if let Some(contents) = monitor_drop_in(cfg) {
        out.push(Item::File {
            path: Path::new(&format!("{}.d", paths::UNIT_MONITOR)).join(DROP_IN),
            contents,
        });
    }
    if !cfg.gateway.enabled {
        // Masked (linked to /dev/null here, above the package's units): not started at boot
        // or by citadel-ai.target, and no restart loop of a gateway with nothing to serve.
        for unit in [paths::SOCKET_GATEWAY, paths::UNIT_GATEWAY] {
            out.push(Item::Link {
                path: PathBuf::from(unit),
                target: PathBuf::from("/dev/null"),
            });
        }
        return out;
    }
    if let Some(contents) = gateway_drop_in(cfg) {
        out.push(Item::File {
            path: Path::new(&format!("{}.d", paths::UNIT_GATEWAY)).join(DROP_IN),
            contents,
        });
    }
    if let Some(contents) = socket_drop_in(cfg) {
        out.push(Item::File {
            path: Path::new(&format!("{}.d", paths::SOCKET_GATEWAY)).join(DROP_IN),
            contents,
        });
    }
    out
}

/// The gateway socket's drop-in: `gateway.listen` when it is not the unit's own
/// `127.0.0.1:8000`, so the socket systemd binds is the address the gateway is configured for
/// (it refuses any other, exit 78). An operator's own drop-in (`systemctl edit`, sorted after
/// this one) still wins.
pub fn socket_drop_in(cfg: &Config) -> Option<String> {
    let default: std::net::SocketAddr = citadel_common::config::DEFAULT_LISTEN
        .parse()
        .expect("valid default");
    (cfg.gateway.listen != default).then(|| {
        format!(
            "{}ListenStream=\nListenStream={}\n",
            header_of(cfg, "Socket"),
            cfg.gateway.listen
        )
    })
}

fn header(cfg: &Config) -> String {
    header_of(cfg, "Service")
}

/// The comment every drop-in starts with, then its `[SECTION]` line.
fn header_of(cfg: &Config, section: &str) -> String {
    format!(
        "# Written by citadel-generator from {} at boot and on daemon-reload; do not edit\n# (edit the config, then run citadel-service apply).\n[{section}]\n",
        escape_controls(&cfg.file.display().to_string())
    )
}

/// The drop-in for every model instance.
pub fn model_drop_in(cfg: &Config) -> String {
    let mut s = header(cfg);
    let _ = writeln!(
        s,
        "# engine.drain_secs ({}) + engine.stop_grace_secs ({}) + {STOP_MARGIN_SECS}s margin",
        cfg.engine.drain_secs, cfg.engine.stop_grace_secs
    );
    let _ = writeln!(s, "TimeoutStopSec={}", stop_timeout_secs(cfg));
    let d = Paths::default();
    let moved: Vec<&Path> = [
        (&cfg.paths.runtime_dir, &d.runtime_dir),
        (&cfg.paths.cache_dir, &d.cache_dir),
    ]
    .into_iter()
    .filter(|(now, default)| now != default)
    .map(|(now, _)| now.as_path())
    .collect();
    if !moved.is_empty() {
        let _ = writeln!(
            s,
            "# paths.runtime_dir / paths.cache_dir moved from the defaults"
        );
        let _ = writeln!(s, "ReadWritePaths={}", words(&moved));
    }
    s.push_str(&credential_lines(cfg));
    s
}

/// `LoadCredential=` for a moved `engine.api_key_file` (empty when it is not moved): the empty
/// assignment drops the unit's own `/etc/citadel/api-key` (systemd ignores a second assignment
/// of the same credential id), then the configured file. `%` is doubled (specifiers); a path
/// with control characters cannot be a unit file value and is left out (logged).
pub fn credential_lines(cfg: &Config) -> String {
    let Some(file) = moved_api_key_file(cfg) else {
        return String::new();
    };
    let text = file.to_string_lossy();
    if text.chars().any(char::is_control) {
        log_line(&format!(
            "engine.api_key_file {:?} has control characters: no LoadCredential= drop-in written",
            text
        ));
        return String::new();
    }
    format!(
        "# engine.api_key_file moved from {}: systemd loads the credential from it\nLoadCredential=\nLoadCredential={}:{}\n",
        paths::API_KEY_FILE,
        paths::API_KEY_CREDENTIAL,
        text.replace('%', "%%")
    )
}

/// `engine.api_key_file` when it is set and is not the units' own credential file.
pub fn moved_api_key_file(cfg: &Config) -> Option<&Path> {
    cfg.engine
        .api_key_file
        .as_deref()
        .filter(|p| *p != Path::new(paths::API_KEY_FILE))
}

/// The gateway's drop-in: only for a moved API key file.
pub fn gateway_drop_in(cfg: &Config) -> Option<String> {
    let cred = credential_lines(cfg);
    (!cred.is_empty()).then(|| format!("{}{cred}", header(cfg)))
}

/// The monitor's drop-in, when it must write outside the unit's default paths.
pub fn monitor_drop_in(cfg: &Config) -> Option<String> {
    let d = Paths::default();
    let mut dirs: Vec<&Path> = vec![];
    if cfg.paths.runtime_dir != d.runtime_dir {
        dirs.push(&cfg.paths.runtime_dir);
    }
    let inside = |p: &Path| p.starts_with(&d.runtime_dir) || p.starts_with(&cfg.paths.runtime_dir);
    if let Some(parent) = cfg.monitor.state_file.parent() {
        if !inside(parent) {
            dirs.push(parent);
        }
    }
    if let Some(parent) = cfg.monitor.textfile.as_deref().and_then(Path::parent) {
        if parent != Path::new(MONITOR_TEXTFILE_DIR) && !inside(parent) {
            dirs.push(parent);
        }
    }
    dirs.dedup();
    let cred = credential_lines(cfg);
    if dirs.is_empty() && cred.is_empty() {
        return None;
    }
    let mut s = header(cfg);
    if !dirs.is_empty() {
        let _ = writeln!(
            s,
            "# runtime dir, state file or textfile outside the defaults"
        );
        let _ = writeln!(s, "ReadWritePaths={}", words(&dirs));
    }
    s.push_str(&cred);
    Some(s)
}

/// Paths as `ReadWritePaths=` words: `-` (a missing path is not an error), double-quoted, with
/// `\`, `"` and control characters C-escaped and `%` doubled (specifiers).
fn words(paths: &[&Path]) -> String {
    paths
        .iter()
        .map(|p| {
            let mut w = String::from("\"-");
            for c in p.to_string_lossy().chars() {
                match c {
                    '\\' => w.push_str("\\\\"),
                    '"' => w.push_str("\\\""),
                    '%' => w.push_str("%%"),
                    c if c.is_control() => {
                        let _ = write!(w, "\\x{:02x}", c as u32);
                    }
                    c => w.push(c),
                }
            }
            w.push('"');
            w
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Create `items` under `dir`, all or nothing: on an error, whatever was created is removed.
pub fn write(dir: &Path, items: &[Item]) -> std::io::Result<()> {
    let mut made: Vec<PathBuf> = vec![];
    let result = (|| {
        for item in items {
            let full = dir.join(item.path());
            if let Some(parent) = full.parent() {
                let mut missing = vec![];
                let mut p = parent;
                while !p.exists() && p != dir {
                    missing.push(p.to_path_buf());
                    p = p.parent().unwrap_or(dir);
                }
                for m in missing.into_iter().rev() {
                    std::fs::create_dir(&m)?;
                    made.push(m);
                }
            }
            match item {
                Item::Link { target, .. } => std::os::unix::fs::symlink(target, &full)?,
                Item::File { contents, .. } => {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(&full)?;
                    f.write_all(contents.as_bytes())?;
                }
            }
            made.push(full);
        }
        Ok(())
    })();
    if result.is_err() {
        for p in made.iter().rev() {
            let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir(p));
        }
    }
    result
}

/// The config the generator reads.
pub fn config_path() -> PathBuf {
    std::env::var_os("CITADEL_CONFIG")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(paths::DEFAULT_CONFIG), PathBuf::from)
}

/// One line to the kernel log (priority `<3>`, error), else to stderr.
pub fn log_line(message: &str) {
    let line = format!(
        "<3>citadel-generator[{}]: {}\n",
        std::process::id(),
        escape_controls(message)
    );
    let kmsg = std::env::var_os("CITADEL_KMSG")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(paths::KMSG), PathBuf::from);
    let written = std::fs::OpenOptions::new()
        .append(true)
        .open(&kmsg)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if written.is_err() {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// What one run did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Items written.
    Wrote(usize),
    /// Nothing written; the one line logged.
    Nothing(String),
}

/// Generate into `normal_dir` from the config at `config`.
pub fn generate(config: &Path, normal_dir: &Path) -> Outcome {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            let first = e.lines().into_iter().next().unwrap_or_default();
            let more = e.issues.len().saturating_sub(1);
            let tail = if more > 0 {
                format!(" (and {more} more problem(s); run citadel-service check)")
            } else {
                String::new()
            };
            return Outcome::Nothing(format!(
                "invalid config, no model is wanted at boot: {first}{tail}"
            ));
        }
    };
    let items = items(&cfg);
    match write(normal_dir, &items) {
        Ok(()) => Outcome::Wrote(items.len()),
        Err(e) => Outcome::Nothing(format!(
            "cannot write into {}: {e}; no model is wanted at boot",
            normal_dir.display()
        )),
    }
}

/// The generator's entry point: `citadel-generator NORMAL_DIR [EARLY_DIR LATE_DIR]`.
pub fn main_with(args: &[OsString]) -> Outcome {
    let outcome = match args.first() {
        Some(dir) => generate(&config_path(), Path::new(dir)),
        None => Outcome::Nothing(
            "usage: citadel-generator NORMAL_DIR [EARLY_DIR LATE_DIR] (run by systemd)".into(),
        ),
    };
    if let Outcome::Nothing(line) = &outcome {
        log_line(line);
    }
    outcome
}

#[cfg(test)]
mod tests;
