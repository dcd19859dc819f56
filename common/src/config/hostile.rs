//! Rules that keep a hostile or careless config from aiming Citadel's root helpers at the
//! system (issue #14). They are general on purpose: every path key, every `*_secs` key and
//! every string of the config goes through them, including keys added later.
//!
//! - [`path_problems`]: no path may be a system directory or a parent of one
//!   ([`SYSTEM_DIRS`]); what Citadel creates, chowns or writes ([`Role::Owned`],
//!   [`Role::Written`]) may not lie inside a system tree ([`SYSTEM_TREES`]); a written file may
//!   not sit directly in a system directory; roles may not overlap ([`overlap_problems`]).
//! - [`max_for`]: the sane maximum of every timeout, interval and count ([`MAXIMA`]; any other
//!   `*_secs` key: [`MAX_ANY_SECS`]).
//! - [`string_problem`]: no NUL byte in any string; no control character in a path, a name or
//!   a host.

use std::path::{Path, PathBuf};

/// System directories: no Citadel path may be one of them or a parent of one.
pub const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/etc/systemd",
    "/home",
    "/lib",
    "/lib/systemd",
    "/lib32",
    "/lib64",
    "/libx32",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/run/lock",
    "/run/systemd",
    "/run/user",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/include",
    "/usr/lib",
    "/usr/lib/systemd",
    "/usr/lib64",
    "/usr/libexec",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/lib",
    "/usr/local/sbin",
    "/usr/sbin",
    "/usr/share",
    "/usr/src",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/lib/systemd",
    "/var/local",
    "/var/lock",
    "/var/log",
    "/var/mail",
    "/var/opt",
    "/var/run",
    "/var/spool",
    "/var/tmp",
];

/// Trees that nothing Citadel creates, chowns, chmods or writes may be inside.
pub const SYSTEM_TREES: &[&str] = &[
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
    "/sys", "/usr",
];

/// What Citadel does with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A directory storage-setup creates and gives to the service account (chown, chmod).
    Owned,
    /// A file a helper writes (atomically, replacing what is there).
    Written,
    /// Read, mounted on or linked to; never changed by Citadel.
    Other,
}

/// The role of a path key. Directories storage-setup gives to the service account and files a
/// helper writes are named here; every other path key (new ones included) is [`Role::Other`],
/// which still may not be a system directory or a parent of one.
pub fn role_of(key: &str) -> Role {
    match key {
        "paths.cache_dir" | "paths.staging_dir" | "paths.runtime_dir" | "paths.state_dir" => {
            Role::Owned
        }
        "monitor.state_file" | "monitor.textfile" => Role::Written,
        _ => Role::Other,
    }
}

/// A path key of the config, its value and its role.
#[derive(Debug, Clone)]
pub struct PathKey {
    pub key: String,
    pub path: PathBuf,
    pub role: Role,
}

/// One problem: the key, the value as written, the message.
pub type Problem = (String, String, String);

fn problem(k: &PathKey, msg: String) -> Problem {
    (
        k.key.clone(),
        format!("{:?}", k.path.display().to_string()),
        msg,
    )
}

/// The system-directory rules for one path.
pub fn path_problems(k: &PathKey) -> Vec<Problem> {
    let mut out = vec![];
    let p = k.path.as_path();
    if let Some(sys) = SYSTEM_DIRS.iter().find(|s| Path::new(s).starts_with(p)) {
        let what = if Path::new(sys) == p {
            "is a system directory".to_string()
        } else {
            format!("is a parent of the system directory {sys}")
        };
        out.push(problem(
            k,
            format!("{what}: Citadel's paths must be directories and files of its own"),
        ));
        return out;
    }
    if k.role != Role::Other {
        if let Some(tree) = SYSTEM_TREES.iter().find(|t| p.starts_with(t)) {
            let does = if k.role == Role::Owned {
                "storage-setup would create it and give it to the service account"
            } else {
                "a Citadel helper would write (replace) it"
            };
            out.push(problem(
                k,
                format!("is inside the system tree {tree}: {does}"),
            ));
            return out;
        }
    }
    if k.role == Role::Written {
        if let Some(parent) = p.parent() {
            if SYSTEM_DIRS.iter().any(|s| Path::new(s) == parent) {
                out.push(problem(
                    k,
                    format!(
                        "is directly in the system directory {}: a Citadel helper would write (replace) it; use a directory of Citadel's own",
                        parent.display()
                    ),
                ));
            }
        }
    }
    out
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Overlapping roles, for the `[paths]` keys by name (`cache_dir`, `models_mount` ...): each
/// directory Citadel gives to the service account has one role and is neither inside another
/// nor a parent of one; runtime and state stay off the model disks; the models link is not in a
/// directory the service account owns (it could repoint it).
pub fn overlap_problems(keys: &[PathKey]) -> Vec<Problem> {
    let get = |name: &str| keys.iter().find(|k| k.key == format!("paths.{name}"));
    let mut out = vec![];
    let owned: Vec<&PathKey> = keys.iter().filter(|k| k.role == Role::Owned).collect();
    for (i, a) in owned.iter().enumerate() {
        for b in &owned[..i] {
            if overlaps(&a.path, &b.path) {
                let how = if a.path == b.path {
                    "is the same directory as"
                } else if a.path.starts_with(&b.path) {
                    "is inside"
                } else {
                    "contains"
                };
                out.push(problem(
                    a,
                    format!(
                        "{how} {} ({}): each role needs a directory of its own",
                        b.key,
                        b.path.display()
                    ),
                ));
            }
        }
    }
    let never_owned = [
        "models_mount",
        "models_active",
        "backup_mount",
        "install_root",
        "models_link",
    ];
    for a in &owned {
        for name in never_owned {
            let Some(b) = get(name) else { continue };
            if b.path.starts_with(&a.path) {
                let how = if a.path == b.path {
                    "is the same path as"
                } else {
                    "contains"
                };
                out.push(problem(
                    a,
                    format!(
                        "{how} {} ({}): storage-setup would give it to the service account",
                        b.key,
                        b.path.display()
                    ),
                ));
            }
        }
    }
    for name in ["runtime_dir", "state_dir"] {
        let Some(a) = get(name) else { continue };
        for disk in ["models_mount", "backup_mount"] {
            let Some(b) = get(disk) else { continue };
            if a.path.starts_with(&b.path) && a.path != b.path {
                out.push(problem(
                    a,
                    format!(
                        "is inside {} ({}): runtime and state stay off the model and backup disks",
                        b.key,
                        b.path.display()
                    ),
                ));
            }
        }
    }
    for name in ["cache_dir", "staging_dir"] {
        let (Some(a), Some(b)) = (get(name), get("models_active")) else {
            continue;
        };
        if a.path.starts_with(&b.path) && a.path != b.path {
            out.push(problem(
                a,
                format!(
                    "is inside paths.models_active ({}), among the model directories",
                    b.path.display()
                ),
            ));
        }
    }
    if let Some(link) = get("models_link") {
        for a in &owned {
            if link.path.starts_with(&a.path) && link.path != a.path {
                out.push(problem(
                    link,
                    format!(
                        "is inside {} ({}), which the service account owns: it could repoint the link",
                        a.key,
                        a.path.display()
                    ),
                ));
            }
        }
    }
    if let (Some(m), Some(b)) = (get("models_mount"), get("backup_mount")) {
        if overlaps(&m.path, &b.path) {
            out.push(problem(
                b,
                format!(
                    "overlaps paths.models_mount ({}): backups need a disk of their own",
                    m.path.display()
                ),
            ));
        }
    }
    out
}

/// Any `*_secs` key without an entry in [`MAXIMA`]: at most a week.
pub const MAX_ANY_SECS: i64 = 7 * 24 * 3600;

/// The documented maximum of each timeout, interval and count (README, "The config file").
/// `models.*.KEY` stands for the key in every model.
pub const MAXIMA: &[(&str, i64)] = &[
    ("engine.stop_grace_secs", 600),
    ("engine.port_wait_secs", 600),
    ("engine.gpu_release_wait_secs", 600),
    ("monitor.interval_secs", 300),
    ("monitor.probe_timeout_secs", 60),
    ("monitor.failure_threshold", 100),
    ("monitor.deep_probe_interval_secs", 86_400),
    ("monitor.deep_probe_timeout_secs", 600),
    ("monitor.stall_secs", 86_400),
    ("monitor.restart_budget", 100),
    ("monitor.restart_window_secs", 7 * 86_400),
    ("monitor.webhook_timeout_secs", 60),
    ("models.*.load_timeout_secs", 86_400),
];

/// The maximum for `key` (full dotted key), if the rules set one.
pub fn max_for(key: &str) -> Option<i64> {
    let pattern = match key.strip_prefix("models.") {
        Some(rest) => match rest.split_once('.') {
            Some((_, field)) => format!("models.*.{field}"),
            None => key.to_string(),
        },
        None => key.to_string(),
    };
    MAXIMA
        .iter()
        .find(|(k, _)| *k == pattern)
        .map(|(_, m)| *m)
        .or_else(|| key.ends_with("_secs").then_some(MAX_ANY_SECS))
}

/// How strict a string rule is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Text {
    /// Anything but NUL (argv elements, environment values: execve cannot carry NUL).
    Any,
    /// No control character at all (paths, names, hosts, URLs).
    Plain,
}

/// What is wrong with a string value, if anything.
pub fn string_problem(s: &str, rule: Text) -> Option<String> {
    if s.contains('\0') {
        return Some(
            "contains a NUL byte (no program argument, environment value or path can carry one)"
                .into(),
        );
    }
    if rule == Text::Plain {
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Some(format!(
                "contains the control character {}",
                c.escape_default()
            ));
        }
    }
    None
}

/// A name handed to vLLM as the value of a flag (`--served-model-name`, aliases): non-empty,
/// no whitespace or control character, and not starting with `-` (vLLM would read a flag).
pub fn served_name_problem(s: &str) -> Option<String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must be a non-empty name without spaces or control characters".into())
    } else if s.starts_with('-') {
        Some("must not start with '-' (vllm serve would read it as a flag)".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(key: &str, path: &str, role: Role) -> PathKey {
        PathKey {
            key: key.into(),
            path: path.into(),
            role,
        }
    }

    #[test]
    fn system_directories_and_their_parents_are_refused() {
        for p in [
            "/",
            "/etc",
            "/var",
            "/run",
            "/usr/local",
            "/var/lib",
            "/mnt",
        ] {
            let v = path_problems(&k("paths.state_dir", p, Role::Owned));
            assert_eq!(v.len(), 1, "{p}: {v:?}");
        }
        assert!(path_problems(&k("paths.state_dir", "/var/lib/citadel", Role::Owned)).is_empty());
        assert!(path_problems(&k("paths.runtime_dir", "/run/citadel", Role::Owned)).is_empty());
        let v = path_problems(&k("paths.state_dir", "/usr/lib/citadel", Role::Owned));
        assert!(v[0].2.contains("inside the system tree /usr"), "{v:?}");
        // Read-only paths may be under /usr (an engine venv), not be /usr.
        assert!(
            path_problems(&k("paths.install_root", "/usr/lib/citadel", Role::Other)).is_empty()
        );
        let v = path_problems(&k("monitor.textfile", "/etc/passwd", Role::Written));
        assert!(v[0].2.contains("/etc"), "{v:?}");
        let v = path_problems(&k("monitor.textfile", "/var/x.prom", Role::Written));
        assert!(
            v[0].2.contains("directly in the system directory /var"),
            "{v:?}"
        );
        assert!(path_problems(&k(
            "monitor.textfile",
            "/var/lib/prometheus/node-exporter/citadel.prom",
            Role::Written
        ))
        .is_empty());
    }

    #[test]
    fn maxima_cover_every_timeout_including_new_keys() {
        assert_eq!(max_for("monitor.interval_secs"), Some(300));
        assert_eq!(max_for("models.phi3.load_timeout_secs"), Some(86_400));
        assert_eq!(max_for("engine.drain_secs"), Some(MAX_ANY_SECS));
        assert_eq!(max_for("gateway.idle_timeout_secs"), Some(MAX_ANY_SECS));
        assert_eq!(max_for("models.phi3.port"), None);
    }

    #[test]
    fn strings_and_served_names() {
        assert!(string_problem("a\0b", Text::Any).is_some());
        assert!(string_problem("a\nb", Text::Any).is_none());
        assert!(string_problem("a\nb", Text::Plain).is_some());
        assert!(served_name_problem("-x").is_some());
        assert!(served_name_problem("phi-3").is_none());
        assert!(served_name_problem("a\u{1b}").is_some());
    }
}
