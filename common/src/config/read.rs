//! Loading: the file, its TOML syntax, and the key-by-key reader that collects every problem.

use super::hostile::{self, Text};
use super::rules::Limits;
use super::types::*;
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use toml::{Table, Value};

/// The largest config file read (1 MiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl Config {
    /// Read and validate a config file. Only a regular file of at most [`MAX_CONFIG_BYTES`] is
    /// read (a FIFO, a device or a huge file is refused before anything is read).
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text =
            crate::safefs::read_regular_text(file, MAX_CONFIG_BYTES).map_err(|e| ConfigError {
                file: file.to_path_buf(),
                issues: vec![Issue {
                    key: String::new(),
                    value: None,
                    message: format!("cannot read config file: {e}"),
                    line: None,
                    column: None,
                }],
            })?;
        Self::parse(&text, file)
    }

    /// Validate config text; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Self::parse_with(text, file, &Limits::from_host())
    }

    /// Validate config text against explicit host limits (tests).
    pub fn parse_with(text: &str, file: &Path, limits: &Limits) -> Result<Config, ConfigError> {
        let fail = |issues| ConfigError {
            file: file.to_path_buf(),
            issues,
        };
        let table: Table = match text.parse::<Table>() {
            Ok(t) => t,
            Err(e) => return Err(fail(vec![syntax_issue(text, &e)])),
        };
        let mut r = Reader::default();
        let cfg = r.config(&table, file, limits);
        if r.issues.is_empty() {
            Ok(cfg)
        } else {
            Err(fail(r.issues))
        }
    }
}

fn syntax_issue(text: &str, e: &toml::de::Error) -> Issue {
    let (line, column) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (Some(line), Some(col))
        }
        None => (None, None),
    };
    Issue {
        key: String::new(),
        value: None,
        message: format!("syntax error: {}", e.message().trim().replace('\n', "; ")),
        line,
        column,
    }
}

/// Render a TOML value compactly for messages.
pub fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("[{}]", a.iter().map(show).collect::<Vec<_>>().join(", ")),
        Value::Table(t) => format!(
            "{{ {} }}",
            t.iter()
                .map(|(k, v)| format!("{k} = {}", show(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

pub(super) fn normal_abs(p: &Path) -> bool {
    p.is_absolute() && p.components().all(|c| !matches!(c, Component::ParentDir))
}

/// Collects issues while reading the table.
#[derive(Default)]
pub(super) struct Reader {
    pub(super) issues: Vec<Issue>,
    /// Every path key read, for the system-directory and overlap rules.
    pub(super) paths: Vec<hostile::PathKey>,
}

/// A table being read: remembers which keys were consumed, to report the rest as unknown.
pub(super) struct Tab<'t> {
    pub(super) t: Option<&'t Table>,
    pub(super) prefix: String,
    pub(super) known: BTreeSet<&'static str>,
}

impl<'t> Tab<'t> {
    pub(super) fn key(&self, k: &str) -> String {
        if self.prefix.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.prefix)
        }
    }
}

impl Reader {
    pub(super) fn issue(&mut self, key: String, value: Option<&Value>, message: impl Into<String>) {
        self.issues.push(Issue {
            key,
            value: value.map(show),
            message: message.into(),
            line: None,
            column: None,
        });
    }

    pub(super) fn section<'t>(&mut self, root: &'t Table, name: &str) -> Tab<'t> {
        let t = match root.get(name) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(v) => {
                self.issue(name.to_string(), Some(v), "must be a table");
                None
            }
        };
        Tab {
            t,
            prefix: name.to_string(),
            known: BTreeSet::new(),
        }
    }

    pub(super) fn raw<'t>(&mut self, tab: &mut Tab<'t>, k: &'static str) -> Option<&'t Value> {
        tab.known.insert(k);
        tab.t.and_then(|t| t.get(k))
    }

    pub(super) fn finish(&mut self, tab: Tab<'_>) {
        let Some(t) = tab.t else { return };
        for (k, v) in t {
            if !tab.known.contains(k.as_str()) {
                let known: Vec<&str> = tab.known.iter().copied().collect();
                self.issue(
                    tab.key(k),
                    Some(v),
                    format!("unknown key (known keys: {})", known.join(", ")),
                );
            }
        }
    }

    /// A string; a NUL byte in it is refused here, for every key ([`hostile::string_problem`]).
    pub(super) fn string(&mut self, tab: &mut Tab<'_>, k: &'static str) -> Option<String> {
        match self.raw(tab, k) {
            None => None,
            Some(v @ Value::String(s)) => match hostile::string_problem(s, Text::Any) {
                Some(p) => {
                    self.issue(tab.key(k), Some(v), p);
                    None
                }
                None => Some(s.clone()),
            },
            Some(v) => {
                self.issue(tab.key(k), Some(v), "must be a string");
                None
            }
        }
    }

    pub(super) fn string_or(
        &mut self,
        tab: &mut Tab<'_>,
        k: &'static str,
        default: &str,
    ) -> String {
        self.string(tab, k).unwrap_or_else(|| default.to_string())
    }

    pub(super) fn abs_path(
        &mut self,
        tab: &mut Tab<'_>,
        k: &'static str,
        default: &str,
    ) -> PathBuf {
        let v = self.raw(tab, k).cloned();
        let s = self.string_or(tab, k, default);
        let p = PathBuf::from(&s);
        self.check_path(tab.key(k), v.as_ref(), &p);
        p
    }

    /// Absolute, no `..`, no control character; remembered for the system-directory and
    /// overlap rules ([`hostile`]), which every path key goes through.
    pub(super) fn check_path(&mut self, key: String, v: Option<&Value>, p: &Path) {
        if let Some(problem) = hostile::string_problem(&p.to_string_lossy(), Text::Plain) {
            self.issue(key, v, problem);
        } else if !normal_abs(p) {
            self.issue(key, v, "must be an absolute path without '..'");
        } else {
            self.paths.push(hostile::PathKey {
                role: hostile::role_of(&key),
                key,
                path: p.to_path_buf(),
            });
        }
    }

    pub(super) fn opt_abs_path(&mut self, tab: &mut Tab<'_>, k: &'static str) -> Option<PathBuf> {
        let v = self.raw(tab, k).cloned();
        let s = self.string(tab, k)?;
        if s.is_empty() {
            return None;
        }
        let p = PathBuf::from(&s);
        self.check_path(tab.key(k), v.as_ref(), &p);
        Some(p)
    }

    pub(super) fn boolean(&mut self, tab: &mut Tab<'_>, k: &'static str) -> Option<bool> {
        match self.raw(tab, k) {
            None => None,
            Some(Value::Boolean(b)) => Some(*b),
            Some(v) => {
                self.issue(tab.key(k), Some(v), "must be true or false");
                None
            }
        }
    }

    /// An integer in `min..=max`, `max` lowered to the documented maximum of the key
    /// ([`hostile::max_for`]: every timeout, interval and count has one).
    pub(super) fn int(
        &mut self,
        tab: &mut Tab<'_>,
        k: &'static str,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let max = hostile::max_for(&tab.key(k)).map_or(max, |m| m.min(max));
        match self.raw(tab, k) {
            None => None,
            Some(v @ Value::Integer(i)) => {
                if *i < min || *i > max {
                    self.issue(
                        tab.key(k),
                        Some(v),
                        format!("must be between {min} and {max}"),
                    );
                    None
                } else {
                    Some(*i)
                }
            }
            Some(v) => {
                self.issue(tab.key(k), Some(v), "must be an integer");
                None
            }
        }
    }

    pub(super) fn u64_or(
        &mut self,
        tab: &mut Tab<'_>,
        k: &'static str,
        min: i64,
        default: u64,
    ) -> u64 {
        self.int(tab, k, min, i64::from(u32::MAX))
            .map_or(default, |i| i as u64)
    }

    pub(super) fn u32_opt(&mut self, tab: &mut Tab<'_>, k: &'static str, min: i64) -> Option<u32> {
        self.int(tab, k, min, i64::from(u32::MAX)).map(|i| i as u32)
    }

    pub(super) fn str_list(&mut self, tab: &mut Tab<'_>, k: &'static str) -> Option<Vec<String>> {
        match self.raw(tab, k) {
            None => None,
            Some(v @ Value::Array(a)) => {
                let mut out = Vec::new();
                for x in a {
                    match x {
                        Value::String(s) => {
                            if let Some(p) = hostile::string_problem(s, Text::Any) {
                                self.issue(
                                    tab.key(k),
                                    Some(v),
                                    format!("element {:?}: {p}", s.escape_default().to_string()),
                                );
                                return None;
                            }
                            out.push(s.clone())
                        }
                        _ => {
                            self.issue(tab.key(k), Some(v), "must be a list of strings");
                            return None;
                        }
                    }
                }
                Some(out)
            }
            Some(v) => {
                self.issue(tab.key(k), Some(v), "must be a list of strings");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{parse, GOOD};
    use std::path::PathBuf;

    #[test]
    pub(super) fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.models.len(), 2);
        let a = c.model("a").unwrap();
        assert_eq!(a.served_model_name, "a");
        assert_eq!(
            a.resolved_path(&c.paths),
            PathBuf::from("/opt/citadel/models/a")
        );
        let b = c.model("b").unwrap();
        assert_eq!(b.resolved_path(&c.paths), PathBuf::from("/srv/b"));
        assert_eq!(b.max_model_len, Some(4096));
        assert_eq!(c.engine.host, "127.0.0.1");
        assert_eq!(
            c.monitor.state_file,
            PathBuf::from("/run/citadel/health.json")
        );
        assert_eq!(c.storage.dir_mode, 0o750);
        assert_eq!(c.highest_gpu_index(), Some(1));
    }

    #[test]
    pub(super) fn syntax_errors_have_line_and_column() {
        let e = parse("[models.a]\nport = = 3\n").unwrap_err();
        assert_eq!(e.issues[0].line, Some(2));
        assert!(
            e.to_string().starts_with("/etc/citadel/citadel.toml:2:"),
            "{e}"
        );
    }
}
