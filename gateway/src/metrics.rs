//! The gateway's Prometheus metrics (`GET /metrics`): requests by model and status, a latency
//! histogram per model, in flight and queued per model, upstream errors by kind, open client
//! connections. Labels are config names only (unknown models count as `model="-"`), so a
//! client cannot grow the label set.

use crate::routes::Routes;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket bounds, seconds.
pub const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Default, Clone)]
struct Hist {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Kinds of upstream failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum UpstreamError {
    Connect,
    Timeout,
    Protocol,
}

impl UpstreamError {
    fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Protocol => "protocol",
        }
    }
}

#[derive(Default)]
struct Inner {
    /// model -> status -> count (a model's name is allocated once, not per request).
    requests: BTreeMap<String, BTreeMap<u16, u64>>,
    latency: BTreeMap<String, Hist>,
    upstream: BTreeMap<(String, UpstreamError), u64>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    pub connections: AtomicI64,
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// One finished request.
    pub fn request(&self, model: &str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let mut g = self.inner.lock().expect("not poisoned");
        match g.requests.get_mut(model) {
            Some(m) => *m.entry(status).or_default() += 1,
            None => {
                g.requests
                    .insert(model.to_string(), BTreeMap::from([(status, 1)]));
            }
        }
        if !g.latency.contains_key(model) {
            g.latency.insert(model.to_string(), Hist::default());
        }
        let h = g.latency.get_mut(model).expect("just made");
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn upstream_error(&self, model: &str, kind: UpstreamError) {
        let mut g = self.inner.lock().expect("not poisoned");
        *g.upstream.entry((model.to_string(), kind)).or_default() += 1;
    }

    /// The exposition text.
    pub fn render(&self, routes: &Routes) -> String {
        let g = self.inner.lock().expect("not poisoned");
        let mut o = String::new();
        o.push_str("# HELP citadel_gateway_requests_total Requests answered, by model and HTTP status.\n# TYPE citadel_gateway_requests_total counter\n");
        for (m, by_status) in &g.requests {
            let m = esc(m);
            for (s, n) in by_status {
                let _ = writeln!(
                    o,
                    "citadel_gateway_requests_total{{model=\"{m}\",code=\"{s}\"}} {n}"
                );
            }
        }
        o.push_str("# HELP citadel_gateway_request_duration_seconds Time from request to the end of the response body.\n# TYPE citadel_gateway_request_duration_seconds histogram\n");
        for (m, h) in &g.latency {
            let m = esc(m);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "citadel_gateway_request_duration_seconds_bucket{{model=\"{m}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "citadel_gateway_request_duration_seconds_bucket{{model=\"{m}\",le=\"+Inf\"}} {}\ncitadel_gateway_request_duration_seconds_sum{{model=\"{m}\"}} {}\ncitadel_gateway_request_duration_seconds_count{{model=\"{m}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        o.push_str("# HELP citadel_gateway_upstream_errors_total Failed requests to an engine, by kind (connect, timeout, protocol).\n# TYPE citadel_gateway_upstream_errors_total counter\n");
        for ((m, k), n) in &g.upstream {
            let _ = writeln!(
                o,
                "citadel_gateway_upstream_errors_total{{model=\"{}\",kind=\"{}\"}} {n}",
                esc(m),
                k.as_str()
            );
        }
        drop(g);
        o.push_str("# HELP citadel_gateway_in_flight Requests at the engine now.\n# TYPE citadel_gateway_in_flight gauge\n");
        for b in &routes.backends {
            let _ = writeln!(
                o,
                "citadel_gateway_in_flight{{model=\"{}\"}} {}",
                esc(&b.name),
                b.limiter.running()
            );
        }
        o.push_str("# HELP citadel_gateway_queued Requests waiting for a slot now.\n# TYPE citadel_gateway_queued gauge\n");
        for b in &routes.backends {
            let _ = writeln!(
                o,
                "citadel_gateway_queued{{model=\"{}\"}} {}",
                esc(&b.name),
                b.limiter.waiting()
            );
        }
        let _ = writeln!(
            o,
            "# HELP citadel_gateway_connections Client connections open now.\n# TYPE citadel_gateway_connections gauge\ncitadel_gateway_connections {}",
            self.connections.load(Ordering::Relaxed)
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.request("phi3", 200, Duration::from_millis(20));
        m.request("phi3", 200, Duration::from_millis(700));
        m.request("-", 404, Duration::from_millis(1));
        m.upstream_error("phi3", UpstreamError::Connect);
        let cfg = citadel_common::config::Config::parse_with(
            "[models.phi3]\npath = \"p\"\nport = 11403\ngpus = [0]\n",
            std::path::Path::new("/c"),
            &Default::default(),
        )
        .unwrap();
        let t = m.render(&Routes::build(&cfg, None));
        for want in [
            "citadel_gateway_requests_total{model=\"phi3\",code=\"200\"} 2",
            "citadel_gateway_requests_total{model=\"-\",code=\"404\"} 1",
            "citadel_gateway_request_duration_seconds_bucket{model=\"phi3\",le=\"0.025\"} 1",
            "citadel_gateway_request_duration_seconds_bucket{model=\"phi3\",le=\"1\"} 2",
            "citadel_gateway_request_duration_seconds_count{model=\"phi3\"} 2",
            "citadel_gateway_upstream_errors_total{model=\"phi3\",kind=\"connect\"} 1",
            "citadel_gateway_in_flight{model=\"phi3\"} 0",
            "citadel_gateway_queued{model=\"phi3\"} 0",
        ] {
            assert!(t.contains(want), "missing {want}:\n{t}");
        }
    }
}
