use super::*;

fn lines(s: &str) -> Vec<String> {
    s.lines().map(String::from).collect()
}

fn ctx() -> Context {
    Context {
        model: "phi3".into(),
        port: Some(11400),
        ..Context::default()
    }
}

#[test]
fn prefixes_are_stripped() {
    assert_eq!(
        strip_prefixes(
            "(EngineCore_DP0 pid=4711) ERROR 12-01 21:50:10 [core.py:123] ValueError: x"
        ),
        "ValueError: x"
    );
    assert_eq!(
        strip_prefixes("INFO 12-01 21:50:10 [api_server.py:1] hi"),
        "hi"
    );
    assert_eq!(strip_prefixes("(plain) text"), "(plain) text");
}

#[test]
fn the_root_cause_wins_over_later_noise() {
    let d = classify(
            &lines("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\nRuntimeError: NCCL error: unhandled cuda error\nRuntimeError: Engine core initialization failed. See root cause above."),
            &ctx(),
        );
    assert_eq!(d.class, Class::GpuOom);
    assert_eq!(d.line, Some(0));
}

#[test]
fn the_largest_length_that_fits_is_in_the_fix() {
    let d = classify(&lines("ValueError: To serve at least one request with the model's max seq len (4000000), (3.81 GiB KV cache is needed, which is larger than the available KV cache memory (1.0 GiB). Based on the available memory, the estimated maximum model length is 1048544. Try increasing"), &ctx());
    assert_eq!(d.class, Class::MaxModelLen);
    assert!(
        d.fix.contains("models.phi3.max_model_len = 1048544"),
        "{}",
        d.fix
    );
}

#[test]
fn gpu_memory_held_names_the_holder() {
    let mut c = ctx();
    c.gpu_holders = vec!["pid 4242 python3 (citadel-model@coder.service) on GPU 0".into()];
    let d = classify(&lines("ValueError: Free memory on device cuda:0 (10.5/79.2 GiB) on startup is less than desired GPU memory utilization (0.9, 71.3 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."), &c);
    assert_eq!(d.class, Class::GpuMemoryHeld);
    assert!(d.fix.contains("pid 4242"), "{}", d.fix);
}

#[test]
fn a_foreign_sigkill_is_the_oom_killer() {
    let mut c = ctx();
    c.oom_kills = 1;
    let d = classify(&lines("INFO loading\nKilled"), &c);
    assert_eq!(d.class, Class::OomKilled);
    assert!(d.summary.contains("1 kill"));
}

#[test]
fn unknown_quotes_the_last_exception() {
    let d = classify(
        &lines("Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'foo'\nbye"),
        &ctx(),
    );
    assert_eq!(d.class, Class::Unknown);
    assert_eq!(d.summary, "KeyError: 'foo'");
    assert_eq!(d.line, Some(2));
}

#[test]
fn every_class_has_a_name_and_a_fix() {
    for c in Class::ALL {
        let d = word(*c, "x", &ctx(), None);
        assert!(!d.fix.is_empty() && !c.title().is_empty());
        let json = serde_json::to_string(c).unwrap();
        assert_eq!(json, format!("\"{}\"", c.as_str()));
    }
}

fn cause_of(lines: &[&str]) -> Option<String> {
    let mut f = CauseFinder::default();
    for l in lines {
        f.feed(l);
    }
    f.cause().map(String::from)
}

#[test]
fn the_root_cause_is_found_under_vllm_s_wrappers() {
    let out = [
            "(APIServer pid=9) INFO 12-01 22:00:00 [api_utils.py:286] non-default args: {}",
            "Traceback (most recent call last):",
            "  File \"x.py\", line 1, in <module>",
            "(EngineCore pid=12) ERROR 12-01 22:00:01 [core.py:1] ValueError: User-specified max_model_len (4096) is greater than the derived max_model_len (512)",
            "The above exception was the direct cause of the following exception:",
            "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
            "INFO:     Shutting down",
        ];
    assert_eq!(
            cause_of(&out).as_deref(),
            Some("ValueError: User-specified max_model_len (4096) is greater than the derived max_model_len (512)")
        );
    let pydantic = [
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig",
            "  Value error, User-specified max_model_len (4096) is greater than the derived max_model_len (max_position_embeddings=512.0 or model_max_length=None in model's config.json).",
            "    For further information visit https://errors.pydantic.dev/2.14/v/value_error",
        ];
    assert!(cause_of(&pydantic)
        .unwrap()
        .starts_with("Value error, User-specified max_model_len (4096)"));
    let cc = [
            "torch._inductor.exc.InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx: (None, 'g++')",
            "RuntimeError: Engine core initialization failed. See root cause above.",
        ];
    assert!(cause_of(&cc)
        .unwrap()
        .starts_with("torch._inductor.exc.InvalidCxxCompiler: No working C++"));
    let h = [
        "/tmp/x/main.c:1:10: fatal error: Python.h: No such file or directory",
        "torch._inductor.exc.InductorError: CppCompileError: C++ compile error",
    ];
    assert_eq!(
        cause_of(&h).as_deref(),
        Some("fatal error: Python.h: No such file or directory")
    );
    let none = [
        "INFO:     Started server process",
        "Loading safetensors checkpoint shards: 100%",
        "WARNING: x",
    ];
    assert_eq!(cause_of(&none), None);
    assert_eq!(
        cause_of(&["OSError: bad\u{1b}[31m name"]).as_deref(),
        Some("OSError: bad\\u{1b}[31m name")
    );
}
