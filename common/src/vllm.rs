//! What `vllm serve` 0.33 accepts, from the project's own copy of vLLM's flag list
//! (`common/data/vllm-0.33.0-serve-flags.tsv`, generated from shared/fixtures/vllm).

use std::collections::BTreeMap;
use std::sync::OnceLock;

/// How many values an option takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// `--enforce-eager`
    Switch,
    /// `--dtype bfloat16`
    Value,
    /// `--served-model-name a b` (argparse `nargs='+'`)
    Values,
}

const FLAGS_TSV: &str = include_str!("../data/vllm-0.33.0-serve-flags.tsv");

/// Every option `vllm serve` 0.33.0 accepts, with its arity.
pub fn flags() -> &'static BTreeMap<&'static str, Arity> {
    static FLAGS: OnceLock<BTreeMap<&'static str, Arity>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        FLAGS_TSV
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (f, a) = l.split_once('\t')?;
                let arity = match a {
                    "switch" => Arity::Switch,
                    "values" => Arity::Values,
                    _ => Arity::Value,
                };
                Some((f, arity))
            })
            .collect()
    })
}

/// Flags start-model sets from the config; `extra_args` may not repeat them.
pub const MANAGED_FLAGS: &[&str] = &[
    "--model",
    "--host",
    "--port",
    "--served-model-name",
    "--tensor-parallel-size",
    "-tp",
    "--gpu-memory-utilization",
    "--device-memory-utilization",
    "--max-model-len",
    "--api-key",
    "--device-ids",
    "--uds",
    "--shutdown-timeout",
];

/// Flags vLLM removed, with what to do instead (they would make vLLM exit 2 at start).
pub const REMOVED_FLAGS: &[(&str, &str)] = &[
    ("--swap-space", "removed in vLLM 0.18; drop it"),
    (
        "--disable-log-requests",
        "renamed; requests are not logged by default",
    ),
];

/// The option name of an argv token: `--max_model_len=4` -> `--max-model-len`,
/// `--limit-mm-per-prompt.image` -> `--limit-mm-per-prompt`. None for values.
pub fn option_name(token: &str) -> Option<String> {
    if token.starts_with("--") && token.len() > 2 {
        let name = token.split('=').next().unwrap_or(token);
        let name = name.split('.').next().unwrap_or(name);
        Some(format!("--{}", name[2..].replace('_', "-")))
    } else if token.starts_with('-')
        && token.len() > 1
        && !token[1..].starts_with(|c: char| c.is_ascii_digit() || c == '.')
    {
        Some(token.split('=').next().unwrap_or(token).to_string())
    } else {
        None
    }
}

/// Flags that make `vllm serve` print something and exit 0 instead of serving.
pub const EXIT_FLAGS: &[&str] = &["--help", "-h", "--version", "-v", "-V"];

/// Problems with a model's `extra_args`, one message each. Besides the flag rules, every token
/// must be an option or the value of the option before it (by the option's arity): a stray
/// positional (`$(id)`: no shell runs it, vLLM sees a second model) is refused, and so is any
/// help or version flag (vLLM prints and exits 0, which looks like a clean stop).
pub fn check_extra_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let known = flags();
    // What the previous option still takes.
    #[derive(Clone, Copy, PartialEq)]
    enum Takes {
        Nothing,
        One,
        AtLeastOne,
        AnyMore,
    }
    let mut takes = Takes::Nothing;
    for a in args {
        let Some(name) = option_name(a) else {
            takes = match takes {
                Takes::One => Takes::Nothing,
                Takes::AtLeastOne | Takes::AnyMore => Takes::AnyMore,
                Takes::Nothing => {
                    out.push(format!(
                        "{a:?} is not an option nor the value of one: vllm serve would take it as a positional argument (extra_args are passed as they are, no shell runs them)"
                    ));
                    Takes::Nothing
                }
            };
            continue;
        };
        let inline_value = a.contains('=');
        takes = match known.get(name.as_str()) {
            _ if inline_value => Takes::Nothing,
            Some(Arity::Value) => Takes::One,
            Some(Arity::Values) => Takes::AtLeastOne,
            Some(Arity::Switch) => Takes::Nothing,
            // Unknown (reported below): let the next token be its value, not a second problem.
            None => Takes::One,
        };
        if EXIT_FLAGS.contains(&name.as_str()) {
            out.push(format!(
                "{a:?} makes vllm serve print and exit 0 instead of serving"
            ));
        } else if MANAGED_FLAGS.contains(&name.as_str()) {
            out.push(format!(
                "{a:?} repeats a flag start-model sets from the model's own keys (port, gpus, tensor_parallel_size, gpu_memory_utilization, max_model_len, served_model_name, engine.api_key_file, engine.drain_secs)"
            ));
        } else if let Some((_, why)) = REMOVED_FLAGS.iter().find(|(f, _)| *f == name) {
            out.push(format!("{a:?} is not accepted by vLLM 0.33 ({why})"));
        } else if !known.contains_key(name.as_str()) {
            out.push(format!(
                "{a:?} is not a flag vLLM 0.33 accepts (vllm serve would exit 2)"
            ));
        }
    }
    out
}

/// What start-model writes before the engine's cause line in a failure message (the first,
/// error-priority, line in the journal); `citadel-service start` shows what follows it.
pub const CAUSE_MARK: &str = "the engine said: ";

/// start-model's failure message ends with the engine's last stderr lines: a header line
/// ([`tail_header`]) and each line behind this prefix. Each line of the message is its own
/// error-priority journal entry, so a reader of the journal skips this block to reach the line
/// with [`CAUSE_MARK`].
pub const TAIL_PREFIX: &str = "  | ";

/// The header line of the tail block: `last N stderr lines of the engine:`.
pub fn tail_header(n: usize) -> String {
    format!("last {n} stderr lines of the engine:")
}

/// Whether `line` belongs to the tail block of start-model's failure message.
pub fn is_tail_line(line: &str) -> bool {
    line.starts_with(TAIL_PREFIX)
        || line
            .strip_prefix("last ")
            .and_then(|r| r.strip_suffix(" stderr lines of the engine:"))
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_list_is_complete() {
        let f = flags();
        // 461 long options (with --help and --model) + 24 short options.
        assert_eq!(f.len(), 485);
        assert_eq!(f["--enforce-eager"], Arity::Switch);
        assert_eq!(f["--max-model-len"], Arity::Value);
        assert_eq!(f["--served-model-name"], Arity::Values);
        assert!(!f.contains_key("--swap-space"));
    }

    #[test]
    fn option_names_are_normalised() {
        assert_eq!(
            option_name("--max_model_len=4").as_deref(),
            Some("--max-model-len")
        );
        assert_eq!(
            option_name("--limit-mm-per-prompt.image").as_deref(),
            Some("--limit-mm-per-prompt")
        );
        assert_eq!(option_name("-tp").as_deref(), Some("-tp"));
        assert_eq!(option_name("-1"), None);
        assert_eq!(option_name("bfloat16"), None);
    }

    #[test]
    fn positionals_and_exit_flags_are_refused() {
        let v = |a: &[&str]| check_extra_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(v(&["--dtype", "bfloat16", "--enforce-eager"]).is_empty());
        assert!(v(&["--max-num-seqs=8", "--dtype", "-1"]).is_empty());
        assert_eq!(v(&["--enforce-eager", "$(id)"]).len(), 1);
        assert_eq!(v(&["$(id)"]).len(), 1);
        assert_eq!(v(&["--dtype=x", "y"]).len(), 1);
        for f in ["--help", "-h", "--version", "--help=all"] {
            let p = v(&[f]);
            assert!(p.len() == 1 && p[0].contains("exit 0"), "{f}: {p:?}");
        }
    }

    #[test]
    fn extra_args_are_checked() {
        let ok: Vec<String> = [
            "--enforce-eager",
            "--dtype",
            "bfloat16",
            "--max-num-seqs=8",
            "--seed",
            "-1",
        ]
        .map(String::from)
        .to_vec();
        assert!(check_extra_args(&ok).is_empty());
        let bad: Vec<String> = [
            "--swap-space",
            "4",
            "--port",
            "1",
            "--bogus",
            "--shutdown-timeout=5",
        ]
        .map(String::from)
        .to_vec();
        let p = check_extra_args(&bad);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("--swap-space"));
        assert!(p[1].contains("repeats"));
        assert!(p[2].contains("--bogus"));
        assert!(
            p[3].contains("--shutdown-timeout=5") && p[3].contains("engine.drain_secs"),
            "{p:?}"
        );
    }

    #[test]
    fn the_tail_block_is_recognised() {
        assert_eq!(tail_header(20), "last 20 stderr lines of the engine:");
        assert!(is_tail_line(&tail_header(3)));
        assert!(is_tail_line(&format!(
            "{TAIL_PREFIX}  File \"x.py\", line 1"
        )));
        assert!(!is_tail_line("last few stderr lines of the engine:"));
        assert!(!is_tail_line(
            "engine of c exited; the engine said: ValueError: x"
        ));
    }
}
