//! The response body of [`EnturAuth`](super::EnturAuth): the inner body, watched for a gRPC
//! `UNAUTHENTICATED` in its trailers and, for a token on probation, for a finished success.

use std::num::NonZeroU64;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::verdict::{self, Verdict};
use crate::source::registry::{self, SourceKey};
use crate::source::token::TokenId;

/// Which token to drop if the trailers refuse it, and whether the end of the body accepts
/// it. Two words, as a bare `(SourceKey, TokenId)` is: every response moves it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Watch {
    key: SourceKey,
    /// The token's id, with the accept mode in its two top bits ([`ACCEPT`], [`GRPC`]):
    /// ids count up from 1 and never reach them.
    token: NonZeroU64,
}

/// The head was a success and the token is on probation: the end of the body, without a
/// refusal, accepts it.
const ACCEPT: u64 = 1 << 63;
/// ... and the answer is gRPC's: only trailers with `grpc-status: 0` accept it.
const GRPC: u64 = 1 << 62;

impl Watch {
    /// Watches for `token` of source `key`; `accept` is `Some(grpc)` when the end of the body
    /// may accept it.
    pub(super) fn new(key: SourceKey, token: TokenId, accept: Option<bool>) -> Self {
        let mode = match accept {
            None => 0,
            Some(false) => ACCEPT,
            Some(true) => ACCEPT | GRPC,
        };
        let token = NonZeroU64::new(token.get() | mode).unwrap_or(NonZeroU64::MIN);
        Self { key, token }
    }

    fn token(self) -> Option<TokenId> {
        TokenId::from_raw(self.token.get() & !(ACCEPT | GRPC))
    }

    fn accept(self) -> Option<bool> {
        (self.token.get() & ACCEPT != 0).then_some(self.token.get() & GRPC != 0)
    }
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
        Self::new(inner, Some(Watch::new(key, token, Some(grpc))))
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
                if let Some(watch) = this.watch.take().filter(|w| w.accept().is_some()) {
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
    let accept = watch.accept();
    let verdict = match (trailers, accept) {
        (Some(trailers), _) => verdict::trailers(trailers),
        (None, Some(grpc)) => verdict::end(grpc),
        (None, None) => return,
    };
    let verdict = match verdict {
        Verdict::Accepted if accept.is_none() => return,
        Verdict::Neither => return,
        verdict => verdict,
    };
    let Some(token) = watch.token() else { return };
    let outcome = verdict::act(registry::lookup(watch.key).as_deref(), token, verdict);
    tracing::debug!(%token, ?verdict, ?outcome, "the end of an answer's body");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_is_two_words_and_keeps_its_token_and_mode() {
        assert_eq!(
            std::mem::size_of::<Option<Watch>>(),
            2 * std::mem::size_of::<u64>()
        );
        let token = TokenId::from_raw(41).unwrap();
        for accept in [None, Some(false), Some(true)] {
            let watch = Watch::new(SourceKey::next(), token, accept);
            assert_eq!(watch.token(), Some(token));
            assert_eq!(watch.accept(), accept);
        }
    }
}
