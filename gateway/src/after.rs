//! Work that must not delay an answer: the access log's `write(2)` and an engine connection's
//! `close(2)` (its FIN and the deregistration from epoll). Both used to run before the
//! client's `writev`: hyper's engine-connection driver closes the socket as soon as the
//! engine's answer is read, and the body's end runs the access log before hyper flushes what
//! it has buffered. nginx writes to the client first; so does the gateway now.
//!
//! [`after_answer`] queues the work on its thread's queue and, unless one is queued already, a
//! task that runs that queue on the calling worker's runtime, behind the connection task that
//! is writing the answer (a single-threaded runtime runs its tasks in order), so it runs on the
//! same thread right after that `writev`. The work also runs when
//! the task is dropped unpolled (the runtime shutting down after a drain): no access-log line
//! is lost.

use std::sync::{Arc, Mutex};

type Work = Box<dyn FnOnce() + Send>;

/// The work a thread has queued, and whether a task to run it is queued too.
#[derive(Default)]
struct Queue {
    work: Vec<Work>,
    scheduled: bool,
}

thread_local! {
    /// One queue per worker thread: a request's log line and its engine connection's close
    /// share one task, and under load so do other requests' (one task spawn per batch instead
    /// of two per request).
    static QUEUE: Arc<Mutex<Queue>> = Arc::default();
}

/// Runs its queue's work when dropped, polled or not.
struct RunOnDrop(Arc<Mutex<Queue>>);

impl Drop for RunOnDrop {
    fn drop(&mut self) {
        let mut work = {
            let mut q = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Work queued from here on gets a task of its own.
            q.scheduled = false;
            std::mem::take(&mut q.work)
        };
        for w in work.drain(..) {
            w();
        }
        let mut q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.work.is_empty() {
            // Keep the allocation for the next batch.
            q.work = work;
        }
    }
}

/// Run `f` on this thread once the running task has yielded; at once outside a runtime.
pub fn after_answer(f: impl FnOnce() + Send + 'static) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return f();
    };
    QUEUE.with(|queue| {
        let mut q = queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        q.work.push(Box::new(f));
        if !q.scheduled {
            q.scheduled = true;
            drop(q);
            let run = RunOnDrop(Arc::clone(queue));
            rt.spawn(async move { drop(run) });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn it_runs_after_the_task_that_asked_and_on_a_shutdown_too() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let o = Arc::clone(&order);
        rt.block_on(async move {
            let (o2, o3) = (Arc::clone(&o), Arc::clone(&o));
            after_answer(move || o2.lock().unwrap().push("after"));
            after_answer(move || o3.lock().unwrap().push("after too"));
            let tasks = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            assert_eq!(tasks, 1, "one task runs both");
            o.lock().unwrap().push("answer written");
            tokio::task::yield_now().await;
        });
        assert_eq!(
            *order.lock().unwrap(),
            ["answer written", "after", "after too"]
        );
        // Queued and never polled: the runtime's shutdown still runs it.
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        rt.block_on(async move { after_answer(move || _ = r.fetch_add(1, Ordering::SeqCst)) });
        assert_eq!(ran.load(Ordering::SeqCst), 0, "not before the task yields");
        drop(rt);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        // Outside a runtime: at once.
        let r = Arc::clone(&ran);
        after_answer(move || _ = r.fetch_add(1, Ordering::SeqCst));
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }
}
