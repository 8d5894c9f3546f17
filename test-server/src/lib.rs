//! An embedded OAuth2 authorization server and a protected API, on loopback, for testing
//! code that uses [`entur_auth`] (or any OAuth2 client credentials client).
//!
//! [`TestServer`] runs, on `127.0.0.1` and an ephemeral port, both
//!
//! * a token endpoint (`POST /oauth/token`) implementing the OAuth2
//!   client-credentials grant the way Entur's authorization server (Auth0)
//!   does: JSON or form bodies, client credentials in the body or with HTTP
//!   Basic, and the `audience` parameter required (see
//!   [`TestServerBuilder::require_audience`]; a [strict RFC 6749
//!   mode](TestServerBuilder::strict_rfc) is available), and
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
//! Tokens are JWTs signed with RS256 and a fixed test key whose public half
//! is served as a JWK Set at `/.well-known/jwks.json`
//! ([`TestServer::jwks_url`]), with the metadata at
//! `/.well-known/openid-configuration`: a resource server of your own can
//! be tested against it. The key is public (it is in this crate's source)
//! and must never protect anything real.
//!
//! Faults can be injected into the token endpoint ([`Fault`]: errors,
//! delays, hangs, refused connections, slow bodies; with
//! [`TestServer::push_fault`] and [`TestServer::set_sticky_fault`]) and into
//! the API ([`ApiFault`]: 401, 403 `insufficient_scope`, 429, 503, gRPC
//! statuses in headers or trailers, delays, hangs; with
//! [`TestServer::push_api_fault`] and [`TestServer::set_sticky_api_fault`]).
//! Every request is logged, in order, with how it was answered
//! ([`TestServer::requests_log`]). Token expiry is measured with
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
//! use entur_auth_test::TestServer;
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
//! assert_eq!(server.token_requests_log()[0].jti(), Some("1"));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use entur_auth::{
    BodyEncoding, ClientAuth, Credentials, TokenEndpoint, TokenSource, TokenSourceBuilder,
};
use http::{HeaderMap, Method, Request, Uri};
use serde_json::Value;
use tokio::task::{AbortHandle, JoinSet};

mod api;
mod assertion;
mod body;
mod builder;
mod fault;
mod handler;
mod log;
mod service;
mod signing;
mod token_endpoint;

pub use body::TestBody;
pub use builder::TestServerBuilder;
pub use fault::{ApiFault, Fault};
use handler::handle;
pub use log::{Answer, BearerToken, LoggedRequest, RequestKind, TokenState};
pub use service::{ApiService, ResponseFuture, TokenTransport};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Path of the token endpoint.
const TOKEN_PATH: &str = "/oauth/token";
/// Path of the protected API (and prefix, followed by `/`, of its sub-paths).
const API_PATH: &str = "/api";
/// Path of the JWK Set.
const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Path of the OpenID Connect discovery document.
const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
/// Path of the RFC 8414 authorization server metadata (the same document).
const OAUTH_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// The realm of the server's challenges.
const REALM: &str = "entur-auth-testing";
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

/// An OAuth2 authorization server and a protected API running on loopback.
///
/// A cheap [`Clone`] handle; the server stops when the last clone is dropped.
/// See the [crate documentation](crate).
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
            .field("require_audience", &shared.require_audience)
            .field("strict_rfc", &shared.strict)
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

    /// The issuer, `http://127.0.0.1:PORT`: the `iss` of the tokens, and the
    /// `issuer` of the metadata at `{issuer}/.well-known/openid-configuration`
    /// (and `{issuer}/.well-known/oauth-authorization-server`, RFC 8414).
    pub fn issuer(&self) -> &str {
        &self.inner.shared.issuer
    }

    /// The URL of the JWK Set, `http://127.0.0.1:PORT/.well-known/jwks.json`:
    /// the public key that verifies the tokens' signatures.
    pub fn jwks_url(&self) -> String {
        self.inner.shared.jwks_url.clone()
    }

    /// The JWK Set served at [`jwks_url`](Self::jwks_url): one RSA key,
    /// `{"keys":[{"kty":"RSA","use":"sig","alg":"RS256","kid":…,"n":…,"e":…}]}`.
    pub fn jwks(&self) -> Value {
        self.inner.shared.signer.jwks()
    }

    /// The `kid` of the signing key, in every token's header and in the JWKS
    /// (the key's RFC 7638 thumbprint).
    pub fn key_id(&self) -> &str {
        self.inner.shared.signer.kid()
    }

    /// The public key that verifies the tokens' signatures, as a PEM
    /// `PUBLIC KEY` (SPKI), for JWT libraries that take PEM.
    ///
    /// The key pair is a fixed test key, the same for every server: its
    /// private half is in this crate's source, so it must never protect
    /// anything real.
    pub fn public_key_pem(&self) -> &'static str {
        signing::TEST_PUBLIC_KEY_PEM
    }

    /// Signs `claims` as this server signs its tokens (RS256, its `kid`), to
    /// test a resource server of your own with tokens the server would not
    /// issue: expired, for another audience, without a claim. The server's
    /// API does not accept them (it accepts only the tokens it issued).
    pub fn sign_jwt(&self, claims: &Value) -> String {
        self.inner.shared.signer.sign(claims)
    }

    /// The client id accepted by the server.
    pub fn client_id(&self) -> &str {
        &self.inner.shared.client_id
    }

    /// The secret of the client, as the server was started with (after
    /// [`set_client_secret`](Self::set_client_secret) the server accepts only the new one,
    /// and this and [`credentials`](Self::credentials) still give the first).
    pub fn client_secret(&self) -> &str {
        &self.inner.shared.client_secret
    }

    /// The audience accepted by the server.
    pub fn audience(&self) -> &str {
        &self.inner.shared.audience
    }

    /// How many client assertions or JWT bearer grants were refused because their `jti` had
    /// been used before.
    pub fn assertions_replayed(&self) -> usize {
        self.inner.shared.assertions_replayed.load(Ordering::SeqCst)
    }

    /// How many TLS handshakes the server refused (in [mutual TLS
    /// mode](TestServerBuilder::require_client_certificate): no client certificate, or one
    /// the client CA did not issue).
    pub fn tls_handshakes_refused(&self) -> usize {
        self.inner
            .shared
            .tls_handshakes_refused
            .load(Ordering::SeqCst)
    }

    /// The client certificates (each the leaf, DER) that token requests came with, oldest
    /// first: which certificate a client presented, before and after a rotation.
    pub fn token_request_client_certificates(&self) -> Vec<Vec<u8>> {
        self.inner
            .shared
            .state()
            .client_certificates
            .iter()
            .map(|c| c.to_vec())
            .collect()
    }

    /// Changes the client secret the server accepts, from now on: a secret rotation.
    pub fn set_client_secret(&self, secret: impl Into<String>) {
        self.inner.shared.state().client_secret = Some(secret.into());
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

    /// How many API requests were answered with 401, by the token check or
    /// by an injected [`ApiFault`].
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

    /// Queues an API fault: each queued fault is applied, in FIFO order, to
    /// one API request, whatever token it carries. Queued faults take
    /// precedence over the sticky API fault.
    ///
    /// ```
    /// use entur_auth_test::{ApiFault, TestServer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let server = TestServer::start().await?;
    /// server.push_api_fault(ApiFault::invalid_token()); // the next request: 401
    /// server.push_api_fault(ApiFault::too_many_requests(Some(2))); // then 429
    /// # Ok(())
    /// # }
    /// ```
    pub fn push_api_fault(&self, fault: ApiFault) {
        self.inner.shared.state().api_faults.push_back(fault);
    }

    /// Sets (or clears, with `None`) a fault applied to every API request for
    /// which no fault is queued by [`push_api_fault`](Self::push_api_fault).
    pub fn set_sticky_api_fault(&self, fault: Option<ApiFault>) {
        self.inner.shared.state().sticky_api_fault = fault;
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

    /// Every request in the log, oldest first: token endpoint, API, JWKS,
    /// metadata and unknown paths, in the order their bodies were read, each
    /// with how it was answered (see [`LoggedRequest`]).
    ///
    /// The log keeps the newest [`request_log_capacity`] entries (10,000 by
    /// default); [`requests_log_dropped`](Self::requests_log_dropped) counts
    /// the others.
    ///
    /// [`request_log_capacity`]: TestServerBuilder::request_log_capacity
    pub fn requests_log(&self) -> Vec<LoggedRequest> {
        self.inner.shared.state().log.entries(None)
    }

    /// The token endpoint's requests in the log, oldest first.
    pub fn token_requests_log(&self) -> Vec<LoggedRequest> {
        self.inner
            .shared
            .state()
            .log
            .entries(Some(RequestKind::Token))
    }

    /// The API's requests in the log, oldest first, each with the token it
    /// carried ([`LoggedRequest::bearer`]).
    pub fn api_requests_log(&self) -> Vec<LoggedRequest> {
        self.inner
            .shared
            .state()
            .log
            .entries(Some(RequestKind::Api))
    }

    /// How many entries the log dropped because it was full.
    pub fn requests_log_dropped(&self) -> u64 {
        self.inner.shared.state().log.dropped()
    }

    /// Empties the log (the counters, the dropped count and
    /// [`last_token_request`](Self::last_token_request) are kept).
    pub fn clear_requests_log(&self) {
        self.inner.shared.state().log.clear();
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
    jwks_url: String,
    issuer: String,
    client_id: String,
    client_secret: String,
    audience: String,
    /// The server's wall clock minus this machine's, in seconds.
    clock_offset_secs: i64,
    require_audience: bool,
    strict: bool,
    sign_tokens: bool,
    signer: &'static signing::Signer,
    /// The public key registered for the client: assertions must verify with it.
    client_key: Option<assertion::ClientKey>,
    /// The `kid` assertions must name, when one is registered.
    client_key_id: Option<String>,
    /// The one `aud` accepted in assertions; `None`: the token URL or the issuer.
    assertion_audience: Option<String>,
    /// Assertions refused because their `jti` was used before.
    assertions_replayed: AtomicUsize,
    /// TLS handshakes that failed (no or an untrusted client certificate, in mTLS mode).
    tls_handshakes_refused: AtomicUsize,
    /// Mutual TLS mode.
    requires_client_certificate: bool,
    token_requests: AtomicUsize,
    tokens_issued: AtomicUsize,
    api_requests: AtomicUsize,
    api_rejections: AtomicUsize,
    next_jti: AtomicU64,
    state: Mutex<State>,
}

struct State {
    lifetime: Duration,
    faults: VecDeque<Fault>,
    sticky_fault: Option<Fault>,
    api_faults: VecDeque<ApiFault>,
    sticky_api_fault: Option<ApiFault>,
    tokens: HashMap<String, IssuedToken>,
    last_token_request: Option<RecordedRequest>,
    last_api_request: Option<RecordedRequest>,
    log: log::RequestLog,
    /// The `jti`s of the assertions accepted, until they expire.
    jtis: assertion::SeenJtis,
    /// The client certificates (leaf, DER) token requests came with, in order.
    client_certificates: Vec<Arc<[u8]>>,
    /// The client secret, when a test rotated it ([`TestServer::set_client_secret`]).
    client_secret: Option<String>,
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

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match &tls {
                    // Trickled bodies must leave one byte at a time.
                    _ if stream.set_nodelay(true).is_err() => {}
                    None => {
                        connections.spawn(serve_connection(stream, peer, shared.clone(), None));
                    }
                    Some(acceptor) => {
                        let accept = acceptor.accept(stream);
                        let shared = shared.clone();
                        connections.spawn(async move {
                            match accept.await {
                                Ok(stream) => {
                                    let certificate = stream
                                        .get_ref()
                                        .1
                                        .peer_certificates()
                                        .and_then(|chain| chain.first())
                                        .map(|leaf| PeerCertificate(Arc::from(leaf.as_ref())));
                                    serve_connection(stream, peer, shared, certificate).await;
                                }
                                Err(error) => {
                                    shared.tls_handshakes_refused.fetch_add(1, Ordering::SeqCst);
                                    tracing::debug!(%peer, %error, "test server: TLS handshake refused");
                                }
                            }
                        });
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "test server failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The client certificate a TLS connection presented (its leaf, DER), as a request
/// extension.
#[derive(Clone)]
pub(crate) struct PeerCertificate(pub(crate) Arc<[u8]>);

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    certificate: Option<PeerCertificate>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        if let Some(certificate) = &certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        handle(shared.clone(), request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    if let Err(error) = connection.await {
        tracing::debug!(%peer, %error, "test server connection closed with an error");
    }
}

/// Configuration of entur-auth for the embedded server.
impl TestServer {
    /// The server's credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(self.client_id(), self.client_secret())
    }

    /// The server's token endpoint with its audience, JSON-encoded and with a 408 meaning
    /// "the token expired", as Entur's presets are. In [strict
    /// mode](TestServerBuilder::strict_rfc), form-encoded with HTTP Basic instead, as RFC 6749
    /// asks.
    pub fn endpoint(&self) -> TokenEndpoint {
        let endpoint = TokenEndpoint::new(&self.token_url())
            .expect("the server's token URL is a valid http URL")
            .audience(self.audience())
            .reauth_on_408(true);
        if self.inner.shared.strict {
            endpoint
                .encoding(BodyEncoding::Form)
                .client_auth(ClientAuth::Basic)
        } else {
            endpoint.encoding(BodyEncoding::Json)
        }
    }

    /// A [`TokenSourceBuilder`] for this server that reaches it in-process through
    /// [`token_transport`](Self::token_transport): no sockets, so tests on tokio's paused clock
    /// control every timeout and expiry.
    pub fn source_builder(&self) -> TokenSourceBuilder {
        TokenSource::builder(self.endpoint(), self.credentials())
            .allow_http_loopback(true)
            .transport(self.token_transport())
    }
}

#[cfg(test)]
mod tests;
