//! The restart budget: at most `restart_budget` monitor restarts per model within a sliding
//! window of `restart_window_secs`. Restarts older than the window age out. An operator taking
//! over (see [`crate::decide`]) clears it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    limit: u32,
    window: Duration,
    /// When the restarts inside the window were issued, oldest first.
    issued: VecDeque<Instant>,
}

impl Budget {
    pub fn new(limit: u32, window: Duration) -> Budget {
        Budget {
            limit,
            window,
            issued: VecDeque::new(),
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&t) = self.issued.front() {
            if now.saturating_duration_since(t) >= self.window {
                self.issued.pop_front();
            } else {
                break;
            }
        }
    }

    /// Restarts issued within the window ending at `now`.
    pub fn used(&mut self, now: Instant) -> u32 {
        self.prune(now);
        self.issued.len() as u32
    }

    /// Take one restart from the budget; `false` (and nothing taken) when it is spent.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.used(now) >= self.limit {
            return false;
        }
        self.issued.push_back(now);
        true
    }

    /// Give back the last restart taken (the restart could not be issued).
    pub fn give_back(&mut self) {
        self.issued.pop_back();
    }

    /// Forget every restart (an operator took over).
    pub fn clear(&mut self) {
        self.issued.clear();
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_limit_in_the_window_then_they_age_out() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = Budget::new(3, s(100));
        assert!(b.take(t0));
        assert!(b.take(t0 + s(10)));
        assert!(b.take(t0 + s(20)));
        assert!(!b.take(t0 + s(30)));
        assert_eq!(b.used(t0 + s(30)), 3);
        // The first one ages out at t0 + 100.
        assert!(!b.take(t0 + s(99)));
        assert!(b.take(t0 + s(100)));
        assert!(!b.take(t0 + s(101)));
        b.clear();
        assert_eq!(b.used(t0 + s(101)), 0);
    }

    #[test]
    fn a_zero_budget_never_restarts_and_give_back_returns_one() {
        let t0 = Instant::now();
        let mut b = Budget::new(0, Duration::from_secs(10));
        assert!(!b.take(t0));
        let mut b = Budget::new(1, Duration::from_secs(10));
        assert!(b.take(t0));
        b.give_back();
        assert!(b.take(t0));
    }
}
