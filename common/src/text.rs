//! Text from the config, the engine or a state file, made safe to print or log: every control
//! character (C0, DEL, C1; newline and tab included) is written as an escape (`\n`, `\t`,
//! `\u{1b}`), so a value can neither forge an extra log line nor send a terminal escape.

use std::borrow::Cow;

/// `s` with its control characters escaped; borrowed when there are none.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`escape_controls`] of each line, newlines kept: for a message that is meant to be several
/// lines (each line is then one log line).
pub fn escape_lines(s: &str) -> String {
    s.split('\n')
        .map(escape_controls)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A probe latency, the one way every command and helper prints it: `12 ms`.
pub fn latency_ms(ms: u64) -> String {
    format!("{ms} ms")
}

/// serde: a string field where `""` means "unknown", read as `None` (so JSON says `null`).
pub fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::Deserialize;
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// A count and its noun, the one way every message says how many: `1 GPU`, `2 GPUs`,
/// `0 models` (the nouns used are regular: an `s` makes the plural).
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_say_one_without_an_s() {
        assert_eq!(count(1, "GPU"), "1 GPU");
        assert_eq!(count(2, "GPU"), "2 GPUs");
        assert_eq!(count(0, "model"), "0 models");
        assert_eq!(latency_ms(12), "12 ms");
    }

    #[test]
    fn controls_are_escaped_and_the_rest_is_kept() {
        assert_eq!(escape_controls("plain ünïcode"), "plain ünïcode");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\nerror: b"), "a\\nerror: b");
        assert_eq!(
            escape_controls("\u{1b}[31mred\u{7}"),
            "\\u{1b}[31mred\\u{7}"
        );
        assert_eq!(escape_controls("\u{9b}x\u{7f}"), "\\u{9b}x\\u{7f}");
        assert_eq!(escape_lines("one\u{1b}\ntwo"), "one\\u{1b}\ntwo");
    }
}
