//! A model's rollout to a new version of its weights (`citadel-service rollout NAME --path P`):
//! the record every party reads, the mode decision, and the one config edit.
//!
//! # The record
//! `paths.runtime_dir/rollout/NAME.json`, written atomically by citadel-service while a rollout
//! runs and removed when it ends (either way). It lives in `/run`: a reboot in the middle of a
//! rollout forgets it, and the box boots the old version from the unchanged config.
//! - start-model `--surge NAME` (`citadel-model-next@NAME.service`) runs the record's path on
//!   its surge port; the main instance (`citadel-model@NAME`) runs the record's path instead of
//!   the config's while the phase is [`Phase::Switched`] or [`Phase::Replacing`].
//! - the gateway routes NAME to the surge port in [`Phase::Switched`] (and in
//!   [`Phase::Restoring`] when there is a surge instance) and answers 503 with `Retry-After`
//!   ("rolling out") in [`Phase::Replacing`] (and [`Phase::Restoring`] without one).
//!
//! # The mode
//! Surge when, for every GPU of the model, the plan's shares plus the model's own share still
//! fit in one GPU (the rule of the config validation: at most 1.0), and a spare port is free;
//! else replace. [`decide`] says which constraint decided.

use crate::config::{Config, Model};
use crate::plan::gpu_shares;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The record's format version.
pub const SCHEMA: u32 = 1;
/// How many ports above the model's own are tried for the surge instance.
pub const SPARE_PORT_SPAN: u16 = 100;
/// The largest record read (it is a few hundred bytes).
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The surge instance is starting and being verified; the main instance serves.
    SurgeStarting,
    /// The gateway routes to the surge instance; the main one restarts on the new path.
    Switched,
    /// Replace mode: the main instance is stopped and started on the new path; the gateway
    /// answers 503 with `Retry-After`.
    Replacing,
    /// A rollback: the main instance restarts on the config's (old) path; the gateway routes to
    /// the surge instance meanwhile if there is one, else answers 503 with `Retry-After`.
    Restoring,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::SurgeStarting => "surge-starting",
            Phase::Switched => "switched",
            Phase::Replacing => "replacing",
            Phase::Restoring => "restoring",
        }
    }
}

/// One rollout in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub schema: u32,
    /// The model (`[models.NAME]`).
    pub name: String,
    pub phase: Phase,
    /// The new `models.NAME.path`, as it will be written to the config.
    pub path: PathBuf,
    /// The new path resolved (relative to `paths.models_link`): what the engine gets.
    pub resolved_path: PathBuf,
    /// The surge instance's port (surge mode).
    pub surge_port: Option<u16>,
    pub started_unix: u64,
}

/// `runtime_dir/rollout`.
pub fn dir(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("rollout")
}

/// `runtime_dir/rollout/NAME.json`.
pub fn file(runtime_dir: &Path, name: &str) -> PathBuf {
    dir(runtime_dir).join(format!("{name}.json"))
}

impl Record {
    /// Write it atomically (mode 0644 in a 0755 directory: start-model and the gateway run as
    /// the service account and only read it).
    pub fn write(&self, runtime_dir: &Path) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let d = dir(runtime_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&d)?;
        let path = file(runtime_dir, &self.name);
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::fsutil::write_atomic(&path, &text, 0o644)?;
        Ok(path)
    }

    /// The record of model `name`; `Ok(None)` when no rollout runs. Only a regular file of a
    /// bounded size is read.
    pub fn read(runtime_dir: &Path, name: &str) -> Result<Option<Record>, String> {
        let path = file(runtime_dir, name);
        match crate::safefs::read_regular_text(&path, MAX_RECORD_BYTES) {
            Ok(s) => serde_json::from_str::<Record>(&s)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Every record in `runtime_dir/rollout` (unreadable ones are returned as errors, by file).
    pub fn read_all(runtime_dir: &Path) -> (Vec<Record>, Vec<String>) {
        let (mut ok, mut bad) = (vec![], vec![]);
        let Ok(rd) = std::fs::read_dir(dir(runtime_dir)) else {
            return (ok, bad);
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for n in names {
            match Record::read(runtime_dir, &n) {
                Ok(Some(r)) if r.name == n => ok.push(r),
                Ok(Some(r)) => bad.push(format!(
                    "{}: names model {:?}",
                    file(runtime_dir, &n).display(),
                    r.name
                )),
                Ok(None) => {}
                Err(e) => bad.push(e),
            }
        }
        (ok, bad)
    }

    /// Remove the record of `name` (none is fine).
    pub fn remove(runtime_dir: &Path, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(file(runtime_dir, name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The path the main instance runs instead of the config's, in this phase.
    pub fn main_path(&self) -> Option<&Path> {
        matches!(self.phase, Phase::Switched | Phase::Replacing).then_some(&self.resolved_path)
    }
}

/// How the new version comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum Mode {
    /// A second instance on `port`, then the switch.
    Surge {
        #[serde(rename = "surge_port")]
        port: u16,
    },
    /// Stop, start on the new path.
    Replace,
}

/// The mode and the constraint that decided it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    #[serde(flatten)]
    pub mode: Mode,
    pub why: String,
}

/// Ports nothing of the config uses: above the model's own, skipping every model's port and the
/// gateway's, below the kernel's ephemeral range start (32768) and at most
/// [`SPARE_PORT_SPAN`] of them.
pub fn spare_port_candidates(cfg: &Config, model: &Model) -> Vec<u16> {
    let taken: Vec<u16> = cfg
        .models
        .iter()
        .map(|m| m.port)
        .chain(std::iter::once(cfg.gateway.listen.port()))
        .collect();
    (1..=SPARE_PORT_SPAN)
        .filter_map(|d| model.port.checked_add(d))
        .filter(|p| *p < 32768 && !taken.contains(p))
        .collect()
}

/// Surge or replace for `model`, from the plan's per-GPU shares and the first free spare port
/// (`port_free` asks the host).
pub fn decide(cfg: &Config, model: &Model, port_free: &dyn Fn(u16) -> bool) -> Decision {
    let rows = gpu_shares(cfg);
    let own = model.gpu_memory_utilization;
    for g in &model.gpus {
        let planned = rows.iter().find(|r| r.index == *g).map_or(0.0, |r| r.share);
        if planned + own > 1.0 + 1e-9 {
            return Decision {
                mode: Mode::Replace,
                why: format!(
                    "no room for a second instance on GPU {g}: its planned share {planned:.2} + {own:.2} (models.{}.gpu_memory_utilization) = {:.2} > 1.00",
                    model.name,
                    planned + own
                ),
            };
        }
    }
    let gpus = if model.gpus.is_empty() {
        "no GPU to share".to_string()
    } else {
        let fits: Vec<String> = model
            .gpus
            .iter()
            .map(|g| {
                let planned = rows.iter().find(|r| r.index == *g).map_or(0.0, |r| r.share);
                format!("GPU {g}: {planned:.2} + {own:.2} <= 1.00")
            })
            .collect();
        fits.join(", ")
    };
    let candidates = spare_port_candidates(cfg, model);
    match candidates.iter().copied().find(|p| port_free(*p)) {
        Some(port) => Decision {
            mode: Mode::Surge { port },
            why: format!("room for a second instance ({gpus}) and spare port {port} is free"),
        },
        None => Decision {
            mode: Mode::Replace,
            why: format!(
                "room on the GPUs ({gpus}) but no spare port: none of the {} ports above {} is free",
                candidates.len(),
                model.port
            ),
        },
    }
}

/// `text` (a config file) with `models.NAME.path` set to `path`; every other byte unchanged
/// (comments, order, spacing; the rest of the edited line, its comment included, is kept). The
/// key must be a `path = "..."` (or `'...'`) line of the `[models.NAME]` table, as the shipped
/// config and `citadel-service check` write it; anything else (a dotted key, an inline table,
/// a multi-line string) is refused with the reason, and the result is proved by parsing both:
/// the new file must be the old one with exactly that value changed.
pub fn set_model_path(text: &str, name: &str, path: &str) -> Result<String, String> {
    let mut old: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("cannot parse: {}", e.message()))?;
    let mut in_table = false;
    let mut offset = 0;
    let mut edited: Option<String> = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            in_table = table_name(t).as_deref() == Some(name);
        } else if in_table && edited.is_none() {
            if let Some(rest) = key_value(line, "path") {
                let start = offset + (line.len() - rest.len());
                let len = string_token(rest)
                    .ok_or_else(|| format!("models.{name}.path is not a one-line string"))?;
                let value = toml::Value::String(path.to_string()).to_string();
                edited = Some(format!("{}{value}{}", &text[..start], &text[start + len..]));
            }
        }
        offset += line.len();
    }
    let Some(new_text) = edited else {
        return Err(if old.get("models").and_then(|m| m.get(name)).is_some() {
            format!("models.{name}.path is not a `path = \"...\"` line of a [models.{name}] table; edit it by hand")
        } else {
            format!("no [models.{name}] table")
        });
    };
    let new: toml::Table = new_text
        .parse()
        .map_err(|e: toml::de::Error| format!("the edit does not parse: {}", e.message()))?;
    if let Some(m) = old
        .get_mut("models")
        .and_then(|m| m.get_mut(name))
        .and_then(|m| m.as_table_mut())
    {
        m.insert("path".into(), toml::Value::String(path.to_string()));
    }
    if new != old {
        return Err(format!(
            "models.{name}.path could not be edited in place (the file has more than one candidate line); edit it by hand"
        ));
    }
    Ok(new_text)
}

/// The model name of a `[models.NAME]` / `[models."NAME"]` header line, if it is one.
fn table_name(line: &str) -> Option<String> {
    let head = line.split('#').next()?.trim();
    let inner = head.strip_prefix('[')?.strip_suffix(']')?.trim();
    if inner.starts_with('[') {
        return None;
    }
    let rest = inner
        .strip_prefix("models")?
        .trim_start()
        .strip_prefix('.')?
        .trim();
    let n = rest.trim_matches('"');
    (!n.is_empty() && !n.contains(['.', '"', ' '])).then(|| n.to_string())
}

/// What follows `key =` on a `key = value` line (leading blanks allowed), if it is that key.
fn key_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix(key)?;
    let rest = rest.trim_start().strip_prefix('=')?;
    Some(rest.trim_start())
}

/// The length of the one-line TOML string (basic or literal, not multi-line) `s` starts with.
fn string_token(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    match b.first()? {
        b'"' if !s.starts_with("\"\"\"") => {
            let mut i = 1;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 2,
                    b'"' => return Some(i + 1),
                    b'\n' => return None,
                    _ => i += 1,
                }
            }
            None
        }
        b'\'' if !s.starts_with("\'\'\'") => s[1..]
            .find(['\'', '\n'])
            .filter(|i| b[i + 1] == b'\'')
            .map(|i| i + 2),
        _ => None,
    }
}

/// Record fixtures for tests (the `testing` feature; never in a shipped binary).
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::{Phase, Record, SCHEMA};

    /// The rollout of model `name` to path `NAME2` (`/models/NAME2`) in `phase`, on
    /// `surge_port`.
    pub fn record(name: &str, phase: Phase, surge_port: Option<u16>) -> Record {
        Record {
            schema: SCHEMA,
            name: name.into(),
            phase,
            path: format!("{name}2").into(),
            resolved_path: format!("/models/{name}2").into(),
            surge_port,
            started_unix: 0,
        }
    }
}

#[cfg(test)]
mod tests;
