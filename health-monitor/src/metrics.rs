//! The two vLLM metrics the hang detector needs, read from `/metrics` (Prometheus text format,
//! vLLM 0.33 names, see docs/VLLM.md section 3):
//! - `vllm:num_requests_running` (gauge): requests being generated right now;
//! - `vllm:generation_tokens_total` (counter): tokens generated since the server started.
//!
//! Both carry `model_name` and `engine` labels; with several engines the samples are summed.

/// Gauge: requests in the running batch.
pub const RUNNING: &str = "vllm:num_requests_running";
/// Counter: generated tokens (prometheus_client appends `_total`).
pub const GENERATION_TOKENS: &str = "vllm:generation_tokens_total";

/// One reading of the two metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    pub running: f64,
    pub generation_tokens: f64,
}

/// Parse a `/metrics` page. `None` when either metric is missing (not vLLM, or cut off) or is
/// not a finite, non-negative number.
pub fn parse(text: &str) -> Option<Metrics> {
    use citadel_common::promtext::sample;
    let mut running = None;
    let mut tokens = None;
    for line in text.lines() {
        let Some((name, value)) = sample(line) else {
            continue;
        };
        let slot = match name {
            RUNNING => &mut running,
            GENERATION_TOKENS => &mut tokens,
            _ => continue,
        };
        *slot = Some(slot.unwrap_or(0.0) + value);
    }
    let m = Metrics {
        running: running?,
        generation_tokens: tokens?,
    };
    // NaN, infinities or negative counts are not a reading the stall detector can use (NaN
    // never equals itself: a frozen counter would look like progress forever).
    let usable = |v: f64| v.is_finite() && v >= 0.0;
    (usable(m.running) && usable(m.generation_tokens)).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="phi3"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="phi3"} 5.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="phi3"} 12345.0
# HELP vllm:generation_tokens_created Number of generation tokens processed.
# TYPE vllm:generation_tokens_created gauge
vllm:generation_tokens_created{engine="0",model_name="phi3"} 1.7e+09
"#;

    #[test]
    fn reads_the_vllm_names() {
        let m = parse(VLLM).unwrap();
        assert_eq!(m.running, 2.0);
        assert_eq!(m.generation_tokens, 12345.0);
    }

    #[test]
    fn sums_engines_and_takes_timestamps_and_odd_labels() {
        let text =
            "vllm:num_requests_running{engine=\"0\",model_name=\"a } b\\\"\"} 1 1700000000000\n\
                    vllm:num_requests_running{engine=\"1\",model_name=\"x\"} 3\n\
                    vllm:generation_tokens_total 7e2\n";
        let m = parse(text).unwrap();
        assert_eq!(m.running, 4.0);
        assert_eq!(m.generation_tokens, 700.0);
    }

    #[test]
    fn missing_or_malformed_is_none() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("<html>not metrics</html>"), None);
        assert_eq!(parse("vllm:num_requests_running{engine=\"0\"} 1\n"), None);
        // The old (removed) name does not count, nor does a prefix of the right one.
        assert_eq!(
            parse("vllm:num_requests_running_x 1\nvllm:generation_tokens 3\n"),
            None
        );
        assert_eq!(
            parse("vllm:num_requests_running{engine=\"0\" 1\nvllm:generation_tokens_total NaN\n"),
            None
        );
    }
}
