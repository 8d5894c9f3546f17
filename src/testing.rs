//! An embedded OAuth2 authorization server and a protected API, on loopback.
//!
//! [`TestServer`] runs, on `127.0.0.1` and an ephemeral port, both
//!
//! * a token endpoint (`POST /oauth/token`) implementing the OAuth2
//!   client-credentials grant the way Entur's authorization server does, and
//! * a protected API (any method, `/api` and any path under `/api/`) that
//!   accepts only `Authorization: Bearer <token>` with a token issued by this
//!   server, not revoked and not expired.
//!
//! Both can be reached over TCP ([`TestServer::token_url`],
//! [`TestServer::api_url`]) or in-process without any socket
//! ([`TestServer::token_transport`], [`TestServer::api_service`]). The TCP
//! server and the in-process services run the very same handler, so they
//! behave identically.
//!
//! Faults (errors, delays, hangs, refused connections, slow bodies) can be
//! injected into the token endpoint with [`TestServer::push_fault`] and
//! [`TestServer::set_sticky_fault`]. Token expiry is measured with
//! [`tokio::time::Instant`], so tests running with a paused clock
//! (`tokio::time::pause`, `tokio::time::advance`) control it.
//!
//! The server stops (the listener is closed and open connections are dropped)
//! when the last [`TestServer`] clone is dropped. In-process services keep
//! working after that, as they need no socket.
//!
//! ```
//! use entur_auth::testing::TestServer;
//! use http_body_util::BodyExt;
//! use tower_service::Service;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let server = TestServer::start().await?;
//! let body = format!(
//!     r#"{{"grant_type":"client_credentials","client_id":"{}","client_secret":"{}","audience":"{}"}}"#,
//!     server.client_id(),
//!     server.client_secret(),
//!     server.audience(),
//! );
//! let request = http::Request::post(server.token_url())
//!     .header("content-type", "application/json")
//!     .body(http_body_util::Full::new(bytes::Bytes::from(body)))
//!     .unwrap();
//! let response = server.token_transport().call(request).await?;
//! assert_eq!(response.status(), 200);
//! let json: serde_json::Value =
//!     serde_json::from_slice(&response.into_body().collect().await?.to_bytes())?;
//! assert_eq!(json["token_type"], "Bearer");
//! assert_eq!(server.tokens_issued(), 1);
//! # Ok(())
//! # }
//! ```

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};
use tokio::task::{AbortHandle, JoinSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Path of the token endpoint.
const TOKEN_PATH: &str = "/oauth/token";
/// Path of the protected API (and prefix, followed by `/`, of its sub-paths).
const API_PATH: &str = "/api";
/// Largest request body the handler reads; larger ones are answered with 400.
const MAX_BODY: usize = 1024 * 1024;
/// Custom claim Entur puts into its access tokens.
const ORGANISATION_CLAIM: &str = "https://entur.io/organisationID";

/// Default token lifetime.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// Default client id.
const DEFAULT_CLIENT_ID: &str = "test-client";
/// Default client secret.
const DEFAULT_CLIENT_SECRET: &str = "test-secret";
/// Default audience.
const DEFAULT_AUDIENCE: &str = "https://api.test.entur.io";

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// A request as received by the [`TestServer`], for inspection by tests.
///
/// For requests received over TCP, `uri` is what the client sent on the
/// request line (usually just the path); for in-process requests it is the
/// URI of the [`http::Request`] as given.
///
/// Note that a recorded token request contains the client credentials sent by
/// the client (in `headers` or `body`), and the derived `Debug` prints them.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The request URI.
    pub uri: Uri,
    /// The request headers.
    pub headers: HeaderMap,
    /// The whole request body (empty if it could not be read).
    pub body: Bytes,
}

/// A fault injected into the token endpoint with [`TestServer::push_fault`]
/// or [`TestServer::set_sticky_fault`].
///
/// A fault is applied after the request has been counted and recorded.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status, body and optional `Retry-After` header value
    /// (sent verbatim).
    ///
    /// The response has `Cache-Control: no-store` and, if the body is not
    /// empty, `Content-Type: application/json` when the body is valid JSON
    /// and `text/plain` otherwise.
    Status {
        /// Status of the response.
        status: StatusCode,
        /// Body of the response.
        body: String,
        /// Value of the `Retry-After` header, if any.
        retry_after: Option<String>,
    },
    /// Answer with an arbitrary status, headers and body (for instance
    /// malformed JSON, a huge body or a strange token).
    ///
    /// Exactly the given headers are sent (headers whose name or value is not
    /// valid HTTP are skipped with a warning).
    Respond {
        /// Status of the response.
        status: StatusCode,
        /// Headers of the response, as `(name, value)` pairs, in order.
        headers: Vec<(String, String)>,
        /// Body of the response.
        body: Bytes,
    },
    /// Wait this long (with [`tokio::time::sleep`], so paused clocks work),
    /// then answer normally.
    Delay(Duration),
    /// Never answer: the response future stays pending forever (over TCP the
    /// connection is kept open silently).
    Hang,
    /// Refuse the connection: the in-process [`TokenTransport`] fails with an
    /// [`io::Error`] of kind [`io::ErrorKind::ConnectionRefused`]; over TCP
    /// the connection is closed without an answer.
    Refuse,
    /// Process the request normally (so a valid request gets a 200 with a
    /// valid token response) but send the response body one byte per
    /// `interval`, as a streamed body (over TCP and in-process).
    Trickle {
        /// Time before each byte of the body.
        interval: Duration,
    },
}

impl Fault {
    /// An RFC 6749 (section 5.2) error response with this status and
    /// `error` code, i.e. the body
    /// `{"error": code, "error_description": "injected fault"}`.
    pub fn oauth_error(status: StatusCode, code: &str) -> Fault {
        let body = json!({ "error": code, "error_description": "injected fault" });
        Fault::Status {
            status,
            body: body.to_string(),
            retry_after: None,
        }
    }

    /// A response with this status, an empty body and no `Retry-After`.
    pub fn status(status: StatusCode) -> Fault {
        Fault::Status {
            status,
            body: String::new(),
            retry_after: None,
        }
    }
}

/// The response body type of the [`TestServer`], both over TCP and
/// in-process.
///
/// Either a complete body sent at once, or a body trickled out one byte at a
/// time (see [`Fault::Trickle`]).
pub struct TestBody {
    inner: BodyInner,
}

enum BodyInner {
    Full(Option<Bytes>),
    Trickle {
        remaining: Bytes,
        interval: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
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

    fn remaining_len(&self) -> usize {
        match &self.inner {
            BodyInner::Full(data) => data.as_ref().map_or(0, Bytes::len),
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
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining_len() == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining_len() as u64)
    }
}

/// Builder for a [`TestServer`], made by [`TestServer::builder`].
#[derive(Clone)]
pub struct TestServerBuilder {
    lifetime: Duration,
    client_id: String,
    client_secret: String,
    audience: String,
}

impl Default for TestServerBuilder {
    /// The defaults: a token lifetime of 60 s, client id `test-client`,
    /// client secret `test-secret` and audience `https://api.test.entur.io`.
    fn default() -> TestServerBuilder {
        TestServerBuilder {
            lifetime: DEFAULT_LIFETIME,
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
        }
    }
}

impl fmt::Debug for TestServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServerBuilder")
            .field("token_lifetime", &self.lifetime)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("audience", &self.audience)
            .finish()
    }
}

impl TestServerBuilder {
    /// Lifetime of the tokens issued (default 60 s).
    ///
    /// The token response's `expires_in` is this lifetime in whole seconds,
    /// rounded up and at least 1, but the API enforces the exact duration.
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The only client id accepted (default `test-client`).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// The secret of the client (default `test-secret`).
    pub fn client_secret(mut self, client_secret: impl Into<String>) -> Self {
        self.client_secret = client_secret.into();
        self
    }

    /// The only audience accepted, and the `aud` of the tokens issued
    /// (default `https://api.test.entur.io`).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// Binds `127.0.0.1` on an ephemeral port and spawns the server on the
    /// current Tokio runtime.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    pub async fn start(self) -> io::Result<TestServer> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let origin = format!("http://{addr}");
        let shared = Arc::new(Shared {
            addr,
            token_url: format!("{origin}{TOKEN_PATH}"),
            api_url: format!("{origin}{API_PATH}"),
            issuer: origin,
            client_id: self.client_id,
            client_secret: self.client_secret,
            audience: self.audience,
            token_requests: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            api_requests: AtomicUsize::new(0),
            api_rejections: AtomicUsize::new(0),
            next_jti: AtomicU64::new(1),
            hasher: RandomState::new(),
            state: Mutex::new(State {
                lifetime: self.lifetime,
                faults: VecDeque::new(),
                sticky_fault: None,
                tokens: HashMap::new(),
                last_token_request: None,
                last_api_request: None,
            }),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone())).abort_handle();
        tracing::debug!(%addr, "test server started");
        Ok(TestServer {
            inner: Arc::new(Inner { shared, accept }),
        })
    }
}

/// An OAuth2 authorization server and a protected API running on loopback.
///
/// A cheap [`Clone`] handle; the server stops when the last clone is dropped.
/// See the [module documentation](self).
#[derive(Clone)]
pub struct TestServer {
    inner: Arc<Inner>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.inner.shared;
        f.debug_struct("TestServer")
            .field("addr", &shared.addr)
            .field("client_id", &shared.client_id)
            .field("client_secret", &"<redacted>")
            .field("audience", &shared.audience)
            .field("token_requests", &self.token_requests())
            .field("tokens_issued", &self.tokens_issued())
            .field("api_requests", &self.api_requests())
            .field("api_rejections", &self.api_rejections())
            .finish_non_exhaustive()
    }
}

impl TestServer {
    /// A builder, to configure the server before starting it.
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }

    /// Starts a server with the default configuration (see
    /// [`TestServerBuilder`]).
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime.
    pub async fn start() -> io::Result<TestServer> {
        TestServer::builder().start().await
    }

    /// The address the server listens on (always on `127.0.0.1`).
    pub fn addr(&self) -> SocketAddr {
        self.inner.shared.addr
    }

    /// The URL of the token endpoint, `http://127.0.0.1:PORT/oauth/token`.
    pub fn token_url(&self) -> String {
        self.inner.shared.token_url.clone()
    }

    /// The URL of the protected API, `http://127.0.0.1:PORT/api`; any path
    /// under it (`/api/...`) is protected too.
    pub fn api_url(&self) -> String {
        self.inner.shared.api_url.clone()
    }

    /// The client id accepted by the server.
    pub fn client_id(&self) -> &str {
        &self.inner.shared.client_id
    }

    /// The secret of the client.
    pub fn client_secret(&self) -> &str {
        &self.inner.shared.client_secret
    }

    /// The audience accepted by the server.
    pub fn audience(&self) -> &str {
        &self.inner.shared.audience
    }

    /// In-process access to the token endpoint (and, as it runs the same
    /// handler, to the whole server), without TCP.
    pub fn token_transport(&self) -> TokenTransport {
        TokenTransport {
            shared: self.inner.shared.clone(),
        }
    }

    /// In-process access to the protected API (and, as it runs the same
    /// handler, to the whole server), without TCP.
    pub fn api_service(&self) -> ApiService {
        ApiService {
            shared: self.inner.shared.clone(),
        }
    }

    /// How many requests reached the token endpoint (faulted ones included).
    pub fn token_requests(&self) -> usize {
        self.inner.shared.token_requests.load(Ordering::SeqCst)
    }

    /// How many tokens were issued.
    pub fn tokens_issued(&self) -> usize {
        self.inner.shared.tokens_issued.load(Ordering::SeqCst)
    }

    /// How many requests reached the protected API.
    pub fn api_requests(&self) -> usize {
        self.inner.shared.api_requests.load(Ordering::SeqCst)
    }

    /// How many API requests were answered with 401.
    pub fn api_rejections(&self) -> usize {
        self.inner.shared.api_rejections.load(Ordering::SeqCst)
    }

    /// Sets the lifetime of the tokens issued from now on (see
    /// [`TestServerBuilder::token_lifetime`]).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.inner.shared.state().lifetime = lifetime;
    }

    /// Queues a fault: each queued fault is applied, in FIFO order, to one
    /// token request. Queued faults take precedence over the sticky fault.
    pub fn push_fault(&self, fault: Fault) {
        self.inner.shared.state().faults.push_back(fault);
    }

    /// Sets (or clears, with `None`) a fault applied to every token request
    /// for which no fault is queued by [`push_fault`](Self::push_fault).
    pub fn set_sticky_fault(&self, fault: Option<Fault>) {
        self.inner.shared.state().sticky_fault = fault;
    }

    /// Revokes every token issued so far: the API rejects them from now on.
    pub fn revoke_all(&self) {
        for token in self.inner.shared.state().tokens.values_mut() {
            token.revoked = true;
        }
    }

    /// The last request that reached the token endpoint.
    pub fn last_token_request(&self) -> Option<RecordedRequest> {
        self.inner.shared.state().last_token_request.clone()
    }

    /// The last request that reached the protected API.
    pub fn last_api_request(&self) -> Option<RecordedRequest> {
        self.inner.shared.state().last_api_request.clone()
    }
}

/// The future returned by [`TokenTransport`] and [`ApiService`].
pub type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response<TestBody>, E>> + Send>>;

/// In-process access to a [`TestServer`]'s token endpoint, made by
/// [`TestServer::token_transport`].
///
/// A [`tower_service::Service`] that runs the server's request handler
/// directly, without TCP; the request is routed by its URI's path only.
/// [`Fault::Refuse`] makes it fail with an [`io::Error`] of kind
/// [`io::ErrorKind::ConnectionRefused`]. It keeps working after the
/// [`TestServer`] has been dropped.
#[derive(Clone)]
pub struct TokenTransport {
    shared: Arc<Shared>,
}

impl fmt::Debug for TokenTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenTransport")
            .field("token_url", &self.shared.token_url)
            .finish()
    }
}

impl<B> tower_service::Service<Request<B>> for TokenTransport
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<TestBody>;
    type Error = io::Error;
    type Future = ResponseFuture<io::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(handle(self.shared.clone(), request))
    }
}

/// In-process access to a [`TestServer`]'s protected API, made by
/// [`TestServer::api_service`].
///
/// A [`tower_service::Service`] that runs the server's request handler
/// directly, without TCP; the request is routed by its URI's path only. It
/// never fails (should a request to the token endpoint meet
/// [`Fault::Refuse`], it is answered with `502 Bad Gateway`). It keeps
/// working after the [`TestServer`] has been dropped.
#[derive(Clone)]
pub struct ApiService {
    shared: Arc<Shared>,
}

impl fmt::Debug for ApiService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiService")
            .field("api_url", &self.shared.api_url)
            .finish()
    }
}

impl<B> tower_service::Service<Request<B>> for ApiService
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<TestBody>;
    type Error = Infallible;
    type Future = ResponseFuture<Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            Ok(handle(shared, request).await.unwrap_or_else(|error| {
                no_store_json(
                    StatusCode::BAD_GATEWAY,
                    json!({ "error": "bad_gateway", "error_description": error.to_string() }),
                )
            }))
        })
    }
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

struct Inner {
    shared: Arc<Shared>,
    accept: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts the
        // connection tasks.
        self.accept.abort();
    }
}

struct Shared {
    addr: SocketAddr,
    token_url: String,
    api_url: String,
    issuer: String,
    client_id: String,
    client_secret: String,
    audience: String,
    token_requests: AtomicUsize,
    tokens_issued: AtomicUsize,
    api_requests: AtomicUsize,
    api_rejections: AtomicUsize,
    next_jti: AtomicU64,
    hasher: RandomState,
    state: Mutex<State>,
}

struct State {
    lifetime: Duration,
    faults: VecDeque<Fault>,
    sticky_fault: Option<Fault>,
    tokens: HashMap<String, IssuedToken>,
    last_token_request: Option<RecordedRequest>,
    last_api_request: Option<RecordedRequest>,
}

struct IssuedToken {
    jti: String,
    deadline: tokio::time::Instant,
    revoked: bool,
}

impl Shared {
    /// Locks the state. Never held across an `.await`; a poisoned lock (a
    /// panicking test thread) is recovered, as the state stays consistent.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

// ---------------------------------------------------------------------------
// TCP server
// ---------------------------------------------------------------------------

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, shared.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "test server failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // Trickled bodies must leave one byte at a time.
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request| handle(shared.clone(), request));
    let connection = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    if let Err(error) = connection.await {
        tracing::debug!(%peer, %error, "test server connection closed with an error");
    }
}

// ---------------------------------------------------------------------------
// Handler (shared by TCP and in-process)
// ---------------------------------------------------------------------------

/// The one request handler of the server, for TCP and in-process requests.
///
/// Fails only for [`Fault::Refuse`].
async fn handle<B>(shared: Arc<Shared>, request: Request<B>) -> io::Result<Response<TestBody>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let path = request.uri().path();
    let response = if path == TOKEN_PATH {
        token_endpoint(&shared, request).await?
    } else if path == API_PATH || path.starts_with("/api/") {
        api(&shared, request).await
    } else {
        let response = no_store_json(
            StatusCode::NOT_FOUND,
            json!({ "error": "not_found", "error_description": "no such endpoint" }),
        );
        tracing::debug!(method = %request.method(), path, "test server: unknown path");
        response
    };
    Ok(response)
}

/// Reads the whole body (up to [`MAX_BODY`]) and returns the request parts.
async fn read_request<B>(request: Request<B>) -> (RecordedRequest, Result<Bytes, BoxError>)
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(|collected| collected.to_bytes());
    let recorded = RecordedRequest {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body: body.as_ref().map(Bytes::clone).unwrap_or_default(),
    };
    (recorded, body)
}

async fn token_endpoint<B>(shared: &Shared, request: Request<B>) -> io::Result<Response<TestBody>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let (recorded, body) = read_request(request).await;
    let fault = {
        let mut state = shared.state();
        state.last_token_request = Some(recorded.clone());
        state
            .faults
            .pop_front()
            .or_else(|| state.sticky_fault.clone())
    };
    let mut trickle = None;
    if let Some(fault) = fault {
        tracing::debug!(?fault, "test server: applying fault to token request");
        match fault {
            Fault::Status {
                status,
                body,
                retry_after,
            } => {
                let mut response = Response::new(TestBody::empty());
                *response.status_mut() = status;
                let headers = response.headers_mut();
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                if !body.is_empty() {
                    let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
                        "application/json"
                    } else {
                        "text/plain; charset=utf-8"
                    };
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                }
                if let Some(retry_after) = retry_after {
                    match HeaderValue::from_str(&retry_after) {
                        Ok(value) => {
                            headers.insert(http::header::RETRY_AFTER, value);
                        }
                        Err(_) => tracing::warn!(
                            retry_after,
                            "test server: invalid Retry-After value in fault, skipped"
                        ),
                    }
                }
                *response.body_mut() = TestBody::full(body);
                return Ok(response);
            }
            Fault::Respond {
                status,
                headers,
                body,
            } => {
                let mut response = Response::new(TestBody::full(body));
                *response.status_mut() = status;
                for (name, value) in headers {
                    match (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_bytes(value.as_bytes()),
                    ) {
                        (Ok(name), Ok(value)) => {
                            response.headers_mut().append(name, value);
                        }
                        _ => tracing::warn!(
                            name,
                            value,
                            "test server: invalid header in fault, skipped"
                        ),
                    }
                }
                return Ok(response);
            }
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::Hang => std::future::pending::<()>().await,
            Fault::Refuse => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "connection refused (injected fault)",
                ))
            }
            Fault::Trickle { interval } => trickle = Some(interval),
        }
    }
    let response = token_response(shared, &recorded, body);
    tracing::debug!(status = %response.status(), "test server: token request answered");
    Ok(match trickle {
        None => response,
        Some(interval) => {
            let (parts, body) = response.into_parts();
            let data = match body.inner {
                BodyInner::Full(data) => data.unwrap_or_default(),
                BodyInner::Trickle { remaining, .. } => remaining,
            };
            Response::from_parts(parts, TestBody::trickle(data, interval))
        }
    })
}

/// Client-credentials grant, after faults.
fn token_response(
    shared: &Shared,
    request: &RecordedRequest,
    body: Result<Bytes, BoxError>,
) -> Response<TestBody> {
    if request.method != Method::POST {
        let mut response = oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "the token endpoint accepts only POST",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let body = match body {
        Ok(body) => body,
        Err(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body could not be read",
            )
        }
    };
    let params = match parse_params(&request.headers, &body) {
        Ok(params) => params,
        Err(description) => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
        }
    };

    // Client authentication: HTTP Basic (RFC 6749 section 2.3.1) or body.
    let basic = match request.headers.get(AUTHORIZATION) {
        None => None,
        Some(value) => match parse_basic(value) {
            Ok(credentials) => Some(credentials),
            Err(BasicError::OtherScheme) => {
                return basic_challenge(oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "unsupported client authentication scheme",
                ))
            }
            Err(BasicError::Malformed) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "malformed Basic authorization header",
                )
            }
        },
    };
    let (client_id, client_secret) = match basic {
        Some((id, secret)) => {
            if params.client_secret.is_some() {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client credentials sent both in the Authorization header and in the body",
                );
            }
            if params
                .client_id
                .as_ref()
                .is_some_and(|body_id| *body_id != id)
            {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_id in the body differs from the Authorization header",
                );
            }
            (Some(id), Some(secret))
        }
        None => (params.client_id, params.client_secret),
    };
    let used_basic = request.headers.contains_key(AUTHORIZATION);

    match params.grant_type.as_deref() {
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing grant_type",
            )
        }
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only the client_credentials grant is supported",
            )
        }
    }

    let authenticated = client_id.as_deref() == Some(shared.client_id.as_str())
        && client_secret.is_some_and(|secret| constant_time_eq(&secret, &shared.client_secret));
    if !authenticated {
        let response = oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
        return if used_basic {
            basic_challenge(response)
        } else {
            response
        };
    }

    if params
        .audience
        .as_ref()
        .is_some_and(|audience| *audience != shared.audience)
    {
        return oauth_error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the requested audience is not allowed for this client",
        );
    }

    let (access_token, expires_in) = issue_token(shared, params.scope.as_deref());
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
    });
    if let Some(scope) = params.scope {
        body["scope"] = Value::String(scope);
    }
    no_store_json(StatusCode::OK, body)
}

/// Issues a token, remembers it and returns it with its `expires_in`.
fn issue_token(shared: &Shared, scope: Option<&str>) -> (String, u64) {
    let lifetime = shared.state().lifetime;
    let jti = shared.next_jti.fetch_add(1, Ordering::SeqCst);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let exp = ceil_secs(now.saturating_add(lifetime));
    let expires_in = ceil_secs(lifetime).max(1);

    let header = json!({ "alg": "HS256", "typ": "JWT" });
    let mut claims = json!({
        "iss": shared.issuer,
        "sub": format!("{}@clients", shared.client_id),
        "aud": shared.audience,
        "iat": now.as_secs(),
        "exp": exp,
        "jti": jti.to_string(),
        ORGANISATION_CLAIM: 1,
    });
    if let Some(scope) = scope {
        claims["scope"] = Value::String(scope.to_owned());
    }
    let mut signature = [0u8; 32];
    for (index, chunk) in signature.chunks_mut(8).enumerate() {
        let word = shared
            .hasher
            .hash_one((jti, index, now.as_nanos(), shared.addr.port()));
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature),
    );

    let deadline = tokio::time::Instant::now() + lifetime;
    shared.state().tokens.insert(
        token.clone(),
        IssuedToken {
            jti: jti.to_string(),
            deadline,
            revoked: false,
        },
    );
    shared.tokens_issued.fetch_add(1, Ordering::SeqCst);
    tracing::debug!(jti, ?lifetime, "test server issued a token");
    (token, expires_in)
}

/// Whole seconds, rounded up.
fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The parameters of a token request; empty values count as absent
/// (RFC 6749 section 3.1).
#[derive(Default)]
struct TokenParams {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    audience: Option<String>,
    scope: Option<String>,
}

impl TokenParams {
    fn set(&mut self, name: &str, value: String) -> Result<(), &'static str> {
        let slot = match name {
            "grant_type" => &mut self.grant_type,
            "client_id" => &mut self.client_id,
            "client_secret" => &mut self.client_secret,
            "audience" => &mut self.audience,
            "scope" => &mut self.scope,
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err("a parameter is repeated");
        }
        if !value.is_empty() {
            *slot = Some(value);
        }
        Ok(())
    }
}

fn parse_params(headers: &HeaderMap, body: &[u8]) -> Result<TokenParams, &'static str> {
    let media_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    let mut params = TokenParams::default();
    if media_type.eq_ignore_ascii_case("application/json") {
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
            return Err("the body is not a JSON object");
        };
        for (name, value) in object {
            match value {
                Value::String(value) => params.set(&name, value)?,
                Value::Null => {}
                _ if is_known_param(&name) => return Err("a parameter is not a string"),
                _ => {}
            }
        }
    } else if media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        for (name, value) in form_urlencoded::parse(body) {
            params.set(&name, value.into_owned())?;
        }
    } else {
        return Err(
            "the content type must be application/x-www-form-urlencoded or application/json",
        );
    }
    Ok(params)
}

fn is_known_param(name: &str) -> bool {
    matches!(
        name,
        "grant_type" | "client_id" | "client_secret" | "audience" | "scope"
    )
}

enum BasicError {
    OtherScheme,
    Malformed,
}

/// Decodes `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn parse_basic(value: &HeaderValue) -> Result<(String, String), BasicError> {
    let value = value.to_str().map_err(|_| BasicError::Malformed)?.trim();
    let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(BasicError::OtherScheme);
    }
    let decoded = STANDARD
        .decode(credentials.trim())
        .map_err(|_| BasicError::Malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| BasicError::Malformed)?;
    let (id, secret) = decoded.split_once(':').ok_or(BasicError::Malformed)?;
    let id = form_decode(id).ok_or(BasicError::Malformed)?;
    let secret = form_decode(secret).ok_or(BasicError::Malformed)?;
    Ok((id, secret))
}

/// `application/x-www-form-urlencoded` decoding of one component: `+` is a
/// space, `%XX` a byte; malformed escapes are kept as they are. `None` if the
/// result is not UTF-8.
fn form_decode(input: &str) -> Option<String> {
    fn hex(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|digit| digit as u8)
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' => {
                let escaped = bytes
                    .get(index + 1)
                    .and_then(|&high| hex(high))
                    .zip(bytes.get(index + 2).and_then(|&low| hex(low)));
                match escaped {
                    Some((high, low)) => {
                        out.push((high << 4) | low);
                        index += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).ok()
}

/// The protected API.
async fn api<B>(shared: &Shared, request: Request<B>) -> Response<TestBody>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    shared.api_requests.fetch_add(1, Ordering::SeqCst);
    let (recorded, _body) = read_request(request).await;
    let path = recorded.uri.path().to_owned();
    let token = recorded
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            let token = token.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
        });
    let outcome = {
        let mut state = shared.state();
        state.last_api_request = Some(recorded);
        match &token {
            None => Err(None),
            Some(token) => match state.tokens.get(token) {
                None => Err(Some("unknown token")),
                Some(issued) if issued.revoked => Err(Some("token revoked")),
                Some(issued) if tokio::time::Instant::now() >= issued.deadline => {
                    Err(Some("token expired"))
                }
                Some(issued) => Ok(issued.jti.clone()),
            },
        }
    };
    match outcome {
        Ok(jti) => {
            tracing::debug!(path, jti, "test server: API request accepted");
            json_response(
                StatusCode::OK,
                &json!({ "ok": true, "path": path, "jti": jti }),
            )
        }
        Err(reason) => {
            shared.api_rejections.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(path, reason, "test server: API request rejected");
            let (challenge, body) = match reason {
                None => (
                    "Bearer",
                    json!({ "error": "unauthorized", "error_description": "no bearer token" }),
                ),
                Some(reason) => (
                    r#"Bearer error="invalid_token""#,
                    json!({ "error": "invalid_token", "error_description": reason }),
                ),
            };
            let mut response = json_response(StatusCode::UNAUTHORIZED, &body);
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            response
        }
    }
}

// ---------------------------------------------------------------------------
// Response helpers
// ---------------------------------------------------------------------------

/// `application/json` response.
fn json_response(status: StatusCode, body: &Value) -> Response<TestBody> {
    let mut response = Response::new(TestBody::full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `application/json` response that must not be cached.
fn no_store_json(status: StatusCode, body: Value) -> Response<TestBody> {
    let mut response = json_response(status, &body);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// RFC 6749 section 5.2 error response.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<TestBody> {
    no_store_json(
        status,
        json!({ "error": error, "error_description": description }),
    )
}

/// Adds the challenge RFC 6749 section 5.2 asks for when a client that used
/// HTTP Basic fails to authenticate.
fn basic_challenge(mut response: Response<TestBody>) -> Response<TestBody> {
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Basic realm="entur-auth-testing""#),
    );
    response
}

/// Configuration of this crate for the embedded server.
impl TestServer {
    /// The server's credentials.
    pub fn credentials(&self) -> crate::Credentials {
        crate::Credentials::new(self.client_id(), self.client_secret())
    }

    /// The server's token endpoint with its audience, JSON-encoded as Entur's presets are.
    pub fn endpoint(&self) -> crate::TokenEndpoint {
        crate::TokenEndpoint::new(&self.token_url())
            .expect("the server's token URL is a valid http URL")
            .audience(self.audience())
            .encoding(crate::BodyEncoding::Json)
    }

    /// A [`TokenSourceBuilder`](crate::TokenSourceBuilder) for this server that reaches it
    /// in-process through [`token_transport`](Self::token_transport): no sockets, so tests on
    /// tokio's paused clock control every timeout and expiry.
    pub fn source_builder(&self) -> crate::TokenSourceBuilder {
        crate::TokenSource::builder(self.endpoint(), self.credentials())
            .allow_http_loopback(true)
            .transport(self.token_transport())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::TokioExecutor;
    use tower_service::Service;

    type TcpClient = Client<HttpConnector, Full<Bytes>>;

    fn tcp_client() -> TcpClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    fn json_request(server: &TestServer) -> Request<Full<Bytes>> {
        let body = json!({
            "grant_type": "client_credentials",
            "client_id": server.client_id(),
            "client_secret": server.client_secret(),
            "audience": server.audience(),
        });
        Request::post(server.token_url())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    }

    fn form_request(url: &str, content_type: &str, body: &str) -> Request<Full<Bytes>> {
        Request::post(url)
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }

    fn api_request(server: &TestServer, path: &str, token: Option<&str>) -> Request<Full<Bytes>> {
        let mut builder = Request::get(format!("{}{path}", server.api_url()));
        if let Some(token) = token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        builder.body(Full::new(Bytes::new())).unwrap()
    }

    fn basic(id: &str, secret: &str) -> String {
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
        )
    }

    async fn into_json<B>(response: Response<B>) -> (StatusCode, HeaderMap, Value)
    where
        B: Body,
        B::Error: fmt::Debug,
    {
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (parts.status, parts.headers, json)
    }

    async fn in_process<S>(
        service: &mut S,
        request: Request<Full<Bytes>>,
    ) -> (StatusCode, HeaderMap, Value)
    where
        S: Service<Request<Full<Bytes>>, Response = Response<TestBody>>,
        S::Error: fmt::Debug,
    {
        into_json(service.call(request).await.unwrap()).await
    }

    async fn get_token(server: &TestServer) -> String {
        let (status, _, json) =
            in_process(&mut server.token_transport(), json_request(server)).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        json["access_token"].as_str().unwrap().to_owned()
    }

    fn claims(token: &str) -> Value {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, json!({ "alg": "HS256", "typ": "JWT" }));
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 32);
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
    }

    #[test]
    fn public_types_are_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<TestServer>();
        check::<TokenTransport>();
        check::<ApiService>();
        check::<TestBody>();
        check::<Fault>();
        check::<RecordedRequest>();
        fn check_send<T: Send>() {}
        check_send::<ResponseFuture<io::Error>>();
    }

    #[test]
    fn form_decoding() {
        assert_eq!(
            form_decode("p%2Bss%3Aw%C3%B6rd").as_deref(),
            Some("p+ss:wörd")
        );
        assert_eq!(form_decode("a+b").as_deref(), Some("a b"));
        assert_eq!(form_decode("%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(form_decode("%FF"), None);
    }

    #[tokio::test]
    async fn tcp_json_token_is_accepted_by_api() {
        let server = TestServer::start().await.unwrap();
        assert!(server.addr().ip().is_loopback());
        assert_eq!(
            server.token_url(),
            format!("http://127.0.0.1:{}/oauth/token", server.addr().port())
        );
        let client = tcp_client();

        let (status, headers, json) =
            into_json(client.request(json_request(&server)).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        assert_eq!(json["token_type"], "Bearer");
        assert_eq!(json["expires_in"], 60);
        assert!(json.get("scope").is_none());
        let token = json["access_token"].as_str().unwrap().to_owned();
        let claims = claims(&token);
        assert_eq!(claims["iss"], format!("http://{}", server.addr()));
        assert_eq!(claims["sub"], "test-client@clients");
        assert_eq!(claims["aud"], "https://api.test.entur.io");
        assert_eq!(claims[ORGANISATION_CLAIM], 1);
        let iat = claims["iat"].as_u64().unwrap();
        let exp = claims["exp"].as_u64().unwrap();
        assert!(exp >= iat + 60 && exp <= iat + 61, "{claims}");
        assert_eq!(server.token_requests(), 1);
        assert_eq!(server.tokens_issued(), 1);
        let recorded = server.last_token_request().unwrap();
        assert_eq!(recorded.method, Method::POST);
        assert_eq!(recorded.uri.path(), "/oauth/token");
        assert!(!recorded.body.is_empty());

        let (status, _, json) = into_json(
            client
                .request(api_request(&server, "/departures?q=1", Some(&token)))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json,
            json!({ "ok": true, "path": "/api/departures", "jti": claims["jti"] })
        );
        assert_eq!(
            server.last_api_request().unwrap().headers[AUTHORIZATION],
            format!("Bearer {token}").as_str()
        );

        let (status, headers, _) = into_json(
            client
                .request(api_request(&server, "", None))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[http::header::WWW_AUTHENTICATE], "Bearer");
        let (status, headers, _) = into_json(
            client
                .request(api_request(&server, "/x", Some("nope")))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            headers[http::header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        assert_eq!(server.api_requests(), 3);
        assert_eq!(server.api_rejections(), 2);

        let response = client
            .request(
                Request::get(format!("http://{}/apix", server.addr()))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(server.api_requests(), 3);
    }

    #[tokio::test]
    async fn tcp_form_with_basic_auth_and_special_secret() {
        let server = TestServer::builder()
            .client_id("my client")
            .client_secret("p+ss:wörd")
            .start()
            .await
            .unwrap();
        let client = tcp_client();
        let body = format!(
            "grant_type=client_credentials&audience={}&scope=read+write&extra=1",
            form_urlencoded::byte_serialize(server.audience().as_bytes()).collect::<String>()
        );
        let mut request = form_request(
            &server.token_url(),
            "application/x-www-form-urlencoded; charset=UTF-8",
            &body,
        );
        request.headers_mut().insert(
            AUTHORIZATION,
            basic("my client", "p+ss:wörd").parse().unwrap(),
        );
        let (status, _, json) = into_json(client.request(request).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        assert_eq!(json["scope"], "read write");
        let claims = claims(json["access_token"].as_str().unwrap());
        assert_eq!(claims["sub"], "my client@clients");
        assert_eq!(claims["scope"], "read write");

        // Unencoded '+' means a space: the secret no longer matches.
        let raw = format!("Basic {}", STANDARD.encode("my+client:p+ss:wörd"));
        let mut request = form_request(
            &server.token_url(),
            "application/x-www-form-urlencoded",
            "grant_type=client_credentials",
        );
        request
            .headers_mut()
            .insert(AUTHORIZATION, raw.parse().unwrap());
        let (status, headers, json) = into_json(client.request(request).await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(json["error"], "invalid_client");
        assert!(headers[http::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic"));

        // Credentials both in the header and in the body.
        let mut request = form_request(
            &server.token_url(),
            "application/x-www-form-urlencoded",
            "grant_type=client_credentials&client_id=my+client&client_secret=x",
        );
        request.headers_mut().insert(
            AUTHORIZATION,
            basic("my client", "p+ss:wörd").parse().unwrap(),
        );
        let (status, _, json) = into_json(client.request(request).await.unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["error"], "invalid_request");
        assert_eq!(server.tokens_issued(), 1);
        assert_eq!(server.token_requests(), 3);
    }

    #[tokio::test]
    async fn tcp_wrong_secret_is_invalid_client() {
        let server = TestServer::start().await.unwrap();
        let body = "grant_type=client_credentials&client_id=test-client&client_secret=wrong-secret";
        let request = form_request(
            &server.token_url(),
            "application/x-www-form-urlencoded",
            body,
        );
        let response = tcp_client().request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
        assert_eq!(parts.headers[CONTENT_TYPE], "application/json");
        assert_eq!(parts.headers[CACHE_CONTROL], "no-store");
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["error"], "invalid_client");
        assert!(!text.contains("wrong-secret") && !text.contains("test-secret"));
        assert!(!parts.headers.contains_key(http::header::WWW_AUTHENTICATE));
        assert_eq!(server.tokens_issued(), 0);
        assert_eq!(server.token_requests(), 1);
    }

    #[tokio::test]
    async fn token_endpoint_errors() {
        let server = TestServer::start().await.unwrap();
        let url = server.token_url();
        let mut transport = server.token_transport();
        let form = "application/x-www-form-urlencoded";
        let ok = "grant_type=client_credentials&client_id=test-client&client_secret=test-secret";
        let cases: Vec<(Request<Full<Bytes>>, StatusCode, &str)> = vec![
            (
                Request::get(&url).body(Full::default()).unwrap(),
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
            ),
            (
                form_request(&url, "text/plain", ok),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                form_request(&url, "application/json", "{not json"),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                form_request(&url, form, &format!("{ok}&client_id=test-client")),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                form_request(
                    &url,
                    form,
                    "client_id=test-client&client_secret=test-secret",
                ),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                form_request(&url, form, &ok.replace("client_credentials", "password")),
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
            ),
            (
                form_request(&url, form, &ok.replace("test-client", "other")),
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                form_request(&url, form, "grant_type=client_credentials"),
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                form_request(&url, form, &format!("{ok}&audience=https%3A%2F%2Fother")),
                StatusCode::FORBIDDEN,
                "access_denied",
            ),
        ];
        for (index, (request, status, error)) in cases.into_iter().enumerate() {
            let (got, headers, json) = in_process(&mut transport, request).await;
            assert_eq!((index, got), (index, status), "{json}");
            assert_eq!(json["error"], error, "case {index}");
            assert!(json["error_description"].is_string());
            assert_eq!(headers[CACHE_CONTROL], "no-store");
            assert_eq!(headers[CONTENT_TYPE], "application/json");
            assert!(!json.to_string().contains("test-secret"));
        }
        assert_eq!(server.token_requests(), 9);
        assert_eq!(server.tokens_issued(), 0);

        let (status, _, _) = in_process(&mut transport, form_request(&url, "Application/JSON ; charset=utf-8", r#"{"grant_type":"client_credentials","client_id":"test-client","client_secret":"test-secret","audience":"https://api.test.entur.io","other":[1]}"#)).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = in_process(&mut transport, form_request("/nowhere", form, ok)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test(start_paused = true)]
    async fn token_expires_after_its_lifetime() {
        let server = TestServer::builder()
            .token_lifetime(Duration::from_millis(30_500))
            .start()
            .await
            .unwrap();
        let (_, _, json) = in_process(&mut server.token_transport(), json_request(&server)).await;
        assert_eq!(json["expires_in"], 31);
        let token = json["access_token"].as_str().unwrap().to_owned();
        let claims = claims(&token);
        assert!(claims["exp"].as_u64().unwrap() >= claims["iat"].as_u64().unwrap() + 31);
        let mut api = server.api_service();

        tokio::time::advance(Duration::from_secs(30)).await;
        let (status, _, _) = in_process(&mut api, api_request(&server, "", Some(&token))).await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::advance(Duration::from_millis(500)).await;
        let (status, headers, _) =
            in_process(&mut api, api_request(&server, "", Some(&token))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            headers[http::header::WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
        assert_eq!(server.api_rejections(), 1);

        server.set_token_lifetime(Duration::from_millis(10));
        let (_, _, json) = in_process(&mut server.token_transport(), json_request(&server)).await;
        assert_eq!(json["expires_in"], 1);
        server.set_token_lifetime(Duration::ZERO);
        let token = get_token(&server).await;
        let (status, _, _) = in_process(&mut api, api_request(&server, "", Some(&token))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test(start_paused = true)]
    async fn revoke_all_rejects_earlier_tokens() {
        let server = TestServer::start().await.unwrap();
        let first = get_token(&server).await;
        let second = get_token(&server).await;
        assert_ne!(first, second);
        assert_ne!(claims(&first)["jti"], claims(&second)["jti"]);
        server.revoke_all();
        let mut api = server.api_service();
        for token in [&first, &second] {
            let (status, _, _) =
                in_process(&mut api, api_request(&server, "/a", Some(token))).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        let third = get_token(&server).await;
        let (status, _, json) =
            in_process(&mut api, api_request(&server, "/a", Some(&third))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["jti"], claims(&third)["jti"]);
        assert_eq!((server.api_requests(), server.api_rejections()), (3, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn faults_are_applied_in_order() {
        let server = TestServer::start().await.unwrap();
        let mut transport = server.token_transport();
        server.set_sticky_fault(Some(Fault::status(StatusCode::INTERNAL_SERVER_ERROR)));
        server.push_fault(Fault::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: "busy".into(),
            retry_after: Some("7".into()),
        });
        server.push_fault(Fault::oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"));
        server.push_fault(Fault::Respond {
            status: StatusCode::OK,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-a".into(), "b".into()),
            ],
            body: Bytes::from_static(b"{\"access_token\": 12"),
        });

        let response = transport.call(json_request(&server)).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "7");
        assert_eq!(
            response.headers()[CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "busy"
        );

        let (status, headers, json) = in_process(&mut transport, json_request(&server)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(json["error"], "invalid_grant");
        assert_eq!(headers[CONTENT_TYPE], "application/json");

        let response = transport.call(json_request(&server)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-a"], "b");
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "{\"access_token\": 12"
        );

        for _ in 0..2 {
            let response = transport.call(json_request(&server)).await.unwrap();
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        }
        server.set_sticky_fault(None);
        let (status, _, _) = in_process(&mut transport, json_request(&server)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(server.token_requests(), 6);
        assert_eq!(server.tokens_issued(), 1);

        server.push_fault(Fault::Delay(Duration::from_secs(5)));
        let start = tokio::time::Instant::now();
        let (status, _, _) = in_process(&mut transport, json_request(&server)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(start.elapsed() >= Duration::from_secs(5));
        assert_eq!((server.token_requests(), server.tokens_issued()), (7, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn refuse_and_hang_in_process() {
        let server = TestServer::start().await.unwrap();
        let mut transport = server.token_transport();
        server.push_fault(Fault::Refuse);
        let error = transport.call(json_request(&server)).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);

        server.push_fault(Fault::Hang);
        let pending = tokio::time::timeout(
            Duration::from_secs(3600),
            transport.call(json_request(&server)),
        )
        .await;
        assert!(pending.is_err(), "a hanging request must stay pending");
        assert_eq!((server.token_requests(), server.tokens_issued()), (2, 0));

        // The API service never fails, even when sent to a refusing token endpoint.
        server.push_fault(Fault::Refuse);
        let response = server
            .api_service()
            .call(json_request(&server))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let _ = get_token(&server).await;
    }

    #[tokio::test(start_paused = true)]
    async fn trickle_in_process() {
        let server = TestServer::start().await.unwrap();
        server.push_fault(Fault::Trickle {
            interval: Duration::from_millis(100),
        });
        let start = tokio::time::Instant::now();
        let response = server
            .token_transport()
            .call(json_request(&server))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let total = body.size_hint().exact().unwrap() as usize;
        let mut collected = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert_eq!(data.len(), 1);
            collected.extend_from_slice(&data);
        }
        assert_eq!(collected.len(), total);
        assert_eq!(start.elapsed(), Duration::from_millis(100) * total as u32);
        let json: Value = serde_json::from_slice(&collected).unwrap();
        assert_eq!(json["token_type"], "Bearer");
        assert_eq!(server.tokens_issued(), 1);
    }

    #[tokio::test]
    async fn tcp_faults() {
        let server = TestServer::start().await.unwrap();
        let client = tcp_client();

        server.push_fault(Fault::Refuse);
        assert!(tcp_client().request(json_request(&server)).await.is_err());

        server.push_fault(Fault::Hang);
        let hang = tokio::time::timeout(
            Duration::from_millis(200),
            tcp_client().request(json_request(&server)),
        )
        .await;
        assert!(hang.is_err());

        server.push_fault(Fault::Trickle {
            interval: Duration::from_millis(1),
        });
        let start = std::time::Instant::now();
        let (status, _, json) =
            into_json(client.request(json_request(&server)).await.unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        let len = json.to_string().len();
        assert!(
            start.elapsed() >= Duration::from_millis(len as u64),
            "{:?}",
            start.elapsed()
        );
        assert_eq!((server.token_requests(), server.tokens_issued()), (3, 1));
    }

    #[tokio::test]
    async fn dropping_the_server_stops_it() {
        let server = TestServer::start().await.unwrap();
        let addr = server.addr();
        let clone = server.clone();
        drop(server);
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());

        // A connection kept open by a hanging request is closed too.
        clone.push_fault(Fault::Hang);
        let transport = clone.token_transport();
        let request = json_request(&clone);
        let pending = tokio::spawn(tcp_client().request(request));
        while clone.token_requests() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(clone);
        let result = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .unwrap()
            .unwrap();
        assert!(result.is_err());
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(refused, "the listener must be closed");

        // In-process access keeps working.
        let mut transport = transport;
        let body = r#"{"grant_type":"client_credentials","client_id":"test-client","client_secret":"test-secret"}"#;
        let (status, _, _) = in_process(
            &mut transport,
            form_request("/oauth/token", "application/json", body),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn debug_hides_secrets() {
        let server = TestServer::builder()
            .client_secret("s3cr3t-value")
            .start()
            .await
            .unwrap();
        let token = get_token(&server).await;
        let debug = format!(
            "{server:?} {:?} {:?} {:?}",
            TestServer::builder().client_secret("s3cr3t-value"),
            server.token_transport(),
            server.api_service()
        );
        assert!(!debug.contains("s3cr3t-value"), "{debug}");
        assert!(!debug.contains(&token));
        assert!(debug.contains("tokens_issued: 1"));
    }
}
