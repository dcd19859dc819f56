//! The one body type the gateway sends and forwards: a whole buffer, or an engine's response
//! passed through frame by frame (never buffered), with an idle deadline between frames and a
//! [`Finish`] that runs when the body is done or dropped (client gone: the engine connection
//! is dropped with it, so the engine aborts the request).

use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs once when the response body is finished or dropped, with the bytes sent.
pub trait Finish: Send + Sync {
    fn finish(&mut self, bytes: u64, complete: bool);
}

struct Idle {
    sleep: Pin<Box<Sleep>>,
    every: Duration,
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
    Stream(Incoming, Idle),
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

    /// An engine's body, passed through; fails after `idle` without a frame.
    pub fn stream(inner: Incoming, idle: Duration) -> Body {
        Body {
            kind: Kind::Stream(
                inner,
                Idle {
                    sleep: Box::pin(tokio::time::sleep(idle)),
                    every: idle,
                },
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
        if let Some(mut f) = self.finish.take() {
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
            Kind::Stream(inner, idle) => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(r) => {
                    let at = Instant::now() + idle.every;
                    idle.sleep.as_mut().reset(at);
                    Poll::Ready(r.map(|f| f.map_err(BoxError::from)))
                }
                Poll::Pending => match idle.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(IdleTimeout(idle.every).into()))),
                    Poll::Pending => Poll::Pending,
                },
            },
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
            Kind::Stream(inner, _) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(inner, _) => inner.size_hint(),
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
