//! The `vllm serve` command line, parsed the way vLLM 0.33's argparse parser does, against the
//! project's copy of its flag list ([`citadel_common::vllm::flags`]).
//!
//! Accepted like argparse: `--opt value`, `--opt=value`, `nargs='+'` options taking every value
//! up to the next option, underscore spellings (`--max_model_len`), dotted JSON sub-keys
//! (`--limit-mm-per-prompt.image 2`), unique-prefix abbreviations of long options, `-O<n>`, and
//! negative numbers as values. Anything else is an argparse error: exit 2 with
//! `vllm serve: error: ...` on stderr.

use citadel_common::vllm::{flags, option_name, Arity};

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `serve MODEL [flags]`
    Serve(ServeArgs),
    /// `engine-core`: the internal child process (a sleeping stand-in for vLLM's EngineCore).
    EngineCore,
    /// `-h`/`--help` anywhere: print this text on stdout and exit 0.
    Help(String),
    /// `--version` / `-v` before the subcommand: print the vLLM version and exit 0.
    Version,
}

/// An argparse error: `message` goes after `PROG: error: `; exit status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    pub prog: &'static str,
    pub usage: &'static str,
    pub message: String,
}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{}: error: {}", self.usage, self.prog, self.message)
    }
}

pub const SERVE_USAGE: &str = "usage: vllm serve [model_tag] [options]";
const TOP_USAGE: &str =
    "usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ...";

fn serve_error(message: String) -> UsageError {
    UsageError {
        prog: "vllm serve",
        usage: SERVE_USAGE,
        message,
    }
}

/// The parsed `vllm serve` arguments the stand-in uses; every other accepted option is kept in
/// `options` (last occurrence wins, as with argparse's `store`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServeArgs {
    /// The positional `model_tag` (or the deprecated `--model`).
    pub model: String,
    /// `--host`; default `0.0.0.0`.
    pub host: String,
    /// `--port`; default 8000 (0 = any free port; the log line names the real one).
    pub port: u16,
    /// `--served-model-name`; default `[model]`.
    pub served_model_names: Vec<String>,
    /// `--api-key` (one or more accepted keys); the caller falls back to `VLLM_API_KEY`.
    pub api_keys: Vec<String>,
    /// `--max-model-len`, parsed (`32768`, `32k`, `32K`); None when absent or `-1`/`auto`.
    pub max_model_len: Option<u64>,
    /// `--disable-log-stats` (vLLM then serves no `/metrics`).
    pub disable_log_stats: bool,
    /// `--enable-uvicorn-access-log` (one stdout line per request).
    pub access_log: bool,
    /// `--shutdown-timeout` seconds (default 0: abort in-flight requests on SIGTERM).
    pub shutdown_timeout: u64,
    /// Every accepted option by its canonical name, with its values, in order.
    pub options: Vec<(String, Vec<String>)>,
}

impl ServeArgs {
    /// The values of the last occurrence of option `name` (canonical spelling).
    pub fn last(&self, name: &str) -> Option<&[String]> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
    /// Whether option `name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| n == name)
    }
}

/// argparse's test for "looks like a negative number" (then it is a value, not an option).
fn is_negative_number(t: &str) -> bool {
    t.len() > 1
        && t.starts_with('-')
        && t[1..].parse::<f64>().is_ok()
        && !t[1..].starts_with(|c: char| c.is_alphabetic())
}

/// Whether argparse would take `t` as an option string rather than a value.
fn looks_like_option(t: &str) -> bool {
    t.starts_with('-') && t != "-" && !is_negative_number(t)
}

/// vLLM's `human_readable_int`: `25600`, `25.6k` / `1m` / `1g` (decimal), `25K` / `1M` / `1G`
/// (binary). None when not a number.
pub fn human_readable_int(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult, binary) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1_000f64, false),
        'm' => (&s[..s.len() - 1], 1_000_000f64, false),
        'g' => (&s[..s.len() - 1], 1_000_000_000f64, false),
        'K' => (&s[..s.len() - 1], 1_024f64, true),
        'M' => (&s[..s.len() - 1], 1_048_576f64, true),
        'G' => (&s[..s.len() - 1], 1_073_741_824f64, true),
        _ => return s.parse().ok(),
    };
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    // Binary suffixes take integers only, as in vLLM.
    if binary && v.fract() != 0.0 {
        return None;
    }
    Some((v * mult).round() as u64)
}

/// Resolve an option token's name to a known flag: exact, else a unique prefix of a long flag.
fn resolve(name: &str) -> Result<Option<(String, Arity)>, UsageError> {
    let known = flags();
    if let Some(a) = known.get(name) {
        return Ok(Some((name.to_string(), *a)));
    }
    if name.starts_with("--") && name.len() > 2 {
        let hits: Vec<(&&str, &Arity)> = known
            .range(name..)
            .take_while(|(k, _)| k.starts_with(name))
            .collect();
        match hits.len() {
            0 => {}
            1 => return Ok(Some((hits[0].0.to_string(), *hits[0].1))),
            _ => {
                let list: Vec<&str> = hits.iter().map(|(k, _)| **k).collect();
                return Err(serve_error(format!(
                    "ambiguous option: {name} could match {}",
                    list.join(", ")
                )));
            }
        }
    }
    Ok(None)
}

/// Parse a full argv (`argv[0]` is the program).
pub fn parse(argv: &[String]) -> Result<Command, UsageError> {
    let top = |message: String| UsageError {
        prog: "vllm",
        usage: TOP_USAGE,
        message,
    };
    match argv.get(1).map(String::as_str) {
        Some("serve") => parse_serve(&argv[2..]),
        Some("engine-core") => Ok(Command::EngineCore),
        Some("-v") | Some("--version") => Ok(Command::Version),
        Some("-h") | Some("--help") => Ok(Command::Help(format!(
            "{TOP_USAGE}\n\nA stand-in for vLLM 0.33 (citadel-standin): only `serve` is implemented."
        ))),
        Some(other) => Err(top(format!(
            "argument subparser: invalid choice: '{other}' (choose from 'chat', 'complete', 'serve', 'bench', 'collect-env', 'run-batch')"
        ))),
        None => Err(top("the following arguments are required: subparser".into())),
    }
}

/// Parse the arguments after `serve`.
pub fn parse_serve(args: &[String]) -> Result<Command, UsageError> {
    let mut positionals: Vec<String> = Vec::new();
    let mut unrecognized: Vec<String> = Vec::new();
    let mut options: Vec<(String, Vec<String>)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let t = &args[i];
        i += 1;
        if t == "--" {
            positionals.extend(args[i..].iter().cloned());
            break;
        }
        if !looks_like_option(t) {
            positionals.push(t.clone());
            continue;
        }
        let inline = t.split_once('=').map(|(_, v)| v.to_string());
        // -O3, -O.mode=3, -O 3: vLLM's optimisation-level shorthand.
        if t.starts_with("-O") && !t.starts_with("--") {
            let value = if t.len() > 2 {
                t[2..].trim_start_matches(['=', '.']).to_string()
            } else {
                match args.get(i) {
                    Some(v) if !looks_like_option(v) => {
                        i += 1;
                        v.clone()
                    }
                    _ => return Err(serve_error("argument -O: expected one argument".into())),
                }
            };
            options.push(("-O".into(), vec![value]));
            continue;
        }
        let Some(norm) = option_name(t) else {
            positionals.push(t.clone());
            continue;
        };
        if norm == "-h" || norm == "--help" {
            return Ok(Command::Help(format!(
                "{SERVE_USAGE}\n\nA stand-in for `vllm serve` 0.33 (citadel-standin); it accepts every flag of vLLM 0.33's list.\nFault knobs: see the citadel-standin crate documentation (STANDIN_* environment variables)."
            )));
        }
        let dotted = t.starts_with("--") && t.split('=').next().unwrap_or(t).contains('.');
        let Some((name, arity)) = resolve(&norm)? else {
            unrecognized.push(t.clone());
            continue;
        };
        let arity = if dotted { Arity::Value } else { arity };
        let values = match arity {
            Arity::Switch => {
                if let Some(v) = inline {
                    return Err(serve_error(format!(
                        "argument {name}: ignored explicit argument '{v}'"
                    )));
                }
                Vec::new()
            }
            Arity::Value => match inline {
                Some(v) => vec![v],
                None => match args.get(i) {
                    Some(v) if !looks_like_option(v) => {
                        i += 1;
                        vec![v.clone()]
                    }
                    _ => {
                        return Err(serve_error(format!(
                            "argument {name}: expected one argument"
                        )))
                    }
                },
            },
            Arity::Values => match inline {
                Some(v) => vec![v],
                None => {
                    let mut vs = Vec::new();
                    while let Some(v) = args.get(i).filter(|v| !looks_like_option(v)) {
                        vs.push(v.clone());
                        i += 1;
                    }
                    if vs.is_empty() {
                        return Err(serve_error(format!(
                            "argument {name}: expected at least one argument"
                        )));
                    }
                    vs
                }
            },
        };
        options.push((name, values));
    }
    // model_tag is nargs='?': the first positional; any other positional is unrecognized.
    let mut positionals = positionals.into_iter();
    let model_tag = positionals.next();
    unrecognized.extend(positionals);
    if !unrecognized.is_empty() {
        return Err(serve_error(format!(
            "unrecognized arguments: {}",
            unrecognized.join(" ")
        )));
    }
    let last = |name: &str| {
        options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let model = match (
        model_tag,
        last("--model").and_then(|v| v.into_iter().next()),
    ) {
        (Some(m), _) => m,
        (None, Some(m)) => m,
        (None, None) => {
            return Err(serve_error(
                "the following arguments are required: model_tag".into(),
            ))
        }
    };
    let host = last("--host")
        .and_then(|v| v.into_iter().next())
        .unwrap_or_else(|| "0.0.0.0".into());
    let port = match last("--port").and_then(|v| v.into_iter().next()) {
        None => 8000,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| serve_error(format!("argument --port: invalid int value: '{p}'")))?,
    };
    let served_model_names = last("--served-model-name").unwrap_or_else(|| vec![model.clone()]);
    let api_keys = last("--api-key").unwrap_or_default();
    let max_model_len = match last("--max-model-len").and_then(|v| v.into_iter().next()) {
        None => None,
        Some(v) if v == "-1" || v.eq_ignore_ascii_case("auto") => None,
        Some(v) => Some(human_readable_int(&v).filter(|n| *n > 0).ok_or_else(|| {
            serve_error(format!(
                "argument --max-model-len: invalid human_readable_int value: '{v}'"
            ))
        })?),
    };
    let shutdown_timeout = match last("--shutdown-timeout").and_then(|v| v.into_iter().next()) {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| {
            serve_error(format!(
                "argument --shutdown-timeout: invalid int value: '{v}'"
            ))
        })?,
    };
    let has = |name: &str| options.iter().any(|(n, _)| n == name);
    Ok(Command::Serve(ServeArgs {
        shutdown_timeout,
        model,
        host,
        port,
        served_model_names,
        api_keys,
        max_model_len,
        disable_log_stats: has("--disable-log-stats"),
        access_log: has("--enable-uvicorn-access-log") && !has("--disable-uvicorn-access-log"),
        options,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, UsageError> {
        let mut argv = vec!["citadel-standin".to_string(), "serve".to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        match parse(&argv)? {
            Command::Serve(s) => Ok(s),
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn seed_style_command_line_is_accepted() {
        let s = serve(&[
            "/models/mixtral",
            "--host",
            "127.0.0.1",
            "--port",
            "11400",
            "--served-model-name",
            "mixtral",
            "--tensor-parallel-size",
            "2",
            "--gpu-memory-utilization",
            "0.9",
            "--max-model-len",
            "32768",
            "--enable-chunked-prefill",
            "--enable-prefix-caching",
        ])
        .unwrap();
        assert_eq!(s.model, "/models/mixtral");
        assert_eq!(s.host, "127.0.0.1");
        assert_eq!(s.port, 11400);
        assert_eq!(s.served_model_names, vec!["mixtral"]);
        assert_eq!(s.max_model_len, Some(32768));
        assert!(s.has("--enable-prefix-caching"));
        assert_eq!(
            s.last("--tensor-parallel-size"),
            Some(&["2".to_string()][..])
        );
    }

    #[test]
    fn defaults() {
        let s = serve(&["m"]).unwrap();
        assert_eq!((s.host.as_str(), s.port), ("0.0.0.0", 8000));
        assert_eq!(s.served_model_names, vec!["m"]);
        assert!(s.api_keys.is_empty());
        assert_eq!(s.max_model_len, None);
        assert!(!s.disable_log_stats);
    }

    #[test]
    fn argparse_spellings() {
        let s = serve(&[
            "--max_model_len=4k",
            "--port=9",
            "m",
            "--served-model-name",
            "a",
            "b",
            "--api-key",
            "k1",
            "--limit-mm-per-prompt.image",
            "2",
            "-tp",
            "2",
            "-O3",
            "--dtype",
            "bfloat16",
            "--max-num-seq",
            "-1",
        ])
        .unwrap();
        assert_eq!(s.max_model_len, Some(4000));
        assert_eq!(s.port, 9);
        assert_eq!(s.served_model_names, vec!["a", "b"]);
        assert_eq!(s.api_keys, vec!["k1"]);
        assert_eq!(s.last("--max-num-seqs"), Some(&["-1".to_string()][..]));
        assert_eq!(s.last("-O"), Some(&["3".to_string()][..]));
        let s = serve(&["--model", "m2"]).unwrap();
        assert_eq!(s.model, "m2");
        assert_eq!(
            serve(&["m", "--max-model-len", "2K"])
                .unwrap()
                .max_model_len,
            Some(2048)
        );
        assert_eq!(
            serve(&["m", "--max-model-len", "-1"])
                .unwrap()
                .max_model_len,
            None
        );
    }

    #[test]
    fn argparse_errors() {
        let e = serve(&["m", "--swap-space", "4"]).unwrap_err();
        assert_eq!(e.message, "unrecognized arguments: --swap-space 4");
        assert!(e
            .to_string()
            .ends_with("vllm serve: error: unrecognized arguments: --swap-space 4"));
        let e = serve(&["--port", "1"]).unwrap_err();
        assert_eq!(e.message, "the following arguments are required: model_tag");
        let e = serve(&["m", "--port", "x"]).unwrap_err();
        assert_eq!(e.message, "argument --port: invalid int value: 'x'");
        let e = serve(&["m", "--port"]).unwrap_err();
        assert_eq!(e.message, "argument --port: expected one argument");
        let e = serve(&["m", "--served-model-name", "--port", "1"]).unwrap_err();
        assert_eq!(
            e.message,
            "argument --served-model-name: expected at least one argument"
        );
        let e = serve(&["m", "--enforce-eager=1"]).unwrap_err();
        assert!(e.message.contains("ignored explicit argument '1'"), "{e}");
        let e = serve(&["m", "--max-model-len", "lots"]).unwrap_err();
        assert!(e
            .message
            .contains("invalid human_readable_int value: 'lots'"));
        let e = serve(&["m", "x"]).unwrap_err();
        assert_eq!(e.message, "unrecognized arguments: x");
        let e = serve(&["m", "--disable-log"]).unwrap_err();
        assert!(
            e.message
                .starts_with("ambiguous option: --disable-log could match"),
            "{e}"
        );
        let e = parse(&["p".into(), "bogus".into()]).unwrap_err();
        assert!(e
            .to_string()
            .contains("vllm: error: argument subparser: invalid choice: 'bogus'"));
    }

    #[test]
    fn human_readable() {
        assert_eq!(human_readable_int("25600"), Some(25600));
        assert_eq!(human_readable_int("25.6k"), Some(25600));
        assert_eq!(human_readable_int("1M"), Some(1 << 20));
        assert_eq!(human_readable_int("1.5K"), None);
        assert_eq!(human_readable_int("x"), None);
        assert_eq!(human_readable_int(""), None);
    }
}
