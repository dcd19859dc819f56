//! storage-setup: verify and prepare storage before any model starts.
//!
//! Run by `citadel-storage.service` (`Type=oneshot`, `RemainAfterExit=yes`) before
//! `citadel-models.target`: `ExecStart=storage-setup`, `ExecStop=storage-setup --cleanup`.
//! Its failure keeps every model from starting, with one line in the journal saying what is
//! wrong.
//!
//! # Modes
//! - `storage-setup`: run every check; when all pass, make the safe changes (create the models
//!   link and Citadel's directories, fix their owner and mode). Idempotent: a second run
//!   changes nothing and says "already configured". When any check fails, nothing is changed.
//! - `storage-setup --check`: run every check and report what setup would do; writes nothing.
//! - `storage-setup --cleanup`: remove runtime leftovers (see [`cleanup`]); never model data,
//!   caches or backups. With `--check`, list what would be removed.
//! - `--json` on any mode: the report as JSON on stdout (shape in [`report`]).
//!
//! # Checks (in report order; entry names in brackets)
//! 1. `[account]` `service.user` and `service.group` exist.
//! 2. `[models_mount]`, `[backup_mount]`: a real mount point per the mount table
//!    (`/proc/self/mountinfo`), not a plain directory on `/`; device, filesystem type and free
//!    space; free space under `storage.min_free_gib` (`storage.backup_min_free_gib`) fails. A
//!    missing backup mount is a warning unless `storage.backup_required`.
//! 3. `[models_active]`: the link target exists and is a directory on the models mount.
//! 4. `[models_link]`: `paths.models_link` -> `paths.models_active`. Absent: created. Dangling,
//!    a loop, pointing outside the models mount, or not a symlink: fail, never repointed. Pointing
//!    to another directory on the models mount: a warning.
//! 5. `[cache_dir]`, `[staging_dir]`, `[runtime_dir]`, `[locks_dir]` (= runtime_dir/locks),
//!    `[state_dir]`: real directories owned by `service.user:service.group` with mode
//!    `storage.dir_mode` (default 0750). Created (only the last path component) or fixed; a
//!    symlink or a file there fails. Ownership is changed only by root.
//! 6. `[model:NAME]` for each enabled model: complete
//!    ([`citadel_common::modelfiles::check_model_dir`]) and readable by the service account,
//!    every parent directory traversable ([`citadel_common::access::check_tree_readable`]).
//!
//! # Exit codes
//! - 0: every check passed (warnings allowed).
//! - 69: a required resource is missing: the service account, a required mount (absent or a
//!   plain directory), the link target (`models_active` absent, or a dangling link), a model's
//!   files (incomplete or unreadable by the service account).
//! - 78: the config file is invalid.
//! - 1: anything else (not enough free space, a link to the wrong place or a loop, a directory
//!   setup may not fix, a change that failed).
//!
//! With several failures, the first in report order sets the exit code and the journal line.
//!
//! # Test hook
//! The hidden `--mountinfo PATH` flag (env `CITADEL_MOUNTINFO`) reads the mount table from a file
//! in mountinfo format instead of `/proc/self/mountinfo`.

pub mod actions;
pub mod checks;
pub mod cleanup;
pub mod mounts;
pub mod report;

use citadel_common::cli::CommonArgs;
use citadel_common::{Exit, Failure};
use clap::Parser;
use report::{first_failure, Entry, Mode, Report, Status};
use std::path::PathBuf;

/// Verify and prepare Citadel's storage: mounts, the models link, directories, model files.
#[derive(Debug, Parser)]
#[command(
    name = "storage-setup",
    version,
    about,
    after_help = "Examples:
  /usr/lib/citadel/storage-setup --check
      what setup would do, changing nothing
  /usr/lib/citadel/storage-setup --check --json
      the same report as one JSON document"
)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Verify only: change nothing, report what setup would do (with --cleanup: what it would remove).
    #[arg(long)]
    pub check: bool,
    /// Stop step (ExecStop): remove runtime locks and setup's temporary leftovers; never model
    /// data, caches or backups.
    #[arg(long)]
    pub cleanup: bool,
    /// Print the report as one JSON document on stdout.
    #[arg(long)]
    pub json: bool,
    /// Test hook: read the mount table from this mountinfo-format file instead of
    /// /proc/self/mountinfo.
    #[arg(long, value_name = "PATH", env = "CITADEL_MOUNTINFO", hide = true)]
    pub mountinfo: Option<PathBuf>,
}

/// Run the selected mode.
pub fn run(args: &Args) -> Result<Exit, Failure> {
    let cfg = args.common.load_config()?;
    let report = if args.cleanup {
        cleanup_report(&cfg, args.check)
    } else {
        let path = args
            .mountinfo
            .clone()
            .unwrap_or_else(|| PathBuf::from(mounts::MOUNTINFO));
        log::debug!("reading the mount table from {}", path.display());
        let table = mounts::MountTable::read(&path);
        let planned = checks::plan(&cfg, &table, checks::Runner::current());
        setup_report(planned, args.check)
    };
    if args.json {
        println!("{}", report.json()?);
    } else {
        print!("{}", report.text());
    }
    match first_failure(&report.checks) {
        None => Ok(Exit::Ok),
        Some((entry, exit, failed)) => {
            let more = failed - 1;
            let mut line = format!("storage-setup: {}", entry.detail);
            if more > 0 {
                line.push_str(&format!(
                    " (and {more} more failed check(s): see the report)"
                ));
            }
            let f = Failure::new(exit, line);
            Err(if args.json {
                f.with_document_printed()
            } else {
                f
            })
        }
    }
}

/// Turn the checks into the report: apply the actions (setup, all checks passed), or say what
/// would be done (`--check`) or what was not done (a check failed).
pub fn setup_report(planned: Vec<checks::Planned>, check_only: bool) -> Report {
    let failed = planned.iter().any(|p| p.entry.status == Status::Fail);
    let pending = planned.iter().filter(|p| p.action.is_some()).count();
    let mut entries = Vec::with_capacity(planned.len());
    let mut applied = 0usize;
    let mut apply_failed = false;
    for p in planned {
        let mut e = p.entry;
        if let Some(a) = p.action {
            let what = a.describe();
            if check_only {
                e.status = e.status.worst(Status::Warn);
                e.action = Some(format!("would {what}"));
            } else if failed || apply_failed {
                e.status = e.status.worst(Status::Warn);
                e.action = Some(format!("not done: {what} (another check failed)"));
            } else {
                match a.apply() {
                    Ok(()) => {
                        applied += 1;
                        e.changed = true;
                        e.detail = format!("{}; done: {what}", e.detail);
                        e.action = Some(what);
                    }
                    Err(msg) => {
                        apply_failed = true;
                        e = Entry::fail(e.name, &e.path, Exit::Failure, msg);
                    }
                }
            }
        }
        entries.push(e);
    }
    let nfail = entries.iter().filter(|e| e.status == Status::Fail).count();
    let summary = match (check_only, nfail, pending) {
        (true, 0, 0) => "check: already configured, nothing to do".to_string(),
        (true, 0, n) => format!("check: setup would make {n} change(s)"),
        (true, f, _) => format!("check: {f} check(s) failed; setup would change nothing"),
        (false, 0, 0) => "already configured: nothing changed".to_string(),
        (false, 0, n) => format!("configured: {n} change(s) made"),
        (false, f, _) if applied == 0 => format!("{f} check(s) failed: nothing changed"),
        (false, f, _) => format!("{f} check(s) failed after {applied} change(s)"),
    };
    Report::new(
        if check_only { Mode::Check } else { Mode::Setup },
        entries,
        summary,
    )
}

fn cleanup_report(cfg: &citadel_common::config::Config, dry_run: bool) -> Report {
    let mut entries = cleanup::run(cfg, dry_run);
    let n = entries.iter().filter(|e| e.action.is_some()).count();
    let summary = match (dry_run, n) {
        (_, 0) => "cleanup: nothing to remove".to_string(),
        (true, n) => format!("cleanup: would remove {n} item(s)"),
        (false, _) => format!(
            "cleanup: removed {} item(s)",
            entries.iter().filter(|e| e.changed).count()
        ),
    };
    if entries.is_empty() {
        entries.push(Entry::ok(
            "cleanup",
            &cfg.paths.runtime_dir,
            "nothing to remove",
        ));
    }
    Report::new(Mode::Cleanup, entries, summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn the_test_hook_is_hidden_from_help() {
        let help = Args::command().render_long_help().to_string();
        assert!(!help.contains("mountinfo"), "{help}");
        assert!(help.contains("--check") && help.contains("--cleanup") && help.contains("--json"));
    }

    #[test]
    fn a_failure_blocks_every_action() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let owner = actions::Owner {
            user: "me".into(),
            group: "me".into(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        let planned = vec![
            checks::Planned {
                entry: Entry::ok("cache_dir", &dir, "absent"),
                action: Some(actions::Action::CreateDir {
                    path: dir.clone(),
                    owner,
                    mode: 0o750,
                }),
            },
            Entry::fail("models_mount", Path::new("/m"), Exit::Unavailable, "gone").into(),
        ];
        let r = setup_report(planned.clone(), false);
        assert!(!dir.exists());
        assert_eq!(r.exit, 69);
        assert!(!r.changed);
        assert_eq!(r.checks[0].status, Status::Warn);
        assert!(r.checks[0]
            .action
            .as_deref()
            .unwrap()
            .starts_with("not done"));
        assert_eq!(r.summary, "1 check(s) failed: nothing changed");
        // Without the failure, setup creates it; --check only says so.
        let ok: Vec<_> = planned.into_iter().take(1).collect();
        let r = setup_report(ok.clone(), true);
        assert!(!dir.exists());
        assert_eq!(r.summary, "check: setup would make 1 change(s)");
        let r = setup_report(ok, false);
        assert!(dir.is_dir());
        assert!(r.changed);
        assert_eq!(r.summary, "configured: 1 change(s) made");
    }
}
