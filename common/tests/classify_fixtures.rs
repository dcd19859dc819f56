//! Every classification from a real or fixture log.
//!
//! `common/data/incidents/real/CASE.{stdout,stderr,rc}` are the real vLLM 0.33 CPU build's
//! output of one failed `vllm serve` each (captured here; see the README there), `expected.tsv`
//! says the class each must get. `gpu-only.txt` holds one line per cause this machine cannot
//! produce, each with its source.

use citadel_common::classify::{classify, Class, Context};
use citadel_common::incident::excerpt;
use std::path::PathBuf;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/incidents")
}

fn ctx() -> Context {
    Context {
        model: "tiny".into(),
        port: Some(18104),
        ..Context::default()
    }
}

fn class_named(s: &str) -> Class {
    *Class::ALL
        .iter()
        .find(|c| c.as_str() == s)
        .unwrap_or_else(|| panic!("unknown class {s}"))
}

fn read_lines(p: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn real_vllm_failures_are_classified() {
    let real = data().join("real");
    let expected = std::fs::read_to_string(real.join("expected.tsv")).unwrap();
    let mut n = 0;
    for line in expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (case, rest) = line.split_once('\t').unwrap();
        let mut f = rest.split('\t');
        let class = class_named(f.next().unwrap());
        let fix_has = f.next().unwrap_or("");
        let out = read_lines(&real.join(format!("{case}.stdout")));
        let err = read_lines(&real.join(format!("{case}.stderr")));
        let rc: i32 = std::fs::read_to_string(real.join(format!("{case}.rc")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_ne!(rc, 0, "{case}: the captured run did not fail");
        // The streams arrive interleaved; the verdict must not depend on their order.
        for lines in [
            [out.clone(), err.clone()].concat(),
            [err.clone(), out.clone()].concat(),
        ] {
            let d = classify(&lines, &ctx());
            assert_eq!(d.class, class, "{case}: {d:?}");
            assert!(
                d.fix.contains(fix_has),
                "{case}: fix {:?} lacks {fix_has:?}",
                d.fix
            );
            let (ex, _) = excerpt(&lines, d.line);
            let evidence = citadel_common::text::escape_controls(lines[d.line.unwrap()].trim_end());
            assert!(
                ex.iter()
                    .any(|l| l.contains(&evidence[..evidence.len().min(200)])),
                "{case}: the deciding line is not in the excerpt"
            );
        }
        n += 1;
    }
    assert!(n >= 6, "only {n} real cases");
}

#[test]
fn gpu_only_fixture_lines_are_classified() {
    let text = std::fs::read_to_string(data().join("gpu-only.txt")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (class, l) = line.split_once('\t').unwrap();
        let class = class_named(class);
        // Buried in unrelated output, before the usual follow-on noise.
        let lines = vec![
            "(APIServer pid=1) INFO 12-01 03:12:00 [api_server.py:1] vLLM API server version 0.33.0".to_string(),
            l.to_string(),
            "(APIServer pid=1) ERROR 12-01 03:12:10 [core_client.py:1] RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}".to_string(),
        ];
        let d = classify(&lines, &ctx());
        assert_eq!(d.class, class, "{l}: {d:?}");
        assert_eq!(d.line, Some(1));
        seen.insert(class);
    }
    for c in [
        Class::GpuOom,
        Class::GpuMemoryHeld,
        Class::Nccl,
        Class::CudaDriver,
    ] {
        assert!(seen.contains(&c), "no fixture line for {c}");
    }
}

#[test]
fn the_kernel_oom_killer_is_named_from_the_cgroup_count() {
    let lines = vec!["(APIServer pid=1) ERROR 12-01 [core_client.py:1] Engine core proc EngineCore_DP0 died unexpectedly, shutting down client.".to_string()];
    let mut c = ctx();
    c.oom_kills = 2;
    assert_eq!(classify(&lines, &c).class, Class::OomKilled);
    c.oom_kills = 0;
    assert_eq!(classify(&lines, &c).class, Class::Unknown);
}
