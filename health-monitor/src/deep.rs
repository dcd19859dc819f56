//! Deep-probe scheduling: one one-token completion per model in its own thread, due every
//! `deep_probe_interval_secs` (at once again while the last one failed); `--once` waits for
//! the ones it started.

use crate::decide::DeepOutcome;
use crate::monitor::Monitor;
use crate::sweep;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

/// One model's deep probe: the one in flight, and when the next is due.
pub(crate) struct DeepSlot {
    pub(crate) rx: Option<Receiver<DeepOutcome>>,
    pub(crate) next_due: Option<Instant>,
}

impl Monitor {
    pub(crate) fn start_deep(&mut self, i: usize, now: Instant) {
        let t = &self.targets[i];
        let rx = sweep::spawn_deep(
            &t.base_url,
            &t.served_model_name,
            self.api_key.as_deref(),
            self.settings.deep_timeout,
            self.settings.probe_timeout,
        );
        let next_due = self.settings.deep_interval.map(|d| now + d);
        self.deep.insert(
            t.name.clone(),
            DeepSlot {
                rx: Some(rx),
                next_due,
            },
        );
    }

    /// Start a deep probe when one is due (or at once while the last one failed).
    pub(crate) fn schedule_deep(&mut self, i: usize, now: Instant, failing: bool) {
        if self.settings.deep_interval.is_none() {
            return;
        }
        let name = &self.targets[i].name;
        let due = match self.deep.get(name) {
            None => true,
            Some(s) if s.rx.is_some() => false,
            Some(s) => failing || s.next_due.map_or(true, |d| now >= d),
        };
        if due {
            self.start_deep(i, now);
        }
    }

    /// `--once`: wait for every deep probe started by this sweep. False when stopped.
    pub(crate) fn wait_deep(&mut self) -> bool {
        let deadline = Instant::now()
            + self.settings.deep_timeout
            + 2 * self.settings.probe_timeout
            + sweep::MARGIN;
        let mut done: BTreeMap<String, DeepOutcome> = BTreeMap::new();
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            let mut waiting = false;
            for (name, slot) in &mut self.deep {
                if let Some(rx) = &slot.rx {
                    match rx.try_recv() {
                        Ok(o) => {
                            done.insert(name.clone(), o);
                            slot.rx = None;
                        }
                        Err(TryRecvError::Empty) => waiting = true,
                        Err(TryRecvError::Disconnected) => slot.rx = None,
                    }
                }
            }
            if !waiting || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(sweep::STOP_POLL);
        }
        for (name, o) in done {
            let (tx, rx) = std::sync::mpsc::channel();
            let _ = tx.send(o);
            if let Some(slot) = self.deep.get_mut(&name) {
                slot.rx = Some(rx);
            }
        }
        true
    }

    /// A deep probe outcome that has arrived, if any.
    pub(crate) fn take_deep(&mut self, name: &str) -> Option<DeepOutcome> {
        let slot = self.deep.get_mut(name)?;
        let rx = slot.rx.as_ref()?;
        match rx.try_recv() {
            Ok(o) => {
                slot.rx = None;
                Some(o)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                slot.rx = None;
                None
            }
        }
    }
}
