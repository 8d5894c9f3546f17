//! The middleware: [`EnturAuthLayer`] and the service it makes, [`EnturAuth`], which sets
//! `Authorization: Bearer <token>` (and `ET-Client-Name`) on every request.
//!
//! ```no_run
//! use entur_auth::{ClientName, Credentials, EnturAuthLayer, Environment, TokenEndpoint, TokenSource};
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let source = TokenSource::builder(TokenEndpoint::entur(Environment::Dev), Credentials::from_env()?)
//!     .build()?;
//! # let https = hyper_util::client::legacy::connect::HttpConnector::new();
//! let client = Client::builder(TokioExecutor::new()).build::<_, Full<bytes::Bytes>>(https);
//! let mut api = ServiceBuilder::new()
//!     .layer(EnturAuthLayer::new(source).client_name(ClientName::new("acme-ticketing")?))
//!     .service(client);
//! let request = http::Request::get("https://api.dev.entur.io/some/api").body(Full::default())?;
//! let response = api.ready().await?.call(request).await?;
//! # let _ = response; Ok(()) }
//! ```
//!
//! # The hot path
//!
//! With a usable token cached, a request costs one lock-free pointer load (a per-service
//! [`arc_swap::Cache`]), one reference-count increment of a prebuilt, sensitive
//! `HeaderValue`, and one header insert: no allocation, no lock, no clock read. Only when no
//! usable token exists does the response future wait, on the one fetch shared by all callers.
//!
//! # Refusals
//!
//! The response future reads every answer: a 401, an Entur 408, or a gRPC `UNAUTHENTICATED`
//! (in the headers of an HTTP/2 answer, as gRPC runs only over HTTP/2, or in the trailers at
//! the end of the body) drops the token the request
//! carried at once, whatever else is in the stack and whether or not the request can be
//! replayed. The answer is passed on with a [`Refusal`] in its extensions, saying what was
//! done; [`ReplayLayer`](crate::auth::replay::ReplayLayer) then replays the request once with the
//! new token. Forced refreshes back off when the API keeps refusing (see
//! [`TokenSource::invalidate`]).
//!
//! # Plain HTTP
//!
//! A request to `http://` on a host that is not loopback fails with
//! [`CleartextRefused`] before anything is sent: the
//! bearer token would cross the network in cleartext. `https://` passes;
//! [`EnturAuthLayer::allow_plain_http`] lifts the check. A request whose URI has no scheme
//! and host (as tonic sends them to a `Channel`, which adds its endpoint's below this layer)
//! is judged by the origin declared with [`EnturAuthLayer::origin`], and refused when none
//! was declared: where it goes cannot be told.

/// `get_ref`, `get_mut` and `into_inner` for a service (or body) around the field `$field`
/// of type `$inner`, written once as tower-http does.
macro_rules! inner_accessors {
    ($field:ident: $inner:ty) => {
        /// A reference to the inner service.
        pub fn get_ref(&self) -> &$inner {
            &self.$field
        }

        /// A mutable reference to the inner service.
        pub fn get_mut(&mut self) -> &mut $inner {
            &mut self.$field
        }

        /// The inner service.
        pub fn into_inner(self) -> $inner {
            self.$field
        }
    };
}

mod body;
pub mod classify;
mod collect;
pub mod error_for_status;
pub(crate) mod future;
pub mod replay;
pub(crate) mod verdict;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::{ArcSwapOption, Cache};
use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderValue, Request, Response, Uri};
use tower_layer::Layer;
use tower_service::Service;

pub use self::body::ResponseBody;
pub use self::future::ResponseFuture;

use self::future::Sent;
use crate::auth::classify::Reauth;
use crate::error::{sanitize, BoxError};
use crate::oauth::ClientName;
use crate::source::registry::SourceKey;
use crate::source::token::{AccessToken, TokenId};
use crate::source::{Invalidation, TokenSource};

/// The `ET-Client-Name` header Entur asks every client to send.
pub const ET_CLIENT_NAME: HeaderName = HeaderName::from_static("et-client-name");

/// Applies [`EnturAuth`] to a service: every request gets `Authorization: Bearer <token>`
/// from a shared [`TokenSource`], and `ET-Client-Name` when configured.
#[derive(Clone, Debug)]
pub struct EnturAuthLayer {
    pub(crate) source: TokenSource,
    pub(crate) client_name: Option<HeaderValue>,
    pub(crate) allow_plain_http: bool,
    origin: Option<Uri>,
}

impl EnturAuthLayer {
    /// A layer that authorizes requests with tokens from `source`, and sets the source's
    /// `ET-Client-Name` (see [`TokenSourceBuilder::client_name`](crate::TokenSourceBuilder::client_name)), if it has one.
    pub fn new(source: TokenSource) -> Self {
        Self {
            client_name: source.client_name().cloned(),
            source,
            allow_plain_http: false,
            origin: None,
        }
    }

    /// Sets `ET-Client-Name: <name>` on every request, as Entur requires, instead of the
    /// source's.
    pub fn client_name(mut self, name: ClientName) -> Self {
        self.client_name = Some(name.header_value().clone());
        self
    }

    /// Allows sending the bearer token over plain `http://` to hosts that are not loopback.
    /// Default `false`: such requests fail with
    /// [`CleartextRefused`] and nothing is sent.
    /// Allow it only when the network path is protected otherwise (a sidecar proxy, a service
    /// mesh with mTLS).
    pub fn allow_plain_http(mut self, allow: bool) -> Self {
        self.allow_plain_http = allow;
        self
    }

    /// Where requests whose URI has no scheme and host go: the endpoint of a tonic
    /// `Channel`, which adds it below this layer (`endpoint.uri().clone()`). Such requests
    /// are then judged as if they named it: refused when it is plain `http://` to a host that
    /// is not loopback (unless [`allow_plain_http`](Self::allow_plain_http)). Without it they
    /// are refused with [`CleartextRefused`], since whether the token would cross the network
    /// in cleartext cannot be told. Requests with an absolute URI are judged by their own.
    ///
    /// ```
    /// # fn run(source: entur_auth::TokenSource) {
    /// use entur_auth::EnturAuthLayer;
    /// use http::Uri;
    ///
    /// // With tonic: `let endpoint = Endpoint::from_static("https://grpc.example.com");`,
    /// // `.origin(endpoint.uri().clone())`, then `endpoint.connect().await?` below the layer.
    /// let layer = EnturAuthLayer::new(source).origin(Uri::from_static("https://grpc.example.com"));
    /// # let _ = layer; }
    /// ```
    pub fn origin(mut self, origin: Uri) -> Self {
        self.origin = Some(origin);
        self
    }

    /// What a request without scheme and host meets: `None` when it may pass.
    fn judge_relative(&self) -> Option<Arc<CleartextRefused>> {
        let Some(origin) = &self.origin else {
            return Some(Arc::new(CleartextRefused::undeclared()));
        };
        let refused = match (origin.scheme_str(), origin.host()) {
            (Some("https"), Some(_)) => None,
            (Some("http"), Some(_)) if self.allow_plain_http => None,
            (Some("http"), Some(host)) => refuse_cleartext(host).map(|mut refused| {
                refused.origin = Destination::Declared;
                refused
            }),
            // Not echoed: it may hold a user name and password.
            _ => Some(CleartextRefused {
                host: String::new(),
                origin: Destination::Malformed,
            }),
        };
        refused.map(Arc::new)
    }

    /// This layer with the one replay after a refusal, in the right order: the default way to
    /// build a stack. See [`ReplayLayer`](crate::auth::replay::ReplayLayer).
    pub fn with_replay(self) -> crate::auth::replay::ReplayLayer {
        crate::auth::replay::ReplayLayer { auth: self }
    }
}

impl<S> Layer<S> for EnturAuthLayer {
    type Service = EnturAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EnturAuth {
            inner,
            cache: Cache::new(self.source.cell().clone()),
            key: self.source.key(),
            reauth_on_408: self.source.reauth_on_408(),
            allow_plain_http: self.allow_plain_http,
            relative: self.judge_relative(),
            source: self.source.clone(),
            client_name: self.client_name.clone(),
        }
    }
}

/// Sets `Authorization: Bearer <token>` (and `ET-Client-Name`) on requests to `S`, and drops
/// the token when the API refuses it.
///
/// Cheap to clone; clones share the token source. Each clone keeps its own lock-free view of
/// the current token. See the [module docs](crate::auth) for the per-request cost.
pub struct EnturAuth<S> {
    inner: S,
    cache: Cache<Arc<ArcSwapOption<AccessToken>>, Option<Arc<AccessToken>>>,
    key: SourceKey,
    reauth_on_408: bool,
    allow_plain_http: bool,
    /// Why a request without scheme and host is refused; `None`: it passes.
    relative: Option<Arc<CleartextRefused>>,
    source: TokenSource,
    client_name: Option<HeaderValue>,
}

impl<S> EnturAuth<S> {
    /// Wraps `inner`, authorizing its requests with tokens from `source`.
    pub fn new(inner: S, source: TokenSource) -> Self {
        EnturAuthLayer::new(source).layer(inner)
    }

    /// The token source.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    inner_accessors!(inner: S);
}

impl<S: Clone> Clone for EnturAuth<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
            key: self.key,
            reauth_on_408: self.reauth_on_408,
            allow_plain_http: self.allow_plain_http,
            relative: self.relative.clone(),
            source: self.source.clone(),
            client_name: self.client_name.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for EnturAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnturAuth")
            .field("inner", &self.inner)
            .field("source", &self.source)
            .field("client_name", &self.client_name)
            .field("allow_plain_http", &self.allow_plain_http)
            .finish()
    }
}

impl<S, B, ResB> Service<Request<B>> for EnturAuth<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // `scheme_str` compares a few bytes inline; a `Scheme` comparison is a call.
        match request.uri().scheme_str() {
            Some("http") if !self.allow_plain_http => {
                if let Some(refused) = refuse_cleartext(request.uri().host().unwrap_or_default()) {
                    return self.fail(request, refused);
                }
            }
            None => {
                if let Some(refused) = &self.relative {
                    let refused = CleartextRefused::clone(refused);
                    return self.fail(request, refused);
                }
            }
            _ => {}
        }
        if let Some(name) = &self.client_name {
            request.headers_mut().insert(ET_CLIENT_NAME, name.clone());
        }
        let Some(token) = self.cache.load() else {
            return self.wait_for_token(request);
        };
        request
            .headers_mut()
            .insert(AUTHORIZATION, token.header_value().clone());
        let sent = Sent {
            token: Some(token.id()),
            probation: token.on_probation(),
            ..self.sent(None)
        };
        ResponseFuture::called(self.inner.call(request), sent)
    }
}

impl<S> EnturAuth<S> {
    fn sent(&self, token: Option<TokenId>) -> Sent {
        Sent {
            key: self.key,
            token,
            probation: false,
            reauth_on_408: self.reauth_on_408,
        }
    }

    /// The request is refused before anything is sent: a future that fails with `error`.
    /// Out of line, and through the waiting path, so that the fast path's future needs no
    /// state of its own for it.
    #[cold]
    #[inline(never)]
    fn fail<B>(&mut self, request: Request<B>, error: CleartextRefused) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>> + Clone,
    {
        let inner = self.inner.clone();
        let failed = std::future::ready(Err(error.into()));
        ResponseFuture::waiting(Box::pin(failed), request, inner, self.sent(None))
    }

    /// No usable token: the request waits for the shared fetch. The inner service that was
    /// polled ready goes into the future; this service keeps a fresh clone. Out of line, so
    /// that `call` stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn wait_for_token<B>(&mut self, request: Request<B>) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>> + Clone,
    {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let source = self.source.clone();
        ResponseFuture::waiting(
            Box::pin(async move { source.token().await.map_err(Into::into) }),
            request,
            inner,
            self.sent(None),
        )
    }
}

/// The error for a request to `http://` on `host` when it is not loopback; `None` for
/// loopback hosts (tests, local sidecars). Also the reqwest middleware's check.
#[cold]
#[inline(never)]
pub(crate) fn refuse_cleartext(host: &str) -> Option<CleartextRefused> {
    if crate::oauth::is_loopback(host) {
        return None;
    }
    Some(CleartextRefused {
        host: sanitize(host, 100),
        origin: Destination::Request,
    })
}

/// [`EnturAuth`] (or the reqwest middleware) refused to send the bearer token over plain
/// `http://` to a host that is not loopback: the token would cross the network in
/// cleartext. Or the request named no scheme and host (as tonic's do) and no
/// [`origin`](EnturAuthLayer::origin) was declared, so where it goes cannot be told.
/// Nothing was sent.
#[derive(Clone, Debug)]
pub struct CleartextRefused {
    host: String,
    origin: Destination,
}

/// Where the refused destination came from.
#[derive(Clone, Copy, Debug)]
enum Destination {
    /// The request's own URI.
    Request,
    /// The origin declared with [`EnturAuthLayer::origin`].
    Declared,
    /// A declared origin that is not an absolute `http://` or `https://` URL.
    Malformed,
    /// None: a request without scheme and host, and no declared origin.
    Undeclared,
}

impl CleartextRefused {
    fn undeclared() -> Self {
        Self {
            host: String::new(),
            origin: Destination::Undeclared,
        }
    }

    /// The host the token would have gone to; empty when it could not be told.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        match self.origin {
            Destination::Request | Destination::Declared => "use https://, or, if this host is reached over a network you trust (a sidecar, a mesh with mTLS), allow it with EnturAuthLayer::allow_plain_http(true) (reqwest: EnturAuthMiddleware::from that layer)",
            Destination::Malformed | Destination::Undeclared => "declare where these requests go with EnturAuthLayer::origin (for a tonic Channel: its endpoint.uri().clone()), an https:// URL or http:// to a loopback host",
        }
    }
}

impl fmt::Display for CleartextRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.origin {
            Destination::Request => write!(
                f,
                "refused to send the bearer token over plain http:// to {}: it would cross the network in cleartext",
                self.host
            ),
            Destination::Declared => write!(
                f,
                "refused to send the bearer token over plain http:// to {} (the origin declared with EnturAuthLayer::origin): it would cross the network in cleartext",
                self.host
            ),
            Destination::Malformed => f.write_str(
                "refused to send the bearer token: the origin declared with EnturAuthLayer::origin is not an absolute http:// or https:// URL",
            ),
            Destination::Undeclared => f.write_str(
                "refused to send the bearer token: the request URI has no scheme and host (a tonic Channel adds its own below this layer) and no origin was declared, so whether the token would cross the network in cleartext cannot be told",
            ),
        }
    }
}

impl std::error::Error for CleartextRefused {}

/// Which token a request carried, set by [`EnturAuth`] in the extensions of redirects, so
/// that [`ErrorForStatus`](crate::auth::error_for_status::ErrorForStatus) can say whether the
/// token went out with a plain-HTTP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SentToken(pub(crate) TokenId);

/// What happened to a refused token: set by [`EnturAuth`] in the extensions of every answer
/// that refused the token the request carried (401, an Entur 408, gRPC `UNAUTHENTICATED`),
/// and completed by the replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// The token the request carried.
    pub token: TokenId,
    /// How the API refused it.
    pub reason: Reauth,
    /// What the token source did: dropped it and started a fetch, found it already replaced,
    /// or is backing off forced refreshes.
    pub invalidation: Invalidation,
    /// Whether the request was replayed with a new token.
    pub replay: ReplayOutcome,
}

/// Whether a refused request was replayed; see [`Refusal`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayOutcome {
    /// No replay was tried: no replay layer around [`EnturAuth`] (or not yet: this is the
    /// first answer, which a replay layer will act on).
    #[default]
    NotAttempted,
    /// The request's body cannot be sent twice (a stream), so it was not replayed.
    NotReplayable,
    /// This answer is the replay's: the request was sent again, with a new token (or, while
    /// forced refreshes back off, the same one), and refused again.
    Replayed,
}
