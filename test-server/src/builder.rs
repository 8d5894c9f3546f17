//! [`TestServerBuilder`]: how the server behaves.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{
    accept_loop, assertion, log, signing, Inner, Shared, State, TestServer, API_PATH,
    DEFAULT_AUDIENCE, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_LIFETIME, JWKS_PATH,
    TOKEN_PATH,
};

/// Builder for a [`TestServer`], made by [`TestServer::builder`].
#[derive(Clone)]
pub struct TestServerBuilder {
    lifetime: Duration,
    client_id: String,
    client_secret: String,
    audience: String,
    clock_offset_secs: i64,
    require_audience: bool,
    strict: bool,
    sign_tokens: bool,
    log_capacity: usize,
    client_public_key_pem: Option<String>,
    client_key_id: Option<String>,
    assertion_audience: Option<String>,
    https: Option<(String, String)>,
    client_ca_pem: Option<String>,
}

impl Default for TestServerBuilder {
    /// The defaults: a token lifetime of 60 s, client id `test-client`,
    /// client secret `test-secret`, audience `https://api.test.entur.io`
    /// (required, as Entur's Auth0 requires it), the server's clock in
    /// agreement with this machine's, Entur's leniency (JSON or form bodies,
    /// credentials in the body or with HTTP Basic) rather than strict RFC
    /// 6749, and a request log of 10,000 entries.
    fn default() -> TestServerBuilder {
        TestServerBuilder {
            lifetime: DEFAULT_LIFETIME,
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            clock_offset_secs: 0,
            require_audience: true,
            strict: false,
            sign_tokens: true,
            log_capacity: log::DEFAULT_LOG_CAPACITY,
            client_public_key_pem: None,
            client_key_id: None,
            assertion_audience: None,
            https: None,
            client_ca_pem: None,
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
            .field("require_audience", &self.require_audience)
            .field("strict_rfc", &self.strict)
            .field("sign_tokens", &self.sign_tokens)
            .field("request_log_capacity", &self.log_capacity)
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

    /// Whether a token request must name the [audience](Self::audience)
    /// (default `true`).
    ///
    /// When required, as Auth0 (Entur's authorization server) requires it,
    /// a request without `audience` is refused with `403`
    /// `{"error":"access_denied","error_description":"No audience parameter
    /// was provided, and no default audience has been configured"}`, so a
    /// client that forgets [`TokenEndpoint::audience`](entur_auth::TokenEndpoint::audience)
    /// fails its tests as it would fail in production. With `false`, the
    /// server behaves as an Auth0 tenant with a default audience, or as a
    /// server that knows no audience: a request without one gets a token for
    /// the configured audience. Either way, another audience is refused with
    /// `403 access_denied` (`Service not found: …`).
    ///
    /// ```
    /// use entur_auth_test::TestServer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = TestServer::builder().require_audience(false).start().await?;
    /// // A plain RFC 6749 endpoint, without an audience, gets tokens.
    /// let endpoint = entur_auth::TokenEndpoint::new(&server.token_url())?;
    /// let source = entur_auth::TokenSource::builder(endpoint, server.credentials())
    ///     .allow_http_loopback(true)
    ///     .transport(server.token_transport())
    ///     .build()?;
    /// source.prefetch().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn require_audience(mut self, required: bool) -> Self {
        self.require_audience = required;
        self
    }

    /// Strict RFC 6749 and RFC 6750 (default `false`: Entur's leniency).
    ///
    /// In strict mode the token endpoint
    ///
    /// * accepts only `application/x-www-form-urlencoded` bodies (RFC 6749
    ///   section 4.4.2): JSON is refused with `400 invalid_request`;
    /// * authenticates the client with HTTP Basic only (section 2.3.1):
    ///   credentials in the body, or none, are refused with
    ///   `401 invalid_client` and `WWW-Authenticate: Basic realm="…"`
    ///   (section 5.2);
    /// * sends `WWW-Authenticate` with every 401, injected [`Fault::Status`]
    ///   ones included, and `Pragma: no-cache` with `Cache-Control: no-store`
    ///   (section 5.1);
    ///
    /// and the API
    ///
    /// * sends a `Bearer realm="…"` challenge with every 401, injected
    ///   [`ApiFault::Status`] ones included (RFC 6750 section 3);
    /// * refuses a request that sends its token more than once (two
    ///   `Authorization` headers, or one and an `access_token` query
    ///   parameter) with `400` and `error="invalid_request"` (section 3.1).
    ///
    /// [`Fault::Respond`] and [`ApiFault::Respond`] still send exactly the
    /// headers given. [`TestServer::endpoint`] follows the mode: form bodies
    /// and HTTP Basic in strict mode.
    ///
    /// [`Fault::Status`]: crate::Fault::Status
    /// [`ApiFault::Status`]: crate::ApiFault::Status
    /// [`ApiFault::Respond`]: crate::ApiFault::Respond
    /// [`Fault::Respond`]: crate::Fault::Respond
    pub fn strict_rfc(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Whether the tokens are signed (default `true`): RS256 with the test
    /// key served at [`TestServer::jwks_url`].
    ///
    /// Signing costs about a millisecond of CPU per token (RSA-2048); a test
    /// that issues tens of thousands of tokens and never checks a signature
    /// can turn it off. The tokens keep their shape (the same header, a
    /// signature of the same length) but the signature is not valid.
    pub fn sign_tokens(mut self, sign: bool) -> Self {
        self.sign_tokens = sign;
        self
    }

    /// Registers a public key for the client (a PEM `PUBLIC KEY`, RSA or EC P-256): the
    /// token endpoint then also accepts `private_key_jwt` client assertions (RFC 7523
    /// section 2.2) and the JWT bearer grant (section 2.1) signed with its private half.
    ///
    /// An assertion is accepted when its signature verifies (RS256 for RSA, ES256 for
    /// P-256), `iss` (and, for client assertions, `sub`) is the client id, `aud` is the
    /// token URL or the issuer (or the one [`assertion_audience`](Self::assertion_audience)),
    /// `exp` is after the server's clock ([`issuer_clock_offset_secs`](Self::issuer_clock_offset_secs)
    /// moves it), `iat` at most 10 s ahead of it, `exp − iat` at most 300 s, and its `jti`
    /// was never seen before. A refused client assertion is `401 invalid_client`, a refused
    /// grant `400 invalid_grant` (RFC 7523 section 3.1), each with a description saying
    /// which check failed; [`TestServer::assertions_replayed`] counts the replays.
    ///
    /// [`start`](Self::start) fails with `InvalidInput` if the PEM is not such a key.
    pub fn client_public_key_pem(mut self, pem: impl Into<String>) -> Self {
        self.client_public_key_pem = Some(pem.into());
        self
    }

    /// The `kid` client assertions must carry (default: any, or none).
    pub fn client_key_id(mut self, kid: impl Into<String>) -> Self {
        self.client_key_id = Some(kid.into());
        self
    }

    /// The one `aud` accepted in client assertions and grants (default: the token URL or
    /// the issuer).
    pub fn assertion_audience(mut self, audience: impl Into<String>) -> Self {
        self.assertion_audience = Some(audience.into());
        self
    }

    /// Serves HTTPS instead of plain HTTP, with the certificate chain `cert_pem` (for
    /// `127.0.0.1`, issued by a CA the client trusts, e.g. with entur-auth's
    /// [`extra_root_certificate`]) and its private key `key_pem`: the URLs become
    /// `https://127.0.0.1:PORT/…`. Make the certificates in the test (rcgen) or keep test-only
    /// fixtures.
    ///
    /// [`start`](Self::start) fails with `InvalidInput` if they cannot be used.
    ///
    /// [`extra_root_certificate`]: https://docs.rs/entur-auth/0.1/entur_auth/struct.TokenSourceBuilder.html#method.extra_root_certificate
    pub fn https(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        self.https = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Mutual TLS (with [`https`](Self::https)): every TLS handshake must present a client
    /// certificate issued by the CA `ca_pem`, or it is refused (counted by
    /// [`TestServer::tls_handshakes_refused`]). A token request that carries the client id
    /// alone, without a secret or an assertion, is then authenticated by its certificate
    /// (RFC 8705 section 2; any certificate of that CA stands for the client, whatever its
    /// subject). [`TestServer::token_request_client_certificates`] tells which certificate
    /// each token request came with.
    pub fn require_client_certificate(mut self, ca_pem: impl Into<String>) -> Self {
        self.client_ca_pem = Some(ca_pem.into());
        self
    }

    /// How many requests the log keeps (default 10,000): beyond, the oldest
    /// entries are dropped and counted (see [`TestServer::requests_log`] and
    /// [`TestServer::requests_log_dropped`]). `0` keeps none.
    ///
    /// Each entry holds the request's headers and body (up to 1 MiB).
    pub fn request_log_capacity(mut self, capacity: usize) -> Self {
        self.log_capacity = capacity;
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
    /// use entur_auth_test::TestServer;
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
    ///
    /// [`Fault::Respond`]: crate::Fault::Respond
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
        let client_key = self
            .client_public_key_pem
            .as_deref()
            .map(assertion::ClientKey::from_spki_pem)
            .transpose()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = match &self.https {
            None if self.client_ca_pem.is_some() => {
                return Err(invalid_input(
                    "require_client_certificate needs https(cert, key) too",
                ))
            }
            None => None,
            Some((cert, key)) => Some(tls_acceptor(cert, key, self.client_ca_pem.as_deref())?),
        };
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let origin = format!("{scheme}://{addr}");
        let shared = Arc::new(Shared {
            addr,
            token_url: format!("{origin}{TOKEN_PATH}"),
            api_url: format!("{origin}{API_PATH}"),
            jwks_url: format!("{origin}{JWKS_PATH}"),
            issuer: origin,
            client_id: self.client_id,
            client_secret: self.client_secret,
            audience: self.audience,
            clock_offset_secs: self.clock_offset_secs,
            require_audience: self.require_audience,
            strict: self.strict,
            sign_tokens: self.sign_tokens,
            signer: signing::signer(),
            client_key,
            client_key_id: self.client_key_id,
            assertion_audience: self.assertion_audience,
            assertions_replayed: AtomicUsize::new(0),
            tls_handshakes_refused: AtomicUsize::new(0),
            requires_client_certificate: self.client_ca_pem.is_some(),
            token_requests: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
            api_requests: AtomicUsize::new(0),
            api_rejections: AtomicUsize::new(0),
            next_jti: AtomicU64::new(1),
            state: Mutex::new(State {
                lifetime: self.lifetime,
                faults: VecDeque::new(),
                sticky_fault: None,
                api_faults: VecDeque::new(),
                sticky_api_fault: None,
                tokens: HashMap::new(),
                last_token_request: None,
                last_api_request: None,
                log: log::RequestLog::new(self.log_capacity),
                jtis: Default::default(),
                client_certificates: Vec::new(),
                client_secret: None,
            }),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), tls)).abort_handle();
        tracing::debug!(%addr, "test server started");
        Ok(TestServer {
            inner: Arc::new(Inner { shared, accept }),
        })
    }
}

fn invalid_input(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.into())
}

/// The server's TLS: its certificate, and in mutual TLS mode the client CA it requires.
fn tls_acceptor(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = |pem: &str, what: &str| {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .filter(|certs| !certs.is_empty())
            .ok_or_else(|| invalid_input(format!("{what} holds no PEM CERTIFICATE")))
    };
    let chain = certs(cert_pem, "the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| invalid_input("the server key holds no PEM PRIVATE KEY"))?;
    #[allow(deprecated)] // ring on purpose: see the `rustls` feature in ../Cargo.toml
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid_input(e.to_string()))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca, "the client CA")? {
                roots
                    .add(cert)
                    .map_err(|e| invalid_input(format!("the client CA: {e}")))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| invalid_input(format!("the client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid_input(format!("the server certificate: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
