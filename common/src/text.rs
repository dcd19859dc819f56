//! Text from the config, the engine or a state file, made safe to print or log: every control
//! character (C0, DEL, C1; newline and tab included) is written as an escape (`\n`, `\t`,
//! `\u{1b}`), so a value can neither forge an extra log line nor send a terminal escape.

use std::borrow::Cow;

/// `s` with its control characters escaped; borrowed when there are none.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !may_have_controls(s) || !s.chars().any(char::is_control) {
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

/// Whether `s` has a byte that can be part of a control character: C0 and DEL are single
/// bytes below 0x20 and 0x7f, and C1 (U+0080..=U+009F) is 0xc2 then a byte. A byte scan (the
/// common case, every log line) instead of decoding each character.
fn may_have_controls(s: &str) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Eight bytes a step (bit tricks, whatever the optimisation level): whether a byte of `w`
    // is below `n` (n <= 0x80), and whether one equals `b`. Exact as yes-or-no answers.
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGHS != 0;
    let equal = |w: u64, b: u64| below(w ^ (ONES * b), 1);
    let mut words = s.as_bytes().chunks_exact(8);
    for c in &mut words {
        let w = u64::from_le_bytes(c.try_into().expect("eight bytes"));
        if below(w, 0x20) || equal(w, 0x7f) || equal(w, 0xc2) {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == 0x7f || b == 0xc2)
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
        // 0xc2 starts C1 controls and printable characters alike.
        assert_eq!(escape_controls("\u{a9} \u{85}"), "\u{a9} \\u{85}");
        assert!(matches!(escape_controls("\u{a9}"), Cow::Borrowed(_)));
        // Wherever a control falls among the scan's eight-byte words.
        for c in ['\u{0}', '\u{1b}', '\u{1f}', '\u{7f}', '\u{85}', '\u{9f}'] {
            for at in 0..20 {
                let s = format!("{}{c}{}", "a\u{a9}".repeat(at), "b".repeat(20 - at));
                let e = escape_controls(&s);
                assert!(e.contains(&format!("{}", c.escape_default())), "{s:?}: {e}");
            }
        }
        let plain = "a\u{a0}\u{ff} ~".repeat(9);
        assert!(matches!(escape_controls(&plain), Cow::Borrowed(_)));
        assert_eq!(escape_lines("one\u{1b}\ntwo"), "one\\u{1b}\ntwo");
    }
}
