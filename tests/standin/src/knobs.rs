//! The fault knobs: `STANDIN_*` environment variables, optionally overridden per model by a
//! faults file (`STANDIN_FAULTS_DIR/<served-model-name>`, `KEY=VALUE` lines).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// How `/health` (and `/ping`) answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthMode {
    /// 200, empty body.
    Ok,
    /// 503, empty body (what vLLM answers once its engine is dead).
    Unavailable,
    /// Accept the connection, read the request, never answer (hold it until the client leaves).
    Hang,
    /// Accept, read the request, close without an answer.
    Drop,
}

impl HealthMode {
    pub fn parse(s: &str) -> Option<HealthMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ok" | "200" => Some(HealthMode::Ok),
            "503" | "dead" | "unavailable" => Some(HealthMode::Unavailable),
            "hang" => Some(HealthMode::Hang),
            "drop" | "close" => Some(HealthMode::Drop),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            HealthMode::Ok => "ok",
            HealthMode::Unavailable => "503",
            HealthMode::Hang => "hang",
            HealthMode::Drop => "drop",
        }
    }
}

/// Every knob, resolved. See the crate documentation for their meaning.
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    pub load: Duration,
    pub fail_at_start: bool,
    pub exit_after: Option<Duration>,
    pub exit_code: u8,
    pub crash_after: Option<Duration>,
    pub hang_after: Option<Duration>,
    pub token_delay: Duration,
    pub health: HealthMode,
    pub engine_core: bool,
    pub leave_child: bool,
    pub child_ignore_term: bool,
    pub child_lifetime: Duration,
    pub control: bool,
    pub require_model_dir: bool,
    pub access_log: bool,
    pub keepalive: bool,
    pub keepalive_idle: Duration,
    /// The faults file that was applied, if any.
    pub faults_file: Option<std::path::PathBuf>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            load: Duration::ZERO,
            fail_at_start: false,
            exit_after: None,
            exit_code: 0,
            crash_after: None,
            hang_after: None,
            token_delay: Duration::ZERO,
            health: HealthMode::Ok,
            engine_core: false,
            leave_child: false,
            child_ignore_term: false,
            child_lifetime: Duration::from_secs(600),
            control: false,
            require_model_dir: false,
            access_log: false,
            keepalive: false,
            keepalive_idle: crate::server::KEEPALIVE_IDLE,
            faults_file: None,
        }
    }
}

/// A faults file inside the model directory (MODEL_PATH), applied last.
pub const MODEL_FAULTS_FILE: &str = "standin-faults";

/// Every knob name (the faults file may also spell them without the `STANDIN_` prefix).
pub const KNOBS: &[&str] = &[
    "STANDIN_LOAD_SECS",
    "STANDIN_FAIL_AT_START",
    "STANDIN_EXIT_AFTER_SECS",
    "STANDIN_EXIT_CODE",
    "STANDIN_CRASH_AFTER_SECS",
    "STANDIN_HANG_AFTER_SECS",
    "STANDIN_TOKEN_DELAY_MS",
    "STANDIN_HEALTH",
    "STANDIN_ENGINE_CORE",
    "STANDIN_LEAVE_CHILD",
    "STANDIN_CHILD_IGNORE_TERM",
    "STANDIN_CHILD_LIFETIME_SECS",
    "STANDIN_CONTROL",
    "STANDIN_REQUIRE_MODEL_DIR",
    "STANDIN_ACCESS_LOG",
    "STANDIN_KEEPALIVE",
    "STANDIN_KEEPALIVE_IDLE_SECS",
];

fn secs(key: &str, v: &str) -> Result<Duration, String> {
    let f: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("{key}={v:?}: not a number of seconds"))?;
    Duration::try_from_secs_f64(f).map_err(|_| format!("{key}={v:?}: not a duration in seconds"))
}

fn flag(key: &str, v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("{key}={v:?}: expected 1 or 0")),
    }
}

/// Parse the `KEY=VALUE` lines of a faults file (`#` comments and blank lines ignored; keys
/// may omit the `STANDIN_` prefix). Unknown keys are errors, so a typo does not pass silently.
pub fn parse_faults_file(text: &str, file: &Path) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!(
                "{}:{}: expected KEY=VALUE, got {line:?}",
                file.display(),
                n + 1
            ));
        };
        let k = k.trim();
        let key = if k.starts_with("STANDIN_") {
            k.to_string()
        } else {
            format!("STANDIN_{k}")
        };
        if !KNOBS.contains(&key.as_str()) {
            return Err(format!(
                "{}:{}: unknown knob {k:?} (known: {})",
                file.display(),
                n + 1,
                KNOBS.join(", ")
            ));
        }
        out.insert(key, v.trim().trim_matches('"').to_string());
    }
    Ok(out)
}

impl Knobs {
    /// Resolve the knobs from `env` (a lookup of environment variables), then, when
    /// `STANDIN_FAULTS_DIR` is set and holds a file named `model_name`, that file's overrides,
    /// then those of [`MODEL_FAULTS_FILE`] in `model_dir` (one version of a model's weights,
    /// whatever its name: what a rollout test needs).
    pub fn resolve(
        env: &dyn Fn(&str) -> Option<String>,
        model_name: &str,
        model_dir: Option<&Path>,
    ) -> Result<Knobs, String> {
        let mut vals: BTreeMap<String, String> = KNOBS
            .iter()
            .filter_map(|k| env(k).map(|v| (k.to_string(), v)))
            .collect();
        let mut faults_file = None;
        if let Some(dir) = env("STANDIN_FAULTS_DIR").filter(|d| !d.is_empty()) {
            // A name that is a path (the default served name is the model path) is looked up
            // by its last component; "." and ".." never leave the directory.
            let key = model_name.rsplit('/').find(|c| !c.is_empty()).unwrap_or("");
            if !key.is_empty() && key != ".." && key != "." {
                let file = Path::new(&dir).join(key);
                match std::fs::read_to_string(&file) {
                    Ok(text) => {
                        vals.extend(parse_faults_file(&text, &file)?);
                        faults_file = Some(file);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("{}: {e}", file.display())),
                }
            }
        }
        if let Some(file) = model_dir.map(|d| d.join(MODEL_FAULTS_FILE)) {
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    vals.extend(parse_faults_file(&text, &file)?);
                    faults_file = Some(file);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) => {}
                Err(e) => return Err(format!("{}: {e}", file.display())),
            }
        }
        let mut k = Knobs {
            faults_file,
            ..Knobs::default()
        };
        for (key, v) in &vals {
            let (key, v) = (key.as_str(), v.as_str());
            match key {
                "STANDIN_LOAD_SECS" => k.load = secs(key, v)?,
                "STANDIN_FAIL_AT_START" => k.fail_at_start = flag(key, v)?,
                "STANDIN_EXIT_AFTER_SECS" => k.exit_after = Some(secs(key, v)?),
                "STANDIN_EXIT_CODE" => {
                    k.exit_code = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("{key}={v:?}: expected an exit code 0-255"))?
                }
                "STANDIN_CRASH_AFTER_SECS" => k.crash_after = Some(secs(key, v)?),
                "STANDIN_HANG_AFTER_SECS" => k.hang_after = Some(secs(key, v)?),
                "STANDIN_TOKEN_DELAY_MS" => {
                    let ms: u64 = v
                        .trim()
                        .parse()
                        .map_err(|_| format!("{key}={v:?}: expected milliseconds"))?;
                    k.token_delay = Duration::from_millis(ms);
                }
                "STANDIN_HEALTH" => {
                    k.health = HealthMode::parse(v)
                        .ok_or_else(|| format!("{key}={v:?}: expected ok, 503, hang or drop"))?
                }
                "STANDIN_ENGINE_CORE" => k.engine_core = flag(key, v)?,
                "STANDIN_LEAVE_CHILD" => k.leave_child = flag(key, v)?,
                "STANDIN_CHILD_IGNORE_TERM" => k.child_ignore_term = flag(key, v)?,
                "STANDIN_CHILD_LIFETIME_SECS" => k.child_lifetime = secs(key, v)?,
                "STANDIN_CONTROL" => k.control = flag(key, v)?,
                "STANDIN_REQUIRE_MODEL_DIR" => k.require_model_dir = flag(key, v)?,
                "STANDIN_ACCESS_LOG" => k.access_log = flag(key, v)?,
                "STANDIN_KEEPALIVE" => k.keepalive = flag(key, v)?,
                "STANDIN_KEEPALIVE_IDLE_SECS" => k.keepalive_idle = secs(key, v)?,
                _ => {}
            }
        }
        Ok(k)
    }

    /// Whether an engine-core child process is spawned at all.
    pub fn spawns_child(&self) -> bool {
        self.engine_core || self.leave_child
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn defaults_are_a_healthy_engine() {
        let k = Knobs::resolve(&env_of(&[]), "m", None).unwrap();
        assert_eq!(k, Knobs::default());
        assert!(!k.spawns_child());
    }

    #[test]
    fn env_knobs_parse() {
        let k = Knobs::resolve(
            &env_of(&[
                ("STANDIN_LOAD_SECS", "1.5"),
                ("STANDIN_EXIT_AFTER_SECS", "2"),
                ("STANDIN_EXIT_CODE", "3"),
                ("STANDIN_HEALTH", "503"),
                ("STANDIN_TOKEN_DELAY_MS", "20"),
                ("STANDIN_LEAVE_CHILD", "1"),
            ]),
            "m",
            None,
        )
        .unwrap();
        assert_eq!(k.load, Duration::from_millis(1500));
        assert_eq!(k.exit_after, Some(Duration::from_secs(2)));
        assert_eq!(k.exit_code, 3);
        assert_eq!(k.health, HealthMode::Unavailable);
        assert_eq!(k.token_delay, Duration::from_millis(20));
        assert!(k.spawns_child());
    }

    #[test]
    fn bad_values_are_named() {
        let e = Knobs::resolve(&env_of(&[("STANDIN_LOAD_SECS", "soon")]), "m", None).unwrap_err();
        assert!(e.contains("STANDIN_LOAD_SECS"), "{e}");
        let e = Knobs::resolve(&env_of(&[("STANDIN_LOAD_SECS", "-1")]), "m", None).unwrap_err();
        assert!(e.contains("STANDIN_LOAD_SECS"), "{e}");
        let e = Knobs::resolve(&env_of(&[("STANDIN_EXIT_CODE", "300")]), "m", None).unwrap_err();
        assert!(e.contains("STANDIN_EXIT_CODE"), "{e}");
        let e = Knobs::resolve(&env_of(&[("STANDIN_HEALTH", "meh")]), "m", None).unwrap_err();
        assert!(e.contains("STANDIN_HEALTH"), "{e}");
    }

    #[test]
    fn faults_file_overrides_env_for_its_model_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sick"),
            "# one model of many\nSTANDIN_HEALTH=503\nLOAD_SECS = 0.25\n\n",
        )
        .unwrap();
        let d = dir.path().to_string_lossy().into_owned();
        let env = env_of(&[
            ("STANDIN_FAULTS_DIR", d.as_str()),
            ("STANDIN_LOAD_SECS", "5"),
            ("STANDIN_EXIT_CODE", "4"),
        ]);
        let sick = Knobs::resolve(&env, "sick", None).unwrap();
        assert_eq!(sick.health, HealthMode::Unavailable);
        assert_eq!(sick.load, Duration::from_millis(250));
        assert_eq!(
            sick.exit_code, 4,
            "env knobs the file does not name still apply"
        );
        assert_eq!(sick.faults_file, Some(dir.path().join("sick")));
        let by_path = Knobs::resolve(&env, "/models/sick/", None).unwrap();
        assert_eq!(
            by_path.health,
            HealthMode::Unavailable,
            "a path name uses its last component"
        );
        assert_eq!(Knobs::resolve(&env, "..", None).unwrap().faults_file, None);
        // The model directory's own faults file comes last, whatever the name.
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join(MODEL_FAULTS_FILE), "FAIL_AT_START=1\n").unwrap();
        let k = Knobs::resolve(&env, "sick", Some(v2.path())).unwrap();
        assert!(k.fail_at_start);
        assert_eq!(k.faults_file, Some(v2.path().join(MODEL_FAULTS_FILE)));
        let k = Knobs::resolve(&env, "sick", Some(&v2.path().join("missing"))).unwrap();
        assert!(!k.fail_at_start);
        let well = Knobs::resolve(&env, "well", None).unwrap();
        assert_eq!(well.health, HealthMode::Ok);
        assert_eq!(well.load, Duration::from_secs(5));
        assert_eq!(well.faults_file, None);
    }

    #[test]
    fn faults_file_errors_name_file_and_line() {
        let p = Path::new("/x/m");
        let e = parse_faults_file("A=1\n", p).unwrap_err();
        assert!(e.starts_with("/x/m:1: unknown knob \"A\""), "{e}");
        let e = parse_faults_file("\nnonsense\n", p).unwrap_err();
        assert!(e.starts_with("/x/m:2: expected KEY=VALUE"), "{e}");
    }
}
