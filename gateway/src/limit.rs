//! Per-model concurrency: at most `limit` requests at the engine, at most `queue` more
//! waiting (429 beyond that), each waiting at most the queue timeout (then 503). A slow or
//! hung model fills only its own slots and queue: the others never wait for it.

use crate::within::within;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
struct Shared {
    sem: Arc<Semaphore>,
    limit: u32,
    queue: u32,
    waiting: AtomicU32,
    running: AtomicU32,
}

/// One model's slots and queue. Cloning shares them.
#[derive(Debug, Clone)]
pub struct Limiter {
    s: Arc<Shared>,
    timeout: Duration,
}

/// Why a request got no slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: 429.
    QueueFull { limit: u32, queue: u32 },
    /// Waited the whole queue timeout: 503.
    Timeout(Duration),
}

/// A slot at the engine; given back when dropped (when the response body has been sent).
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    s: Arc<Shared>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.s.running.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Limiter {
    pub fn new(limit: u32, queue: u32, timeout: Duration) -> Limiter {
        Limiter {
            s: Arc::new(Shared {
                sem: Arc::new(Semaphore::new(limit as usize)),
                limit,
                queue,
                waiting: AtomicU32::new(0),
                running: AtomicU32::new(0),
            }),
            timeout,
        }
    }

    /// The same slots when the limit and queue are unchanged (a reload keeps them).
    pub fn reuse(&self, limit: u32, queue: u32) -> Option<Limiter> {
        (self.s.limit == limit && self.s.queue == queue).then(|| self.clone())
    }

    pub fn shares_with(&self, other: &Limiter) -> bool {
        Arc::ptr_eq(&self.s, &other.s)
    }

    pub fn limit(&self) -> u32 {
        self.s.limit
    }

    /// Requests at the engine now.
    pub fn running(&self) -> u32 {
        self.s.running.load(Ordering::SeqCst)
    }

    /// Requests waiting for a slot now.
    pub fn waiting(&self) -> u32 {
        self.s.waiting.load(Ordering::SeqCst)
    }

    /// A slot now, or after waiting in the queue.
    pub async fn acquire(&self) -> Result<Slot, Refused> {
        let slot = |p| {
            self.s.running.fetch_add(1, Ordering::SeqCst);
            Slot {
                _permit: p,
                s: Arc::clone(&self.s),
            }
        };
        if let Ok(p) = Arc::clone(&self.s.sem).try_acquire_owned() {
            return Ok(slot(p));
        }
        if self.s.waiting.fetch_add(1, Ordering::SeqCst) >= self.s.queue {
            self.s.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused::QueueFull {
                limit: self.s.limit,
                queue: self.s.queue,
            });
        }
        let _w = Waiting(&self.s.waiting);
        let acquire = std::pin::pin!(Arc::clone(&self.s.sem).acquire_owned());
        match within(self.timeout, acquire).await {
            Some(Ok(p)) => Ok(slot(p)),
            // The semaphore is never closed; treat it like a timeout all the same.
            Some(Err(_)) | None => Err(Refused::Timeout(self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limit_then_queue_then_full() {
        let l = Limiter::new(1, 1, Duration::from_millis(200));
        let a = l.acquire().await.unwrap();
        assert_eq!(l.running(), 1);
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
        while l.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            l.acquire().await.unwrap_err(),
            Refused::QueueFull { limit: 1, queue: 1 }
        );
        drop(a);
        waiter.await.unwrap().unwrap();
        assert_eq!((l.running(), l.waiting()), (0, 0));
    }

    #[tokio::test]
    async fn the_queue_times_out() {
        let l = Limiter::new(1, 4, Duration::from_millis(50));
        let _a = l.acquire().await.unwrap();
        assert_eq!(
            l.acquire().await.unwrap_err(),
            Refused::Timeout(Duration::from_millis(50))
        );
        assert_eq!(l.waiting(), 0);
    }
}
