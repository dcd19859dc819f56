//! The one body type the gateway sends and forwards: a whole buffer, or an engine's response
//! passed through frame by frame (never buffered), with an idle deadline between frames and a
//! [`Finish`] that runs when the body is done or dropped (client gone: the engine connection
//! is dropped with it, so the engine aborts the request). An engine's body is read through its
//! connection, which it drives ([`Lease::drive`]); the connection comes back to its worker's
//! pool ([`Lease::release`]) only when the body has ended.

use crate::upstream::Lease;
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs once when the response body is finished or dropped, with the bytes sent.
pub trait Finish: Send + Sync {
    fn finish(self: Box<Self>, bytes: u64, complete: bool);
}

/// The idle deadline, re-armed lazily: a frame only notes its time; the timer, armed when the
/// engine first makes the client wait, is moved to the last frame's deadline when it fires
/// early (one timer change per idle period, not one per token).
struct Idle {
    sleep: Option<Pin<Box<Sleep>>>,
    every: Duration,
    last: Instant,
}

impl Idle {
    /// Pending until `every` has passed since the last frame.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let due = self.last + self.every;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) if sleep.deadline() < due => sleep.as_mut().reset(due),
                r => return r,
            }
        }
    }
}

pub struct Body {
    kind: Kind,
    sent: u64,
    /// Everything was handed to hyper (it may not poll again after an exact length).
    ended: bool,
    finish: Option<Box<dyn Finish>>,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(Incoming, Idle, Option<Lease>),
}

#[derive(Debug, thiserror::Error)]
#[error("no data from the engine for {0:?}")]
struct IdleTimeout(Duration);

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Body {
        Body {
            kind: Kind::Full(Some(b.into())),
            sent: 0,
            ended: false,
            finish: None,
        }
    }

    pub fn empty() -> Body {
        Body::full(Bytes::new())
    }

    /// An engine's body, passed through; fails after `idle` without a frame. `lease`, the
    /// connection it comes on, is driven by it, released when the body has ended and dropped
    /// otherwise.
    pub fn stream(inner: Incoming, idle: Duration, lease: Lease) -> Body {
        Body {
            kind: Kind::Stream(
                inner,
                Idle {
                    sleep: None,
                    every: idle,
                    last: Instant::now(),
                },
                Some(lease),
            ),
            sent: 0,
            ended: false,
            finish: None,
        }
    }

    pub fn on_finish(mut self, f: Box<dyn Finish>) -> Body {
        self.finish = Some(f);
        self
    }

    fn done(&mut self, complete: bool) {
        if let Kind::Stream(_, _, lease) = &mut self.kind {
            if let Some(l) = lease.take() {
                if complete {
                    l.release();
                }
            }
        }
        if let Some(f) = self.finish.take() {
            f.finish(self.sent, complete);
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let ended = self.ended;
        self.done(ended);
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        let r = match &mut me.kind {
            Kind::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Kind::Stream(inner, idle, lease) => {
                // hyper reads the engine's answer into `inner` while its connection is polled.
                if let Some(l) = lease {
                    l.drive(cx);
                }
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(r) => {
                        idle.last = Instant::now();
                        Poll::Ready(r.map(|f| f.map_err(BoxError::from)))
                    }
                    Poll::Pending => match idle.poll_expired(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(IdleTimeout(idle.every).into()))),
                        Poll::Pending => Poll::Pending,
                    },
                }
            }
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    me.sent += d.len() as u64;
                }
                me.ended = me.is_end_stream();
            }
            Poll::Ready(None) => {
                me.ended = true;
                me.done(true)
            }
            Poll::Ready(Some(Err(_))) => me.done(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.as_ref().map_or(true, Bytes::is_empty),
            Kind::Stream(inner, _, _) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(inner, _, _) => inner.size_hint(),
        }
    }
}

/// Read a whole request body, at most `max` bytes: `Ok(None)` when it is larger.
pub async fn collect(mut body: Incoming, max: u64) -> Result<Option<Bytes>, hyper::Error> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => return Ok(Some(Bytes::from(buf))),
            Some(Err(e)) => return Err(e),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    if buf.len() as u64 + d.len() as u64 > max {
                        return Ok(None);
                    }
                    if buf.is_empty() && body.is_end_stream() {
                        return Ok(Some(d));
                    }
                    buf.extend_from_slice(&d);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One poll of the idle deadline.
    async fn expired(idle: &mut Idle) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(idle.poll_expired(cx).is_ready())).await
    }

    #[tokio::test]
    async fn the_idle_deadline_follows_the_last_frame() {
        let every = Duration::from_millis(300);
        let start = Instant::now();
        let mut idle = Idle {
            sleep: None,
            every,
            last: start,
        };
        // A frame every 50 ms for twice the deadline: never idle, though the first deadline
        // the timer was armed with has passed.
        while start.elapsed() < every * 2 {
            assert!(!expired(&mut idle).await, "expired with frames flowing");
            tokio::time::sleep(Duration::from_millis(50)).await;
            idle.last = Instant::now();
        }
        // Then nothing: it expires `every` after the last frame, not before.
        let last = idle.last;
        std::future::poll_fn(|cx| idle.poll_expired(cx)).await;
        assert!(
            last.elapsed() >= every,
            "expired {:?} after the last frame",
            last.elapsed()
        );
    }
}
