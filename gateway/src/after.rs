//! Work that must not delay an answer: the access log's `write(2)` and an engine connection's
//! `close(2)` (its FIN and the deregistration from epoll). Both used to run before the
//! client's `writev`: hyper's engine connection ends, and is dropped, as soon as an
//! engine that closes has answered, and the body's end runs the access log before hyper flushes what
//! it has buffered. nginx writes to the client first; so does the gateway now.
//!
//! [`after_answer`] queues the work on its thread's queue. A client connection's task runs
//! under [`answering`], which runs that queue at the end of each of its polls, when hyper has
//! written what it could: no task is spawned for it. Work queued anywhere else (an idle
//! engine connection pruned) gets, unless one is queued already, a task that runs the queue on
//! the calling worker's runtime, behind the task that is running (a single-threaded runtime
//! runs its tasks in order). The work also runs when that task is dropped unpolled (the
//! runtime shutting down after a drain): no access-log line is lost.

use std::cell::Cell;
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
    /// run at the end of the connection task's poll; elsewhere, queued work shares one task
    /// per batch.
    static QUEUE: Arc<Mutex<Queue>> = Arc::default();
    /// An [`answering`] future is being polled on this thread: its end runs the queue.
    static ANSWERING: Cell<bool> = const { Cell::new(false) };
}

fn lock(q: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Run the work queued in `queue` until there is none.
fn run(queue: &Mutex<Queue>) {
    let mut work = std::mem::take(&mut lock(queue).work);
    while !work.is_empty() {
        for w in work.drain(..) {
            w();
        }
        let mut q = lock(queue);
        if q.work.is_empty() {
            // Keep the allocation for the next batch.
            q.work = work;
            return;
        }
        std::mem::swap(&mut q.work, &mut work);
    }
}

/// One poll, `poll`, with the work it queues ([`after_answer`]) run at its end: how a client
/// connection's task is polled, whose polls end once hyper has written the answer. (A poll
/// function, not a future wrapping the connection's: an `async` wrapper would hold the
/// connection's future twice, its argument and its pinned copy, in every connection's task.)
pub fn answering<T>(poll: impl FnOnce() -> T) -> T {
    let outer = ANSWERING.replace(true);
    let r = poll();
    ANSWERING.set(outer);
    if !outer {
        QUEUE.with(|q| run(q));
    }
    r
}

/// Runs its queue's work when dropped, polled or not.
struct RunOnDrop(Arc<Mutex<Queue>>);

impl Drop for RunOnDrop {
    fn drop(&mut self) {
        // Work queued from here on gets a task of its own.
        lock(&self.0).scheduled = false;
        run(&self.0);
    }
}

/// Run `f` on this thread once the running task's poll has ended (under [`answering`]) or
/// the task has yielded; at once outside a runtime.
pub fn after_answer(f: impl FnOnce() + Send + 'static) {
    if ANSWERING.get() {
        QUEUE.with(|queue| lock(queue).work.push(Box::new(f)));
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return f();
    };
    QUEUE.with(|queue| {
        let mut q = lock(queue);
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
    use std::future::Future;
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

    #[test]
    fn under_answering_it_runs_at_the_end_of_the_poll_that_asked_without_a_task() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let o = Arc::clone(&order);
        let polls = rt.block_on(async move {
            let mut f = std::pin::pin!(async move {
                let o2 = Arc::clone(&o);
                after_answer(move || o2.lock().unwrap().push("after"));
                let tasks = tokio::runtime::Handle::current()
                    .metrics()
                    .num_alive_tasks();
                o.lock().unwrap().push("answer written");
                tokio::task::yield_now().await;
                o.lock().unwrap().push("next poll");
                tasks
            });
            std::future::poll_fn(|cx| answering(|| f.as_mut().poll(cx))).await
        });
        assert_eq!(polls, 0, "no task spawned for it");
        assert_eq!(
            *order.lock().unwrap(),
            ["answer written", "after", "next poll"]
        );
    }
}
