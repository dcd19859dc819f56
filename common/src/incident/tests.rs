use super::*;
use crate::classify::{classify, Context};

fn diag(class: Class) -> Diagnosis {
    crate::classify::word(class, "ValueError: boom", &Context::default(), None)
}

fn inc(model: &str, class: Class, code: i32) -> Incident {
    Incident::new(
        model,
        &crate::paths::model_unit(model),
        "start-model",
        Event::StartFailure,
        &diag(class),
    )
    .with_exit(ExitInfo {
        code: Some(code),
        signal: None,
    })
}

#[test]
fn the_first_failure_is_kept_and_repeats_are_counted() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::create(d.path()).unwrap();
    let first = inc("phi3", Class::MaxModelLen, 1).with_excerpt(&["first".into()], None);
    s.record(first).unwrap();
    for k in 0..4 {
        s.record(inc("phi3", Class::Unknown, 10 + k).with_excerpt(&["later".into()], None))
            .unwrap();
    }
    let all = s.list().unwrap();
    assert_eq!(all.len(), 1);
    let i = &all[0];
    assert_eq!(i.count, 5);
    assert_eq!(i.class, Class::MaxModelLen);
    assert_eq!(i.excerpt, vec!["first".to_string()]);
    assert_eq!(i.exit.as_ref().unwrap().code, Some(1));
    let last = i.last.as_ref().unwrap();
    assert_eq!(last.exit.as_ref().unwrap().code, Some(13));
    assert_eq!(last.class, Class::Unknown);
}

#[test]
fn a_resolved_series_is_closed_and_the_next_failure_starts_a_new_one() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::create(d.path()).unwrap();
    s.record(inc("a", Class::Nccl, 1)).unwrap();
    assert!(s.resolve("a").unwrap());
    assert!(!s.resolve("a").unwrap());
    s.record(inc("a", Class::GpuOom, 1)).unwrap();
    let all = s.list().unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].resolved_unix.is_some());
    assert_eq!(s.latest("a").unwrap().unwrap().class, Class::GpuOom);
    assert!(s.latest("b").unwrap().is_none());
}

#[test]
fn the_store_is_bounded_in_count() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::create(d.path()).unwrap();
    for _ in 0..(MAX_PER_MODEL + 3) {
        s.record(inc("a", Class::Nccl, 1)).unwrap();
        s.resolve("a").unwrap();
    }
    let n = s.list().unwrap().iter().filter(|i| i.model == "a").count();
    assert_eq!(n, MAX_PER_MODEL);
}

#[test]
fn the_file_is_bounded_in_size() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::create(d.path()).unwrap();
    let huge: Vec<String> = (0..5000)
        .map(|i| format!("{i} {}", "x".repeat(2000)))
        .collect();
    let stored = s
        .record(inc("a", Class::Unknown, 1).with_excerpt(&huge, None))
        .unwrap();
    let meta = std::fs::metadata(s.path().join(format!("{}.json", stored.id))).unwrap();
    assert!(meta.len() as usize <= MAX_FILE_BYTES, "{}", meta.len());
    let back = s.latest("a").unwrap().unwrap();
    assert!(back.excerpt_omitted > 0);
    assert!(back
        .excerpt
        .iter()
        .all(|l| l.chars().count() <= MAX_LINE_CHARS + 5));
}

#[test]
fn symlinks_and_non_regular_files_are_never_followed() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::create(d.path()).unwrap();
    let secret = d.path().join("secret");
    std::fs::write(
        &secret,
        serde_json::to_vec(&inc("a", Class::Nccl, 1)).unwrap(),
    )
    .unwrap();
    std::os::unix::fs::symlink(&secret, s.path().join("a.1.json")).unwrap();
    nix::unistd::mkfifo(
        &s.path().join("a.2.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    assert!(
        s.latest("a").unwrap().is_none(),
        "read through a symlink or a fifo"
    );
    // A record writes a new file beside them and leaves the symlink's target alone.
    let before = std::fs::read(&secret).unwrap();
    s.record(inc("a", Class::GpuOom, 1)).unwrap();
    assert_eq!(std::fs::read(&secret).unwrap(), before);
    assert_eq!(s.latest("a").unwrap().unwrap().class, Class::GpuOom);
    // The directory itself as a symlink is refused.
    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir(other.path().join("real")).unwrap();
    std::os::unix::fs::symlink(other.path().join("real"), other.path().join("incidents")).unwrap();
    assert!(Store::open(other.path()).is_err());
}

#[test]
fn the_excerpt_keeps_the_traceback_whole_and_escapes() {
    let mut lines: Vec<String> = (0..100).map(|i| format!("INFO noise {i}")).collect();
    lines.push("(EngineCore_DP0 pid=1) ERROR 12-01 21:50:10 [core.py:1] Traceback (most recent call last):".into());
    for i in 0..30 {
        lines.push(format!(
            "(EngineCore_DP0 pid=1) ERROR 12-01 21:50:10 [core.py:1]   File \"f{i}.py\", line {i}"
        ));
    }
    lines.push("(EngineCore_DP0 pid=1) ERROR 12-01 21:50:10 [core.py:1] ValueError: To serve at least one request with the model's max seq len (9)".into());
    for i in 0..50 {
        lines.push(format!("after {i}\x1b[0m"));
    }
    let d = classify(&lines, &Context::default());
    assert_eq!(d.class, Class::MaxModelLen);
    let (ex, omitted) = excerpt(&lines, d.line);
    assert!(ex[0].starts_with("[... 100 lines"), "{:?}", ex[0]);
    assert!(ex[1].contains("Traceback"));
    assert!(ex[32].contains("ValueError"));
    assert!(ex.iter().any(|l| l.contains("after 49\\u{1b}[0m")));
    assert_eq!(omitted, 100 + 35);
}
