//! Live `/health` probes of the models, in parallel, each bounded by one timeout.

use citadel_common::probe::{base_url, Prober};
use std::time::Duration;

/// One model's `/health` answer (or why there was none).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeResult {
    pub name: String,
    pub url: String,
    /// HTTP status, when the server answered.
    pub http_status: Option<u16>,
    pub latency_ms: Option<u64>,
    /// `connection refused`, `timed out` ...
    pub error: Option<String>,
}

impl ProbeResult {
    pub fn healthy(&self) -> bool {
        self.http_status == Some(200)
    }
    /// `healthy`, `http 503`, `refused`, `timeout`, `error`.
    pub fn word(&self) -> String {
        probe_word(self.http_status, self.error.as_deref())
    }
}

/// The HEALTH word of one `/health` probe, the same in `status --probe`, `health` and its
/// gateway line: `healthy`, `http 503`, `refused`, `timeout`, `error`.
pub fn probe_word(http_status: Option<u16>, error: Option<&str>) -> String {
    match (http_status, error) {
        (Some(200), _) => "healthy".into(),
        (Some(s), _) => format!("http {s}"),
        (None, Some(e)) if e.contains("refused") => "refused".into(),
        (None, Some(e)) if e.contains("timed out") => "timeout".into(),
        _ => "error".into(),
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
    std::thread::scope(|s| {
        let handles: Vec<_> = models
            .iter()
            .map(|(name, port)| {
                let prober = prober.clone();
                let url = format!("{}/health", base_url(host, *port));
                s.spawn(move || {
                    let r = prober.get(&url, None);
                    ProbeResult {
                        name: name.clone(),
                        http_status: r.as_ref().ok().map(|r| r.status),
                        latency_ms: r.as_ref().ok().map(|r| r.latency.as_millis() as u64),
                        error: r.err().map(|e| e.to_string()),
                        url,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(models)
            .map(|(h, (name, port))| {
                h.join().unwrap_or_else(|_| ProbeResult {
                    name: name.clone(),
                    url: format!("{}/health", base_url(host, *port)),
                    http_status: None,
                    latency_ms: None,
                    error: Some("probe thread panicked".into()),
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Instant;

    fn serve(reply: &'static [u8], delay: Duration) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = s.write_all(reply);
            }
        });
        port
    }

    #[test]
    fn probes_run_in_parallel_and_classify_answers() {
        let ok = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        );
        let dead = serve(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        );
        let slow1 = serve(b"HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(3));
        let slow2 = serve(b"HTTP/1.1 200 OK\r\n\r\n", Duration::from_secs(3));
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let models: Vec<(String, u16)> = [
            ("a", ok),
            ("b", dead),
            ("c", slow1),
            ("d", slow2),
            ("e", closed),
        ]
        .iter()
        .map(|(n, p)| (n.to_string(), *p))
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
        assert_eq!(
            words,
            ["healthy", "http 503", "timeout", "timeout", "refused"]
        );
        assert!(r[0].healthy() && !r[1].healthy());
        assert_eq!(r[0].url, format!("http://127.0.0.1:{ok}/health"));
    }
}
