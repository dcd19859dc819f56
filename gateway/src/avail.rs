//! Is a model serving? Two views, the newer wins:
//! - the monitor's state file (`[monitor] state_file`, re-read when it changes, size-capped):
//!   starting, restarting, stopped, failed, gave up and disabled models get a 503 with the
//!   monitor's reason and never see a request; healthy and failing ones are routed (failing is
//!   not yet proof of a broken engine, and the monitor itself restarts a really broken one);
//! - the gateway's own passive view: a refused connection marks the engine down at once, for
//!   [`DOWN_HOLD`], after which one request may try again.
//!
//! Both are re-read every half second and on SIGHUP ([`Availability::reread`]): a rollout
//! removes its record once the monitor says the main instance serves, then reloads the
//! gateway, which must then have that word too, not the one of half a second ago.
//!
//! A state file older than [`stale_after`] is ignored (the monitor is not running): then only
//! the passive view counts.
//!
//! A rollout in progress (`citadel-service rollout`: the records in `runtime_dir/rollout`,
//! [`citadel_common::rollout`], re-read on every refresh and on SIGHUP) comes first: in the
//! switched phase (and while restoring the main instance, if there is a surge one) the model is
//! routed to its surge instance's port (the monitor's word, which is about the main instance
//! restarting, is not asked; the passive view still counts); while replacing (or restoring
//! without a surge instance) it gets a 503 "rolling out" with `Retry-After`
//! [`ROLLOUT_RETRY_SECS`].

use citadel_common::health::{HealthState, ModelState};
use citadel_common::rollout::{Phase, Record};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a refused connection keeps an engine marked down before the next try.
pub const DOWN_HOLD: Duration = Duration::from_secs(1);

/// The `Retry-After` of a model being replaced by a rollout (replace mode).
pub const ROLLOUT_RETRY_SECS: u64 = 5;

/// Why a model gets a 503, and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub reason: String,
    pub retry_after_secs: u64,
}

/// The monitor's word on one model.
#[derive(Debug, Clone, PartialEq)]
struct Word {
    state: ModelState,
    reason: Option<String>,
}

#[derive(Debug, Default)]
struct FileView {
    /// (mtime, len) of the file last read.
    stamp: Option<(SystemTime, u64)>,
    updated_unix: u64,
    models: HashMap<String, Word>,
}

/// Both views, shared by every request.
#[derive(Debug)]
pub struct Availability {
    state_file: PathBuf,
    interval_secs: u64,
    file: RwLock<Arc<FileView>>,
    down: Mutex<HashMap<String, (Instant, String)>>,
    /// `runtime_dir`, when the rollout records are followed.
    runtime_dir: Option<PathBuf>,
    rollouts: RwLock<Arc<HashMap<String, Record>>>,
    /// Held by [`Availability::reread`]: two re-reads at once (the follow task's and a
    /// SIGHUP's) could otherwise store the older view last.
    rereading: Mutex<()>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A state file older than this is the word of a monitor that no longer runs.
pub fn stale_after(interval_secs: u64) -> u64 {
    (interval_secs * 3).max(30)
}

/// The monitor's states that keep requests away, with the client's retry hint.
fn refuses(state: ModelState, interval_secs: u64) -> Option<u64> {
    match state {
        ModelState::Healthy | ModelState::Failing => None,
        ModelState::Starting | ModelState::Restarting => Some(interval_secs.max(1)),
        ModelState::GaveUp | ModelState::Stopped | ModelState::Failed | ModelState::Disabled => {
            Some(60)
        }
    }
}

/// The pure decision, from what both views say.
fn decide(
    word: Option<&Word>,
    file_fresh: bool,
    down: Option<(Duration, &str)>,
    interval_secs: u64,
) -> Result<(), Unavailable> {
    if let Some((age, why)) = down {
        if age < DOWN_HOLD {
            return Err(Unavailable {
                reason: why.to_string(),
                retry_after_secs: 1,
            });
        }
    }
    match word {
        Some(w) if file_fresh => match refuses(w.state, interval_secs) {
            None => Ok(()),
            Some(retry_after_secs) => Err(Unavailable {
                reason: match &w.reason {
                    Some(r) => format!("{}: {r}", w.state.as_str()),
                    None => w.state.as_str().to_string(),
                },
                retry_after_secs,
            }),
        },
        _ => Ok(()),
    }
}

impl Availability {
    pub fn new(state_file: &Path, interval_secs: u64) -> Availability {
        let a = Availability {
            state_file: state_file.to_path_buf(),
            interval_secs,
            file: RwLock::new(Arc::new(FileView::default())),
            down: Mutex::new(HashMap::new()),
            runtime_dir: None,
            rollouts: RwLock::new(Arc::new(HashMap::new())),
            rereading: Mutex::new(()),
        };
        a.refresh();
        a
    }

    /// Also follow the rollout records under `runtime_dir`.
    pub fn with_rollouts(mut self, runtime_dir: &Path) -> Availability {
        self.runtime_dir = Some(runtime_dir.to_path_buf());
        self.refresh_rollouts();
        self
    }

    /// Re-read the state file (if it changed) and the rollout records, one re-read at a time.
    pub fn reread(&self) {
        let _one = self.rereading.lock().expect("not poisoned");
        self.refresh();
        self.refresh_rollouts();
    }

    /// Re-read the rollout records (a directory listing; no records: nothing else).
    pub fn refresh_rollouts(&self) {
        let Some(dir) = &self.runtime_dir else {
            return;
        };
        let (records, bad) = Record::read_all(dir);
        for b in bad {
            log::warn!("rollout record ignored: {}", b.escape_debug());
        }
        let new: HashMap<String, Record> =
            records.into_iter().map(|r| (r.name.clone(), r)).collect();
        let mut cur = self.rollouts.write().expect("not poisoned");
        if **cur != new {
            for r in new.values() {
                if cur.get(&r.name).map(|o| o.phase) != Some(r.phase) {
                    log::info!("rollout of {}: {}", r.name, r.phase.as_str());
                }
            }
            for n in cur.keys().filter(|n| !new.contains_key(*n)) {
                log::info!("rollout of {n}: ended, back to its own port");
            }
            *cur = Arc::new(new);
        }
    }

    /// Where a request for model `name` goes now: `Ok(None)` its own port, `Ok(Some(port))`
    /// the surge instance of a rollout that has switched, or a 503.
    pub fn route(&self, name: &str) -> Result<Option<u16>, Unavailable> {
        let rollout = self
            .rollouts
            .read()
            .expect("not poisoned")
            .get(name)
            .map(|r| (r.phase, r.surge_port));
        match rollout {
            Some((Phase::Replacing, _)) => Err(Unavailable {
                reason: "rolling out: the new version is replacing the old one".into(),
                retry_after_secs: ROLLOUT_RETRY_SECS,
            }),
            Some((Phase::Restoring, None)) => Err(Unavailable {
                reason: "rolling out: the old version is being restored".into(),
                retry_after_secs: ROLLOUT_RETRY_SECS,
            }),
            Some((Phase::Switched | Phase::Restoring, Some(port))) => {
                let down = self.down.lock().expect("not poisoned");
                let d = down.get(name).map(|(t, why)| (t.elapsed(), why.as_str()));
                decide(None, false, d, self.interval_secs).map(|_| Some(port))
            }
            _ => self.check(name).map(|_| None),
        }
    }

    /// Re-read the state file if it changed (cheap: one stat otherwise).
    pub fn refresh(&self) {
        let stamp = std::fs::metadata(&self.state_file)
            .ok()
            .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len()));
        let current = Arc::clone(&self.file.read().expect("not poisoned"));
        if stamp == current.stamp {
            return;
        }
        let mut view = FileView {
            stamp,
            ..FileView::default()
        };
        match HealthState::read(&self.state_file) {
            Ok(Some(s)) => {
                view.updated_unix = s.updated_unix;
                for m in s.models {
                    view.models.insert(
                        m.name,
                        Word {
                            state: m.state,
                            reason: m.reason,
                        },
                    );
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!("monitor state ignored: {}", e.escape_debug()),
        }
        *self.file.write().expect("not poisoned") = Arc::new(view);
    }

    /// May a request go to model `name` now?
    pub fn check(&self, name: &str) -> Result<(), Unavailable> {
        let file = Arc::clone(&self.file.read().expect("not poisoned"));
        let fresh = now_unix().saturating_sub(file.updated_unix) <= stale_after(self.interval_secs);
        let down = self.down.lock().expect("not poisoned");
        let d = down.get(name).map(|(t, why)| (t.elapsed(), why.as_str()));
        decide(file.models.get(name), fresh, d, self.interval_secs)
    }

    /// A connection to the engine was refused (or failed to connect).
    pub fn mark_down(&self, name: &str, why: String) {
        self.down
            .lock()
            .expect("not poisoned")
            .insert(name.to_string(), (Instant::now(), why));
    }

    /// The engine answered: forget any passive mark.
    pub fn mark_up(&self, name: &str) {
        let mut d = self.down.lock().expect("not poisoned");
        if !d.is_empty() {
            d.remove(name);
        }
    }

    /// Refresh the file view every `every`, forever (a background task).
    pub async fn follow(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let me = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || me.reread()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use citadel_common::health::{testing, ModelHealth};

    fn word(state: ModelState, reason: Option<&str>) -> Word {
        Word {
            state,
            reason: reason.map(str::to_string),
        }
    }

    #[test]
    fn the_decision() {
        let loading = word(ModelState::Starting, Some("unit activating: loading"));
        let e = decide(Some(&loading), true, None, 10).unwrap_err();
        assert_eq!(e.reason, "starting: unit activating: loading");
        assert_eq!(e.retry_after_secs, 10);
        // A stale file is the word of a dead monitor: ignored.
        assert!(decide(Some(&loading), false, None, 10).is_ok());
        assert!(decide(Some(&word(ModelState::Healthy, None)), true, None, 10).is_ok());
        assert!(decide(Some(&word(ModelState::Failing, Some("x"))), true, None, 10).is_ok());
        let stopped = decide(Some(&word(ModelState::Stopped, None)), true, None, 10);
        assert_eq!(stopped.unwrap_err().retry_after_secs, 60);
        // A fresh passive mark wins over a healthy word; an old one lets a request try.
        let refused = Some((Duration::from_millis(10), "connection refused"));
        let e = decide(Some(&word(ModelState::Healthy, None)), true, refused, 10).unwrap_err();
        assert_eq!(
            (e.reason.as_str(), e.retry_after_secs),
            ("connection refused", 1)
        );
        assert!(decide(None, true, Some((DOWN_HOLD, "x")), 10).is_ok());
        assert!(decide(None, true, None, 10).is_ok());
    }

    #[test]
    fn follows_the_state_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("health.json");
        let a = Availability::new(&p, 10);
        assert!(a.check("m").is_ok(), "no file: passive view only");
        let mut st = testing::state(vec![ModelHealth {
            reason: Some("hung".into()),
            ..testing::model("m", ModelState::Restarting)
        }]);
        st.write(&p).unwrap();
        a.refresh();
        assert_eq!(a.check("m").unwrap_err().reason, "restarting: hung");
        st.models[0].state = ModelState::Healthy;
        st.models[0].reason = None;
        st.write(&p).unwrap();
        a.refresh();
        assert!(a.check("m").is_ok());
        a.mark_down("m", "refused".into());
        assert!(a.check("m").is_err());
        a.mark_up("m");
        assert!(a.check("m").is_ok());
    }

    #[test]
    fn follows_the_rollout_records() {
        let d = tempfile::tempdir().unwrap();
        let a = Availability::new(&d.path().join("health.json"), 10).with_rollouts(d.path());
        assert_eq!(a.route("m"), Ok(None));
        let mut r =
            citadel_common::rollout::testing::record("m", Phase::SurgeStarting, Some(11450));
        r.write(d.path()).unwrap();
        a.refresh_rollouts();
        assert_eq!(a.route("m"), Ok(None), "surge starting: the old one serves");
        r.phase = Phase::Switched;
        r.write(d.path()).unwrap();
        a.refresh_rollouts();
        assert_eq!(a.route("m"), Ok(Some(11450)));
        assert_eq!(a.route("other"), Ok(None));
        a.mark_down("m", "refused".into());
        assert!(a.route("m").is_err(), "the passive view still counts");
        a.mark_up("m");
        r.phase = Phase::Replacing;
        r.write(d.path()).unwrap();
        a.refresh_rollouts();
        let e = a.route("m").unwrap_err();
        assert_eq!(e.retry_after_secs, ROLLOUT_RETRY_SECS);
        assert!(e.reason.starts_with("rolling out"), "{}", e.reason);
        r.phase = Phase::Restoring;
        r.write(d.path()).unwrap();
        a.refresh_rollouts();
        assert_eq!(
            a.route("m"),
            Ok(Some(11450)),
            "restoring: the surge serves meanwhile"
        );
        r.surge_port = None;
        r.write(d.path()).unwrap();
        a.refresh_rollouts();
        assert_eq!(
            a.route("m").unwrap_err().retry_after_secs,
            ROLLOUT_RETRY_SECS
        );
        Record::remove(d.path(), "m").unwrap();
        a.refresh_rollouts();
        assert_eq!(a.route("m"), Ok(None));
    }
}
