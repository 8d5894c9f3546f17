//! Configuring and starting a [`TokenSource`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;
use tower::Service;

use super::reauth::Backoff;
use super::registry::{self, SourceKey};
use super::supervisor::{check_timers, Supervisor};
use super::{FetchHook, FetchOutcome, FetchState, Handle, Settings, Shared, TokenSource};
use crate::error::{BoxError, Error};
use crate::oauth::exchange::{self, TokenRequest, TokenRequestBody, Transport};
use crate::oauth::{Credentials, TokenEndpoint};
use crate::source::token::Lifecycle;

/// Configures a [`TokenSource`]; from [`TokenSource::builder`].
///
/// Every setting has a default that suits Entur's 24-hour tokens; see the README's
/// configuration table.
pub struct TokenSourceBuilder {
    endpoint: TokenEndpoint,
    credentials: Credentials,
    lifecycle: Lifecycle,
    fetch_timeout: Duration,
    min_reauth_interval: Duration,
    transient: (Duration, Duration),
    rejected: (Duration, Duration),
    max_response_bytes: usize,
    allow_http_loopback: bool,
    client_name: Option<crate::ClientName>,
    transport: Option<Box<dyn FnOnce(usize) -> Transport + Send>>,
    #[cfg(feature = "rustls")]
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    #[cfg(feature = "rustls")]
    proxy: crate::oauth::transport::ProxySettings,
    #[cfg(feature = "rustls")]
    client_certificate: Option<crate::oauth::transport::IdentitySource>,
    deferred_error: Option<Error>,
    seed: Option<u64>,
    on_fetch: Option<FetchHook>,
    stall_timeout: Duration,
    #[cfg(feature = "shared-store")]
    store: Option<Arc<dyn crate::source::store::TokenStore>>,
    #[cfg(feature = "shared-store")]
    store_settings: crate::source::store::StoreSettings,
    #[cfg(feature = "shared-store")]
    store_key: Option<Arc<[u8]>>,
}

impl fmt::Debug for TokenSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("TokenSourceBuilder");
        f.field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials)
            .field("fetch_timeout", &self.fetch_timeout)
            .field("allow_http_loopback", &self.allow_http_loopback);
        // The proxy URL is shown without its credentials.
        #[cfg(feature = "rustls")]
        f.field("proxy", &self.proxy)
            .field("client_certificate", &self.client_certificate);
        f.finish_non_exhaustive()
    }
}

impl TokenSourceBuilder {
    pub(super) fn new(endpoint: TokenEndpoint, credentials: Credentials) -> Self {
        Self {
            endpoint,
            credentials,
            lifecycle: Lifecycle::default(),
            fetch_timeout: Duration::from_secs(10),
            min_reauth_interval: Duration::from_secs(5),
            transient: (Duration::from_millis(500), Duration::from_secs(30)),
            rejected: (Duration::from_secs(30), Duration::from_secs(600)),
            max_response_bytes: 64 * 1024,
            allow_http_loopback: false,
            client_name: None,
            transport: None,
            #[cfg(feature = "rustls")]
            extra_roots: Vec::new(),
            #[cfg(feature = "rustls")]
            proxy: Default::default(),
            #[cfg(feature = "rustls")]
            client_certificate: None,
            deferred_error: None,
            seed: None,
            on_fetch: None,
            stall_timeout: Duration::from_secs(5),
            #[cfg(feature = "shared-store")]
            store: None,
            #[cfg(feature = "shared-store")]
            store_settings: Default::default(),
            #[cfg(feature = "shared-store")]
            store_key: None,
        }
    }

    /// Fraction of the lifetime after which the background refresh starts. Default `0.75`;
    /// must be in `0.1..=0.95`. The refresh always starts at least one safety margin
    /// (`min(30 s, 10 %)` of the lifetime) before the token is retired, so with short tokens
    /// a high fraction is brought forward.
    pub fn refresh_at(mut self, fraction: f64) -> Self {
        self.lifecycle.refresh_at = fraction;
        self
    }

    /// Largest random amount, as a fraction of the lifetime, by which each refresh is moved
    /// earlier, so that many processes do not refresh in step. Default `0.05`; must be in
    /// `0.0..=0.25` and at most half of [`refresh_at`](Self::refresh_at) (a larger jitter
    /// could move refreshes right after issue and multiply the token requests):
    /// [`build`](Self::build) refuses other values.
    pub fn refresh_jitter(mut self, fraction: f64) -> Self {
        self.lifecycle.jitter = fraction;
        self
    }

    /// Lifetime assumed when the server sends neither `expires_in` nor a usable JWT `exp`
    /// (one that is already past by this machine's clock, with nothing else to go by, is
    /// logged and counts as none). Default 5 minutes.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifecycle.default_lifetime = lifetime;
        self
    }

    /// Time limit for one token request, body included, independent of any timeout the
    /// callers use. Default 10 s.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Shortest time between two forced refreshes caused by
    /// [`TokenSource::invalidate`] (an API answering 401). Default 5 s.
    pub fn min_reauth_interval(mut self, interval: Duration) -> Self {
        self.min_reauth_interval = interval;
        self
    }

    /// Backoff after transient failures (unreachable, timeout, 5xx, 429): the first retry
    /// after `initial`, then up to twice as long each time, with jitter, at most `max`.
    /// `Retry-After` is honoured when longer (up to 10 minutes). Default 500 ms and 30 s.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.transient = (initial, max);
        self
    }

    /// Backoff after the server rejected the credentials, answered with something that is not
    /// a token, or pointed at a configuration error: a slow schedule, so that bad credentials
    /// never hammer the authorization server. Default 30 s and 10 minutes.
    pub fn rejected_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.rejected = (initial, max);
        self
    }

    /// Largest token response body read. Default 64 KiB.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// Allows an `http://` token URL when its host is a loopback address (`127.0.0.0/8`,
    /// `::1`, `localhost`): for test servers and demos. Default `false`: only `https://`.
    pub fn allow_http_loopback(mut self, allow: bool) -> Self {
        self.allow_http_loopback = allow;
        self
    }

    /// The `ET-Client-Name` (`<company>-<application>`, which every call to an Entur API
    /// must carry) that each adapter built from this source sends: [`EnturAuthLayer::new`](crate::EnturAuthLayer::new),
    /// `EnturAuthMiddleware::new` and `EnturAuthInterceptor::new` alike, so that no stack
    /// loses it. [`EnturAuthLayer::client_name`](crate::EnturAuthLayer::client_name) sets
    /// another for one layer. [`Config`](crate::Config) sets it from `ET_CLIENT_NAME`. Not sent
    /// on token requests.
    pub fn client_name(mut self, name: crate::ClientName) -> Self {
        self.client_name = Some(name);
        self
    }

    /// Sends token requests through `transport` instead of the default HTTPS client: any
    /// tower service taking `http::Request<TokenRequestBody>`. The source adds its own
    /// timeout and body size cap. The transport must not follow redirects.
    pub fn transport<S, B>(mut self, transport: S) -> Self
    where
        S: Service<http::Request<TokenRequestBody>, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        self.transport = Some(Box::new(move |cap| exchange::erase(transport, cap)));
        self
    }

    /// Trusts an extra root certificate for the default HTTPS client, besides the webpki
    /// roots: for a token endpoint behind a private CA. PEM (one or more `CERTIFICATE`
    /// blocks) or DER.
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn extra_root_certificate(mut self, certificate: impl AsRef<[u8]>) -> Self {
        let bytes = certificate.as_ref();
        if !bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            let der = rustls::pki_types::CertificateDer::from(bytes.to_vec());
            self.extra_roots.push(der);
            return self;
        }
        match crate::oauth::transport::certificates_from_pem(bytes) {
            Ok(certs) => self.extra_roots.extend(certs),
            Err(e) => self.deferred_error = self.deferred_error.or(Some(e)),
        }
        self
    }

    /// Presents the TLS client certificate in the PEM file `cert` (the certificate, then any
    /// intermediates), with the private key in the PEM file `key`, on every connection of the
    /// default HTTPS client to the token endpoint: mutual TLS client authentication (RFC 8705
    /// section 2), with [`Credentials::tls_client_auth`](crate::Credentials::tls_client_auth)
    /// or with any other credentials the server wants besides.
    ///
    /// The files are read when the source is built, and again when either file's
    /// modification time changes: a certificate renewed in place (cert-manager, a Kubernetes
    /// secret volume) is presented from the next token request on, without a restart or a new
    /// source. Every token request opens its own connection for this. Files that changed but
    /// cannot be used (half-written, a key that does not match the certificate yet) are
    /// logged and the previous certificate is kept.
    ///
    /// [`build`](Self::build) fails with [`ErrorKind::Config`](crate::ErrorKind::Config) naming the file and what is wrong:
    /// unreadable, no `CERTIFICATE` or `PRIVATE KEY` block, a key of another certificate or
    /// of an unsupported kind. Not for a [`transport`](Self::transport) of your own (it has its
    /// own TLS).
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn client_certificate_files(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.client_certificate = Some(crate::oauth::transport::IdentitySource::Files {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// As [`client_certificate_files`](Self::client_certificate_files), from PEM in memory
    /// (never reloaded: to rotate, use files, or build a new source).
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn client_certificate_pem(mut self, cert: &[u8], key: &[u8]) -> Self {
        self.client_certificate = Some(crate::oauth::transport::IdentitySource::Pem {
            cert: cert.to_vec(),
            key: key.to_vec(),
        });
        self
    }

    /// Whether the default HTTPS client reads its proxy from the environment when the source
    /// is built: `HTTPS_PROXY`, else `https_proxy`, `ALL_PROXY`, `all_proxy`, with the hosts
    /// that bypass it in `NO_PROXY` (else `no_proxy`), as curl reads them. Default `true`.
    /// `HTTP_PROXY` is not used: plain `http://` token URLs (loopback only) are never
    /// proxied. None of the proxy settings apply to a [`transport`](Self::transport) of your
    /// own. See the README's "Egress proxy".
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn proxy_from_env(mut self, enabled: bool) -> Self {
        self.proxy.from_env = enabled;
        self
    }

    /// Sends the default HTTPS client's token requests through this HTTP proxy
    /// (`http://host:port`, or `http://user:password@host:port` for `Proxy-Authorization:
    /// Basic`), tunnelled with `CONNECT`: TLS runs end to end, the proxy never sees the
    /// credentials or the token. The proxy environment variables, `NO_PROXY` included, are
    /// then not read. Its credentials never appear in `Debug`, logs or errors.
    ///
    /// [`build`](Self::build) refuses a URL that is not `http://host:port` (with a port).
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy.explicit = Some(url.into());
        self
    }

    /// Hosts that bypass the proxy, in `NO_PROXY` syntax (comma-separated host names, which
    /// also match their subdomains, IP addresses, CIDR ranges, or `*`); replaces `NO_PROXY`
    /// for the proxy from [`proxy`](Self::proxy) or from the environment.
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn no_proxy(mut self, rules: impl Into<String>) -> Self {
        self.proxy.no_proxy = Some(rules.into());
        self
    }

    /// Reads the proxy variables through `lookup` instead of the process environment: for
    /// tests, which would race on the process environment. Not a stable API.
    #[doc(hidden)]
    #[cfg(feature = "rustls")]
    pub fn proxy_env_lookup(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        let lookup: crate::oauth::transport::EnvLookup = Arc::new(lookup);
        self.proxy.env = Some(lookup);
        self
    }

    /// Calls `hook` after every token request, and after every token adopted from a shared
    /// store (`FetchOutcome::origin` tells them apart), with its [`FetchOutcome`]: to feed your
    /// own metrics (fetch count, failures by kind, latency). It runs on the refresher task: keep
    /// it quick. A panic in it is caught and logged.
    ///
    /// The source owns the hook: a hook that holds a [`TokenSource`] would keep the source
    /// (and its background task) alive forever. To reach the source from the hook, capture a
    /// [`WeakTokenSource`](super::WeakTokenSource) from [`TokenSource::downgrade`], set
    /// after building through a `OnceLock`, or read [`FetchOutcome`] alone.
    pub fn on_fetch(mut self, hook: impl Fn(&FetchOutcome<'_>) + Send + Sync + 'static) -> Self {
        self.on_fetch = Some(Arc::new(hook));
        self
    }

    /// Shares one token with every other source (in this or other processes) that uses the
    /// same `store`, token URL, client id, audience and scope: see [`crate::source::store`]. The
    /// store is consulted only when this source's token is due for refresh or missing.
    #[cfg(feature = "shared-store")]
    #[cfg_attr(docsrs, doc(cfg(feature = "shared-store")))]
    pub fn shared_store(mut self, store: impl crate::source::store::TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The key the shared store's tokens are encrypted with (through HKDF-SHA256), instead
    /// of one derived from the client secret: required for credentials without a secret
    /// (private key, client certificate), and the way to keep replicas sharing through a
    /// secret rotation. Every replica sharing the store must have the same; at least 32
    /// bytes, random. See [`crate::source::store`]'s "When to set a store key". Never shown in
    /// `Debug`, logs or errors.
    ///
    /// [`build`](Self::build) refuses a key shorter than 32 bytes.
    #[cfg(feature = "shared-store")]
    #[cfg_attr(docsrs, doc(cfg(feature = "shared-store")))]
    pub fn store_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.store_key = Some(Arc::from(key.as_ref()));
        self
    }

    /// Limit on each call to the shared store (default 500 ms); past it, the store counts as
    /// unavailable and this source fetches for itself.
    #[cfg(feature = "shared-store")]
    #[cfg_attr(docsrs, doc(cfg(feature = "shared-store")))]
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_settings.op_timeout = timeout;
        self
    }

    /// How long the background refresher may leave the watchdog's probe unanswered before it
    /// counts as stopped. Default 5 s.
    ///
    /// The refresher runs on the tokio runtime the source was built on. If that runtime stops
    /// running it (a current-thread runtime nobody drives any more, all workers blocked), its
    /// timers cannot retire the token or bound a fetch. A watchdog thread probes the refresher
    /// this long before the current token's usable time ends, and while callers wait with no
    /// token; a refresher that does not answer in time is declared stopped
    /// ([`Health::Stopped`](crate::Health::Stopped)): its token is no longer sent, and the
    /// next caller's runtime takes the refreshing over.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Seeds the random jitter of refreshes and retries, for reproducible tests.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds the source and starts its background task on the current tokio runtime. No
    /// token is fetched until one is needed (or [`TokenSource::ready`] is called).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when a setting is out of range, the token URL is plain `http://`
    /// (unless [`allow_http_loopback`](Self::allow_http_loopback) and the host is loopback),
    /// the [`User-Agent`](TokenEndpoint::user_agent) is not a valid header value, the client
    /// id cannot be sent with [`ClientAuth::BasicUnencoded`](crate::ClientAuth::BasicUnencoded)
    /// (it holds a `:`), an extra root certificate is invalid, the proxy URL (from the
    /// environment or [`proxy`](Self::proxy)) is unusable, no transport is available, or there
    /// is no tokio runtime.
    pub fn build(self) -> Result<TokenSource, Error> {
        if let Some(error) = self.deferred_error {
            return Err(error);
        }
        check_url(self.endpoint.url(), self.allow_http_loopback)?;
        self.check_settings()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config(
                "TokenSource::build was called outside a tokio runtime: build it inside one, the background refresher runs on it",
            )
        })?;
        check_timers()?;
        let request = TokenRequest::new(&self.endpoint)?;
        request.check(&self.credentials)?;
        #[cfg(feature = "rustls")]
        if self.transport.is_some() && self.client_certificate.is_some() {
            return Err(Error::config(
                "client_certificate_files (or _pem) configures the default HTTPS client, but a transport of your own is set: give the certificate to that transport's TLS instead",
            ));
        }
        #[cfg(feature = "shared-store")]
        if self.store_key.as_ref().is_some_and(|key| key.len() < 32) {
            return Err(Error::config(
                "store_key is shorter than 32 bytes: give every replica the same 32 or more random bytes (e.g. `openssl rand -base64 32`, decoded)",
            ));
        }
        let transport = match self.transport {
            Some(make) => make(self.max_response_bytes),
            None => default_transport(&self)?,
        };
        #[cfg(feature = "shared-store")]
        let fleet = self
            .store
            .map(|store| {
                crate::source::store::Fleet::new(
                    store,
                    &self.endpoint,
                    &self.credentials,
                    self.store_settings,
                    self.fetch_timeout,
                    self.store_key.as_deref(),
                )
            })
            .transpose()?;
        let rng = match self.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        let shared = Arc::new(Shared {
            key: SourceKey::next(),
            cell: Arc::new(ArcSwapOption::empty()),
            state: watch::Sender::new(FetchState::default()),
            signals: Default::default(),
            pulse: AtomicU64::new(0),
            probing_waiters: AtomicBool::new(false),
            watched: AtomicU64::new(0),
            supervisor: Mutex::new(Supervisor {
                task: None,
                generation: 0,
                stopped: None,
                parked: None,
                rng,
            }),
            generation: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            request,
            credentials: arc_swap::ArcSwap::from_pointee(self.credentials),
            credentials_changed: AtomicBool::new(false),
            transport,
            settings: Settings {
                lifecycle: self.lifecycle,
                fetch_timeout: self.fetch_timeout,
                min_reauth_interval: self.min_reauth_interval,
                transient: self.transient,
                rejected: self.rejected,
                stall_timeout: self.stall_timeout,
                reauth_on_408: self.endpoint.reauths_on_408(),
                client_name: self.client_name.map(|name| name.header_value().clone()),
            },
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            adopted: AtomicU64::new(0),
            reauth: Mutex::new(Backoff::default()),
            on_fetch: self.on_fetch,
            #[cfg(feature = "shared-store")]
            fleet,
        });
        registry::register(&shared);
        shared.spawn_refresher(shared.supervisor(), &runtime);
        Ok(TokenSource {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// Refuses settings that are out of range, or that would defeat proactive refresh.
    fn check_settings(&self) -> Result<(), Error> {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let l = &self.lifecycle;
        if !(0.1..=0.95).contains(&l.refresh_at) {
            return Err(Error::config(format!(
                "refresh_at is {}: it must be between 0.1 and 0.95 (a fraction of the token lifetime)",
                l.refresh_at
            )));
        }
        if !(0.0..=0.25).contains(&l.jitter) {
            return Err(Error::config(format!(
                "refresh_jitter is {}: it must be between 0.0 and 0.25 (a fraction of the token lifetime)",
                l.jitter
            )));
        }
        if l.jitter > l.refresh_at / 2.0 {
            return Err(Error::config(format!(
                "refresh_jitter ({}) is more than half of refresh_at ({}): refreshes could come right after each fetch; lower refresh_jitter or raise refresh_at",
                l.jitter, l.refresh_at
            )));
        }
        let limits = [
            (
                "default_lifetime",
                l.default_lifetime,
                Duration::from_secs(1),
                365 * DAY,
            ),
            (
                "fetch_timeout",
                self.fetch_timeout,
                Duration::from_millis(1),
                DAY,
            ),
            // Zero would turn the forced-refresh backoff off (zero doubled is zero).
            (
                "min_reauth_interval",
                self.min_reauth_interval,
                Duration::from_millis(1),
                DAY,
            ),
            (
                "stall_timeout",
                self.stall_timeout,
                Duration::from_millis(1),
                DAY,
            ),
            (
                "backoff (initial)",
                self.transient.0,
                Duration::from_millis(1),
                DAY,
            ),
            (
                "backoff (max)",
                self.transient.1,
                Duration::from_millis(1),
                DAY,
            ),
            (
                "rejected_backoff (initial)",
                self.rejected.0,
                Duration::from_millis(1),
                DAY,
            ),
            (
                "rejected_backoff (max)",
                self.rejected.1,
                Duration::from_millis(1),
                DAY,
            ),
        ];
        for (name, value, min, max) in limits {
            if value < min || value > max {
                return Err(Error::config(format!(
                    "{name} is {value:?}: it must be between {min:?} and {max:?}"
                )));
            }
        }
        for (name, (initial, max)) in [
            ("backoff", self.transient),
            ("rejected_backoff", self.rejected),
        ] {
            if max < initial {
                return Err(Error::config(format!(
                    "{name}: initial ({initial:?}) must not be above max ({max:?})"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(feature = "rustls")]
fn default_transport(builder: &TokenSourceBuilder) -> Result<Transport, Error> {
    crate::oauth::transport::https_transport(
        builder.endpoint.url(),
        &builder.extra_roots,
        builder.allow_http_loopback,
        &builder.proxy,
        builder.client_certificate.as_ref(),
        builder.max_response_bytes,
    )
}

#[cfg(not(feature = "rustls"))]
fn default_transport(_: &TokenSourceBuilder) -> Result<Transport, Error> {
    Err(Error::config(
        "no HTTP client for the token endpoint: enable the `rustls` feature or set one with TokenSourceBuilder::transport",
    ))
}

/// Refuses plain `http://` unless allowed, and then only for loopback hosts.
fn check_url(url: &http::Uri, allow_http_loopback: bool) -> Result<(), Error> {
    match url.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let loopback = crate::oauth::is_loopback(url.host().unwrap_or_default());
            if allow_http_loopback && loopback {
                Ok(())
            } else if loopback {
                Err(Error::config(format!(
                    "token URL {url} uses plain http://: call allow_http_loopback(true) to permit it for a local test server, or use https://"
                )))
            } else {
                Err(Error::config(format!(
                    "token URL {url} uses plain http://: credentials and tokens must travel over HTTPS; use https:// (plain http:// is allowed only for loopback test servers)"
                )))
            }
        }
        _ => Err(Error::config(format!(
            "token URL {url} must start with https://"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_except_opted_in_loopback() {
        let url = |s: &str| s.parse::<http::Uri>().unwrap();
        assert!(check_url(&url("https://partner.entur.org/oauth/token"), false).is_ok());
        for loopback in [
            "http://127.0.0.1:8080/t",
            "http://127.3.4.5/t",
            "http://localhost/t",
            "http://[::1]:9/t",
        ] {
            assert!(check_url(&url(loopback), true).is_ok(), "{loopback}");
            let err = check_url(&url(loopback), false).unwrap_err();
            assert!(
                err.report().to_string().contains("allow_http_loopback"),
                "{err}"
            );
        }
        for remote in [
            "http://partner.entur.org/t",
            "http://10.0.0.1/t",
            "http://[::2]/t",
        ] {
            let err = check_url(&url(remote), true).unwrap_err();
            assert!(
                err.report().to_string().contains("HTTPS"),
                "{remote}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn out_of_range_settings_are_refused() {
        let endpoint = || TokenEndpoint::entur(crate::Environment::Dev);
        let creds = || Credentials::new("id", "secret");
        let cases = [
            TokenSource::builder(endpoint(), creds()).refresh_at(1.0),
            TokenSource::builder(endpoint(), creds()).refresh_jitter(0.5),
            TokenSource::builder(endpoint(), creds()).fetch_timeout(Duration::ZERO),
            TokenSource::builder(endpoint(), creds())
                .backoff(Duration::from_secs(5), Duration::from_secs(1)),
            TokenSource::builder(endpoint(), creds()).default_lifetime(Duration::ZERO),
        ];
        for builder in cases {
            assert!((builder.build())
                .as_ref()
                .is_err_and(|e| e.kind() == crate::ErrorKind::Config));
        }
    }

    #[test]
    fn building_outside_a_runtime_is_an_error_not_a_panic() {
        let err = TokenSource::builder(
            TokenEndpoint::entur(crate::Environment::Dev),
            Credentials::new("id", "secret"),
        )
        .build()
        .unwrap_err();
        assert!(err.report().to_string().contains("tokio runtime"), "{err}");
    }
}
