//! `health`: probe every enabled model's `/health` now (in parallel, with a timeout), read
//! resource use (CPU, RAM, disk with sysinfo; GPU temperature and memory when known) and print
//! a report. Healthy means: the unit is active (when systemd could be asked) and `/health`
//! answered 200. Resource readings produce warnings, never a failure.

use crate::output::{self, paint, tone_of, Tone};
use crate::probes::ProbeResult;
use citadel_common::config::Config;
use citadel_common::health::GpuHealth;
use citadel_common::probe::{self, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One enabled model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelCheck {
    pub name: String,
    pub unit: String,
    pub port: u16,
    pub url: String,
    /// The unit's STATE word ([`crate::status::state_word`]: systemd's ActiveState, or
    /// `not-installed`), when systemd answered.
    pub unit_state: Option<String>,
    /// What `/health` got (the HEALTH word comes from it; the JSON has `http_status`,
    /// `latency_ms` and `error`).
    #[serde(skip)]
    pub probe: Outcome,
    pub healthy: bool,
    pub http_status: Option<u16>,
    pub latency_ms: Option<u64>,
    /// Why it is not healthy.
    pub error: Option<String>,
    /// The gateway routes its served name now (when the gateway was asked).
    #[serde(default)]
    pub via_gateway: Option<bool>,
}

/// Usage of the filesystem holding `path`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub path: String,
    pub mount_point: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_percent: f64,
}

/// Host resources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_count: usize,
    pub cpu_percent: f64,
    pub load_average: [f64; 3],
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub disks: Vec<DiskUsage>,
}

/// The whole `health` report (`health --json` prints exactly this).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// Every enabled model is healthy.
    pub healthy: bool,
    pub models: Vec<ModelCheck>,
    pub resources: Resources,
    pub gpus: Vec<GpuHealth>,
    /// `nvml`, `monitor` (the monitor's last sweep) or `none`.
    pub gpu_source: String,
    pub warnings: Vec<String>,
    /// The gateway, probed through its listen address (when `[gateway] enabled`).
    pub gateway: Option<GatewayCheck>,
}

/// The gateway, probed the way a client reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayCheck {
    pub unit: String,
    pub url: String,
    /// The unit's STATE word ([`crate::status::state_word`]: systemd's ActiveState, or
    /// `not-installed`), when systemd answered.
    pub unit_state: Option<String>,
    /// What `GET /health` through the gateway got (its HEALTH word comes from it).
    #[serde(skip)]
    pub probe: Outcome,
    /// `GET /health` through the gateway answered 200.
    pub healthy: bool,
    pub http_status: Option<u16>,
    pub latency_ms: Option<u64>,
    /// What `GET /v1/models` through the gateway lists (the names it routes now).
    pub routable: Option<Vec<String>>,
    pub error: Option<String>,
}

/// Add the gateway to the report. A gateway whose unit is active must answer (else the box is
/// unhealthy); one that is not running is a warning (not deployed, or run without systemd).
/// Each model gets `via_gateway`: whether the gateway routes its served name now.
pub fn with_gateway(mut r: HealthReport, cfg: &Config, g: GatewayCheck) -> HealthReport {
    let active = g.unit_state.as_deref() == Some("active");
    if !g.healthy {
        let why = g.error.clone().unwrap_or_else(|| "no answer".into());
        if active {
            r.healthy = false;
        } else {
            r.warnings.push(format!(
                "gateway {} not answering ({why}): is it running?",
                g.url
            ));
        }
    }
    if let Some(names) = &g.routable {
        for m in &mut r.models {
            let served = cfg.model(&m.name).map(|c| c.served_model_name.as_str());
            m.via_gateway = Some(served.is_some_and(|s| names.iter().any(|n| n == s)));
            if m.healthy && m.via_gateway == Some(false) {
                m.error = Some("healthy, but the gateway does not route it (yet)".into());
            }
        }
    }
    r.gateway = Some(g);
    r
}

/// Memory use above this fraction is a warning.
pub const MEMORY_WARN: f64 = 0.95;

/// Put the report together from readings (pure).
pub fn assemble(
    cfg: &Config,
    probes: &[ProbeResult],
    unit_states: Option<&BTreeMap<String, String>>,
    resources: Resources,
    gpus: Vec<GpuHealth>,
    gpu_source: &str,
    mut warnings: Vec<String>,
) -> HealthReport {
    let models: Vec<ModelCheck> = cfg
        .enabled_models()
        .zip(probes)
        .map(|(m, p)| {
            let unit_state = unit_states.and_then(|s| s.get(&m.unit()).cloned());
            let unit_ok = unit_state.as_deref().map_or(true, |s| s == "active");
            let error = match &p.outcome {
                Ok(a) if a.status == 200 && !unit_ok => Some(format!(
                    "/health answers but the unit is {}",
                    unit_state.as_deref().unwrap_or("?")
                )),
                Ok(a) if a.status == 200 => None,
                Ok(a) => Some(format!("/health returned HTTP {}", a.status)),
                Err(e) => Some(e.to_string()),
            };
            ModelCheck {
                name: m.name.clone(),
                unit: m.unit(),
                port: m.port,
                url: p.url.clone(),
                unit_state,
                probe: p.outcome.clone(),
                healthy: p.healthy() && unit_ok,
                http_status: p.http_status(),
                latency_ms: p.latency_ms(),
                error,
                via_gateway: None,
            }
        })
        .collect();
    let gib = 1024u64 * 1024 * 1024;
    for d in &resources.disks {
        let models_mount = Path::new(&d.path) == cfg.paths.models_mount;
        if models_mount && d.available_bytes < cfg.storage.min_free_gib * gib {
            warnings.push(format!(
                "{}: {} free, below storage.min_free_gib = {}",
                d.path,
                output::bytes(d.available_bytes),
                cfg.storage.min_free_gib
            ));
        } else if d.used_percent >= 95.0 {
            warnings.push(format!("{}: {:.0}% full", d.path, d.used_percent));
        }
    }
    if resources.memory_total_bytes > 0
        && resources.memory_used_bytes as f64 > MEMORY_WARN * resources.memory_total_bytes as f64
    {
        warnings.push(format!(
            "memory: {} of {} used",
            output::bytes(resources.memory_used_bytes),
            output::bytes(resources.memory_total_bytes)
        ));
    }
    HealthReport {
        healthy: models.iter().all(|m| m.healthy),
        models,
        resources,
        gpus,
        gpu_source: gpu_source.to_string(),
        warnings,
        gateway: None,
    }
}

/// Read CPU, memory and the disks holding `paths` with sysinfo.
pub fn read_resources(paths: &[PathBuf]) -> Resources {
    use sysinfo::{Disks, System};
    let mut sys = System::new();
    sys.refresh_cpu_usage();
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    sys.refresh_cpu_usage();
    sys.refresh_memory();
    let load = System::load_average();
    let disks = Disks::new_with_refreshed_list();
    let mounts: Vec<(PathBuf, u64, u64)> = disks
        .list()
        .iter()
        .map(|d| {
            (
                d.mount_point().to_path_buf(),
                d.total_space(),
                d.available_space(),
            )
        })
        .collect();
    Resources {
        cpu_count: sys.cpus().len(),
        cpu_percent: (sys.global_cpu_usage() as f64 * 10.0).round() / 10.0,
        load_average: [load.one, load.five, load.fifteen],
        memory_total_bytes: sys.total_memory(),
        memory_used_bytes: sys.used_memory(),
        disks: paths.iter().filter_map(|p| disk_of(p, &mounts)).collect(),
    }
}

/// The usage of the mount holding `path`: the longest mount point that is a prefix of it.
pub fn disk_of(path: &Path, mounts: &[(PathBuf, u64, u64)]) -> Option<DiskUsage> {
    let (mp, total, avail) = mounts
        .iter()
        .filter(|(mp, _, _)| path.starts_with(mp))
        .max_by_key(|(mp, _, _)| mp.as_os_str().len())?;
    let used = total.saturating_sub(*avail);
    Some(DiskUsage {
        path: path.display().to_string(),
        mount_point: mp.display().to_string(),
        total_bytes: *total,
        available_bytes: *avail,
        used_percent: if *total == 0 {
            0.0
        } else {
            (used as f64 * 1000.0 / *total as f64).round() / 10.0
        },
    })
}

/// The human report.
pub fn render_table(r: &HealthReport, color: bool) -> String {
    let mut rows = vec![["MODEL", "STATE", "PORT", "HEALTH", "LATENCY", "DETAIL"]
        .map(String::from)
        .to_vec()];
    for m in &r.models {
        // The probe's word (status --probe says the same); STATE and DETAIL say the rest.
        let word = &probe::health_word(&m.probe);
        rows.push(vec![
            m.name.clone(),
            m.unit_state.clone().unwrap_or_else(|| "-".into()),
            m.port.to_string(),
            paint(word, tone_of(word), color),
            m.latency_ms.map_or("-".into(), crate::output::latency_ms),
            m.error.clone().unwrap_or_default(),
        ]);
    }
    let mut out = output::table(&rows);
    let res = &r.resources;
    out.push('\n');
    out.push_str(&format!(
        "cpu: {:.1}% of {} cpus, load {:.2} {:.2} {:.2}\n",
        res.cpu_percent,
        res.cpu_count,
        res.load_average[0],
        res.load_average[1],
        res.load_average[2]
    ));
    out.push_str(&format!(
        "memory: {} of {} used\n",
        output::bytes(res.memory_used_bytes),
        output::bytes(res.memory_total_bytes)
    ));
    for d in &res.disks {
        out.push_str(&format!(
            "disk {} (on {}): {:.1}% used, {} free of {}\n",
            d.path,
            d.mount_point,
            d.used_percent,
            output::bytes(d.available_bytes),
            output::bytes(d.total_bytes)
        ));
    }
    if r.gpus.is_empty() {
        out.push_str("gpus: no readings (no NVML and no monitor state)\n");
    }
    for g in &r.gpus {
        out.push_str(&format!(
            "gpu {}: {}, {} of {} used{}\n",
            g.index,
            g.temperature_c
                .map_or("temperature -".into(), output::celsius),
            output::bytes(g.memory_used_bytes),
            output::bytes(g.memory_total_bytes),
            if r.gpu_source == "monitor" {
                " (monitor's last sweep)"
            } else {
                ""
            }
        ));
    }
    if let Some(g) = &r.gateway {
        let word = &probe::health_word(&g.probe);
        let routes = g
            .routable
            .as_ref()
            .map_or(String::new(), |n| format!(", routes {}", n.join(" ")));
        out.push_str(&format!(
            "gateway {} ({}): {}{routes}\n",
            g.url,
            g.unit_state.as_deref().unwrap_or("-"),
            paint(word, tone_of(word), color)
        ));
    }
    for w in &r.warnings {
        out.push_str(&paint(&format!("warning: {w}"), Tone::Warn, color));
        out.push('\n');
    }
    let bad = r.models.iter().filter(|m| !m.healthy).count();
    let summary = if bad == 0 {
        format!("healthy: all {} enabled models", r.models.len())
    } else {
        format!("unhealthy: {bad} of {} enabled models", r.models.len())
    };
    out.push_str(&paint(
        &summary,
        if bad == 0 { Tone::Good } else { Tone::Bad },
        color,
    ));
    out.push('\n');
    out
}

/// `health --json`.
pub fn to_json(r: &HealthReport) -> Result<String, citadel_common::Failure> {
    citadel_common::output::to_json(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_status_probe_say_the_same_word_for_the_same_probe() {
        let cfg = Config::parse_with(
            "[models.a]\npath = \"a\"\nport = 11403\ngpus = [0]\ngpu_memory_utilization = 0.3\n",
            Path::new("/etc/citadel/citadel.toml"),
            &citadel_common::config::Limits::default(),
        )
        .unwrap();
        use citadel_common::probe::{Answer, ProbeError};
        let answer = |status| {
            Ok(Answer {
                status,
                latency: std::time::Duration::ZERO,
            })
        };
        for (outcome, word) in [
            (answer(503), "http 503"),
            (Err(ProbeError::Refused), "refused"),
            (Err(ProbeError::Timeout), "timeout"),
            (Err(ProbeError::Other("reset".into())), "error"),
            (answer(200), "healthy"),
        ] {
            let p = ProbeResult {
                name: "a".into(),
                url: "http://127.0.0.1:11403/health".into(),
                outcome,
            };
            let status_word = crate::status::cells_from_probes(std::slice::from_ref(&p))["a"]
                .health
                .clone();
            assert_eq!(status_word, word);
            let r = assemble(
                &cfg,
                &[p],
                None,
                Resources::default(),
                vec![],
                "none",
                vec![],
            );
            let table = render_table(&r, false);
            let row = table.lines().nth(1).unwrap();
            assert_eq!(
                row.split_whitespace().nth(3),
                word.split(' ').next(),
                "{table}"
            );
        }
    }

    #[test]
    fn the_longest_mount_prefix_wins() {
        let mounts = vec![
            (PathBuf::from("/"), 100, 50),
            (PathBuf::from("/mnt/models"), 1000, 100),
            (PathBuf::from("/mnt/m"), 10, 10),
        ];
        let d = disk_of(Path::new("/mnt/models/x"), &mounts).unwrap();
        assert_eq!(d.mount_point, "/mnt/models");
        assert_eq!(d.used_percent, 90.0);
        assert_eq!(
            disk_of(Path::new("/etc"), &mounts).unwrap().mount_point,
            "/"
        );
        assert!(disk_of(Path::new("/x"), &[]).is_none());
    }

    #[test]
    fn resources_can_be_read_here() {
        let r = read_resources(&[PathBuf::from("/")]);
        assert!(r.cpu_count > 0);
        assert!(r.memory_total_bytes > 0);
        assert!(r.cpu_percent >= 0.0);
    }
}
