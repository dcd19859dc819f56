//! The fixture backend: a readings file answered exactly as the card it was read from.

use super::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Answers from a readings file, exactly as the card it was read from (refused -> `None`).
#[derive(Debug, Clone)]
pub struct FixtureGpu {
    file: PathBuf,
    result: Result<Snapshot, GpuUnavailable>,
}

impl FixtureGpu {
    /// Read and parse a readings file. A file that cannot be read or parsed is an error;
    /// a file that says `{"error": ...}` loads, and its snapshot is unavailable.
    pub fn load(file: &Path) -> Result<FixtureGpu, GpuUnavailable> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            GpuUnavailable::new(format!(
                "{FAKE_GPU_ENV}={}: cannot read GPU readings file: {e}",
                file.display()
            ))
        })?;
        Self::parse(&text, file)
    }

    /// Parse readings text; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<FixtureGpu, GpuUnavailable> {
        let bad = |m: String| {
            GpuUnavailable::new(format!(
                "{FAKE_GPU_ENV}={}: invalid GPU readings file: {m}",
                file.display()
            ))
        };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let result = if let Some(msg) = v.get("error").and_then(Value::as_str) {
            Err(GpuUnavailable::new(msg))
        } else if v.get("gpus").is_some() {
            Ok(serde_json::from_value::<Snapshot>(v).map_err(|e| bad(e.to_string()))?)
        } else {
            Ok(snapshot_from_readings(&v).map_err(bad)?)
        };
        Ok(FixtureGpu {
            file: file.to_path_buf(),
            result,
        })
    }

    /// The file it was loaded from.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

impl GpuSource for FixtureGpu {
    fn snapshot(&self) -> Result<Snapshot, GpuUnavailable> {
        self.result.clone()
    }
}

/// Build a snapshot from the readings format (see the module docs).
fn snapshot_from_readings(v: &Value) -> Result<Snapshot, String> {
    let driver_version = v
        .get("driver")
        .and_then(Value::as_str)
        .ok_or("missing \"driver\"")?
        .to_string();
    let devices = v
        .get("devices")
        .and_then(Value::as_array)
        .ok_or("missing \"devices\" list")?;
    let gpus = devices
        .iter()
        .enumerate()
        .map(|(i, d)| device_from_readings(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Snapshot {
        driver_version,
        cuda_driver_version: v
            .get("cuda")
            .and_then(Value::as_i64)
            .map(|c| cuda_version_string(c as i32)),
        nvml_version: v.get("nvml").and_then(Value::as_str).map(str::to_string),
        gpus,
    })
}

fn device_from_readings(pos: usize, d: &Value) -> Result<GpuInfo, String> {
    let mut refused = BTreeMap::new();
    // A field: absent -> None; {"error": ..} -> None and noted as refused; else the value.
    let mut field = |k: &str| -> Option<&Value> {
        let v = d.get(k)?;
        if let Some(e) = v.get("error") {
            refused.insert(k.to_string(), e.as_str().unwrap_or("error").to_string());
            return None;
        }
        (!v.is_null()).then_some(v)
    };
    let u32_of = |v: Option<&Value>| v.and_then(Value::as_u64).map(|x| x as u32);
    let bool_of =
        |v: Option<&Value>| v.and_then(|v| v.as_bool().or_else(|| v.as_u64().map(|n| n != 0)));
    let str_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let index = u32_of(field("index")).unwrap_or(pos as u32);
    let mem = field("memory")
        .cloned()
        .ok_or(format!("device {index}: missing \"memory\""))?;
    let mem_of = |k: &str| {
        mem.get(k)
            .and_then(Value::as_u64)
            .ok_or(format!("device {index}: missing memory.{k}"))
    };
    let constraints = field("power_limit_constraints_mw").and_then(|c| {
        let a = c.as_array()?;
        Some((a.first()?.as_u64()? as u32, a.get(1)?.as_u64()? as u32))
    });
    let mig = field("mig_mode").cloned();
    let ecc = field("ecc_enabled").cloned();
    let util = field("utilization").cloned();
    let processes = match field("processes") {
        None => Vec::new(),
        Some(p) => p
            .as_array()
            .ok_or(format!("device {index}: \"processes\" must be a list"))?
            .iter()
            .map(|p| {
                let pid = p
                    .get("pid")
                    .and_then(Value::as_u64)
                    .ok_or(format!("device {index}: a process without \"pid\""))?
                    as u32;
                let mut gp =
                    GpuProcess::from_pid(pid, p.get("used_memory").and_then(Value::as_u64));
                if let Some(n) = p.get("name").and_then(Value::as_str) {
                    gp.name = n.to_string();
                }
                if let Some(u) = p.get("unit").and_then(Value::as_str) {
                    gp.unit = Some(u.to_string());
                }
                Ok(gp)
            })
            .collect::<Result<Vec<_>, String>>()?,
    };
    Ok(GpuInfo {
        index,
        name: str_of(field("name")).unwrap_or_else(|| "?".into()),
        uuid: str_of(field("uuid")).unwrap_or_else(|| "?".into()),
        pci_bus_id: str_of(field("pci")).unwrap_or_default(),
        memory_total_bytes: mem_of("total")?,
        memory_used_bytes: mem_of("used")?,
        memory_free_bytes: mem_of("free")?,
        temperature_c: u32_of(field("temperature_c")),
        temp_slowdown_c: u32_of(field("temp_slowdown_c")),
        temp_shutdown_c: u32_of(field("temp_shutdown_c")),
        power_usage_mw: u32_of(field("power_usage_mw")),
        power_limit_mw: u32_of(field("power_limit_mw")),
        power_limit_default_mw: u32_of(field("power_limit_default_mw")),
        enforced_power_limit_mw: u32_of(field("enforced_power_limit_mw")),
        power_limit_constraints_mw: constraints,
        persistence_mode: bool_of(field("persistence_mode")),
        compute_mode: str_of(field("compute_mode")).map(|s| compute_mode_from_debug(&s)),
        mig_current: bool_of(mig.as_ref().and_then(|m| m.get("current"))),
        mig_pending: bool_of(mig.as_ref().and_then(|m| m.get("pending"))),
        ecc_enabled: bool_of(ecc.as_ref().and_then(|m| m.get("current"))),
        ecc_uncorrected_volatile: field("ecc_uncorrected_volatile").and_then(Value::as_u64),
        retired_pages_pending: bool_of(field("retired_pages_pending")),
        remap_pending: bool_of(field("remap_pending")),
        clocks: Clocks {
            graphics_mhz: u32_of(field("clock_graphics_mhz")),
            app_graphics_mhz: u32_of(field("app_clock_graphics_mhz")),
            app_mem_mhz: u32_of(field("app_clock_mem_mhz")),
            default_app_graphics_mhz: u32_of(field("default_app_clock_graphics_mhz")),
            default_app_mem_mhz: u32_of(field("default_app_clock_mem_mhz")),
            max_graphics_mhz: u32_of(field("max_clock_graphics_mhz")),
            max_mem_mhz: u32_of(field("max_clock_mem_mhz")),
        },
        performance_state: str_of(field("performance_state")).map(|s| pstate_from_debug(&s)),
        throttle_reasons: str_of(field("throttle_reasons")),
        utilization_gpu_pct: u32_of(util.as_ref().and_then(|u| u.get("gpu"))),
        utilization_memory_pct: u32_of(util.as_ref().and_then(|u| u.get("memory"))),
        processes,
        refused,
    })
}

/// The H200 readings shipped with the project (tests and demos).
pub fn h200_fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/h200-nvml-readings.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h200() -> Snapshot {
        FixtureGpu::load(&h200_fixture_path())
            .unwrap()
            .snapshot()
            .unwrap()
    }

    #[test]
    fn h200_fixture_reads_like_the_card() {
        let s = h200();
        assert_eq!(s.driver_version, "580.159.04");
        assert_eq!(s.cuda_driver_version.as_deref(), Some("13.0"));
        assert_eq!(s.nvml_version.as_deref(), Some("13.580.159.04"));
        assert_eq!(s.gpus.len(), 1);
        let g = s.gpu(0).unwrap();
        assert_eq!(g.name, "NVIDIA H200");
        assert_eq!(g.uuid, "GPU-abb3f99e-7dc8-fb04-7f9d-6c963a49df37");
        assert_eq!(g.pci_bus_id, "00000000:00:06.0");
        assert_eq!(g.memory_total_bytes, 150_754_820_096);
        assert_eq!(g.memory_free_bytes, 150_109_880_320);
        assert_eq!(g.memory_used_bytes, 0);
        assert_eq!(g.temperature_c, Some(36));
        assert_eq!(g.temp_slowdown_c, Some(89));
        assert_eq!(g.temp_shutdown_c, Some(95));
        assert_eq!(g.power_usage_mw, Some(101_263));
        assert_eq!(g.power_limit_mw, Some(700_000));
        assert_eq!(g.power_limit_constraints_mw, Some((200_000, 700_000)));
        assert_eq!(g.persistence_mode, Some(true));
        assert_eq!(g.compute_mode.as_deref(), Some("default"));
        assert_eq!((g.mig_current, g.mig_pending), (Some(false), Some(false)));
        assert_eq!(g.ecc_enabled, Some(true));
        assert_eq!(g.ecc_uncorrected_volatile, Some(0));
        assert_eq!(g.clocks.app_graphics_mhz, Some(1980));
        assert_eq!(g.clocks.app_mem_mhz, Some(3201));
        assert_eq!(g.performance_state.as_deref(), Some("P0"));
        assert!(g.processes.is_empty());
        // Not in the readings (nvidia-smi shows retired pages N/A on Hopper): unknown.
        assert_eq!(g.retired_pages_pending, None);
        assert_eq!(g.remap_pending, None);
    }

    #[test]
    fn refused_fields_read_as_none_with_the_reason() {
        let mut v: Value =
            serde_json::from_str(&std::fs::read_to_string(h200_fixture_path()).unwrap()).unwrap();
        v["devices"][0]["power_usage_mw"] = serde_json::json!({"error": "NotSupported"});
        v["devices"][0]["mig_mode"] = serde_json::json!({"error": "NotSupported"});
        let s = FixtureGpu::parse(&v.to_string(), Path::new("x.json"))
            .unwrap()
            .snapshot()
            .unwrap();
        let g = &s.gpus[0];
        assert_eq!(g.power_usage_mw, None);
        assert_eq!(g.mig_current, None);
        assert_eq!(
            g.refused.get("power_usage_mw").map(String::as_str),
            Some("NotSupported")
        );
        assert!(g.refused.contains_key("mig_mode"));
    }

    #[test]
    fn processes_are_named_from_proc_or_the_file() {
        let mut v: Value =
            serde_json::from_str(&std::fs::read_to_string(h200_fixture_path()).unwrap()).unwrap();
        let me = std::process::id();
        v["devices"][0]["processes"] = serde_json::json!([
            {"pid": me, "used_memory": 1024},
            {"pid": 4_000_000, "used_memory": null, "name": "python3", "unit": "citadel-model@phi3.service"}
        ]);
        let s = FixtureGpu::parse(&v.to_string(), Path::new("x.json"))
            .unwrap()
            .snapshot()
            .unwrap();
        let p = &s.gpus[0].processes;
        assert_eq!(p[0].pid, me);
        assert_eq!(p[0].used_memory_bytes, Some(1024));
        assert_eq!(Some(p[0].name.clone()), process_name(me));
        assert_ne!(p[0].name, "?");
        assert_eq!(p[1].name, "python3");
        assert_eq!(p[1].used_memory_bytes, None);
        assert_eq!(p[1].unit.as_deref(), Some("citadel-model@phi3.service"));
    }

    #[test]
    fn error_file_is_unavailable_and_bad_file_names_itself() {
        let f = FixtureGpu::parse(
            r#"{"error": "NVML unavailable: test"}"#,
            Path::new("e.json"),
        )
        .unwrap();
        assert_eq!(f.snapshot().unwrap_err().message, "NVML unavailable: test");
        let e = FixtureGpu::load(Path::new("/nonexistent/readings.json")).unwrap_err();
        assert!(e.message.contains("/nonexistent/readings.json"), "{e}");
        assert!(e.message.contains(FAKE_GPU_ENV), "{e}");
        let e = FixtureGpu::parse(r#"{"driver": "1"}"#, Path::new("b.json")).unwrap_err();
        assert!(e.message.contains("devices"), "{e}");
    }

    #[test]
    fn serialized_snapshot_round_trips() {
        let s = h200();
        let text = serde_json::to_string(&s).unwrap();
        let back = FixtureGpu::parse(&text, Path::new("s.json"))
            .unwrap()
            .snapshot()
            .unwrap();
        assert_eq!(back, s);
    }
}
