//! The probes of one sweep. Every model's `/health` and `/metrics` are probed in threads of
//! their own (side by side, each with the probe timeout, bodies bounded, each its own verdict:
//! only `/health` decides liveness here, a bad `/metrics` only costs the stall detector that
//! sweep) by common's one [`probe::probe_all_or_stop`]: the sweep collects the answers
//! until a deadline of one probe timeout plus a small margin, so a hung server never delays the
//! others, and stops waiting at once when asked to stop (SIGTERM).
//!
//! The threads are detached rather than scoped: a scope would have to join them, which is what
//! an abandoned sweep must not wait for. Each thread ends on its own within its timeout.
//!
//! Deep probes (one-token completions) run in their own threads too, one per model at most,
//! and their outcome is picked up by a later sweep.

use crate::decide::{Answer, DeepOutcome};
use crate::metrics::{self, Metrics};
use citadel_common::probe::{self, Get, ProbeError, Prober, Reply};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// `/health` answers are empty; anything bigger is cut here.
pub const HEALTH_MAX_BODY: u64 = 4 * 1024;
/// vLLM's `/metrics` page is tens of KiB (histograms); read up to this much.
pub const METRICS_MAX_BODY: u64 = 1024 * 1024;
/// Completion answers are small JSON.
pub const DEEP_MAX_BODY: u64 = 64 * 1024;
/// How long past the probe timeout the sweep waits for a probe thread's answer, and how often
/// a waiting sweep looks at the stop flag (common's).
pub use citadel_common::probe::{MARGIN, STOP_POLL};

/// What one model's probe thread got.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub health: Result<Answer, ProbeError>,
    pub metrics: Option<Metrics>,
}

/// The two metrics the hang detector needs, from a `/metrics` reply.
fn metrics_of(r: Result<Reply, ProbeError>) -> Option<Metrics> {
    let r = r.ok()?;
    (r.status == 200).then(|| metrics::parse(&r.body)).flatten()
}

/// Read `/metrics` and parse the two metrics the hang detector needs.
pub fn read_metrics(base_url: &str, timeout: Duration) -> Option<Metrics> {
    metrics_of(
        Prober::with_max_body(timeout, METRICS_MAX_BODY).get(&format!("{base_url}/metrics"), None),
    )
}

/// Probe every `(index, base_url)` in parallel; answers by index. `/health` and `/metrics`
/// are separate probes, each in its own thread with its own verdict: a `/metrics` that hangs
/// or answers garbage leaves that model's `metrics` at `None` (the stall detector sits out the
/// sweep) and never touches the `/health` answer that arrived in time. Waits at most
/// `timeout + MARGIN`; a `/health` that has not answered by then counts as timed out. `None`
/// when `stop` was raised while waiting (the sweep is abandoned).
pub fn probe_all(
    targets: &[(usize, String)],
    timeout: Duration,
    stop: &AtomicBool,
) -> Option<Vec<(usize, ProbeResult)>> {
    let health = Prober::with_max_body(timeout, HEALTH_MAX_BODY);
    let metrics = Prober::with_max_body(timeout, METRICS_MAX_BODY);
    let gets = targets
        .iter()
        .flat_map(|(_, base)| {
            [
                Get {
                    prober: health.clone(),
                    url: format!("{base}/health"),
                },
                Get {
                    prober: metrics.clone(),
                    url: format!("{base}/metrics"),
                },
            ]
        })
        .collect();
    let mut replies = probe::probe_all_or_stop(gets, stop)?.into_iter();
    let out = targets
        .iter()
        .map(|(i, _)| {
            let health = replies.next().unwrap_or(Err(ProbeError::Timeout));
            let metrics = replies.next().and_then(metrics_of);
            (
                *i,
                ProbeResult {
                    health: health.map(|r| r.answer()),
                    metrics,
                },
            )
        })
        .collect();
    Some(out)
}

/// Start a deep probe in its own thread: `/metrics`, then `POST /v1/completions`
/// `{"model": served_name, "prompt": "ping", "max_tokens": 1}` with the API key and the deep
/// timeout, then `/metrics` again. The outcome arrives on the returned channel.
pub fn spawn_deep(
    base_url: &str,
    served_name: &str,
    api_key: Option<&str>,
    deep_timeout: Duration,
    probe_timeout: Duration,
) -> Receiver<DeepOutcome> {
    let (tx, rx) = mpsc::channel();
    let base = base_url.to_string();
    let body =
        serde_json::json!({"model": served_name, "prompt": "ping", "max_tokens": 1}).to_string();
    let key = api_key.map(str::to_string);
    let spawned = std::thread::Builder::new()
        .name("deep-probe".into())
        .spawn({
            let tx = tx.clone();
            move || {
                let before = read_metrics(&base, probe_timeout);
                let result = Prober::with_max_body(deep_timeout, DEEP_MAX_BODY)
                    .post_json(&format!("{base}/v1/completions"), &body, key.as_deref())
                    .map(|r| r.answer());
                let after = read_metrics(&base, probe_timeout);
                let _ = tx.send(DeepOutcome {
                    result,
                    before,
                    after,
                    timeout: deep_timeout,
                });
            }
        });
    if let Err(e) = spawned {
        let _ = tx.send(DeepOutcome {
            result: Err(ProbeError::Other(format!(
                "cannot start deep probe thread: {e}"
            ))),
            before: None,
            after: None,
            timeout: deep_timeout,
        });
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A server that answers every connection with `reply` after `delay`; its base URL.
    fn server(reply: &'static [u8], delay: Duration) -> String {
        let port = citadel_common::probe::testing::serve_each(reply, delay);
        format!("http://127.0.0.1:{port}")
    }

    #[test]
    fn probes_run_in_parallel_and_a_hung_one_costs_one_timeout() {
        let ok = server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Duration::ZERO,
        );
        let hung = server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            Duration::from_secs(30),
        );
        let targets: Vec<(usize, String)> = (0..6)
            .map(|i| (i, if i % 3 == 0 { hung.clone() } else { ok.clone() }))
            .collect();
        let t0 = Instant::now();
        let stop = AtomicBool::new(false);
        let mut r = probe_all(&targets, Duration::from_millis(500), &stop).unwrap();
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(500) + MARGIN + Duration::from_millis(300),
            "{took:?}"
        );
        r.sort_by_key(|(i, _)| *i);
        assert_eq!(r.len(), 6);
        for (i, p) in r {
            if i % 3 == 0 {
                assert_eq!(p.health, Err(ProbeError::Timeout), "{i}");
            } else {
                assert_eq!(p.health.unwrap().status, 200, "{i}");
            }
        }
    }

    #[test]
    fn a_raised_stop_flag_abandons_the_wait() {
        let hung = server(b"", Duration::from_secs(30));
        let stop = AtomicBool::new(true);
        let t0 = Instant::now();
        assert!(probe_all(&[(0, hung)], Duration::from_secs(5), &stop).is_none());
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
