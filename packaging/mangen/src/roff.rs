//! Roff for the sections clap_mangen does not write (EXIT STATUS, FILES, ENVIRONMENT,
//! EXAMPLES, SEE ALSO), and a small Markdown-to-roff converter for citadel.toml(5), whose body
//! is the README's config section, so the reference and the man page never disagree.

/// Escape text for roff: backslashes, hyphens (so they are not hyphenation points), and a
/// leading `.` or `'` that would start a request.
pub fn escape(s: &str) -> String {
    let t = s.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// Inline Markdown: `code` and **strong** become bold; everything escaped.
pub fn inline(s: &str) -> String {
    let esc = |t: &str| t.replace('\\', "\\e").replace('-', "\\-");
    let mut out = String::new();
    let mut buf = String::new();
    let mut bold = false;
    let mut i = 0;
    while i < s.len() {
        let toggle = if s[i..].starts_with("**") {
            2
        } else if s[i..].starts_with('`') {
            1
        } else {
            0
        };
        if toggle > 0 {
            out.push_str(&esc(&buf));
            buf.clear();
            out.push_str(if bold { "\\fR" } else { "\\fB" });
            bold = !bold;
            i += toggle;
            continue;
        }
        let c = s[i..].chars().next().unwrap_or(' ');
        buf.push(c);
        i += c.len_utf8();
    }
    out.push_str(&esc(&buf));
    if bold {
        out.push_str("\\fR");
    }
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// A section heading.
pub fn section(name: &str) -> String {
    format!(".SH \"{name}\"\n")
}

/// A list of (term, text) items as `.TP` paragraphs.
pub fn items(list: &[(String, String)]) -> String {
    let mut s = String::new();
    for (term, text) in list {
        s.push_str(".TP\n");
        s.push_str(&format!("\\fB{}\\fR\n", escape(term)));
        s.push_str(&format!("{}\n", escape(text)));
    }
    s
}

fn table_row(line: &str) -> Vec<String> {
    let t = line.trim().trim_start_matches('|').trim_end_matches('|');
    t.split('|').map(|c| c.trim().to_string()).collect()
}

/// A table as a tagged list (wide tables do not fit a terminal): the first two columns are
/// the term (an empty first cell repeats the one above, as in the README's config table), the
/// middle columns follow in parentheses with their header, the last column is the text.
fn table(rows: &[Vec<String>]) -> String {
    let Some((header, body)) = rows.split_first() else {
        return String::new();
    };
    let n = header.len();
    let mut s = String::new();
    let mut first = String::new();
    for r in body {
        let cell = |i: usize| r.get(i).cloned().unwrap_or_default();
        if !cell(0).is_empty() {
            first = cell(0);
        }
        let mut term = if n > 2 {
            format!("{} {}", first, cell(1)).trim().to_string()
        } else {
            first.clone()
        };
        for (i, h) in header.iter().enumerate().take(n.saturating_sub(1)).skip(2) {
            if !cell(i).is_empty() {
                term.push_str(&format!(" ({h}: {})", cell(i)));
            }
        }
        s.push_str(".TP\n");
        s.push_str(&format!(
            "\\fB{}\\fR\n",
            inline(&term).replace("\\fB", "").replace("\\fR", "")
        ));
        s.push_str(&inline(&cell(n.max(2) - 1)));
        s.push('\n');
    }
    s
}

/// Markdown (headings, paragraphs, lists, fenced code, tables) to roff.
pub fn markdown(md: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    let mut para: Vec<String> = vec![];
    let flush = |para: &mut Vec<String>, out: &mut String| {
        if !para.is_empty() {
            out.push_str(".PP\n");
            out.push_str(&inline(&para.join(" ")));
            out.push('\n');
            para.clear();
        }
    };
    while i < lines.len() {
        let l = lines[i];
        if let Some(h) = l.strip_prefix("### ").or_else(|| l.strip_prefix("## ")) {
            flush(&mut para, &mut out);
            out.push_str(&format!(".SS \"{}\"\n", inline(h.trim()).replace('"', "")));
        } else if l.starts_with("```") {
            flush(&mut para, &mut out);
            out.push_str(".PP\n.RS 4\n.nf\n");
            i += 1;
            while i < lines.len() && !lines[i].starts_with("```") {
                out.push_str(&escape(lines[i]));
                out.push('\n');
                i += 1;
            }
            out.push_str(".fi\n.RE\n");
        } else if l.starts_with('|') {
            flush(&mut para, &mut out);
            let mut rows = vec![];
            while i < lines.len() && lines[i].starts_with('|') {
                let r = table_row(lines[i]);
                if !r.iter().all(|c| c.chars().all(|ch| ch == '-' || ch == ':')) {
                    rows.push(r);
                }
                i += 1;
            }
            out.push_str(&table(&rows));
            continue;
        } else if let Some(item) = l.strip_prefix("- ") {
            flush(&mut para, &mut out);
            let mut text = vec![item.trim().to_string()];
            while i + 1 < lines.len() && lines[i + 1].starts_with("  ") {
                i += 1;
                text.push(lines[i].trim().to_string());
            }
            out.push_str(".IP \\(bu 2\n");
            out.push_str(&inline(&text.join(" ")));
            out.push('\n');
        } else if l.trim().is_empty() {
            flush(&mut para, &mut out);
        } else {
            para.push(l.trim().to_string());
        }
        i += 1;
    }
    flush(&mut para, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_inline_markup() {
        assert_eq!(escape(".x-y\\z"), "\\&.x\\-y\\ez");
        assert_eq!(inline("a `b-c` **d**"), "a \\fBb\\-c\\fR \\fBd\\fR");
    }

    #[test]
    fn tables_lists_and_code() {
        let r = markdown(
            "## T\n\n| a | b |\n|---|---|\n| `x` | y z |\n\n- one\n  two\n\n```\n.cmd\n```\n",
        );
        assert!(r.contains(".SS \"T\""), "{r}");
        assert!(r.contains(".TP\n\\fBx\\fR\ny z\n"), "{r}");
        assert!(r.contains(".IP \\(bu 2\none two\n"), "{r}");
        assert!(r.contains(".nf\n\\&.cmd\n.fi"), "{r}");
        let t = markdown("| s | key | default | meaning |\n|---|---|---|---|\n| `[a]` | `k` | 1 | m |\n| | `j` | | n |\n");
        assert!(t.contains("\\fB[a] k (default: 1)\\fR\nm\n"), "{t}");
        assert!(t.contains("\\fB[a] j\\fR\nn\n"), "{t}");
    }
}
