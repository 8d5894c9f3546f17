//! Re-authentication as a `tower::retry::Policy`, for stacks built around `tower::retry`.
//! Prefer [`EnturAuthLayer::with_replay`](crate::EnturAuthLayer::with_replay), which puts
//! the layers in the right order by construction and can say when a request was not
//! replayed because its body is a stream.
//!
//! ```no_run
//! use std::time::Duration;
//! use entur_auth::{EnturAuthLayer, TokenSource, retry::ReauthPolicy};
//! use tower::ServiceBuilder;
//!
//! # fn stack<S>(source: TokenSource, client: S) {
//! let api = ServiceBuilder::new()
//!     .retry(ReauthPolicy::new(source.clone())) // outermost: sees the final answer
//!     .timeout(Duration::from_secs(30))         // per attempt
//!     .layer(EnturAuthLayer::new(source))       // innermost: each attempt reads the token afresh
//!     .service(client);
//! # let _ = api; }
//! ```
//!
//! # What does what
//!
//! [`EnturAuth`](crate::EnturAuth) drops a refused token itself, for every request, in any
//! stack. The policy only decides the replay: when the answer (or a typed
//! [`Error::Unauthorized`] from an
//! [`ErrorForStatus`](crate::error_for_status::ErrorForStatus) placed inside the retry layer)
//! says a new token is coming, it waits for it and lets `tower::retry` send the request once
//! more. A second refusal is final, and is marked as such in its
//! [`Refusal`]. While forced refreshes back off (the API refuses every
//! new token), the same token would go again, so nothing is replayed.
//!
//! # Why the auth layer goes inside retry
//!
//! Retry replays the request it cloned *before* it went down the stack. With the auth layer
//! inside, every attempt passes through it again and gets the token that is current then.
//! With the auth layer outside, the replay would carry the refused token again.
//!
//! `tower::retry` does not consult the policy for requests it could not clone, so a request
//! with a streaming body is answered as it was, without a replay.

use std::future::Future;
use std::pin::Pin;

use http::{Request, Response};

use crate::classify;
use crate::error::{BoxError, Error};
use crate::layer::{Refusal, ReplayOutcome};
use crate::source::TokenSource;

pub use crate::replay::ReplayBody;

/// A `tower::retry::Policy` that replays a request once when the API refused its token.
/// See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ReauthPolicy {
    source: TokenSource,
    replays_left: u8,
}

impl ReauthPolicy {
    /// A policy that replays with tokens from `source`, the same source the auth layer uses.
    pub fn new(source: TokenSource) -> Self {
        Self {
            source,
            replays_left: 1,
        }
    }

    /// The refusal an attempt ended with, if any: stamped on the answer by the auth layer, or
    /// carried by a typed error from an `ErrorForStatus` inside the retry layer.
    fn refusal<'r, ResB>(
        &self,
        result: &'r mut Result<Response<ResB>, BoxError>,
    ) -> Option<Option<&'r mut Refusal>> {
        match result {
            Ok(response) => {
                let unstamped = classify::refusal(
                    response.status(),
                    response.headers(),
                    self.source.reauth_on_408(),
                )
                .is_some();
                match response.extensions_mut().get_mut::<Refusal>() {
                    Some(refusal) => Some(Some(refusal)),
                    // A layer between the auth layer and here dropped the extensions.
                    None if unstamped => Some(None),
                    None => None,
                }
            }
            Err(error) => match error.downcast_mut::<Error>()? {
                Error::Unauthorized { refusal, .. } => Some(refusal.as_mut()),
                _ => None,
            },
        }
    }
}

impl<B, ResB> tower::retry::Policy<Request<B>, Response<ResB>, BoxError> for ReauthPolicy
where
    B: ReplayBody,
{
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<ResB>, BoxError>,
    ) -> Option<Self::Future> {
        let replays_left = self.replays_left;
        let refusal = self.refusal(result)?;
        if replays_left == 0 {
            if let Some(refusal) = refusal {
                refusal.replay = ReplayOutcome::Replayed;
            }
            tracing::debug!("token refused again after re-authenticating");
            return None;
        }
        if refusal.is_some_and(|r| !r.invalidation.replaced()) {
            return None;
        }
        self.replays_left -= 1;
        tracing::debug!("token refused; replaying with a fresh token");
        let source = self.source.clone();
        // Wait for the shared refresh; if it fails, the replay fails in the auth layer with
        // that error, which says more than the refusal would.
        Some(Box::pin(async move {
            let _ = source.token().await;
        }))
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        crate::replay::clone_request(request)
    }
}
