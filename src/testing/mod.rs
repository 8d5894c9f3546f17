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
//! The server's wall clock can be set apart from this machine's with
//! [`TestServerBuilder::issuer_clock_offset_secs`], to test clients against
//! an authorization server whose clock is skewed.
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

mod body;
mod handler;

pub use body::TestBody;
use handler::{handle, no_store_json};

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

/// Builder for a [`TestServer`], made by [`TestServer::builder`].
#[derive(Clone)]
pub struct TestServerBuilder {
    lifetime: Duration,
    client_id: String,
    client_secret: String,
    audience: String,
    clock_offset_secs: i64,
}

impl Default for TestServerBuilder {
    /// The defaults: a token lifetime of 60 s, client id `test-client`,
    /// client secret `test-secret`, audience `https://api.test.entur.io` and
    /// the server's clock in agreement with this machine's.
    fn default() -> TestServerBuilder {
        TestServerBuilder {
            lifetime: DEFAULT_LIFETIME,
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            clock_offset_secs: 0,
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
            .field("issuer_clock_offset_secs", &self.clock_offset_secs)
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

    /// How far the token server's wall clock is from this machine's, in
    /// seconds: positive when the server's clock is ahead, negative when it
    /// is behind (default 0).
    ///
    /// It applies to what the server says about wall-clock time: the `iat`
    /// and `exp` claims of the tokens it issues, and the `Date` header of
    /// the token endpoint's answers (not those of [`Fault::Respond`], which
    /// carry exactly the headers given). What is relative or monotonic is
    /// unchanged: `expires_in` and the API's own expiry check. Times are
    /// kept between 1970 and 9999.
    ///
    /// ```
    /// use entur_auth::testing::TestServer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// // An authorization server whose clock is two hours behind.
    /// let server = TestServer::builder()
    ///     .issuer_clock_offset_secs(-2 * 3600)
    ///     .start()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn issuer_clock_offset_secs(mut self, offset_secs: i64) -> Self {
        self.clock_offset_secs = offset_secs;
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
            clock_offset_secs: self.clock_offset_secs,
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
    /// The server's wall clock minus this machine's, in seconds.
    clock_offset_secs: i64,
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

    /// The server's wall clock, since the Unix epoch: this machine's, moved by
    /// the configured offset, kept between 1970 and the end of 9999 (what an
    /// HTTP date can say).
    fn issuer_now(&self) -> Duration {
        /// 9999-12-31T23:59:59Z.
        const LAST_HTTP_DATE: u64 = 253_402_300_799;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let offset = Duration::from_secs(self.clock_offset_secs.unsigned_abs());
        let shifted = if self.clock_offset_secs >= 0 {
            now.saturating_add(offset)
        } else {
            now.saturating_sub(offset)
        };
        shifted.min(Duration::from_secs(LAST_HTTP_DATE))
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

/// Configuration of this crate for the embedded server.
impl TestServer {
    /// The server's credentials.
    pub fn credentials(&self) -> crate::Credentials {
        crate::Credentials::new(self.client_id(), self.client_secret())
    }

    /// The server's token endpoint with its audience, JSON-encoded and with a 408 meaning
    /// "the token expired", as Entur's presets are.
    pub fn endpoint(&self) -> crate::TokenEndpoint {
        crate::TokenEndpoint::new(&self.token_url())
            .expect("the server's token URL is a valid http URL")
            .audience(self.audience())
            .encoding(crate::BodyEncoding::Json)
            .reauth_on_408(true)
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
mod tests;
