//! The gateway's one way to give up waiting: [`within`], whose timer is armed only once the
//! future has had to wait (most never do: a small request's body comes with its head, a free
//! slot is taken at once, a loopback connect is done when `connect(2)` returns).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::time::Sleep;

/// `f`'s output, or `None` when it has not come within `limit` of the first time `f` had to
/// wait: the timer is armed only then (a small request's body comes with its head, and no
/// timer is set and cancelled for it). `f` is pinned by the caller: taken by value, it would be
/// held twice in the caller's future (the argument and its pinned copy), and a request's
/// future is allocated for every client connection.
pub async fn within<F: Future>(limit: Duration, mut f: Pin<&mut F>) -> Option<F::Output> {
    let mut sleep = std::pin::pin!(None::<Sleep>);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if sleep.is_none() {
            sleep.set(Some(tokio::time::sleep(limit)));
        }
        let armed = sleep.as_mut().as_pin_mut().expect("armed above");
        armed.poll(cx).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test]
    async fn within_gives_what_is_ready_and_gives_up_after_the_limit_of_waiting() {
        let limit = Duration::from_millis(100);
        let ready = std::pin::pin!(std::future::ready(7));
        assert_eq!(within(limit, ready).await, Some(7));
        let quick = std::pin::pin!(tokio::time::sleep(limit / 4));
        assert_eq!(within(limit, quick).await, Some(()));
        let start = Instant::now();
        let never = std::pin::pin!(std::future::pending::<()>());
        assert_eq!(within(limit, never).await, None);
        let took = start.elapsed();
        assert!(took >= limit && took < limit * 5, "gave up after {took:?}");
    }
}
