//! Property tests (proptest) over the `/metrics` parser (issue #14): any page parses without
//! panic, and a reading it returns is usable by the stall detector: finite, non-negative
//! numbers. Anything else (NaN, infinities, negative counts) is "no metrics" for that sweep.

use health_monitor::metrics::{parse, GENERATION_TOKENS, RUNNING};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|f| f.to_string()),
        Just("NaN".to_string()),
        Just("+Inf".to_string()),
        Just("-Inf".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        (0u32..1000).prop_map(|i| i.to_string()),
        "[0-9a-z.+-]{0,8}".prop_map(|s| s),
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        (value(), value()).prop_map(|(a, _)| format!("{RUNNING}{{model_name=\"m\"}} {a}")),
        value().prop_map(|a| format!("{GENERATION_TOKENS}{{model_name=\"m\",engine=\"0\"}} {a}")),
        value().prop_map(|a| format!("{GENERATION_TOKENS} {a} 1700000000")),
        Just("# HELP vllm:x y".to_string()),
        Just(String::new()),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_metrics_page_gives_no_reading_or_a_usable_one(lines in prop::collection::vec(line(), 0..12)) {
        let page = lines.join("\n");
        if let Some(m) = parse(&page) {
            prop_assert!(m.running.is_finite() && m.running >= 0.0, "{m:?} from {page:?}");
            prop_assert!(
                m.generation_tokens.is_finite() && m.generation_tokens >= 0.0,
                "{m:?} from {page:?}"
            );
        }
    }
}
