//! Work that must not delay an answer: the access log's `write(2)` and an engine connection's
//! `close(2)` (its FIN and the deregistration from epoll). Both used to run before the
//! client's `writev`: hyper's engine-connection driver closes the socket as soon as the
//! engine's answer is read, and the body's end runs the access log before hyper flushes what
//! it has buffered. nginx writes to the client first; so does the gateway now.
//!
//! [`after_answer`] queues the work as a task on the calling worker's runtime, behind the
//! connection task that is writing the answer (a single-threaded runtime runs its queue in
//! order), so it runs on the same thread right after that `writev`. The work also runs when
//! the task is dropped unpolled (the runtime shutting down after a drain): no access-log line
//! is lost.

/// Runs its work when dropped, polled or not.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Run `f` on this thread once the running task has yielded; at once outside a runtime.
pub fn after_answer(f: impl FnOnce() + Send + 'static) {
    let work = OnDrop(Some(f));
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move { drop(work) });
        }
        Err(_) => drop(work),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn it_runs_after_the_task_that_asked_and_on_a_shutdown_too() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let o = Arc::clone(&order);
        rt.block_on(async move {
            let o2 = Arc::clone(&o);
            after_answer(move || o2.lock().unwrap().push("after"));
            o.lock().unwrap().push("answer written");
            tokio::task::yield_now().await;
        });
        assert_eq!(*order.lock().unwrap(), ["answer written", "after"]);
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
