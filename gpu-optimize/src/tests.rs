//! Mode-level tests on fake cards built from the H200 readings (milliwatts, bytes).

use super::*;
use crate::apply::{Saved, RESTORED_FILE, SAVED_FILE};
use crate::control::GpuControl;
use crate::fake::FakeCard;
use citadel_common::gpu::Snapshot;
use std::cell::RefCell;

fn config(state_dir: &Path, gpu: &str) -> Config {
    let text = format!(
        "[paths]\nstate_dir = {:?}\n[engine]\ncommand = [\"/usr/bin/vllm\", \"serve\"]\n[gpu]\n{gpu}\n\
         [models.a]\npath = \"a\"\nport = 11400\ngpus = [0]\ntensor_parallel_size = 1\ngpu_memory_utilization = 0.9\n",
        state_dir.display().to_string()
    );
    Config::parse_with(
        &text,
        Path::new("/etc/citadel/citadel.toml"),
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

const POLICY: &str =
    "persistence_mode = false\npower_limit_watts = 600\ncompute_mode = \"exclusive_process\"\n\
                      app_memory_clock_mhz = 3201\napp_graphics_clock_mhz = 1755\n\
                      locked_graphics_clock_min_mhz = 1500\nlocked_graphics_clock_max_mhz = 1980";

fn status_of<'a>(r: &'a [Check], name: &str) -> Vec<&'a Check> {
    r.iter().filter(|c| c.check == name).collect()
}

#[test]
fn apply_then_restore_gives_back_the_saved_values() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), POLICY);
    let mut card = FakeCard::h200().unwrap();
    let original: Snapshot = card.readings().clone();

    let c = &mut card;
    let r = apply_mode(move || Ok(c as &mut dyn Card), &cfg).unwrap();
    assert_eq!(r.outcome(), Exit::Ok, "{}", r.table());
    let g = &card.readings().gpus[0];
    assert_eq!(g.persistence_mode, Some(false));
    assert_eq!(g.power_limit_mw, Some(600_000));
    assert_eq!(g.compute_mode.as_deref(), Some("exclusive_process"));
    assert_eq!(g.clocks.app_graphics_mhz, Some(1755));
    assert_eq!(card.locked_clocks(0), Some((1500, 1980)));
    // Saved before the changes: the card's original values.
    let saved = Saved::read(&d.path().join(SAVED_FILE)).unwrap().unwrap();
    let s = &saved.gpus[0];
    assert_eq!(s.uuid, original.gpus[0].uuid);
    assert_eq!(s.persistence_mode, Some(true));
    assert_eq!(s.power_limit_mw, Some(700_000));
    assert_eq!(s.compute_mode.as_deref(), Some("default"));
    assert_eq!(s.app_clocks_mhz, Some((3201, 1980)));
    assert!(s.locked_clocks);

    // A second apply (service restarted) keeps the originals.
    let c = &mut card;
    apply_mode(move || Ok(c as &mut dyn Card), &cfg).unwrap();
    assert_eq!(
        Saved::read(&d.path().join(SAVED_FILE))
            .unwrap()
            .unwrap()
            .gpus,
        saved.gpus
    );

    let c = &mut card;
    let r = restore_mode(move || Ok(c as &mut dyn Card), &cfg).unwrap();
    assert_eq!(r.outcome(), Exit::Ok, "{}", r.table());
    assert_eq!(
        card.readings(),
        &original,
        "restore must give back exactly the saved values"
    );
    assert_eq!(card.locked_clocks(0), None);
    assert!(!d.path().join(SAVED_FILE).exists());
    assert!(d.path().join(RESTORED_FILE).exists());

    // Nothing saved any more: a no-op with a message, the card is not even opened.
    let r = restore_mode(
        || -> Result<&mut dyn Card, GpuUnavailable> {
            panic!("opened the GPU with nothing to restore")
        },
        &cfg,
    )
    .unwrap();
    assert_eq!(r.outcome(), Exit::Ok);
    assert!(
        r.checks[0].detail.contains("nothing to restore"),
        "{:?}",
        r.checks
    );
}

#[test]
fn power_limit_out_of_range_is_refused_naming_the_constraints() {
    for w in [150, 800] {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(
            d.path(),
            &format!("persistence_mode = false\npower_limit_watts = {w}"),
        );
        let mut card = FakeCard::h200().unwrap();
        let before = card.readings().clone();
        let c = &mut card;
        let e = apply_mode(move || Ok(c as &mut dyn Card), &cfg).unwrap_err();
        assert_eq!(e.exit(), Exit::Config);
        assert!(
            e.message.contains(&format!("gpu.power_limit_watts = {w}")),
            "{e}"
        );
        assert!(e.message.contains("200 W-700 W"), "{e}");
        assert!(e.message.contains("NVIDIA H200"), "{e}");
        assert!(card.calls.is_empty(), "setters called: {:?}", card.calls);
        assert_eq!(card.readings(), &before);
        assert!(!d.path().join(SAVED_FILE).exists(), "nothing may be saved");
    }
}

/// A card whose every setter panics and is recorded.
struct NoSetters {
    inner: FakeCard,
    calls: RefCell<Vec<String>>,
}

impl GpuSource for NoSetters {
    fn snapshot(&self) -> Result<Snapshot, GpuUnavailable> {
        self.inner.snapshot()
    }
}

impl NoSetters {
    fn called(&self, what: &str) -> ! {
        self.calls.borrow_mut().push(what.to_string());
        panic!("setter {what} called");
    }
}

impl GpuControl for NoSetters {
    fn set_persistence(&mut self, _: u32, _: bool) -> Result<(), String> {
        self.called("set_persistence")
    }
    fn set_power_limit(&mut self, _: u32, _: u32) -> Result<(), String> {
        self.called("set_power_limit")
    }
    fn set_app_clocks(&mut self, _: u32, _: u32, _: u32) -> Result<(), String> {
        self.called("set_app_clocks")
    }
    fn reset_app_clocks(&mut self, _: u32) -> Result<(), String> {
        self.called("reset_app_clocks")
    }
    fn set_locked_clocks(&mut self, _: u32, _: u32, _: u32) -> Result<(), String> {
        self.called("set_locked_clocks")
    }
    fn reset_locked_clocks(&mut self, _: u32) -> Result<(), String> {
        self.called("reset_locked_clocks")
    }
    fn set_compute_mode(&mut self, _: u32, _: &str) -> Result<(), String> {
        self.called("set_compute_mode")
    }
}

#[test]
fn check_calls_no_setter() {
    let d = tempfile::tempdir().unwrap();
    // A policy that differs from the card in every setting.
    let cfg = config(d.path(), POLICY);
    let card = NoSetters {
        inner: FakeCard::h200().unwrap(),
        calls: RefCell::new(Vec::new()),
    };
    let r = check_mode(&card, &cfg);
    assert!(card.calls.borrow().is_empty());
    // The drift is reported, not fixed.
    assert_eq!(status_of(&r.checks, "power_limit")[0].status, Status::Warn);
    assert_eq!(status_of(&r.checks, "compute_mode")[0].status, Status::Warn);
    assert_eq!(r.outcome(), Exit::Ok);
    assert!(!d.path().join(SAVED_FILE).exists());
    // The same card in apply mode would call them: the fake is not inert.
    let mut card = card;
    let c = &mut card;
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        apply_mode(move || Ok(c as &mut dyn Card), &cfg)
    }));
    assert!(res.is_err());
    assert_eq!(card.calls.borrow().len(), 1);
}

#[test]
fn ecc_error_and_hot_gpu_fail_the_check() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), "temperature_margin_c = 5");
    let mut card = FakeCard::h200().unwrap();
    card.readings_mut().gpus[0].ecc_uncorrected_volatile = Some(1);
    let r = check_mode(&card, &cfg);
    assert_eq!(r.outcome(), Exit::Failure);
    assert_eq!(status_of(&r.checks, "ecc")[0].status, Status::Fail);

    let mut card = FakeCard::h200().unwrap();
    card.readings_mut().gpus[0].temperature_c = Some(86);
    let r = check_mode(&card, &cfg);
    assert_eq!(r.outcome(), Exit::Failure);
    assert_eq!(status_of(&r.checks, "temperature")[0].status, Status::Fail);
    let f = finish(&r, true).unwrap_err();
    assert_eq!(f.exit(), Exit::Failure);
    assert!(f.message.contains("gpu 0: temperature: fail: 86 C"), "{f}");
}

#[test]
fn stale_process_is_reported_with_pid_and_name() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path(), "");
    let mut card = FakeCard::h200().unwrap();
    let me = std::process::id();
    card.readings_mut().gpus[0]
        .processes
        .push(citadel_common::gpu::GpuProcess::from_pid(me, Some(2 << 30)));
    let r = check_mode(&card, &cfg);
    let p = status_of(&r.checks, "process");
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].status, Status::Warn);
    let name = citadel_common::gpu::process_name(me).unwrap();
    assert!(
        p[0].detail.contains(&format!("PID {me} {name}")),
        "{}",
        p[0].detail
    );
    assert!(p[0].detail.contains("2048 MiB"), "{}", p[0].detail);
}

#[test]
fn no_driver_follows_gpu_required() {
    let d = tempfile::tempdir().unwrap();
    let missing = GpuUnavailable::new(
        "NVML unavailable: libnvidia-ml.so.1 not found (install the NVIDIA driver)",
    );
    let r = apply_mode(
        || Err(missing.clone()),
        &config(d.path(), "required = true"),
    )
    .unwrap();
    assert_eq!(r.outcome(), Exit::Unavailable);
    let r = apply_mode(
        || Err(missing.clone()),
        &config(d.path(), "required = false"),
    )
    .unwrap();
    assert_eq!(r.outcome(), Exit::Ok);
    assert_eq!(r.checks[0].status, Status::Warn);
    assert!(r.checks[0].detail.contains("libnvidia-ml.so.1"));
}

#[test]
fn too_few_gpus_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let text = format!(
        "[paths]\nstate_dir = {:?}\n[engine]\ncommand = [\"/usr/bin/vllm\", \"serve\"]\n[gpu]\npower_limit_watts = 600\n\
         [models.b]\npath = \"b\"\nport = 11401\ngpus = [0, 1]\ntensor_parallel_size = 2\ngpu_memory_utilization = 0.5\n",
        d.path().display().to_string()
    );
    let cfg = Config::parse_with(&text, Path::new("c.toml"), &Default::default()).unwrap();
    let mut card = FakeCard::h200().unwrap();
    let c = &mut card;
    let r = apply_mode(move || Ok(c as &mut dyn Card), &cfg).unwrap();
    assert_eq!(r.outcome(), Exit::Unavailable);
    assert!(card.calls.is_empty());
    assert!(!d.path().join(SAVED_FILE).exists());
}
