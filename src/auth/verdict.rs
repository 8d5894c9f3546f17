//! What an API's answer means for the token it carried, and what the token source does about
//! it: the one place that decides, for the layer and its response body, the replay, the
//! reqwest middleware and the tonic interceptor, so that they agree by construction.
//!
//! An answer **refuses** the token (a 401 without `insufficient_scope`, a 408 where the
//! endpoint says so, gRPC `UNAUTHENTICATED` in the headers or the trailers), **accepts** it
//! (a success whose body, trailers included, finished without a refusal), or **neither** (a
//! redirect, a 403, a 5xx, a 429, a gRPC error other than `UNAUTHENTICATED`, a body that
//! failed or was dropped, and any answer from a host the token never reached). A refusal
//! drops the token and starts a fetch, within the forced-refresh backoff; an acceptance ends
//! the token's probation and lets the backoff end; neither does nothing.

use http::{HeaderMap, StatusCode};

use crate::auth::classify::{self, Reauth};
use crate::auth::{Refusal, ReplayOutcome};
use crate::source::token::TokenId;
use crate::source::{Invalidation, Shared};

/// gRPC `OK`.
const GRPC_OK: u32 = 0;
/// gRPC `UNAUTHENTICATED`.
const GRPC_UNAUTHENTICATED: u32 = 16;

/// What an answer (or the end of its body) means for the token it carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The token was refused.
    Refused(Reauth),
    /// The token was accepted: a success, finished without a refusal.
    Accepted,
    /// Says nothing about the token.
    Neither,
}

/// What the head of an answer (status and headers) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// Decided by the head alone.
    Done(Verdict),
    /// A success so far: accepted if its body finishes without a refusal. A gRPC answer
    /// finishes with its status in the trailers; without them it accepts nothing.
    Body {
        /// Whether the answer is gRPC's.
        grpc: bool,
    },
}

/// Reads the head of an answer to a request that carried a token.
pub(crate) fn head(status: StatusCode, headers: &HeaderMap, reauth_on_408: bool) -> Head {
    if let Some(reason) = classify::refusal(status, headers, reauth_on_408) {
        return Head::Done(Verdict::Refused(reason));
    }
    if !status.is_success() {
        return Head::Done(Verdict::Neither);
    }
    match classify::grpc_status(headers) {
        // A trailers-only answer: the call has finished.
        Some(code) => Head::Done(grpc(code)),
        None => Head::Body {
            grpc: headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc")),
        },
    }
}

/// [`head`] for an answer that may come from a host the token never reached: `reached` is
/// whether the answering host is the one the token was sent to (a client that follows a
/// redirect to another host drops `Authorization` first: that host's 401 says nothing about
/// the token).
#[cfg_attr(not(feature = "reqwest"), allow(dead_code))]
pub(crate) fn head_from(
    status: StatusCode,
    headers: &HeaderMap,
    reauth_on_408: bool,
    reached: bool,
) -> Head {
    if reached {
        head(status, headers, reauth_on_408)
    } else {
        Head::Done(Verdict::Neither)
    }
}

/// The trailers at the end of a body. A refusal there counts whatever the head said; an
/// acceptance only for a body whose head was a success.
pub(crate) fn trailers(trailers: &HeaderMap) -> Verdict {
    match classify::grpc_status(trailers) {
        Some(code) => grpc(code),
        None => Verdict::Accepted,
    }
}

/// A body that ended without trailers.
pub(crate) fn end(grpc: bool) -> Verdict {
    if grpc {
        Verdict::Neither
    } else {
        Verdict::Accepted
    }
}

/// The headers of a call reported as finished (a tonic unary response, whose metadata holds
/// the trailers): accepted with `grpc-status: 0`; without a `grpc-status` the call has not
/// finished (a stream's response), which says nothing yet.
#[cfg_attr(not(feature = "tonic"), allow(dead_code))]
pub(crate) fn finished(headers: &HeaderMap) -> Verdict {
    classify::grpc_status(headers).map_or(Verdict::Neither, grpc)
}

/// A finished gRPC call's status code.
pub(crate) fn grpc(code: u32) -> Verdict {
    match code {
        GRPC_OK => Verdict::Accepted,
        GRPC_UNAUTHENTICATED => Verdict::Refused(Reauth::GrpcUnauthenticated),
        _ => Verdict::Neither,
    }
}

/// Acts on a verdict about `token`: a refusal drops it (if still current) and starts a fetch
/// within the backoff, counted under its reason; an acceptance ends its probation. Returns
/// what the source did with a refused token.
pub(crate) fn act(
    shared: Option<&Shared>,
    token: TokenId,
    verdict: Verdict,
) -> Option<Invalidation> {
    match verdict {
        Verdict::Refused(reason) => Some(match shared {
            Some(shared) => shared.invalidate_because(token, Some(reason)),
            None => Invalidation::SourceGone,
        }),
        Verdict::Accepted => {
            if let Some(shared) = shared {
                shared.accepted(token);
            }
            None
        }
        Verdict::Neither => None,
    }
}

/// Acts on `verdict` as [`act`] does, and returns the [`Refusal`] a refused answer carries
/// in its extensions (the replay completes it), whichever adapter saw the answer.
pub(crate) fn refusal(
    shared: Option<&Shared>,
    token: TokenId,
    verdict: Verdict,
) -> Option<Refusal> {
    let invalidation = act(shared, token, verdict)?;
    let Verdict::Refused(reason) = verdict else {
        return None;
    };
    Some(Refusal {
        token,
        reason,
        invalidation,
        replay: ReplayOutcome::NotAttempted,
    })
}

/// Whether to send a refused request once more, after the source acted on the refusal:
/// `Some(true)` once the new token is there; `Some(false)` at once with the same token,
/// while forced refreshes back off (behind a load balancer, another replica may take it; an
/// API that refuses every token costs one more call, and no token request); `None` when the
/// source is gone. A second refusal is final whatever it says.
pub(crate) fn replay(invalidation: Invalidation) -> Option<bool> {
    match invalidation {
        Invalidation::Started | Invalidation::AlreadyReplaced => Some(true),
        Invalidation::RateLimited { .. } => Some(false),
        Invalidation::SourceGone => None,
    }
}

/// What became of a refused request, whichever adapter replayed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Replayed; the answer did not refuse the new token.
    Accepted,
    /// Replayed; refused again.
    Refused,
    /// Replayed; failed with an error.
    Failed,
    /// Not replayed: the body cannot be sent twice.
    NotReplayable,
}

impl Replay {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::NotReplayable => "not_replayable",
        }
    }
}

/// Counts what became of a refused request, under the refusing source's labels.
#[cold]
pub(crate) fn replayed(shared: Option<&Shared>, outcome: Replay) {
    #[cfg(feature = "metrics")]
    if let Some(shared) = shared {
        crate::metrics::replay(&shared.metric_labels(), outcome.as_str());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (shared, outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::header::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn the_head_of_an_answer() {
        let none = HeaderMap::new();
        let refused = Head::Done(Verdict::Refused(Reauth::Unauthorized));
        assert_eq!(head(StatusCode::UNAUTHORIZED, &none, true), refused);
        let scope = headers(&[("www-authenticate", r#"Bearer error="insufficient_scope""#)]);
        assert_eq!(
            head(StatusCode::UNAUTHORIZED, &scope, true),
            Head::Done(Verdict::Neither)
        );
        assert_eq!(
            head(StatusCode::REQUEST_TIMEOUT, &none, true),
            Head::Done(Verdict::Refused(Reauth::SessionTimeout))
        );
        assert_eq!(
            head(StatusCode::REQUEST_TIMEOUT, &none, false),
            Head::Done(Verdict::Neither)
        );
        for status in [403, 429, 500, 502, 503, 504, 302] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                head(status, &none, true),
                Head::Done(Verdict::Neither),
                "{status}"
            );
        }
        assert_eq!(
            head(StatusCode::OK, &none, true),
            Head::Body { grpc: false }
        );
        let grpc = headers(&[("content-type", "application/grpc+proto")]);
        assert_eq!(head(StatusCode::OK, &grpc, true), Head::Body { grpc: true });
        let only = headers(&[("grpc-status", "0")]);
        assert_eq!(
            head(StatusCode::OK, &only, true),
            Head::Done(Verdict::Accepted)
        );
        let only = headers(&[("grpc-status", "14")]);
        assert_eq!(
            head(StatusCode::OK, &only, true),
            Head::Done(Verdict::Neither)
        );
        let only = headers(&[("grpc-status", "16")]);
        assert_eq!(
            head(StatusCode::OK, &only, true),
            Head::Done(Verdict::Refused(Reauth::GrpcUnauthenticated))
        );
        assert_eq!(
            head_from(StatusCode::UNAUTHORIZED, &none, true, false),
            Head::Done(Verdict::Neither)
        );
    }

    #[test]
    fn the_end_of_a_body() {
        assert_eq!(
            trailers(&headers(&[("grpc-status", "0")])),
            Verdict::Accepted
        );
        assert_eq!(
            trailers(&headers(&[("grpc-status", "16")])),
            Verdict::Refused(Reauth::GrpcUnauthenticated)
        );
        assert_eq!(
            trailers(&headers(&[("grpc-status", "13")])),
            Verdict::Neither
        );
        assert_eq!(trailers(&HeaderMap::new()), Verdict::Accepted);
        assert_eq!(end(false), Verdict::Accepted);
        assert_eq!(
            finished(&headers(&[("grpc-status", "0")])),
            Verdict::Accepted
        );
        assert_eq!(
            finished(&HeaderMap::new()),
            Verdict::Neither,
            "a stream's head"
        );
        assert_eq!(end(true), Verdict::Neither);
    }
}
