//! The generated completion scripts, driven by the real shells: bash through its completion
//! function (`COMP_WORDS`/`COMP_CWORD`, the way readline calls it), fish through
//! `complete -C`, zsh loaded by `compinit`. The shells come from Debian's `bash`, `fish` and
//! `zsh` packages (tests/run.sh installs them); a missing shell fails the test.

use std::path::{Path, PathBuf};
use std::process::Command;

const CONFIG: &str = r#"
[models.phi3]
path = "phi3"
port = 11403
gpus = [0]

[models.coder]   # the coder
path = "coder"
port = 11405
gpus = [1]

[ models."llama-70b" ]
path = "llama"
port = 11406
gpus = [2]
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    scripts: PathBuf,
    config: PathBuf,
    broken: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("gen");
    citadel_mangen::generate(&scripts).unwrap();
    let config = dir.path().join("citadel.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // A typo in a new model: the config no longer validates, completion still works.
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        format!("{CONFIG}\n[models.mistral]\npath = \"m\"\nprot = 11407\ngpus = [3]\n"),
    )
    .unwrap();
    Fixture {
        _dir: dir,
        scripts: scripts.join("completions"),
        config,
        broken,
    }
}

fn shell(name: &str) -> Command {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: apt-get install {name} (tests/run.sh installs it)",
        path.display()
    );
    Command::new(path)
}

/// The candidates bash's completion function offers for `line` (the cursor at its end; a
/// trailing space means a new, empty word), with `CITADEL_CONFIG` set to `config`.
fn bash_complete(f: &Fixture, config: &Path, line: &str) -> Vec<String> {
    let mut words: Vec<String> = line.split_whitespace().map(String::from).collect();
    if line.ends_with(' ') {
        words.push(String::new());
    }
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source '{}' || exit 9\n\
         complete -p citadel-service >/dev/null || exit 8\n\
         COMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\n\
         _citadel_service citadel-service \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        f.scripts.join("citadel-service").display(),
        quoted.join(" "),
        words.len() - 1,
    );
    let out = shell("bash")
        .args(["--norc", "--noprofile", "-c", &script])
        .env("CITADEL_CONFIG", config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bash: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    v.sort();
    v
}

#[test]
fn bash_completes_model_names_past_the_first_word() {
    let f = fixture();
    assert_eq!(
        bash_complete(&f, &f.config, "citadel-service status ph"),
        ["phi3"]
    );
    assert_eq!(
        bash_complete(&f, &f.config, "citadel-service stop l"),
        ["llama-70b"]
    );
    assert_eq!(
        bash_complete(&f, &f.config, "citadel-service restart "),
        [
            "all",
            "coder",
            "gateway",
            "gpu",
            "llama-70b",
            "models",
            "monitor",
            "phi3",
            "storage"
        ]
    );
    // Options before the subcommand, and an option's value, are skipped.
    assert_eq!(
        bash_complete(&f, &f.config, "citadel-service -v logs -n 50 co"),
        ["coder"]
    );
    // One service per command: nothing after it.
    assert!(bash_complete(&f, &f.config, "citadel-service status phi3 ").is_empty());
    assert_eq!(
        bash_complete(&f, &f.config, "citadel-service deploy --test-model c"),
        ["coder"]
    );
}

#[test]
fn bash_reads_the_config_named_on_the_line_and_a_broken_one() {
    let f = fixture();
    let line = format!("citadel-service --config {} status m", f.broken.display());
    // CITADEL_CONFIG names a file without models; --config on the line wins.
    assert_eq!(
        bash_complete(&f, Path::new("/nonexistent"), &line),
        ["mistral", "models", "monitor"]
    );
    assert_eq!(
        bash_complete(&f, &f.broken, "citadel-service stop ph"),
        ["phi3"]
    );
    // No config at all: the fixed names still complete.
    assert_eq!(
        bash_complete(&f, Path::new("/nonexistent"), "citadel-service stop "),
        ["all", "gateway", "gpu", "models", "monitor", "storage"]
    );
}

#[test]
fn bash_completes_subcommands_and_each_commands_options() {
    let f = fixture();
    assert_eq!(
        bash_complete(&f, &f.config, "citadel-service st"),
        ["start", "status", "stop"]
    );
    let logs = bash_complete(&f, &f.config, "citadel-service logs --");
    for o in ["--follow", "--lines", "--since", "--config", "--help"] {
        assert!(logs.contains(&o.to_string()), "{o} not in {logs:?}");
    }
    assert!(!logs.contains(&"--json".to_string()), "{logs:?}");
    assert_eq!(
        bash_complete(&f, &f.config, "citadel-service status --j"),
        ["--json"]
    );
    assert_eq!(
        bash_complete(&f, &f.config, "citadel-service help he"),
        ["health", "help"]
    );
    assert_eq!(
        bash_complete(&f, &f.config, "citadel-service export "),
        ["kubernetes", "production-stack"]
    );
    assert_eq!(
        bash_complete(&f, &f.config, "citadel-service export kubernetes --n"),
        ["--namespace"]
    );
    assert!(
        bash_complete(&f, &f.config, "citadel-service export production-stack --")
            .contains(&"--out".to_string())
    );
}

fn fish_complete(f: &Fixture, config: &Path, line: &str) -> Vec<String> {
    let script = format!(
        "source '{}'; or exit 9; complete -C '{line}'",
        f.scripts.join("citadel-service.fish").display()
    );
    let out = shell("fish")
        .args(["--no-config", "-c", &script])
        .env("CITADEL_CONFIG", config)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "fish: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn fish_completes_model_names_and_subcommands() {
    let f = fixture();
    assert_eq!(
        fish_complete(&f, &f.config, "citadel-service status ph"),
        ["phi3"]
    );
    assert_eq!(
        fish_complete(&f, &f.broken, "citadel-service stop mi"),
        ["mistral"]
    );
    assert_eq!(
        fish_complete(&f, &f.config, "citadel-service st"),
        ["start", "status", "stop"]
    );
    let opts = fish_complete(&f, &f.config, "citadel-service status --");
    assert!(opts.contains(&"--json".to_string()), "{opts:?}");
    assert!(opts.contains(&"--config".to_string()), "{opts:?}");
}

#[test]
fn zsh_loads_the_completion_through_compinit() {
    let f = fixture();
    let script = format!(
        "fpath=('{}' $fpath); autoload -Uz compinit; compinit -u -D; \
         print -r -- ${{_comps[citadel-service]}}; autoload -Uz _citadel-service; \
         whence -w _citadel-service",
        f.scripts.display()
    );
    let out = shell("zsh").args(["-f", "-c", &script]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "zsh: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("_citadel-service\n"), "{stdout}");
    let parse = shell("zsh")
        .args([
            "-n",
            &f.scripts.join("_citadel-service").display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        parse.status.success(),
        "{}",
        String::from_utf8_lossy(&parse.stderr)
    );
}
