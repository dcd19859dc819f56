//! Shell completion of `citadel-service` for bash, zsh and fish, generated from its clap
//! definition (so it follows `--help`), with the service names completed from the config.
//!
//! Why not `clap_complete`'s bash generator: for a binary whose name has a hyphen it names the
//! subcommand states `citadel__service__subcmd__X` when it walks the words but
//! `citadel__subcmd__service__subcmd__X` in the `case` that completes them, so nothing past
//! the first word completes (clap_complete 4.6). And none of its generators can complete the
//! model names, which live in the config. These scripts read the model names from the config
//! file (`--config` on the line, else `$CITADEL_CONFIG`, else the default) with `sed` over its
//! `[models.NAME]` headers: no TOML parser, so completion keeps working while the config is
//! broken, which is when an operator most needs `status` and `stop`.
//!
//! Over 500 lines as one concern: the three shells' scripts are written from one walk of the clap
//! definition, so they stay in one file.

use clap::{Arg, ArgAction, Command, ValueHint};
use std::fmt::Write as _;

/// The program the scripts complete.
pub const BIN: &str = "citadel-service";

/// What the value of an option or positional completes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Values {
    /// Nothing: a number, a time, free text.
    Free,
    /// File names.
    Files,
    /// A model name from the config.
    Models,
    /// A service name: the fixed names and the config's models.
    Services,
    /// Subcommand names (`help`).
    Subcommands,
    /// A fixed list.
    List(Vec<String>),
}

/// One option of a command.
#[derive(Debug, Clone)]
pub struct Opt {
    pub long: Option<String>,
    pub short: Option<char>,
    pub help: String,
    /// `None`: a flag. `Some`: it takes a value.
    pub value: Option<Values>,
}

/// One subcommand: its options and what its first positional completes to.
#[derive(Debug, Clone)]
pub struct Sub {
    pub name: String,
    pub about: String,
    pub opts: Vec<Opt>,
    pub positional: Option<Values>,
}

/// The whole command line of `citadel-service`, as the generators see it.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Options valid everywhere (`--config`, `-v`, `-q`, `-h`, `-V`).
    pub global: Vec<Opt>,
    pub subs: Vec<Sub>,
    /// The fixed service names (`all`, `storage` ...).
    pub fixed_services: Vec<String>,
}

fn values_of(a: &Arg) -> Values {
    let pv: Vec<String> = a
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    let name = a
        .get_value_names()
        .and_then(|n| n.first())
        .map(|s| s.to_string())
        .unwrap_or_default();
    if !pv.is_empty() && a.get_id() != "service" {
        Values::List(pv)
    } else if a.get_id() == "service" {
        Values::Services
    } else if a.get_id() == "subcommand" {
        Values::Subcommands
    } else if matches!(
        a.get_value_hint(),
        ValueHint::FilePath | ValueHint::AnyPath | ValueHint::DirPath
    ) || name == "PATH"
    {
        Values::Files
    } else if name == "NAME" || name == "MODEL" {
        Values::Models
    } else {
        Values::Free
    }
}

fn opt_of(a: &Arg) -> Option<Opt> {
    if a.is_positional() || a.is_hide_set() {
        return None;
    }
    let takes = a.get_action().takes_values()
        && !matches!(
            a.get_action(),
            ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
        );
    Some(Opt {
        long: a.get_long().map(String::from),
        short: a.get_short(),
        help: a
            .get_help()
            .map(|h| h.to_string())
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .to_string(),
        value: takes.then(|| values_of(a)),
    })
}

fn first_line(s: Option<&clap::builder::StyledStr>) -> String {
    s.map(|s| s.to_string())
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

impl Spec {
    /// Read the spec from a clap definition (built, so `help` and `--help` are there).
    pub fn from_command(mut cmd: Command, fixed_services: &[&str]) -> Spec {
        cmd.build();
        let global: Vec<Opt> = cmd.get_arguments().filter_map(opt_of).collect();
        let globals: Vec<Option<String>> = global.iter().map(|o| o.long.clone()).collect();
        let subs = cmd
            .get_subcommands()
            .map(|s| {
                // A command with its own subcommands (`export kubernetes|production-stack`):
                // its first word completes to their names, and its options are theirs.
                let nested: Vec<&Command> = s
                    .get_subcommands()
                    .filter(|n| n.get_name() != "help" && !n.is_hide_set())
                    .collect();
                let mut opts: Vec<Opt> = s
                    .get_arguments()
                    .chain(nested.iter().flat_map(|n| n.get_arguments()))
                    .filter_map(opt_of)
                    .filter(|o| !globals.contains(&o.long) || o.long.is_none())
                    .collect();
                let mut seen = vec![];
                opts.retain(|o| {
                    let new = !seen.contains(&o.long);
                    seen.push(o.long.clone());
                    new || o.long.is_none()
                });
                Sub {
                    name: s.get_name().to_string(),
                    about: first_line(s.get_about()),
                    opts,
                    // clap's own `help` subcommand takes subcommand names.
                    positional: if s.get_name() == "help" {
                        Some(Values::Subcommands)
                    } else if !nested.is_empty() {
                        Some(Values::List(
                            nested.iter().map(|n| n.get_name().to_string()).collect(),
                        ))
                    } else {
                        s.get_positionals().next().map(values_of)
                    },
                }
            })
            .collect();
        Spec {
            global,
            subs,
            fixed_services: fixed_services.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Every option of a subcommand, its own and the global ones.
    fn all_opts<'a>(&'a self, sub: &'a Sub) -> impl Iterator<Item = &'a Opt> {
        sub.opts.iter().chain(&self.global)
    }

    /// The options (of any command) that take a value, as `-x`/`--long` words.
    fn valued_words(&self) -> Vec<String> {
        let mut v: Vec<String> = vec![];
        for o in self.subs.iter().flat_map(|s| &s.opts).chain(&self.global) {
            if o.value.is_some() {
                v.extend(o.short.map(|c| format!("-{c}")));
                v.extend(o.long.as_ref().map(|l| format!("--{l}")));
            }
        }
        v.sort();
        v.dedup();
        v
    }
}

fn words(o: &Opt) -> Vec<String> {
    let mut v = vec![];
    v.extend(o.short.map(|c| format!("-{c}")));
    v.extend(o.long.as_ref().map(|l| format!("--{l}")));
    v
}

/// The `sed` program that prints the model names of a config: `[models.NAME]` and
/// `[models."NAME"]` headers, the names as validation accepts them.
const SED_MODELS: &str =
    r#"s/^[[:space:]]*\[[[:space:]]*models\.("?)([a-z0-9][a-z0-9_-]*)\1[[:space:]]*\].*$/\2/p"#;

fn bash_values(v: &Values, fixed: &str) -> String {
    match v {
        Values::Free => "COMPREPLY=()".into(),
        Values::Files => {
            r#"compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur"))"#.into()
        }
        Values::Models => {
            r#"COMPREPLY=($(compgen -W "$(_citadel_service_models)" -- "$cur"))"#.into()
        }
        Values::Services => {
            format!(r#"COMPREPLY=($(compgen -W "{fixed} $(_citadel_service_models)" -- "$cur"))"#)
        }
        Values::Subcommands => r#"COMPREPLY=($(compgen -W "$subcommands" -- "$cur"))"#.into(),
        Values::List(l) => format!(r#"COMPREPLY=($(compgen -W "{}" -- "$cur"))"#, l.join(" ")),
    }
}

/// The bash completion script.
pub fn bash(spec: &Spec) -> String {
    let fixed = spec.fixed_services.join(" ");
    let subcommands: Vec<&str> = spec.subs.iter().map(|s| s.name.as_str()).collect();
    let global_words: Vec<String> = spec.global.iter().flat_map(words).collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"# bash completion for {BIN}; generated by citadel-mangen from its clap definition.
# Service and model names come from the config's [models.NAME] headers (--config on the
# line, else $CITADEL_CONFIG, else /etc/citadel/citadel.toml), read with sed, so completion
# works while the config is broken.

_citadel_service_models() {{
    local cfg=${{CITADEL_CONFIG:-/etc/citadel/citadel.toml}} i
    for ((i = 1; i < ${{#COMP_WORDS[@]}}; i++)); do
        case ${{COMP_WORDS[i]}} in
            --config) ((i + 1 < COMP_CWORD)) && cfg=${{COMP_WORDS[i+1]}} ;;
            --config=*) cfg=${{COMP_WORDS[i]#--config=}} ;;
        esac
    done
    [[ -r $cfg ]] || return 0
    sed -n -E '{SED_MODELS}' -- "$cfg" 2>/dev/null
}}

_citadel_service() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=""
    ((COMP_CWORD > 0)) && prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local subcommands="{subs}"
    local sub="" npos=0 i w
    # The first word that is neither an option nor an option's value is the subcommand;
    # the words after it that are neither are its positionals.
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${{COMP_WORDS[i]}}
        case $w in
            {valued}) ((i++)) ;;
            -*) ;;
            *) if [[ -z $sub ]]; then sub=$w; else ((npos++)); fi ;;
        esac
    done
    COMPREPLY=()
    local opts
    case $sub in
        "") opts="{global}" ;;
"#,
        subs = subcommands.join(" "),
        valued = spec.valued_words().join("|"),
        global = global_words.join(" "),
    );
    for sub in &spec.subs {
        let w: Vec<String> = spec.all_opts(sub).flat_map(words).collect();
        let _ = writeln!(s, "        {}) opts=\"{}\" ;;", sub.name, w.join(" "));
    }
    s.push_str("    esac\n    # The value of an option.\n    case $sub,$prev in\n");
    for sub in &spec.subs {
        for o in &sub.opts {
            if let Some(v) = &o.value {
                let pat: Vec<String> = words(o)
                    .iter()
                    .map(|w| format!("{},{w}", sub.name))
                    .collect();
                let _ = writeln!(
                    s,
                    "        {}) {}; return 0 ;;",
                    pat.join("|"),
                    bash_values(v, &fixed)
                );
            }
        }
    }
    for o in &spec.global {
        if let Some(v) = &o.value {
            let pat: Vec<String> = words(o).iter().map(|w| format!("*,{w}")).collect();
            let _ = writeln!(
                s,
                "        {}) {}; return 0 ;;",
                pat.join("|"),
                bash_values(v, &fixed)
            );
        }
    }
    s.push_str(
        r#"    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return 0
    fi
    case $sub in
        "") COMPREPLY=($(compgen -W "$subcommands" -- "$cur")) ;;
"#,
    );
    for sub in &spec.subs {
        if let Some(v) = &sub.positional {
            let _ = writeln!(
                s,
                "        {}) ((npos == 0)) && {} ;;",
                sub.name,
                bash_values(v, &fixed)
            );
        }
    }
    let _ = write!(
        s,
        r#"    esac
    return 0
}}

complete -F _citadel_service {BIN}
"#
    );
    s
}

/// Escape text for a zsh `_arguments` description inside single quotes.
fn zsh_desc(s: &str) -> String {
    s.replace('\'', "'\\''")
        .replace('[', "\\[")
        .replace(']', "\\]")
        .replace(':', "\\:")
}

fn zsh_action(v: &Values, fixed: &str) -> String {
    match v {
        Values::Free => " ".into(),
        Values::Files => "_files".into(),
        Values::Models => "_citadel_service_models".into(),
        Values::Services => format!("_citadel_service_services {fixed}"),
        Values::Subcommands => "_citadel_service_subcommands".into(),
        Values::List(l) => format!("({})", l.join(" ")),
    }
}

fn zsh_opt(o: &Opt, fixed: &str) -> Vec<String> {
    let desc = zsh_desc(&o.help);
    let val = o
        .value
        .as_ref()
        .map(|v| format!(":value:{}", zsh_action(v, fixed)))
        .unwrap_or_default();
    let ws = words(o);
    let eq = if o.value.is_some() { "=" } else { "" };
    match ws.as_slice() {
        [one] => vec![format!(
            "'{one}{}[{desc}]{val}'",
            if one.starts_with("--") { eq } else { "" }
        )],
        _ => ws
            .iter()
            .map(|w| {
                let excl = ws.join(" ");
                let e = if w.starts_with("--") { eq } else { "" };
                format!("'({excl}){w}{e}[{desc}]{val}'")
            })
            .collect(),
    }
}

/// The zsh completion script (`_citadel-service`, for a directory on `$fpath`).
pub fn zsh(spec: &Spec) -> String {
    let fixed = spec.fixed_services.join(" ");
    let mut s = format!(
        r#"#compdef {BIN}
# zsh completion for {BIN}; generated by citadel-mangen from its clap definition.
# Model names come from the config's [models.NAME] headers, read with sed.

_citadel_service_models() {{
    local cfg=${{CITADEL_CONFIG:-/etc/citadel/citadel.toml}} i
    for ((i = 1; i < ${{#_citadel_service_words}}; i++)); do
        case ${{_citadel_service_words[i]}} in
            --config) cfg=${{_citadel_service_words[i+1]}} ;;
            --config=*) cfg=${{_citadel_service_words[i]#--config=}} ;;
        esac
    done
    local -a names
    [[ -r $cfg ]] && names=(${{(f)"$(sed -n -E '{SED_MODELS}' -- "$cfg" 2>/dev/null)"}})
    _describe -t models 'model' names
}}

_citadel_service_services() {{
    local -a fixed
    fixed=("$@")
    _describe -t services 'service' fixed
    _citadel_service_models
}}

_citadel_service_subcommands() {{
    local -a subcmds
    subcmds=(
"#
    );
    for sub in &spec.subs {
        let _ = writeln!(
            s,
            "        '{}:{}'",
            sub.name,
            zsh_desc(&sub.about).replace("\\[", "[").replace("\\]", "]")
        );
    }
    s.push_str(
        r#"    )
    _describe -t commands 'command' subcmds
}

_citadel_service() {
    local -a _citadel_service_words
    _citadel_service_words=("${words[@]}")
    local curcontext=$curcontext state line
    typeset -A opt_args
    _arguments -C \
"#,
    );
    for o in &spec.global {
        for a in zsh_opt(o, &fixed) {
            let _ = writeln!(s, "        {a} \\");
        }
    }
    s.push_str(
        r#"        '1: :_citadel_service_subcommands' \
        '*:: :->args' && return 0
    case $state in
        args)
            case $words[1] in
"#,
    );
    for sub in &spec.subs {
        let _ = writeln!(s, "                {})", sub.name);
        s.push_str("                    _arguments \\\n");
        for o in spec.all_opts(sub) {
            for a in zsh_opt(o, &fixed) {
                let _ = writeln!(s, "                        {a} \\");
            }
        }
        if let Some(v) = &sub.positional {
            let _ = writeln!(
                s,
                "                        '1:: :{}' \\",
                zsh_action(v, &fixed)
            );
        }
        s.push_str("                        && return 0\n                    ;;\n");
    }
    let _ = write!(
        s,
        r#"            esac
            ;;
    esac
}}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _citadel_service "$@"
else
    compdef _citadel_service {BIN}
fi
"#
    );
    s
}

/// Quote text for fish inside single quotes.
fn fish_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn fish_values(v: &Values, fixed: &str) -> String {
    match v {
        Values::Free => "-x".into(),
        Values::Files => "-r -F".into(),
        Values::Models => "-x -a '(__citadel_service_models)'".into(),
        Values::Services => format!("-x -a '{fixed} (__citadel_service_models)'"),
        Values::Subcommands => "-x -a '$__citadel_service_subcommands'".into(),
        Values::List(l) => format!("-x -a {}", fish_quote(&l.join(" "))),
    }
}

fn fish_opt(o: &Opt, cond: &str, fixed: &str) -> String {
    let mut s = format!("complete -c {BIN}{cond}");
    if let Some(c) = o.short {
        let _ = write!(s, " -s {c}");
    }
    if let Some(l) = &o.long {
        let _ = write!(s, " -l {l}");
    }
    if let Some(v) = &o.value {
        let _ = write!(s, " {}", fish_values(v, fixed));
    }
    let _ = write!(s, " -d {}", fish_quote(&o.help));
    s
}

/// The fish completion script (`citadel-service.fish`).
pub fn fish(spec: &Spec) -> String {
    let fixed = spec.fixed_services.join(" ");
    let names: Vec<&str> = spec.subs.iter().map(|s| s.name.as_str()).collect();
    let mut s = format!(
        r#"# fish completion for {BIN}; generated by citadel-mangen from its clap definition.
# Model names come from the config's [models.NAME] headers, read with sed.

function __citadel_service_models
    set -l cfg /etc/citadel/citadel.toml
    set -q CITADEL_CONFIG; and set cfg $CITADEL_CONFIG
    set -l tokens (commandline -opc)
    for i in (seq (count $tokens))
        switch $tokens[$i]
            case --config
                if test $i -lt (count $tokens)
                    set cfg $tokens[(math $i + 1)]
                end
            case '--config=*'
                set cfg (string replace -- --config= '' $tokens[$i])
        end
    end
    test -r "$cfg"; and sed -n -E {sed} -- $cfg 2>/dev/null
end

set -l __citadel_service_subcommands {subs}
complete -c {BIN} -f
"#,
        sed = fish_quote(SED_MODELS),
        subs = names.join(" "),
    );
    for o in &spec.global {
        let _ = writeln!(s, "{}", fish_opt(o, "", &fixed));
    }
    for sub in &spec.subs {
        let _ = writeln!(
            s,
            "complete -c {BIN} -n \"not __fish_seen_subcommand_from $__citadel_service_subcommands\" -a {} -d {}",
            sub.name,
            fish_quote(&sub.about)
        );
    }
    for sub in &spec.subs {
        let cond = format!(" -n '__fish_seen_subcommand_from {}'", sub.name);
        for o in &sub.opts {
            let _ = writeln!(s, "{}", fish_opt(o, &cond, &fixed));
        }
        if let Some(v) = &sub.positional {
            let v = match v {
                Values::Subcommands => format!("-x -a {}", fish_quote(&names.join(" "))),
                v => fish_values(v, &fixed),
            };
            let _ = writeln!(s, "complete -c {BIN}{cond} {v}");
        }
    }
    s
}
