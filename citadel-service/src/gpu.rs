//! GPU readings for `status` (memory per model) and `health` (temperature and memory per GPU),
//! from `citadel_common::gpu` (NVML, read-only).

use citadel_common::gpu::Snapshot;
use citadel_common::paths;
use std::collections::BTreeMap;

/// GPU memory used per model: the sum over every GPU of the memory of the processes that run
/// in `citadel-model@NAME.service`. Processes whose memory NVML cannot tell count 0.
pub fn memory_by_model(s: &Snapshot) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for g in &s.gpus {
        for p in &g.processes {
            if let Some(name) = p.unit.as_deref().and_then(paths::model_of_unit) {
                *m.entry(name.to_string()).or_insert(0) += p.used_memory_bytes.unwrap_or(0);
            }
        }
    }
    m
}

/// Read a snapshot now; `Err` (one line) when there is no NVML.
pub fn snapshot() -> Result<Snapshot, String> {
    citadel_common::gpu::open()
        .snapshot()
        .map_err(|e| e.to_string())
}
