//! The response body of [`EnturAuth`](super::EnturAuth): the inner body, watched for a gRPC
//! `UNAUTHENTICATED` in its trailers and, for a token on probation, for a finished success.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::verdict::{self, Verdict};
use crate::source::registry::{self, SourceKey};
use crate::source::token::TokenId;

/// Which token to drop if the trailers refuse it, and whether the end of the body accepts it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Watch {
    pub(super) key: SourceKey,
    pub(super) token: TokenId,
    /// `Some(grpc)` when the head was a success and the token is on probation: the end of
    /// the body, without a refusal, accepts it (a gRPC body only with `grpc-status: 0`).
    pub(super) accept: Option<bool>,
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

    /// `inner`, whose end accepts `token` of source `key` (for an adapter whose answer's head
    /// was a success for a token on probation).
    #[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
    pub(crate) fn watching(inner: B, key: SourceKey, token: TokenId, grpc: bool) -> Self {
        Self::new(
            inner,
            Some(Watch {
                key,
                token,
                accept: Some(grpc),
            }),
        )
    }

    inner_accessors!(inner: B);
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
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(watch) = this.watch.take() {
                        ended(watch, Some(trailers));
                    }
                }
            }
            // The end without trailers matters only to a success waiting to accept.
            None => {
                if let Some(watch) = this.watch.take().filter(|w| w.accept.is_some()) {
                    ended(watch, None);
                }
            }
            // A body that failed says nothing about the token.
            Some(Err(_)) => *this.watch = None,
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

/// The body ended, with `trailers` or without: a refusal in the trailers drops the token; a
/// finished success accepts it when its head left that open.
#[cold]
#[inline(never)]
fn ended(watch: Watch, trailers: Option<&HeaderMap>) {
    let verdict = match (trailers, watch.accept) {
        (Some(trailers), _) => verdict::trailers(trailers),
        (None, Some(grpc)) => verdict::end(grpc),
        (None, None) => return,
    };
    let verdict = match verdict {
        Verdict::Accepted if watch.accept.is_none() => return,
        Verdict::Neither => return,
        verdict => verdict,
    };
    let outcome = verdict::act(registry::lookup(watch.key).as_deref(), watch.token, verdict);
    tracing::debug!(token = %watch.token, ?verdict, ?outcome, "the end of an answer's body");
}
