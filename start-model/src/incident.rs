//! The incident of a failed start or a crash: the engine's output classified
//! (`citadel_common::classify`) and recorded in `state_dir/incidents` (first failure of a
//! series kept, repeats counted); the series is closed when the model serves.

use citadel_common::classify::{self, Class, Context, Diagnosis};
use citadel_common::config::{Config, Model};
use citadel_common::gpu::GpuSource;
use citadel_common::incident::{Event, ExitInfo, Incident, Store};

/// OOM kills the kernel counted in our own cgroup (`memory.events` `oom_kill`), if readable.
pub fn oom_kills() -> Option<u64> {
    let cg = citadel_common::safefs::read_regular_text(
        std::path::Path::new("/proc/self/cgroup"),
        64 * 1024,
    )
    .ok()?;
    let rel = cg.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let p = std::path::Path::new("/sys/fs/cgroup")
        .join(rel.trim_start_matches('/'))
        .join("memory.events");
    let ev = citadel_common::safefs::read_regular_text(&p, 64 * 1024).ok()?;
    ev.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// Other processes holding memory on the model's GPUs, in words.
pub fn gpu_holders(model: &Model, source: &dyn GpuSource) -> Vec<String> {
    let own = model.unit();
    let Ok(s) = source.snapshot() else {
        return vec![];
    };
    let mut v = vec![];
    for g in s.gpus.iter().filter(|g| model.gpus.contains(&g.index)) {
        for p in &g.processes {
            if p.unit.as_deref() == Some(own.as_str()) {
                continue;
            }
            v.push(crate::preflight::describe_process(g.index, p));
        }
    }
    v
}

/// What start-model knows when the engine failed.
pub struct Failed<'a> {
    pub event: Event,
    pub exit: ExitInfo,
    pub output: &'a [String],
    pub context: Context,
}

/// Classify and record; returns the diagnosis (for the exit message). A store that cannot be
/// written is logged, never turns into another failure.
pub fn record(cfg: &Config, model: &Model, f: Failed<'_>) -> Diagnosis {
    let d = classify::classify(f.output, &f.context);
    let inc = Incident::new(&model.name, &model.unit(), "start-model", f.event, &d)
        .with_exit(f.exit)
        .with_excerpt(f.output, d.line);
    write(cfg, inc);
    d
}

/// Record a refusal to start (no engine ran).
pub fn refused(
    cfg: &Config,
    model: &Model,
    class: Class,
    summary: &str,
    gpu: Option<u32>,
    xid: Option<u32>,
) {
    let d = classify::word(class, summary, &context(model), None);
    let mut inc = Incident::new(
        &model.name,
        &model.unit(),
        "start-model",
        Event::Refused,
        &d,
    )
    .with_exit(ExitInfo {
        code: Some(citadel_common::Exit::Unavailable.code() as i32),
        signal: None,
    });
    inc.gpu = gpu;
    inc.xid = xid;
    write(cfg, inc);
}

fn write(cfg: &Config, inc: Incident) {
    let store = Store::open(&cfg.paths.state_dir).or_else(|_| Store::create(&cfg.paths.state_dir));
    match store.and_then(|s| s.record(inc)) {
        Ok(i) => log::info!(
            "incident {} recorded ({} failure(s) in this series): {}; see citadel-service why {}",
            i.id,
            i.count,
            i.class,
            i.model
        ),
        Err(e) => log::warn!(
            "cannot record the incident in {}: {e}",
            citadel_common::incident::dir(&cfg.paths.state_dir).display()
        ),
    }
}

/// The model serves: close its open incident series.
pub fn resolve(cfg: &Config, model: &Model) {
    if let Ok(s) = Store::open(&cfg.paths.state_dir) {
        match s.resolve(&model.name) {
            Ok(true) => log::info!("{}: serving again, incident closed", model.name),
            Ok(false) => {}
            Err(e) => log::warn!("cannot close the incident of {}: {e}", model.name),
        }
    }
}

/// The classifier's context for `model`.
pub fn context(model: &Model) -> Context {
    Context {
        model: model.name.clone(),
        port: Some(model.port),
        ..Context::default()
    }
}
