//! The response body of [`EnturAuth`](super::EnturAuth): the inner body, watched for a gRPC
//! `UNAUTHENTICATED` in its trailers.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::classify::{self, Decision};
use crate::source::registry::{self, SourceKey};
use crate::token::TokenId;

/// Which token to drop if the trailers refuse it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Watch {
    pub(super) key: SourceKey,
    pub(super) token: TokenId,
}

pin_project! {
    /// The response body of [`EnturAuth`](super::EnturAuth): the inner service's body,
    /// unchanged, except that a gRPC `UNAUTHENTICATED` in its trailers (where gRPC puts the
    /// status of streaming calls, and of anything that fails after the headers went out)
    /// drops the token the request carried, as a refusal in the headers does.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        watch: Option<Watch>,
    }
}

impl<B> ResponseBody<B> {
    pub(super) fn new(inner: B, watch: Option<Watch>) -> Self {
        Self { inner, watch }
    }

    /// A reference to the inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(trailers) = frame.trailers_ref() {
                if let Some(watch) = this.watch.take() {
                    trailers_seen(trailers, watch);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cold]
#[inline(never)]
fn trailers_seen(trailers: &HeaderMap, watch: Watch) {
    if let Decision::Reauthenticate(reason) = classify::classify_trailers(trailers) {
        if let Some(shared) = registry::lookup(watch.key) {
            let outcome = shared.invalidate_because(watch.token, Some(reason));
            tracing::debug!(token = %watch.token, ?outcome, "gRPC UNAUTHENTICATED in the trailers");
        }
    }
}
