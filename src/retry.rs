//! Re-authentication as a `tower::retry::Policy`: when the API refuses the token (401, 408,
//! gRPC `UNAUTHENTICATED`), drop exactly that token, wait for the one shared refresh, and
//! replay the request once.
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
//! # Why the auth layer goes inside retry
//!
//! Retry replays the request it cloned *before* it went down the stack. With the auth layer
//! inside, every attempt passes through it again and gets the token that is current then —
//! the new one after a re-authentication. With the auth layer outside, the replay would carry
//! the refused token again. Timeout goes between them so that each attempt has its own limit.
//!
//! # Bounds
//!
//! One replay per request: a second refusal is returned as it is (or, with
//! [`ErrorForStatusLayer`](crate::classify::ErrorForStatusLayer) outside, as
//! [`Error::Unauthorized`](crate::Error::Unauthorized)). Many requests refused with the same
//! token cause one token fetch; an API that refuses every token causes at most one forced
//! fetch per [`min_reauth_interval`](crate::TokenSourceBuilder::min_reauth_interval). Only
//! requests whose body can be cloned ([`ReplayBody`]) are replayed; others come back as they
//! were answered. Everything that is not a refusal of the token passes through untouched.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Empty, Full};

use crate::classify::{classify, Decision};
use crate::layer::SentToken;
use crate::source::TokenSource;
use crate::token::TokenId;

/// A request body that may be cloned for a replay.
///
/// Implemented for the buffered bodies (`Full`, `Empty`, `String`, `Bytes`, `Vec<u8>`, `()`),
/// which replay, and for streaming bodies, which do not. Implement it for your own body type
/// to say whether it can be sent twice.
pub trait ReplayBody: Sized {
    /// A copy of the body to send again, or `None` if it cannot be sent twice.
    fn try_clone(&self) -> Option<Self>;
}

impl<D: Clone> ReplayBody for Full<D> {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for Empty<D> {
    fn try_clone(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

macro_rules! replay_by_clone {
    ($($t:ty),*) => {$(
        impl ReplayBody for $t {
            fn try_clone(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}
replay_by_clone!(String, Bytes, Vec<u8>, ());

impl<D, E> ReplayBody for http_body_util::combinators::UnsyncBoxBody<D, E> {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::BoxBody<D, E> {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

#[cfg(feature = "rustls")]
impl ReplayBody for hyper::body::Incoming {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

/// A `tower::retry::Policy` that re-authenticates once when the API refuses the token.
/// See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ReauthPolicy {
    source: TokenSource,
    replays_left: u8,
    /// The token current when the request went down the stack: used when the response
    /// does not name the token it refused (a gRPC status, or a layer in between that drops
    /// response extensions).
    sent_hint: Option<TokenId>,
}

impl ReauthPolicy {
    /// A policy that re-authenticates with `source`, the same source the auth layer uses.
    pub fn new(source: TokenSource) -> Self {
        Self {
            source,
            replays_left: 1,
            sent_hint: None,
        }
    }
}

impl<B, ResB, E> tower::retry::Policy<Request<B>, Response<ResB>, E> for ReauthPolicy
where
    B: ReplayBody,
{
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<ResB>, E>,
    ) -> Option<Self::Future> {
        let response = result.as_ref().ok()?;
        let Decision::Reauthenticate(reason) = classify(response) else {
            return None;
        };
        if self.replays_left == 0 {
            tracing::debug!(?reason, "token refused again after re-authenticating");
            return None;
        }
        self.replays_left -= 1;
        // The token this request carried: named by the auth layer on 401/408; for a gRPC
        // refusal (HTTP 200, so nothing is stamped on the hot path) the token current when the
        // request went down, or, if there was none then (the call fetched it), the one current
        // now. A wrong guess costs at most one rate-limited extra fetch.
        let sent = response
            .extensions()
            .get::<SentToken>()
            .map(|s| s.0)
            .or(self.sent_hint)
            .or_else(|| self.source.current_id());
        if let Some(sent) = sent {
            self.source.invalidate(sent);
        }
        tracing::debug!(?reason, "token refused; replaying with a fresh token");
        let source = self.source.clone();
        // Wait for the shared refresh; if it fails, the replay fails in the auth layer with
        // that error, which says more than the refusal would.
        Some(Box::pin(async move {
            let _ = source.token().await;
        }))
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        self.sent_hint = self.source.current_id();
        let body = request.body().try_clone()?;
        let mut clone = Request::new(body);
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
}

/// Buffers request bodies (up to a size limit) into [`Full<Bytes>`], so that requests with
/// streaming bodies — tonic's, or hyper's `Incoming` in a proxy — can be replayed by
/// [`ReauthPolicy`]. Put it outside the retry layer:
///
/// ```no_run
/// # use entur_auth::{EnturAuthLayer, TokenSource, retry::{BufferRequestLayer, ReauthPolicy}};
/// # fn stack<S>(source: TokenSource, channel: S) {
/// let api = tower::ServiceBuilder::new()
///     .layer(BufferRequestLayer::new(64 * 1024))
///     .retry(ReauthPolicy::new(source.clone()))
///     .layer(EnturAuthLayer::new(source))
///     // tonic: .map_request(|r: http::Request<http_body_util::Full<bytes::Bytes>>| r.map(tonic::body::Body::new))
///     .service(channel);
/// # let _ = api; }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct BufferRequestLayer {
    max_bytes: usize,
}

impl BufferRequestLayer {
    /// Buffers bodies of at most `max_bytes`; a larger body fails the request with an error
    /// saying so.
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes }
    }
}

impl<S> tower_layer::Layer<S> for BufferRequestLayer {
    type Service = BufferRequest<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BufferRequest {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

/// Buffers request bodies into [`Full<Bytes>`]; see [`BufferRequestLayer`].
#[derive(Clone, Debug)]
pub struct BufferRequest<S> {
    inner: S,
    max_bytes: usize,
}

impl<S> BufferRequest<S> {
    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> tower_service::Service<Request<B>> for BufferRequest<S>
where
    S: tower_service::Service<Request<Full<Bytes>>, Response = Response<ResB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Into<crate::BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<crate::BoxError>,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = crate::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResB>, crate::BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        use http_body_util::BodyExt;
        // The ready service goes into the future; this one keeps a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max = self.max_bytes;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = http_body_util::Limited::new(body, max)
                .collect()
                .await
                .map_err(|e| -> crate::BoxError {
                    if e.is::<http_body_util::LengthLimitError>() {
                        format!("request body larger than the {max}-byte replay buffer: raise BufferRequestLayer's limit").into()
                    } else {
                        e
                    }
                })?
                .to_bytes();
            inner
                .call(Request::from_parts(parts, Full::new(bytes)))
                .await
                .map_err(Into::into)
        })
    }
}
