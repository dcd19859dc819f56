//! The webhook: one JSON POST per restart or spent budget, never waited for.

use crate::decide::{Action, Record};
use crate::monitor::{unix_now, Monitor};
pub use crate::output::Webhook;
use crate::settings::Target;

impl Monitor {
    pub(crate) fn fire_webhook(&self, t: &Target, rec: &Record, action: Action) {
        let Some(w) = &self.webhook else { return };
        w.send(serde_json::json!({
            "event": if action == Action::Restart { "restart" } else { "restart_budget_spent" },
            "model": t.name,
            "unit": t.unit,
            "state": rec.state.as_str(),
            "reason": rec.reason,
            "monitor_restarts": rec.monitor_restarts,
            "restart_budget": self.settings.restart_budget,
            "restart_window_secs": self.settings.restart_window.as_secs(),
            "time_unix": unix_now(),
        }));
    }
}
