//! `citadel-service check --host`: the plan against this machine. `check` alone validates the
//! config; with `--host` it also checks
//!
//! - `gpus`: every GPU the enabled models name exists (NVML's count), and each GPU's share of
//!   memory (`gpu_memory_utilization`) is free of other processes' memory;
//! - `ports`: each enabled model's port, and the gateway's, is free unless its own unit runs
//!   (something else listening there makes the model fail to bind, exit 75);
//! - `api-key`: the key file (`engine.api_key_file`, else `/etc/citadel/api-key` when present)
//!   has a key on its first line and is not readable by others, and the units load it
//!   (`LoadCredential=`: systemd reads it as root, so the service account never needs to);
//! - `units`: the units are installed and systemd runs the current config (the generator's
//!   output in /run/systemd/generator is what the config implies; else `daemon-reload`);
//! - `storage-setup --check` and `gpu-optimize --check` (in /usr/lib/citadel, off PATH): their
//!   verdict and last line.
//!
//! Reading the machine ([`gather`]) and judging it ([`evaluate`]) are apart, so the judging is
//! tested on plain data. Exit codes: 0 every check ok or warn, 1 a check failed, 78 the config
//! is invalid (nothing else is checked then).
//!
//! Over 500 lines as one concern: one function per check listed above, each with the message it
//! prints; tests are in `hostcheck/tests.rs`.

use crate::services::Service;
use crate::systemd::{ActiveState, Host, Unit};
use citadel_common::config::Config;
use citadel_common::gpu::Snapshot;
use citadel_common::plan::Plan;
use citadel_common::report::{verdict, Finding, Status, Verdict};
use citadel_common::text::count;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where systemd puts the output of generators that run as "normal".
pub const GENERATOR_DIR: &str = "/run/systemd/generator";
/// The helpers whose `--check` runs too.
pub const HELPERS: [&str; 2] = ["storage-setup", "gpu-optimize"];

/// One verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostCheck {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do about it (fail and warn).
    pub fix: Option<String>,
    /// A helper's whole report (`storage-setup --check`, `gpu-optimize --check`), escaped;
    /// printed under a failed check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl Finding for HostCheck {
    fn status(&self) -> Status {
        self.status
    }
}

/// What the host checks come to (exit 1 when one failed).
pub fn judge(checks: &[HostCheck]) -> Verdict {
    verdict(checks)
}

fn check(name: &str, status: Status, detail: String, fix: Option<String>) -> HostCheck {
    HostCheck {
        name: name.to_string(),
        status,
        detail,
        fix,
        output: None,
    }
}

/// The key file as this process found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub path: PathBuf,
    /// `Err`: why it cannot be read (missing, permission ...); `Ok`: its first line is a key.
    pub readable: Result<bool, String>,
    /// The permission bits.
    pub mode: Option<u32>,
}

/// A helper's `--check`: its exit code and output, or why it could not run.
pub type HelperRun = Result<(i32, String), String>;

/// Everything read from the machine.
#[derive(Debug, Clone)]
pub struct Facts {
    pub gpus: Result<Snapshot, String>,
    /// TCP ports something listens on (IPv4 and IPv6).
    pub listening: Result<BTreeSet<u16>, String>,
    /// The units of `Service::All` by name; `Err` without systemd.
    pub units: Result<BTreeMap<String, Unit>, String>,
    pub key: Option<KeyFile>,
    /// Per-model boot links in /etc (`systemctl enable citadel-model@NAME`): they start a model
    /// at boot whatever the config says.
    pub etc_model_links: Vec<String>,
    /// What the generator wrote, by path relative to [`GENERATOR_DIR`] (`None`: not there).
    pub generated: BTreeMap<PathBuf, Option<String>>,
    /// Each helper's `--check`: exit code and output, or why it could not run.
    pub helpers: Vec<(String, HelperRun)>,
}

/// Read the machine.
pub fn gather(host: &dyn Host, cfg: &Config) -> Facts {
    // The gateway's socket too: it listens on the gateway's port while the service sleeps.
    let mut names: Vec<String> = Service::All
        .members(cfg)
        .into_iter()
        .map(|m| m.unit)
        .collect();
    names.push(citadel_common::paths::SOCKET_GATEWAY.to_string());
    let units = if Path::new(citadel_common::paths::SYSTEMD_RUN_DIR).is_dir() {
        host.units(&names)
            .map(|v| v.into_iter().map(|u| (u.unit.clone(), u)).collect())
            .map_err(|e| e.to_string())
    } else {
        Err("systemd is not running here".to_string())
    };
    let key_path = cfg.engine.api_key_file.clone().or_else(|| {
        let p = PathBuf::from(citadel_common::paths::API_KEY_FILE);
        p.exists().then_some(p)
    });
    let key = key_path.map(|path| {
        use std::os::unix::fs::PermissionsExt;
        let readable = citadel_common::apikey::read_from(None, Some(&path))
            .map(|_| true)
            .map_err(|e| e.message);
        let mode = std::fs::metadata(&path)
            .ok()
            .map(|m| m.permissions().mode() & 0o7777);
        KeyFile {
            path,
            readable,
            mode,
        }
    });
    let generated = citadel_generator::items(cfg)
        .iter()
        .map(|i| {
            let p = Path::new(GENERATOR_DIR).join(i.path());
            let now = match i {
                citadel_generator::Item::Link { .. } => {
                    std::fs::read_link(&p).ok().map(|t| t.display().to_string())
                }
                citadel_generator::Item::File { .. } => std::fs::read_to_string(&p).ok(),
            };
            (i.path().to_path_buf(), now)
        })
        .collect();
    let args = vec![
        "--config".to_string(),
        cfg.file.display().to_string(),
        "--check".to_string(),
    ];
    let helpers = HELPERS
        .iter()
        .map(|h| {
            (
                h.to_string(),
                host.run_helper(h, &args).map_err(|e| e.to_string()),
            )
        })
        .collect();
    Facts {
        gpus: crate::gpu::snapshot(),
        listening: listening_ports(Path::new("/proc/net")),
        units,
        key,
        etc_model_links: host.model_links(),
        generated,
        helpers,
    }
}

/// TCP ports in LISTEN state, from `/proc/net/tcp` and `tcp6`.
pub fn listening_ports(proc_net: &Path) -> Result<BTreeSet<u16>, String> {
    let mut ports = BTreeSet::new();
    let mut read_any = false;
    for f in ["tcp", "tcp6"] {
        let p = proc_net.join(f);
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        read_any = true;
        ports.extend(parse_proc_net_tcp(&text));
    }
    if read_any {
        Ok(ports)
    } else {
        Err(format!("cannot read {}/tcp", proc_net.display()))
    }
}

/// The local ports of the LISTEN lines of a `/proc/net/tcp` table.
pub fn parse_proc_net_tcp(text: &str) -> BTreeSet<u16> {
    use citadel_common::procnet::{tcp_rows, LISTEN};
    tcp_rows(text)
        .filter(|r| r.state == LISTEN)
        .map(|r| r.local_port)
        .collect()
}

/// Judge the facts.
pub fn evaluate(cfg: &Config, f: &Facts) -> Vec<HostCheck> {
    vec![gpus(cfg, f), ports(cfg, f), api_key(cfg, f), units(cfg, f)]
        .into_iter()
        .chain(f.helpers.iter().map(|(name, r)| helper(name, r)))
        .collect()
}

fn gpus(cfg: &Config, f: &Facts) -> HostCheck {
    let plan = Plan::of(cfg);
    let wanted: Vec<u32> = plan.gpus.iter().map(|g| g.index).collect();
    let snap = match &f.gpus {
        Ok(s) => s,
        Err(e) if wanted.is_empty() => {
            return check(
                "gpus",
                Status::Ok,
                format!("no model needs a GPU ({e})"),
                None,
            )
        }
        Err(e) => {
            return check(
                "gpus",
                Status::Fail,
                format!(
                    "the plan needs {} ({}) but NVML cannot be read: {e}",
                    count(wanted.len(), "GPU"),
                    list(&wanted)
                ),
                Some(
                    "install the NVIDIA driver (nvidia-smi must work), or disable the models"
                        .into(),
                ),
            )
        }
    };
    let present: Vec<u32> = snap.gpus.iter().map(|g| g.index).collect();
    let missing: Vec<u32> = wanted
        .iter()
        .copied()
        .filter(|i| !present.contains(i))
        .collect();
    if !missing.is_empty() {
        let who: Vec<String> = cfg
            .enabled_models()
            .filter(|m| m.gpus.iter().any(|g| missing.contains(g)))
            .map(|m| m.name.clone())
            .collect();
        return check(
            "gpus",
            Status::Fail,
            format!(
                "the plan uses GPU {} but NVML sees {}{} (models {})",
                list(&missing),
                count(present.len(), "GPU"),
                if present.is_empty() {
                    String::new()
                } else {
                    format!(": {}", list(&present))
                },
                who.join(", ")
            ),
            Some("fix models.NAME.gpus (nvidia-smi -L lists the GPUs)".into()),
        );
    }
    let mut short = vec![];
    for row in &plan.gpus {
        let Some(g) = snap.gpu(row.index) else {
            continue;
        };
        let ours: u64 = g
            .processes
            .iter()
            .filter(|p| {
                p.unit
                    .as_deref()
                    .and_then(citadel_common::paths::model_of_unit)
                    .is_some()
            })
            .map(|p| p.used_memory_bytes.unwrap_or(0))
            .sum();
        let others = g.memory_used_bytes.saturating_sub(ours);
        let need = (row.share * g.memory_total_bytes as f64) as u64;
        if need > g.memory_total_bytes.saturating_sub(others) {
            short.push(format!(
                "GPU {}: the models need {} ({:.2} of {}) but other processes hold {}",
                row.index,
                crate::output::bytes(need),
                row.share,
                crate::output::bytes(g.memory_total_bytes),
                crate::output::bytes(others)
            ));
        }
    }
    if short.is_empty() {
        check(
            "gpus",
            Status::Ok,
            format!(
                "NVML sees {}; the plan uses {} and its memory shares are free",
                count(present.len(), "GPU"),
                if wanted.is_empty() {
                    "none".to_string()
                } else {
                    list(&wanted)
                }
            ),
            None,
        )
    } else {
        check(
            "gpus",
            Status::Fail,
            short.join("; "),
            Some("free the GPU memory (nvidia-smi lists the processes) or lower gpu_memory_utilization".into()),
        )
    }
}

fn ports(cfg: &Config, f: &Facts) -> HostCheck {
    let listening = match &f.listening {
        Ok(l) => l,
        Err(e) => return check("ports", Status::Warn, e.clone(), None),
    };
    let mut wanted: Vec<(String, u16, Vec<String>)> = cfg
        .enabled_models()
        .map(|m| (m.name.clone(), m.port, vec![m.unit()]))
        .collect();
    if cfg.gateway.enabled {
        wanted.push((
            "the gateway".into(),
            cfg.gateway.listen.port(),
            vec![
                citadel_common::paths::UNIT_GATEWAY.to_string(),
                citadel_common::paths::SOCKET_GATEWAY.to_string(),
            ],
        ));
    }
    let (mut fail, mut warn) = (vec![], vec![]);
    for (who, port, units) in &wanted {
        if !listening.contains(port) {
            continue;
        }
        match &f.units {
            Ok(u) => {
                let ours = units.iter().any(|n| {
                    u.get(n).is_some_and(|u| {
                        !matches!(u.active_state, ActiveState::Inactive | ActiveState::Failed)
                    })
                });
                if !ours {
                    fail.push(format!(
                        "port {port} ({who}) is taken by another process while {} is not running",
                        units[0]
                    ));
                }
            }
            Err(_) => warn.push(format!(
                "port {port} ({who}) is in use (unit state unknown)"
            )),
        }
    }
    let n = wanted.len();
    if !fail.is_empty() {
        check(
            "ports",
            Status::Fail,
            fail.join("; "),
            Some("ss -ltnp names the process; stop it or change the port in the config".into()),
        )
    } else if !warn.is_empty() {
        check("ports", Status::Warn, warn.join("; "), None)
    } else {
        check(
            "ports",
            Status::Ok,
            format!("{} free or held by their own unit", count(n, "port")),
            None,
        )
    }
}

fn api_key(cfg: &Config, f: &Facts) -> HostCheck {
    let Some(k) = &f.key else {
        return check(
            "api-key",
            Status::Ok,
            format!(
                "no API key (engine.api_key_file unset, no {})",
                citadel_common::paths::API_KEY_FILE
            ),
            None,
        );
    };
    let path = k.path.display();
    if let Err(e) = &k.readable {
        let root = nix::unistd::geteuid().is_root();
        return check(
            "api-key",
            if root { Status::Fail } else { Status::Warn },
            e.clone(),
            Some(if root {
                format!(
                    "install -m 0600 -o root -g root /dev/null {path}, then write the key into it"
                )
            } else {
                "run check --host as root to read the key file".into()
            }),
        );
    }
    if let Some(mode) = k.mode.filter(|m| m & 0o077 != 0) {
        return check(
            "api-key",
            Status::Warn,
            format!("{path} is mode {mode:04o}: readable by others than root"),
            Some(format!("chmod 0600 {path} (systemd reads it as root)")),
        );
    }
    // A moved key file: the running units must load it (the generator's drop-in).
    if citadel_generator::moved_api_key_file(cfg).is_some() {
        let drop_in = Path::new(&format!("{}.d", citadel_common::paths::MODEL_TEMPLATE))
            .join(citadel_generator::DROP_IN);
        let want = citadel_generator::credential_lines(cfg);
        let loaded = f
            .generated
            .get(&drop_in)
            .and_then(|c| c.as_deref())
            .is_some_and(|c| !want.is_empty() && c.contains(&want));
        if !loaded {
            return check(
                "api-key",
                Status::Fail,
                format!(
                    "the units load the key from {}, not from engine.api_key_file {path}",
                    citadel_common::paths::API_KEY_FILE
                ),
                Some("systemctl daemon-reload (citadel-generator then loads the configured file), or citadel-service apply".into()),
            );
        }
    }
    check(
        "api-key",
        Status::Ok,
        format!("{path}: a key; systemd loads it as root (LoadCredential=), the service account never reads it"),
        None,
    )
}

fn units(cfg: &Config, f: &Facts) -> HostCheck {
    let u = match &f.units {
        Ok(u) => u,
        Err(e) => {
            return check(
                "units",
                Status::Warn,
                format!("{e}: units not checked"),
                None,
            )
        }
    };
    let missing: Vec<&str> = u
        .values()
        .filter(|u| u.load_state == "not-found")
        .map(|u| u.unit.as_str())
        .collect();
    if !missing.is_empty() {
        return check(
            "units",
            Status::Fail,
            format!("not installed: {}", missing.join(", ")),
            Some("install the citadel package (apt install ./citadel_*.deb)".into()),
        );
    }
    let want = citadel_generator::items(cfg);
    let stale: Vec<String> = want
        .iter()
        .filter(|i| {
            let now = f.generated.get(i.path()).cloned().flatten();
            match i {
                citadel_generator::Item::Link { target, .. } => {
                    now.as_deref() != Some(&*target.display().to_string())
                }
                citadel_generator::Item::File { contents, .. } => now.as_deref() != Some(contents),
            }
        })
        .map(|i| i.path().display().to_string())
        .collect();
    if !stale.is_empty() {
        return check(
            "units",
            Status::Fail,
            format!(
                "systemd runs an older config: {} in {GENERATOR_DIR} differ{} from what the config implies",
                stale.join(", "),
                if stale.len() == 1 { "s" } else { "" }
            ),
            Some("citadel-service apply (or systemctl daemon-reload)".into()),
        );
    }
    let disabled: Vec<&String> = f
        .etc_model_links
        .iter()
        .filter(|u| !cfg.enabled_models().any(|m| m.unit() == **u))
        .collect();
    if !disabled.is_empty() {
        return check(
            "units",
            Status::Warn,
            format!(
                "enabled in /etc but not in the config, so started at boot: {}",
                disabled
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(
                "citadel-service enable (it removes per-model boot links; the config decides)"
                    .into(),
            ),
        );
    }
    check(
        "units",
        Status::Ok,
        format!(
            "{} installed; systemd runs the current config",
            count(u.len(), "unit")
        ),
        None,
    )
}

fn helper(name: &str, r: &HelperRun) -> HostCheck {
    let label = format!("{name} --check");
    let path = Path::new(citadel_common::paths::LIBEXEC_DIR).join(name);
    let escaped = |out: &str| {
        Some(citadel_common::text::escape_lines(out.trim_end())).filter(|o| !o.is_empty())
    };
    match r {
        Ok((0, out)) => HostCheck {
            output: escaped(out),
            ..check(&label, Status::Ok, last_line(out), None)
        },
        Ok((code, out)) => HostCheck {
            output: escaped(out),
            ..check(
                &label,
                Status::Fail,
                format!("exited {code}: {}", last_line(out)),
                Some(format!("{} --check shows every finding", path.display())),
            )
        },
        Err(e) => check(
            &label,
            Status::Fail,
            e.clone(),
            Some("install the citadel package".into()),
        ),
    }
}

fn last_line(out: &str) -> String {
    citadel_common::text::escape_controls(
        out.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim(),
    )
    .to_string()
}

fn list(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// The human lines: one per check (status, name, detail) and its fix.
pub fn render(checks: &[HostCheck]) -> String {
    let mut s = String::from("\nhost:\n");
    let w = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in checks {
        s.push_str(&format!(
            "  {:<4}  {:<w$}  {}\n",
            c.status.as_str(),
            c.name,
            c.detail
        ));
        if let Some(fix) = &c.fix {
            s.push_str(&format!("        {:<w$}  fix: {fix}\n", ""));
        }
        // A failed helper's whole report, so nobody has to look for it in /usr/lib/citadel.
        if let Some(out) = c.output.as_ref().filter(|_| c.status == Status::Fail) {
            for l in out.lines() {
                s.push_str(&format!("        | {l}\n"));
            }
        }
    }
    s
}

/// The one summary: `host: ok`, or how many checks failed and warned.
pub fn summary(checks: &[HostCheck]) -> String {
    judge(checks).summary("host")
}

#[cfg(test)]
mod tests;
