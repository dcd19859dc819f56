//! Output: aligned tables and JSON documents on stdout, the one way every binary prints them.
//!
//! A JSON document that cannot be encoded (serde_json fails only on a map with non-string
//! keys or a failing `Serialize`) is a [`Failure`] with exit 1 ([`Exit::Failure`],
//! unexpected) and one line, `cannot encode the JSON document: REASON`, which
//! [`crate::exit::report_as`] logs to stderr (and, with `--json`, prints as the error
//! document). Nothing is printed on stdout before it.

use crate::{Exit, Failure};
use serde::Serialize;

/// Left-aligned columns separated by two spaces; the last column is not padded. Widths count
/// the characters shown, so cells coloured with ANSI escapes stay aligned.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |x| visible_len(x)))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < r.len() {
                line.push_str(&" ".repeat(widths[c] - visible_len(cell) + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Characters shown, not counting ANSI escape sequences (`ESC ... m`).
pub fn visible_len(s: &str) -> usize {
    let mut n = 0;
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, _) => n += 1,
        }
    }
    n
}

/// `value` as pretty JSON, or the one failure for a document that cannot be encoded.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(value).map_err(|e| {
        Failure::new(
            Exit::Failure,
            format!("cannot encode the JSON document: {e}"),
        )
    })
}

/// Print `value` as one pretty JSON document (and a newline) on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), Failure> {
    println!("{}", to_json(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&[
            vec!["A".into(), "BB".into()],
            vec!["CCC".into(), "D".into()],
        ]);
        assert_eq!(t, "A    BB\nCCC  D\n");
        assert_eq!(visible_len("\x1b[31mred\x1b[0m"), 3);
    }

    #[test]
    fn a_document_that_cannot_be_encoded_is_one_failure_with_exit_1() {
        let mut m = std::collections::BTreeMap::new();
        m.insert((1, 2), "tuple keys are not JSON");
        let f = to_json(&m).unwrap_err();
        assert_eq!(f.exit(), Exit::Failure);
        assert!(
            f.message.starts_with("cannot encode the JSON document: "),
            "{f}"
        );
        assert_eq!(f.message.lines().count(), 1);
        assert_eq!(to_json(&[1]).unwrap(), "[\n  1\n]");
    }
}
