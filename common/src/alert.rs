//! Alerts: the webhook payloads of the monitor, which also reports boot-time failures (a unit
//! it sees `failed`, e.g. storage or a model that never came up: event `unit_failed`).
//!
//! Two formats (`[monitor] webhook_format`):
//! - `json` (default): one POST per event, a flat JSON object (`event`, `model`, `unit`,
//!   `class`, `gpu`, `severity`, `summary`, `fix`, `time_unix`, plus the event's own fields);
//! - `alertmanager`: one POST of a JSON array in the shape of Alertmanager's
//!   `POST /api/v2/alerts` (`labels`, `annotations`, `startsAt`, `endsAt` for a resolved one,
//!   `generatorURL`), labels `alertname`, `model`, `gpu`, `class`, `severity`, `instance`;
//!   point `webhook_url` at `http://ALERTMANAGER:9093/api/v2/alerts`.

use crate::classify::Class;
use crate::probe::Prober;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The payload shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Json,
    Alertmanager,
}

impl Format {
    pub const NAMES: &'static [&'static str] = &["json", "alertmanager"];

    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "alertmanager" => Some(Format::Alertmanager),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Alertmanager => "alertmanager",
        }
    }
}

/// How bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Alertmanager's `alertname`, e.g. `CitadelModelRestarted`.
    pub name: String,
    /// The JSON format's `event`, e.g. `restart`.
    pub event: String,
    pub severity: Severity,
    pub model: Option<String>,
    pub unit: Option<String>,
    pub gpu: Option<u32>,
    pub class: Option<Class>,
    pub summary: String,
    pub fix: String,
    pub time_unix: u64,
    /// Set when the trouble is over (Alertmanager `endsAt`).
    pub resolved_unix: Option<u64>,
    /// More fields for the JSON format (e.g. `monitor_restarts`).
    pub extra: Map<String, Value>,
}

impl Alert {
    pub fn new(name: &str, event: &str, severity: Severity, summary: impl Into<String>) -> Alert {
        Alert {
            name: name.into(),
            event: event.into(),
            severity,
            model: None,
            unit: None,
            gpu: None,
            class: None,
            summary: summary.into(),
            fix: String::new(),
            time_unix: crate::incident::unix_now(),
            resolved_unix: None,
            extra: Map::new(),
        }
    }
}

/// The host name for the `instance` label.
fn hostname() -> String {
    // uname(2)'s nodename is the host name; no extra nix feature needed.
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.nodename().to_str().map(String::from))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// RFC 3339 UTC time of a unix time (`2026-12-01T21:50:10Z`).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The JSON format's object for one alert.
pub fn json_object(a: &Alert) -> Value {
    let mut o = Map::new();
    o.insert("event".into(), json!(a.event));
    o.insert("alert".into(), json!(a.name));
    o.insert("severity".into(), json!(a.severity.as_str()));
    if let Some(m) = &a.model {
        o.insert("model".into(), json!(m));
    }
    if let Some(u) = &a.unit {
        o.insert("unit".into(), json!(u));
    }
    if let Some(g) = a.gpu {
        o.insert("gpu".into(), json!(g));
    }
    if let Some(c) = a.class {
        o.insert("class".into(), json!(c.as_str()));
    }
    o.insert("summary".into(), json!(a.summary));
    if !a.fix.is_empty() {
        o.insert("fix".into(), json!(a.fix));
    }
    o.insert("time_unix".into(), json!(a.time_unix));
    if let Some(r) = a.resolved_unix {
        o.insert("resolved_unix".into(), json!(r));
    }
    for (k, v) in &a.extra {
        o.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Value::Object(o)
}

/// The Alertmanager `/api/v2/alerts` body for some alerts.
pub fn alertmanager_body(alerts: &[Alert]) -> Value {
    let instance = hostname();
    Value::Array(
        alerts
            .iter()
            .map(|a| {
                let mut labels = Map::new();
                labels.insert("alertname".into(), json!(a.name));
                labels.insert("severity".into(), json!(a.severity.as_str()));
                labels.insert("instance".into(), json!(instance));
                labels.insert("event".into(), json!(a.event));
                if let Some(m) = &a.model {
                    labels.insert("model".into(), json!(m));
                }
                if let Some(g) = a.gpu {
                    labels.insert("gpu".into(), json!(g.to_string()));
                }
                if let Some(c) = a.class {
                    labels.insert("class".into(), json!(c.as_str()));
                }
                let mut ann = Map::new();
                ann.insert("summary".into(), json!(a.summary));
                if !a.fix.is_empty() {
                    ann.insert("description".into(), json!(a.fix));
                }
                if let Some(u) = &a.unit {
                    ann.insert("unit".into(), json!(u));
                }
                let mut o = Map::new();
                o.insert("labels".into(), Value::Object(labels));
                o.insert("annotations".into(), Value::Object(ann));
                o.insert("startsAt".into(), json!(rfc3339(a.time_unix)));
                if let Some(r) = a.resolved_unix {
                    o.insert("endsAt".into(), json!(rfc3339(r)));
                }
                o.insert(
                    "generatorURL".into(),
                    json!(format!("http://{instance}/citadel")),
                );
                Value::Object(o)
            })
            .collect(),
    )
}

/// The request bodies to send for `alerts` in `format`.
pub fn bodies(format: Format, alerts: &[Alert]) -> Vec<String> {
    match format {
        Format::Json => alerts.iter().map(|a| json_object(a).to_string()).collect(),
        Format::Alertmanager if alerts.is_empty() => vec![],
        Format::Alertmanager => vec![alertmanager_body(alerts).to_string()],
    }
}

/// Where and how alerts go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    pub url: String,
    pub format: Format,
    pub timeout: Duration,
}

impl Sink {
    /// Send now (blocking, each POST bounded by the timeout); one line per failure.
    pub fn send_blocking(&self, alerts: &[Alert]) -> Result<(), String> {
        let p = Prober::new(self.timeout);
        let mut errors = vec![];
        for body in bodies(self.format, alerts) {
            match p.post_json(&self.url, &body, None) {
                Ok(r) if (200..300).contains(&r.status) => {}
                Ok(r) => errors.push(format!("webhook {} answered HTTP {}", self.url, r.status)),
                Err(e) => errors.push(format!("webhook {}: {e}", self.url)),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Send from a thread (the caller's loop never waits); failures are logged, not retried.
    pub fn send(&self, alerts: Vec<Alert>) {
        let sink = self.clone();
        let spawned = std::thread::Builder::new()
            .name("webhook".into())
            .spawn(move || {
                if let Err(e) = sink.send_blocking(&alerts) {
                    log::warn!("{e}");
                }
            });
        if let Err(e) = spawned {
            log::warn!("webhook {}: cannot start a thread: {e}", self.url);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        let mut a = Alert::new(
            "CitadelGpuQuarantined",
            "gpu_quarantine",
            Severity::Critical,
            "GPU 1: Xid 79",
        );
        a.model = Some("phi3".into());
        a.gpu = Some(1);
        a.class = Some(Class::GpuFault);
        a.fix = "citadel-service gpu clear 1".into();
        a.time_unix = 1_764_625_810;
        a.extra.insert("xid".into(), json!(79));
        a
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_625_810), "2025-12-01T21:50:10Z");
    }

    #[test]
    fn the_alertmanager_body_has_the_api_v2_shape() {
        let b = alertmanager_body(&[alert()]);
        let a = &b.as_array().unwrap()[0];
        assert_eq!(a["labels"]["alertname"], "CitadelGpuQuarantined");
        assert_eq!(a["labels"]["model"], "phi3");
        assert_eq!(a["labels"]["gpu"], "1");
        assert_eq!(a["labels"]["class"], "gpu_fault");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["startsAt"], "2025-12-01T21:50:10Z");
        assert!(a.get("endsAt").is_none());
        assert!(a["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("Xid 79"));
        // Every label value is a string, as Alertmanager requires.
        assert!(a["labels"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_string));
    }

    #[test]
    fn the_json_format_is_flat_and_keeps_extra_fields() {
        let o = json_object(&alert());
        assert_eq!(o["event"], "gpu_quarantine");
        assert_eq!(o["gpu"], 1);
        assert_eq!(o["xid"], 79);
        assert_eq!(bodies(Format::Json, &[alert(), alert()]).len(), 2);
        assert_eq!(bodies(Format::Alertmanager, &[alert(), alert()]).len(), 1);
    }
}
