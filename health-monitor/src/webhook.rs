//! Restarts and spent budgets: an incident each and an alert (`[monitor] webhook_format`:
//! the JSON format keeps its fields; see `citadel_common::alert`), never waited for.

use crate::decide::{Action, Record};
use crate::monitor::Monitor;
use crate::settings::Target;

impl Monitor {
    pub(crate) fn fire_webhook(&self, t: &Target, rec: &Record, action: Action) {
        let extra = serde_json::json!({
            "state": rec.state.as_str(),
            "reason": rec.reason,
            "monitor_restarts": rec.monitor_restarts,
            "restart_budget": self.settings.restart_budget,
            "restart_window_secs": self.settings.restart_window.as_secs(),
        });
        let serde_json::Value::Object(extra) = extra else {
            return;
        };
        self.watch.on_action(
            &t.name,
            &t.unit,
            action == Action::Restart,
            rec.reason.as_deref().unwrap_or(""),
            extra,
        );
    }
}
