//! The gateway's client API keys (`gateway.api_keys_file`): one key a line, optionally `name:key` (the name
//! goes to the access log; a key never does). Compared in constant time.

use crate::Failure;
use std::path::Path;

/// Shortest key accepted: a guessable key on a LAN-facing endpoint is worse than none.
pub const MIN_KEY_LEN: usize = 16;

/// The accepted keys; empty means no authentication (loopback only, enforced by the config).
#[derive(Clone, Default)]
pub struct Keys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "Keys({names:?})")
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Equal bytes, in time that depends only on the longer length (no early exit).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

impl Keys {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Parse the file's text; errors name the file and line, never the key.
    pub fn parse(text: &str, file: &Path) -> Result<Keys, Failure> {
        let mut keys = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, key) = match line.split_once(':') {
                Some((n, k)) if valid_name(n.trim()) => (n.trim().to_string(), k.trim()),
                _ => (format!("key{}", i + 1), line),
            };
            if key.len() < MIN_KEY_LEN || !key.chars().all(|c| c.is_ascii_graphic()) {
                return Err(Failure::config(format!(
                    "{}:{}: a key must be at least {MIN_KEY_LEN} printable characters without spaces (the key is not shown)",
                    file.display(),
                    i + 1
                )));
            }
            keys.push((name, key.as_bytes().to_vec()));
        }
        if keys.is_empty() {
            return Err(Failure::config(format!(
                "{}: no keys (one key a line, optionally NAME:KEY)",
                file.display()
            )));
        }
        Ok(Keys { keys })
    }

    /// The keys of `api_keys_file` (read again on every reload), or none.
    pub fn load(api_keys_file: Option<&Path>) -> Result<Keys, Failure> {
        match api_keys_file {
            None => Ok(Keys::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Failure::config(format!("gateway.api_keys_file {}: {e}", p.display()))
                })?;
                Keys::parse(&text, p)
            }
        }
    }

    /// One accepted key, for a local operator's probe through the gateway
    /// (`citadel-service health`); never printed.
    pub fn any(&self) -> Option<&str> {
        self.keys
            .first()
            .and_then(|(_, k)| std::str::from_utf8(k).ok())
    }

    /// The name of the key that `Authorization: Bearer KEY` carries; every key is compared.
    pub fn check(&self, authorization: Option<&[u8]>) -> Option<&str> {
        let presented = authorization
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .map(|k| k.trim_ascii())
            .unwrap_or(b"");
        let mut found = None;
        for (name, key) in &self.keys {
            if ct_eq(presented, key) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found.filter(|_| !presented.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keys_comments_and_checks() {
        let k = Keys::parse(
            "# ops\nalice:sk-alice-0123456789abcdef\n\nsk-anonymous-0123456789\nhttp://x:yyyyyyyyyyyyyyyyy\n",
            Path::new("/k"),
        )
        .unwrap();
        assert_eq!(k.len(), 3);
        assert_eq!(
            k.check(Some(b"Bearer sk-alice-0123456789abcdef")),
            Some("alice")
        );
        assert_eq!(
            k.check(Some(b"Bearer sk-anonymous-0123456789")),
            Some("key4")
        );
        // "http" is a valid name, so the line is name "http", key "//x:yyy...".
        assert_eq!(k.check(Some(b"Bearer //x:yyyyyyyyyyyyyyyyy")), Some("http"));
        assert_eq!(k.check(Some(b"Bearer sk-alice-0123456789abcde")), None);
        assert_eq!(k.check(Some(b"Bearer sk-alice-0123456789abcdeff")), None);
        assert_eq!(k.check(Some(b"sk-alice-0123456789abcdef")), None);
        assert_eq!(k.check(None), None);
        assert!(!format!("{k:?}").contains("sk-"), "{k:?}");
    }

    #[test]
    fn short_keys_and_empty_files_are_config_errors_without_the_key() {
        let e = Keys::parse("bob:short\n", Path::new("/k")).unwrap_err();
        assert_eq!(e.exit(), crate::Exit::Config);
        assert!(e.message.starts_with("/k:1:"), "{e}");
        assert!(
            !e.message.contains("short\n") && !e.message.contains(":short"),
            "{e}"
        );
        assert!(Keys::parse("# none\n", Path::new("/k")).is_err());
    }

    #[test]
    fn constant_time_equality() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"", b"a"));
        assert!(ct_eq(b"", b""));
    }
}
