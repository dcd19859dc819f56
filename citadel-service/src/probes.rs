//! Live `/health` probes of the models, in parallel (common's one `probe_all`), each bounded
//! by one timeout.

use citadel_common::probe::{self, base_url, Answer, Get, Outcome, ProbeError, Prober};
use std::time::Duration;

/// One model's `/health` answer (or why there was none).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "ProbeRecord", from = "ProbeRecord")]
pub struct ProbeResult {
    pub name: String,
    pub url: String,
    pub outcome: Outcome,
}

impl ProbeResult {
    pub fn healthy(&self) -> bool {
        self.http_status() == Some(200)
    }
    /// `healthy`, `http 503`, `refused`, `timeout`, `error`.
    pub fn word(&self) -> String {
        probe::health_word(&self.outcome)
    }
    /// HTTP status, when the server answered.
    pub fn http_status(&self) -> Option<u16> {
        self.outcome.as_ref().ok().map(|a| a.status)
    }
    pub fn latency_ms(&self) -> Option<u64> {
        self.outcome
            .as_ref()
            .ok()
            .map(|a| a.latency.as_millis() as u64)
    }
    /// `connection refused`, `timed out` ..., when there was no answer.
    pub fn error(&self) -> Option<String> {
        self.outcome.as_ref().err().map(ProbeError::to_string)
    }
}

/// A [`ProbeResult`] as JSON: `http_status`, `latency_ms` and `error` (the message).
#[derive(serde::Serialize, serde::Deserialize)]
struct ProbeRecord {
    name: String,
    url: String,
    http_status: Option<u16>,
    latency_ms: Option<u64>,
    error: Option<String>,
}

impl From<ProbeResult> for ProbeRecord {
    fn from(p: ProbeResult) -> ProbeRecord {
        ProbeRecord {
            http_status: p.http_status(),
            latency_ms: p.latency_ms(),
            error: p.error(),
            name: p.name,
            url: p.url,
        }
    }
}

impl From<ProbeRecord> for ProbeResult {
    fn from(r: ProbeRecord) -> ProbeResult {
        let outcome = match (r.http_status, r.error) {
            (Some(status), _) => Ok(Answer {
                status,
                latency: Duration::from_millis(r.latency_ms.unwrap_or(0)),
            }),
            (None, Some(e)) => Err(ProbeError::from_message(&e)),
            (None, None) => Err(ProbeError::Other("no answer".into())),
        };
        ProbeResult {
            name: r.name,
            url: r.url,
            outcome,
        }
    }
}

/// The gateway as a client reaches it: `GET /health`, then `GET /v1/models` (with one of the
/// client keys when `gateway.api_keys_file` is set and readable) for the names it routes.
pub fn probe_gateway(
    cfg: &citadel_common::config::Config,
    timeout: Duration,
) -> crate::health::GatewayCheck {
    let l = cfg.gateway.listen;
    let host = match l.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "::1".to_string(),
        ip => ip.to_string(),
    };
    let base = base_url(&host, l.port());
    let prober = Prober::new(timeout);
    let health = prober.get(&format!("{base}/health"), None);
    let key = citadel_common::clientkeys::Keys::load(cfg.gateway.api_keys_file.as_deref());
    let mut error = health.as_ref().err().map(|e| e.to_string());
    let routable = match (&health, &key) {
        (Ok(h), Ok(keys)) if h.status == 200 => {
            match prober.get(&format!("{base}/v1/models"), keys.any()) {
                Ok(r) if r.status == 200 => serde_json::from_str::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|v| {
                        v["data"].as_array().map(|a| {
                            a.iter()
                                .filter_map(|m| m["id"].as_str().map(str::to_string))
                                .collect()
                        })
                    }),
                Ok(r) => {
                    error = Some(format!("GET /v1/models returned HTTP {}", r.status));
                    None
                }
                Err(e) => {
                    error = Some(format!("GET /v1/models: {e}"));
                    None
                }
            }
        }
        (Ok(h), _) if h.status != 200 => {
            error = Some(format!("/health returned HTTP {}", h.status));
            None
        }
        (Ok(_), Err(e)) => {
            error = Some(format!("client keys: {e}"));
            None
        }
        _ => None,
    };
    crate::health::GatewayCheck {
        unit: citadel_common::paths::UNIT_GATEWAY.into(),
        url: base,
        unit_state: None,
        probe: health.as_ref().map(|h| h.answer()).map_err(Clone::clone),
        healthy: health.as_ref().is_ok_and(|h| h.status == 200),
        http_status: health.as_ref().ok().map(|h| h.status),
        latency_ms: health.as_ref().ok().map(|h| h.latency.as_millis() as u64),
        routable,
        error,
    }
}

/// `GET http://HOST:PORT/health` for every `(name, port)` at once; returns in input order.
pub fn probe_all(host: &str, models: &[(String, u16)], timeout: Duration) -> Vec<ProbeResult> {
    let prober = Prober::new(timeout);
    let urls: Vec<String> = models
        .iter()
        .map(|(_, port)| format!("{}/health", base_url(host, *port)))
        .collect();
    let gets = urls
        .iter()
        .map(|url| Get {
            prober: prober.clone(),
            url: url.clone(),
        })
        .collect();
    probe::probe_all(gets)
        .into_iter()
        .zip(models.iter().zip(urls))
        .map(|(r, ((name, _), url))| ProbeResult {
            name: name.clone(),
            url,
            outcome: r.map(|r| r.answer()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn probes_run_in_parallel_and_classify_answers() {
        let engines = citadel_common::probe::testing::one_of_each();
        let models: Vec<(String, u16)> = engines
            .iter()
            .zip(["a", "b", "c", "d", "e"])
            .map(|((port, _), n)| (n.to_string(), *port))
            .collect();
        let t0 = Instant::now();
        let r = probe_all("127.0.0.1", &models, Duration::from_millis(500));
        // Two slow servers, each past the timeout: in parallel, well under 2 x timeout + slack.
        assert!(
            t0.elapsed() < Duration::from_millis(2500),
            "{:?}",
            t0.elapsed()
        );
        let words: Vec<String> = r.iter().map(ProbeResult::word).collect();
        assert_eq!(words, engines.map(|(_, w)| w));
        assert!(r[0].healthy() && !r[1].healthy());
        let names: Vec<&str> = r.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        assert_eq!(
            r[0].url,
            format!("http://127.0.0.1:{}/health", engines[0].0)
        );
    }
}
