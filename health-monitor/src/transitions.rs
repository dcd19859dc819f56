//! Transition logging: one line per change of state, with the reason; none while nothing
//! changes.

use crate::decide::{Action, Record};
use crate::settings::{Settings, Target};
use citadel_common::health::ModelState;

/// One log line per change of state (with the reason), none while nothing changes.
pub(crate) fn log_change(
    t: &Target,
    prev: Option<&Record>,
    rec: &Record,
    action: Action,
    s: &Settings,
) {
    use ModelState::*;
    let name = &t.name;
    let reason = rec.reason.as_deref().unwrap_or("");
    if rec.warning.is_some() && rec.warning != prev.and_then(|p| p.warning.clone()) {
        log::warn!("{name}: {}", rec.warning.as_deref().unwrap_or(""));
    }
    if let Some(n) = &rec.note {
        log::debug!("{name}: {n}");
    }
    match action {
        Action::Restart if rec.state == Restarting => {
            log::warn!(
                "{name}: {} -> restarting: systemctl restart --no-block {} (monitor restart {} of {} allowed per {}s) after {} consecutive failures: {reason}",
                prev.map_or("unknown", |p| p.state.as_str()),
                t.unit,
                rec.budget.clone().used(rec.since),
                s.restart_budget,
                s.restart_window.as_secs(),
                rec.restart.map_or(s.failure_threshold, |r| r.after_failures),
            );
            return;
        }
        Action::Restart => {
            // systemctl refused (e.g. no permission): said once, tried again each sweep.
            let said = prev
                .and_then(|p| p.reason.as_deref())
                .is_some_and(|r| r.starts_with("restart could not be issued"));
            if !said {
                log::error!("{name}: {reason}");
            }
            return;
        }
        Action::GiveUp => {
            log::error!(
                "{name}: {} -> gave_up: {reason}",
                prev.map_or("unknown", |p| p.state.as_str())
            );
            return;
        }
        Action::None => {}
    }
    let Some(p) = prev else {
        let line = if reason.is_empty() {
            format!("{name}: {}", rec.state.as_str())
        } else {
            format!("{name}: {}: {reason}", rec.state.as_str())
        };
        match rec.state {
            Failed | GaveUp => log::error!("{line}"),
            Failing | Restarting => log::warn!("{line}"),
            _ => log::info!("{line}"),
        }
        return;
    };
    if p.state == rec.state {
        return;
    }
    let line = if reason.is_empty() {
        format!("{name}: {} -> {}", p.state.as_str(), rec.state.as_str())
    } else {
        format!(
            "{name}: {} -> {}: {reason}",
            p.state.as_str(),
            rec.state.as_str()
        )
    };
    match rec.state {
        Failed | GaveUp => log::error!("{line}"),
        Failing => log::warn!("{line}"),
        _ => log::info!("{line}"),
    }
}
