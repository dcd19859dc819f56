//! `/metrics`: the Prometheus text with vLLM 0.33's names and labels.

use super::*;

/// prometheus_client's `floatToGoString`: `12.0`, `0.25`, `1.732636e+09`.
pub fn prom_float(d: f64) -> String {
    if d.is_nan() {
        return "NaN".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let s = format!("{d:?}");
    match s.find('.') {
        Some(dot) if d > 0.0 && dot > 6 && !s.contains('e') => {
            let mantissa = format!("{}.{}{}", &s[..1], &s[1..dot], &s[dot + 1..]);
            let mantissa = mantissa.trim_end_matches(['0', '.']);
            format!("{mantissa}e+0{}", dot - 1)
        }
        _ => s,
    }
}

/// Escape a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Engine {
    /// The Prometheus text `/metrics` answers (vLLM 0.33 names, `model_name` and `engine` labels).
    pub fn metrics_text(&self) -> String {
        let labels = format!(
            "model_name=\"{}\",engine=\"0\"",
            label(&self.settings.names[0])
        );
        let created = prom_float(self.created);
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: f64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {}\n",
                prom_float(v)
            ));
        };
        let running = self.running() as f64;
        gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            running,
        );
        gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            self.waiting.load(SeqCst) as f64,
        );
        gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            (running * 0.05).min(1.0),
        );
        let mut counter = |name: &str, help: &str, samples: &[(String, u64)]| {
            out.push_str(&format!(
                "# HELP {name}_total {help}\n# TYPE {name}_total counter\n"
            ));
            for (extra, v) in samples {
                out.push_str(&format!(
                    "{name}_total{{{labels}{extra}}} {}\n",
                    prom_float(*v as f64)
                ));
            }
            out.push_str(&format!(
                "# HELP {name}_created {help}\n# TYPE {name}_created gauge\n"
            ));
            for (extra, _) in samples {
                out.push_str(&format!("{name}_created{{{labels}{extra}}} {created}\n"));
            }
        };
        counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            &[(String::new(), 0)],
        );
        counter(
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            &[(String::new(), self.prompt_tokens.load(SeqCst))],
        );
        counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            &[(String::new(), self.generation_tokens())],
        );
        let finished: Vec<(String, u64)> = FINISH_REASONS
            .iter()
            .zip(&self.finished)
            .map(|(r, c)| (format!(",finished_reason=\"{r}\""), c.load(SeqCst)))
            .collect();
        counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            &finished,
        );
        out
    }
}
