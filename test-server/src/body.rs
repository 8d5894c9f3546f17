//! The response body of the embedded server.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// The response body type of the [`TestServer`], both over TCP and
/// in-process.
///
/// Either a complete body sent at once, a body trickled out one byte at a
/// time (see [`Fault::Trickle`]), or a body followed by trailers (see
/// [`ApiFault::GrpcTrailers`]).
///
/// [`TestServer`]: crate::TestServer
/// [`Fault::Trickle`]: crate::Fault::Trickle
/// [`ApiFault::GrpcTrailers`]: crate::ApiFault::GrpcTrailers
pub struct TestBody {
    pub(super) inner: BodyInner,
}

pub(super) enum BodyInner {
    Full(Option<Bytes>),
    Trickle {
        remaining: Bytes,
        interval: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    Trailers {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
}

impl TestBody {
    /// An empty body.
    pub fn empty() -> TestBody {
        TestBody {
            inner: BodyInner::Full(None),
        }
    }

    /// A body made of `data`, sent as one frame.
    pub fn full(data: impl Into<Bytes>) -> TestBody {
        TestBody {
            inner: BodyInner::Full(Some(data.into())),
        }
    }

    /// A body made of `data`, sent one byte per frame, each after waiting
    /// `interval` with [`tokio::time::sleep`] (so it must be polled within a
    /// Tokio runtime with the time driver enabled).
    pub fn trickle(data: impl Into<Bytes>, interval: Duration) -> TestBody {
        TestBody {
            inner: BodyInner::Trickle {
                remaining: data.into(),
                interval,
                sleep: None,
            },
        }
    }

    /// A body made of `data` (sent as one frame if not empty), then a frame
    /// of `trailers`.
    ///
    /// Over HTTP/1.1, hyper sends the trailers only to a client that asked
    /// for them with `TE: trailers`, and only those announced in a `Trailer`
    /// header of the response.
    pub fn with_trailers(data: impl Into<Bytes>, trailers: HeaderMap) -> TestBody {
        TestBody {
            inner: BodyInner::Trailers {
                data: Some(data.into()),
                trailers: Some(trailers),
            },
        }
    }

    fn remaining_len(&self) -> usize {
        match &self.inner {
            BodyInner::Full(data) | BodyInner::Trailers { data, .. } => {
                data.as_ref().map_or(0, Bytes::len)
            }
            BodyInner::Trickle { remaining, .. } => remaining.len(),
        }
    }
}

impl Default for TestBody {
    fn default() -> TestBody {
        TestBody::empty()
    }
}

impl fmt::Debug for TestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.inner {
            BodyInner::Full(_) => "full",
            BodyInner::Trickle { .. } => "trickle",
            BodyInner::Trailers { .. } => "trailers",
        };
        f.debug_struct("TestBody")
            .field("kind", &kind)
            .field("remaining", &self.remaining_len())
            .finish()
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().inner {
            BodyInner::Full(data) => Poll::Ready(
                data.take()
                    .filter(|data| !data.is_empty())
                    .map(|data| Ok(Frame::data(data))),
            ),
            BodyInner::Trickle {
                remaining,
                interval,
                sleep,
            } => {
                if remaining.is_empty() {
                    return Poll::Ready(None);
                }
                let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*interval)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *sleep = None;
                Poll::Ready(Some(Ok(Frame::data(remaining.split_to(1)))))
            }
            BodyInner::Trailers { data, trailers } => {
                if let Some(data) = data.take().filter(|data| !data.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(
                    trailers
                        .take()
                        .map(|trailers| Ok(Frame::trailers(trailers))),
                )
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyInner::Trailers { trailers, .. } => trailers.is_none() && self.remaining_len() == 0,
            _ => self.remaining_len() == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            // Not exact: an exact size would make hyper send a Content-Length
            // rather than the chunked encoding that carries trailers.
            BodyInner::Trailers { .. } => {
                let mut hint = SizeHint::new();
                hint.set_lower(self.remaining_len() as u64);
                hint
            }
            _ => SizeHint::with_exact(self.remaining_len() as u64),
        }
    }
}
