//! Prometheus text format (the exposition format vLLM's `/metrics` serves): one sample line
//! at a time, and the sum of a metric over every label set. The health monitor's stall
//! detector and `citadel-service top` read vLLM's metrics with it.

/// The sum of every sample of `name` (all label sets: several engines are summed); `None`
/// when the page has no finite sample of it.
pub fn sum(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(sample)
        .filter(|(n, _)| *n == name)
        .fold(None, |acc, (_, v)| Some(acc.unwrap_or(0.0) + v))
}

/// One sample line: `name{labels} value [timestamp]` -> (name, value). Comments, blank lines
/// and anything malformed are `None`.
pub fn sample(line: &str) -> Option<(&str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        rest = &rest[labels_end(rest)?..];
    }
    let value = rest.split_whitespace().next()?;
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().ok()?,
    };
    (!name.is_empty() && v.is_finite()).then_some((name, v))
}

/// Byte offset just past the `}` that closes the label set at the start of `s` (label values are
/// quoted and may contain `}`, `"` escaped as `\"`).
fn labels_end(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (in_quotes, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => in_quotes = false,
            (false, _, '"') => in_quotes = true,
            (false, _, '}') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_names_labels_and_values() {
        assert_eq!(sample("a_total 7e2"), Some(("a_total", 700.0)));
        assert_eq!(
            sample("x{m=\"a } b\\\"\"} 1 1700000000000"),
            Some(("x", 1.0))
        );
        assert_eq!(sample("# TYPE x gauge"), None);
        assert_eq!(sample("x{m=\"a\" 1"), None);
        assert_eq!(sample("x NaN"), None);
        assert_eq!(sample("x +Inf"), None);
    }

    #[test]
    fn sum_adds_every_label_set_and_only_the_exact_name() {
        let t = "w{engine=\"0\"} 2\nw{engine=\"1\"} 3\nw_x 100\n# w 9\n";
        assert_eq!(sum(t, "w"), Some(5.0));
        assert_eq!(sum(t, "v"), None);
    }
}
