//! The examples that end each command's `--help` (clap `after_help`). The man pages
//! (citadel-mangen) turn the same text into their EXAMPLES sections, so the two never differ.
//!
//! Format: a first line `Examples:`, then for each example a command indented by two spaces
//! and what it does indented by six.

pub const MAIN: &str = "\
Examples:
  citadel-service
      the status table (the same as citadel-service status)
  citadel-service check && citadel-service deploy
      validate the config, then bring the box up phase by phase";

pub const CHECK: &str = "\
Examples:
  citadel-service check --host
      every problem at once (exit 78), or the plan and how this machine matches it (exit 1 if not)
  citadel-service --config /tmp/new.toml check --json
      check a candidate config before installing it";

pub const START: &str = "\
Examples:
  citadel-service start phi3
      start one model and wait until it serves
  citadel-service start all --no-wait
      queue the whole box and return";

pub const STOP: &str = "\
Examples:
  citadel-service stop phi3
      stop one model gracefully and wait until it is gone
  citadel-service stop all
      stop every Citadel unit";

pub const RESTART: &str = "\
Examples:
  citadel-service restart phi3
      restart one model and wait until it serves again
  citadel-service restart all --timeout 3600
      restart the whole box, waiting up to an hour for the weights to load";

pub const STATUS: &str = "\
Examples:
  citadel-service status
      every unit: state, PID, uptime, restarts, port, health, GPU memory
  citadel-service status phi3 --probe --json
      one model, probed now, as JSON";

pub const TOP: &str = "\
Examples:
  citadel-service top
      the live view, redrawn every second (q quits; works over ssh and in tmux)
  citadel-service top --interval 5 | cat
      not a terminal: the same table printed once";

pub const LOGS: &str = "\
Examples:
  citadel-service logs phi3 -n 100
      the last 100 journal lines of one model
  citadel-service logs all --since -1h -f
      the last hour of every unit, then follow";

pub const ENABLE: &str = "\
Examples:
  citadel-service enable
      bring the box up at every boot (which models: the config's enabled ones, read by citadel-generator)";

pub const DISABLE: &str = "\
Examples:
  citadel-service disable
      nothing Citadel starts at boot; running units keep running";

pub const HEALTH: &str = "\
Examples:
  citadel-service health
      probe every enabled model now; CPU, memory, disk and GPU use
  citadel-service health --json --timeout 2
      the same as JSON, each probe given at most 2 seconds";

pub const APPLY: &str = "\
Examples:
  citadel-service apply --dry-run
      what the edited config would start, stop, restart or reload, and why
  citadel-service apply
      carry it out: changed models restart one at a time, the others keep running";

pub const ROLLOUT: &str = "\
Examples:
  citadel-service rollout phi3 --path /mnt/citadel-models/staging/phi3-v2 --dry-run
      surge or replace, and why (GPU shares, spare port); the steps; nothing touched
  citadel-service rollout phi3 --path /mnt/citadel-models/staging/phi3-v2 --golden-prompt 'The capital of France is' --golden-expect Paris
      switch phi3 to the new weights; any failure restores the old version";

pub const DEPLOY: &str = "\
Examples:
  citadel-service deploy
      storage+gpu, the first enabled model, all models, then the monitor
  citadel-service deploy --phase 2 --test-model coder
      only phase 2, with the model coder";

pub const WHY: &str = "\
Examples:
  citadel-service why phi3
      is phi3 serving; if not: the cause, the fix, the first failure, the engine's excerpt
  citadel-service why phi3 --json
      the same as JSON (state, latest incident, quarantined GPUs)";

pub const GPU: &str = "\
Examples:
  citadel-service gpu clear 1
      lift GPU 1's quarantine after checking the GPU; then start its models";

pub const EXPORT: &str = "\
Examples:
  citadel-service export kubernetes --namespace llm --out k8s/
      one manifest file per enabled model
  citadel-service export production-stack > values.yaml
      a values file for vLLM production-stack's Helm chart";

/// The examples as (command, what it does) pairs.
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![];
    for line in text
        .lines()
        .skip_while(|l| !l.starts_with("Examples:"))
        .skip(1)
    {
        if let Some(what) = line.strip_prefix("      ") {
            if let Some(last) = out.last_mut() {
                if !last.1.is_empty() {
                    last.1.push(' ');
                }
                last.1.push_str(what.trim());
            }
        } else if let Some(cmd) = line.strip_prefix("  ") {
            out.push((cmd.trim().to_string(), String::new()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_has_a_command_and_what_it_does() {
        for t in [
            MAIN, CHECK, START, STOP, RESTART, STATUS, TOP, LOGS, ENABLE, DISABLE, HEALTH, APPLY,
            ROLLOUT, DEPLOY, EXPORT,
        ] {
            let ex = parse(t);
            assert!(!ex.is_empty() && ex.len() <= 2, "{t}");
            for (cmd, what) in ex {
                assert!(cmd.starts_with("citadel-service"), "{cmd}");
                assert!(!what.is_empty(), "{cmd}");
            }
        }
    }
}
