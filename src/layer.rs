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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use arc_swap::{ArcSwapOption, Cache};
use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::ClientName;
use crate::error::{BoxError, Error};
use crate::source::TokenSource;
use crate::token::{AccessToken, TokenId};

/// The `ET-Client-Name` header Entur asks every client to send.
pub const ET_CLIENT_NAME: HeaderName = HeaderName::from_static("et-client-name");

/// Applies [`EnturAuth`] to a service: every request gets `Authorization: Bearer <token>`
/// from a shared [`TokenSource`], and `ET-Client-Name` when configured.
#[derive(Clone, Debug)]
pub struct EnturAuthLayer {
    source: TokenSource,
    client_name: Option<HeaderValue>,
}

impl EnturAuthLayer {
    /// A layer that authorizes requests with tokens from `source`.
    pub fn new(source: TokenSource) -> Self {
        Self {
            source,
            client_name: None,
        }
    }

    /// Also sets `ET-Client-Name: <name>` on every request, as Entur requires.
    pub fn client_name(mut self, name: ClientName) -> Self {
        self.client_name = Some(name.header_value().clone());
        self
    }

    /// The token source.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }
}

impl<S> Layer<S> for EnturAuthLayer {
    type Service = EnturAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EnturAuth {
            inner,
            cache: Cache::new(self.source.cell().clone()),
            source: self.source.clone(),
            client_name: self.client_name.clone(),
        }
    }
}

/// Sets `Authorization: Bearer <token>` (and `ET-Client-Name`) on requests to `S`.
///
/// Cheap to clone; clones share the token source. Each clone keeps its own lock-free view of
/// the current token. See the [module docs](crate::layer) for the per-request cost.
pub struct EnturAuth<S> {
    inner: S,
    cache: Cache<Arc<ArcSwapOption<AccessToken>>, Option<Arc<AccessToken>>>,
    source: TokenSource,
    client_name: Option<HeaderValue>,
}

impl<S> EnturAuth<S> {
    /// Wraps `inner`, authorizing its requests with tokens from `source`.
    pub fn new(inner: S, source: TokenSource) -> Self {
        EnturAuthLayer::new(source).layer(inner)
    }

    /// A layer that wraps services in `EnturAuth`.
    pub fn layer(source: TokenSource) -> EnturAuthLayer {
        EnturAuthLayer::new(source)
    }

    /// Also sets `ET-Client-Name: <name>` on every request.
    pub fn client_name(mut self, name: ClientName) -> Self {
        self.client_name = Some(name.header_value().clone());
        self
    }

    /// The token source.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for EnturAuth<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
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
            .finish()
    }
}

impl<S, B, ResB> Service<Request<B>> for EnturAuth<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(name) = &self.client_name {
            request.headers_mut().insert(ET_CLIENT_NAME, name.clone());
        }
        let Some(token) = self.cache.load() else {
            return self.wait_for_token(request);
        };
        request
            .headers_mut()
            .insert(AUTHORIZATION, token.header_value().clone());
        let sent = token.id();
        ResponseFuture {
            state: State::Called {
                future: self.inner.call(request),
            },
            sent: Some(sent),
        }
    }
}

impl<S> EnturAuth<S> {
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
        ResponseFuture {
            state: State::Waiting {
                waiting: Box::new(Waiting {
                    token: Box::pin(async move { source.token().await }),
                    request: Some(request),
                    inner,
                }),
            },
            sent: None,
        }
    }
}

/// Which token a refused request carried: set by [`EnturAuth`] in the extensions of 401 and
/// 408 responses, so that [`ReauthPolicy`](crate::retry::ReauthPolicy) (or your own code)
/// invalidates exactly that token and not a newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentToken(pub TokenId);

type TokenFuture = Pin<Box<dyn Future<Output = Result<Arc<AccessToken>, Error>> + Send>>;

pin_project! {
    /// Response future of [`EnturAuth`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
        sent: Option<TokenId>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Called {
            #[pin]
            future: S::Future,
        },
        // Boxed, so that the future is no larger than the inner one: the fast path moves it.
        Waiting {
            waiting: Box<Waiting<S, B>>,
        },
    }
}

/// A request waiting for a token, with the inner service that was polled ready for it.
struct Waiting<S, B> {
    token: TokenFuture,
    request: Option<Request<B>>,
    inner: S,
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    /// The token the request was sent with; `None` while it still waits for one.
    pub fn token_id(&self) -> Option<TokenId> {
        self.sent
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                    // Only a refusal pays for the extension; success costs one comparison.
                    if matches!(
                        response.status(),
                        StatusCode::UNAUTHORIZED | StatusCode::REQUEST_TIMEOUT
                    ) {
                        if let Some(sent) = *this.sent {
                            response.extensions_mut().insert(SentToken(sent));
                        }
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Waiting { waiting } => {
                    let future = ready!(poll_waiting(waiting, this.sent, cx))?;
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// The slow path of [`ResponseFuture::poll`]: waits for the token, then calls the inner
/// service with it. Out of line, so that the fast path stays small enough to inline.
#[cold]
#[inline(never)]
fn poll_waiting<S, B>(
    waiting: &mut Waiting<S, B>,
    sent: &mut Option<TokenId>,
    cx: &mut Context<'_>,
) -> Poll<Result<S::Future, BoxError>>
where
    S: Service<Request<B>>,
{
    let Waiting {
        token,
        request,
        inner,
    } = waiting;
    let token = match ready!(token.as_mut().poll(cx)) {
        Ok(token) => token,
        Err(error) => return Poll::Ready(Err(error.into())),
    };
    let Some(mut request) = request.take() else {
        return Poll::Ready(Err("ResponseFuture polled after completion".into()));
    };
    request
        .headers_mut()
        .insert(AUTHORIZATION, token.header_value().clone());
    *sent = Some(token.id());
    Poll::Ready(Ok(inner.call(request)))
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}
