//! The token source: the current token in an `ArcSwap`, one background task that fetches
//! and refreshes it, and the single-flight wait for callers that have no token.
//!
//! ```no_run
//! use entur_auth::{Credentials, Environment, TokenEndpoint, TokenSource};
//!
//! # async fn run() -> Result<(), entur_auth::Error> {
//! let source = TokenSource::builder(TokenEndpoint::entur(Environment::Dev), Credentials::from_env()?)
//!     .build()?;
//! // Optional: fail at startup on bad credentials instead of on the first request.
//! source.prefetch().await?;
//! # Ok(()) }
//! ```
//!
//! # Lifecycle
//!
//! - The first caller that needs a token wakes the background task, which fetches it; every
//!   caller that arrives meanwhile waits on that same fetch. The fetch runs in the task, so a
//!   caller that gives up (its future dropped) cancels nothing.
//! - The task refreshes at about 75 % of the lifetime (moved earlier by up to 5 % at
//!   random, never sooner than 1 s after issue). Callers keep using the current token
//!   meanwhile; the hot path never waits.
//! - The task retires a token at `expiry − min(30 s, 10 % of lifetime)`. The hot path reads
//!   no clock: the cell only ever holds a usable token.
//! - A failed fetch never replaces a usable token. Transient failures are retried with
//!   exponential backoff and jitter, honouring `Retry-After`; rejected credentials,
//!   invalid responses and configuration errors on a slow schedule. The task never gives up.
//! - With no usable token after a failed fetch, callers get that error at once (fail fast)
//!   until a fetch succeeds; they never start fetches of their own.
//! - The task ends when the last handle (source, layer or service) is dropped.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::config::{Credentials, TokenEndpoint};
use crate::endpoint::{self, TokenRequest, TokenRequestBody, Transport};
use crate::error::{BoxError, Error};
use crate::token::{AccessToken, Issued, Lifecycle, TokenId};

/// A shared, self-refreshing source of access tokens. Cheap to clone; every clone, and every
/// layer and service made from it, shares one token and one background task.
#[derive(Clone)]
pub struct TokenSource {
    handle: Arc<Handle>,
}

/// Owns the background task: when the last `TokenSource` clone goes, the task is aborted.
struct Handle {
    shared: Arc<Shared>,
    task: AbortHandle,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) struct Shared {
    pub(crate) cell: Arc<ArcSwapOption<AccessToken>>,
    state: watch::Sender<FetchState>,
    wake: Notify,
    request: TokenRequest,
    credentials: Credentials,
    transport: Transport,
    settings: Settings,
    attempts: AtomicU64,
    failures: AtomicU64,
    /// When `invalidate` last dropped a token: forced refreshes are rate limited.
    last_invalidation: Mutex<Option<Instant>>,
}

#[derive(Clone, Debug)]
struct Settings {
    lifecycle: Lifecycle,
    fetch_timeout: Duration,
    min_reauth_interval: Duration,
    transient: (Duration, Duration),
    rejected: (Duration, Duration),
}

/// What callers without a token look at to decide whether to wait or fail fast.
#[derive(Clone, Default)]
struct FetchState {
    fetching: bool,
    /// The error of the last fetch, until a fetch succeeds.
    last_error: Option<Error>,
    retry_at: Option<Instant>,
}

/// Retry-After is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl TokenSource {
    /// Starts configuring a token source for `endpoint` with `credentials`.
    pub fn builder(endpoint: TokenEndpoint, credentials: Credentials) -> TokenSourceBuilder {
        TokenSourceBuilder::new(endpoint, credentials)
    }

    /// A usable token, fetching one if there is none.
    ///
    /// Returns at once when a token is cached. Otherwise waits on the one fetch in flight
    /// (starting it if needed), shared with every other caller.
    ///
    /// # Errors
    ///
    /// The error of the fetch. When the last fetch failed and no usable token exists, that
    /// error is returned at once, without a new fetch: the background task retries on its
    /// own schedule.
    pub async fn token(&self) -> Result<Arc<AccessToken>, Error> {
        let shared = &self.handle.shared;
        let mut state = shared.state.subscribe();
        loop {
            // Read the state first, then the cell: the task stores a token before it
            // publishes the state, so a token stored after this read wakes `changed` below.
            let seen = state.borrow_and_update().clone();
            if let Some(token) = shared.cell.load_full() {
                return Ok(token);
            }
            if let Some(error) = seen.last_error {
                return Err(error);
            }
            if !seen.fetching {
                shared.wake.notify_one();
            }
            // The sender lives in `shared`, which we hold: this never errors.
            let _ = state.changed().await;
        }
    }

    /// Fetches a token now if there is none, so that a service can fail at startup on bad
    /// credentials or an unreachable token endpoint instead of on its first request.
    ///
    /// # Errors
    ///
    /// As [`token`](Self::token).
    pub async fn prefetch(&self) -> Result<(), Error> {
        self.token().await.map(drop)
    }

    /// The current token, if a usable one is cached. Never waits, never fetches.
    pub fn current(&self) -> Option<Arc<AccessToken>> {
        self.handle.shared.cell.load_full()
    }

    /// Drops the token `rejected` if it is still the current one, and starts a fetch.
    ///
    /// Call it when an API rejected that token (401). If the token was already replaced, this
    /// does nothing, so that many requests rejected with the same stale token cause one fetch,
    /// not one each. Forced refreshes are also rate limited (one per
    /// [`min_reauth_interval`](TokenSourceBuilder::min_reauth_interval), default 5 s), so that
    /// an API that rejects every token cannot make this source hammer the token endpoint.
    /// Returns whether the token was dropped.
    pub fn invalidate(&self, rejected: TokenId) -> bool {
        let shared = &self.handle.shared;
        let current = shared.cell.load();
        let is_current = matches!(&*current, Some(token) if token.id() == rejected);
        if !is_current {
            return false;
        }
        let now = Instant::now();
        let mut last = shared
            .last_invalidation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_some_and(|at| now < at + shared.settings.min_reauth_interval) {
            tracing::debug!(token = %rejected, "token rejected again soon after a forced refresh; keeping it (rate limit)");
            return false;
        }
        let previous = shared.cell.compare_and_swap(&*current, None);
        let dropped = match (&*previous, &*current) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if dropped {
            *last = Some(now);
            tracing::info!(token = %rejected, "token rejected by the API; fetching a new one");
            shared.wake.notify_one();
        }
        dropped
    }

    pub(crate) fn current_id(&self) -> Option<TokenId> {
        self.handle.shared.cell.load().as_ref().map(|t| t.id())
    }

    /// A snapshot of the source's state, cheap enough for a health endpoint.
    pub fn status(&self) -> Status {
        let shared = &self.handle.shared;
        let state = shared.state.borrow().clone();
        let now = Instant::now();
        let token = shared.cell.load();
        Status {
            usable_for: token
                .as_ref()
                .map(|t| t.usable_until().saturating_duration_since(now)),
            fetching: state.fetching,
            retry_in: state.retry_at.map(|at| at.saturating_duration_since(now)),
            last_error: state.last_error,
            fetch_attempts: shared.attempts.load(Ordering::Relaxed),
            fetch_failures: shared.failures.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn cell(&self) -> &Arc<ArcSwapOption<AccessToken>> {
        &self.handle.shared.cell
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.handle.shared;
        f.debug_struct("TokenSource")
            .field("url", &shared.request.url())
            .field("client_id", &shared.credentials.client_id())
            .field("token", &shared.cell.load().as_ref().map(|t| t.id()))
            .field("settings", &shared.settings)
            .finish_non_exhaustive()
    }
}

/// A snapshot of a [`TokenSource`], from [`TokenSource::status`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Status {
    /// How much longer the current token will be sent; `None` when there is no usable token.
    pub usable_for: Option<Duration>,
    /// Whether a fetch is in flight.
    pub fetching: bool,
    /// When the next retry of a failed fetch is due.
    pub retry_in: Option<Duration>,
    /// The error of the last fetch, until a fetch succeeds.
    pub last_error: Option<Error>,
    /// Token requests sent since the source was built.
    pub fetch_attempts: u64,
    /// Token requests that failed.
    pub fetch_failures: u64,
}

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
    transport: Option<Box<dyn FnOnce(usize) -> Transport + Send>>,
    #[cfg(feature = "rustls")]
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    deferred_error: Option<Error>,
    seed: Option<u64>,
}

impl fmt::Debug for TokenSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSourceBuilder")
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials)
            .field("fetch_timeout", &self.fetch_timeout)
            .field("allow_http_loopback", &self.allow_http_loopback)
            .finish_non_exhaustive()
    }
}

impl TokenSourceBuilder {
    fn new(endpoint: TokenEndpoint, credentials: Credentials) -> Self {
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
            transport: None,
            #[cfg(feature = "rustls")]
            extra_roots: Vec::new(),
            deferred_error: None,
            seed: None,
        }
    }

    /// Fraction of the lifetime after which the background refresh starts. Default `0.75`;
    /// must be in `0.1..=0.95`.
    pub fn refresh_at(mut self, fraction: f64) -> Self {
        self.lifecycle.refresh_at = fraction;
        self
    }

    /// Largest random amount, as a fraction of the lifetime, by which each refresh is moved
    /// earlier, so that many processes do not refresh in step. Default `0.05`; must be in
    /// `0.0..=0.25`.
    pub fn refresh_jitter(mut self, fraction: f64) -> Self {
        self.lifecycle.jitter = fraction;
        self
    }

    /// Lifetime assumed when the server sends neither `expires_in` nor a JWT `exp`.
    /// Default 5 minutes.
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
        self.transport = Some(Box::new(move |cap| endpoint::erase(transport, cap)));
        self
    }

    /// Trusts an extra root certificate (PEM, one or more `CERTIFICATE` blocks) for the
    /// default HTTPS client, besides the webpki roots: for a token endpoint behind a private CA.
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn extra_root_certificate_pem(mut self, pem: &[u8]) -> Self {
        match crate::client::certificates_from_pem(pem) {
            Ok(certs) => self.extra_roots.extend(certs),
            Err(e) => self.deferred_error = self.deferred_error.or(Some(e)),
        }
        self
    }

    /// Trusts an extra root certificate in DER form for the default HTTPS client.
    #[cfg(feature = "rustls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
    pub fn extra_root_certificate_der(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.extra_roots
            .push(rustls::pki_types::CertificateDer::from(der.into()));
        self
    }

    /// Seeds the random jitter of refreshes and retries, for reproducible tests.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds the source and starts its background task on the current tokio runtime. No
    /// token is fetched until one is needed (or [`TokenSource::prefetch`] is called).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a setting is out of range, the token URL is plain `http://`
    /// (unless [`allow_http_loopback`](Self::allow_http_loopback) and the host is loopback),
    /// an extra root certificate is invalid, no transport is available, or there is no
    /// tokio runtime.
    pub fn build(self) -> Result<TokenSource, Error> {
        if let Some(error) = self.deferred_error {
            return Err(error);
        }
        check_url(self.endpoint.url(), self.allow_http_loopback)?;
        let l = &self.lifecycle;
        if !(0.1..=0.95).contains(&l.refresh_at) {
            return Err(Error::config("refresh_at must be between 0.1 and 0.95"));
        }
        if !(0.0..=0.25).contains(&l.jitter) {
            return Err(Error::config("refresh_jitter must be between 0.0 and 0.25"));
        }
        if l.default_lifetime < Duration::from_secs(1) {
            return Err(Error::config("default_lifetime must be at least 1 s"));
        }
        if self.fetch_timeout.is_zero() {
            return Err(Error::config("fetch_timeout must be greater than zero"));
        }
        for (name, (initial, max)) in [
            ("backoff", self.transient),
            ("rejected_backoff", self.rejected),
        ] {
            if initial.is_zero() || max < initial {
                return Err(Error::config(format!(
                    "{name}: initial must be greater than zero and not above max"
                )));
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config(
                "TokenSource::build was called outside a tokio runtime: build it inside one, the background refresher runs on it",
            )
        })?;
        let transport = match self.transport {
            Some(make) => make(self.max_response_bytes),
            None => default_transport(&self)?,
        };
        let shared = Arc::new(Shared {
            cell: Arc::new(ArcSwapOption::empty()),
            state: watch::Sender::new(FetchState::default()),
            wake: Notify::new(),
            request: TokenRequest::new(&self.endpoint, &self.credentials),
            credentials: self.credentials,
            transport,
            settings: Settings {
                lifecycle: self.lifecycle,
                fetch_timeout: self.fetch_timeout,
                min_reauth_interval: self.min_reauth_interval,
                transient: self.transient,
                rejected: self.rejected,
            },
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_invalidation: Mutex::new(None),
        });
        let rng = match self.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        let task = runtime.spawn(run(shared.clone(), rng)).abort_handle();
        Ok(TokenSource {
            handle: Arc::new(Handle { shared, task }),
        })
    }
}

#[cfg(feature = "rustls")]
fn default_transport(builder: &TokenSourceBuilder) -> Result<Transport, Error> {
    crate::client::https_transport(
        &builder.extra_roots,
        builder.allow_http_loopback,
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
            let host = url.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
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

impl Shared {
    fn publish(&self, change: impl FnOnce(&mut FetchState)) {
        self.state.send_modify(change);
    }

    /// Drops `token` from the cell if it is still there.
    fn retire(&self, token: &Arc<AccessToken>) {
        let previous = self.cell.compare_and_swap(token, None);
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, token)) {
            tracing::debug!(token = ?token.id(), "token retired at the end of its usable lifetime");
        }
    }

    /// One token request, with the fetch timeout around all of it.
    async fn fetch(&self, jitter_sample: f64) -> Result<AccessToken, Error> {
        let request = self.request.to_request();
        let sent_at = Instant::now();
        let sent_wall = SystemTime::now();
        let timeout = self.settings.fetch_timeout;
        let response =
            match tokio::time::timeout(timeout, self.transport.clone().oneshot(request)).await {
                Err(_) => return Err(Error::Timeout { after: timeout }),
                Ok(Err(e)) => return Err(endpoint::transport_error(e)),
                Ok(Ok(response)) => response,
            };
        let granted =
            endpoint::read_response(&response, self.credentials.client_secret().expose())?;
        let issued = Issued {
            access_token: &granted.access_token,
            expires_in: granted.expires_in,
            scope: granted.scope,
            sent_at,
            sent_wall,
        };
        AccessToken::from_issued(issued, &self.settings.lifecycle, jitter_sample)
    }

    fn backoff(&self, error: &Error, failures: u32, rng: &mut fastrand::Rng) -> Duration {
        let (initial, max) = if error.is_transient() {
            self.settings.transient
        } else {
            self.settings.rejected
        };
        let ceiling = initial
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(max);
        // Jitter over [initial, ceiling]: spread out, yet never a burst of instant retries.
        let delay = initial + (ceiling - initial).mul_f64(rng.f64());
        match error.retry_after() {
            Some(asked) => delay.max(asked.min(MAX_RETRY_AFTER)),
            None => delay,
        }
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The background task: the only place tokens are fetched.
async fn run(shared: Arc<Shared>, mut rng: fastrand::Rng) {
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    loop {
        let current = shared.cell.load_full();
        if let Some(token) = &current {
            if Instant::now() >= token.usable_until() {
                shared.retire(token);
                continue;
            }
        }
        let due = retry_at.or(current.as_ref().map(|t| t.refresh_at()));
        let expiry = current.as_ref().map(|t| t.usable_until());
        tokio::select! {
            () = shared.wake.notified() => {
                // Demand: only an empty cell outside backoff warrants a fetch now.
                if retry_at.is_some() || shared.cell.load().is_some() {
                    continue;
                }
            }
            () = sleep_until(due) => {}
            () = sleep_until(expiry) => continue,
        }

        shared.publish(|s| s.fetching = true);
        let attempt = shared.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(attempt, "fetching an access token");
        let started = Instant::now();
        let fetch = shared.fetch(rng.f64());
        tokio::pin!(fetch);
        // Keep retiring the current token on time while the fetch runs.
        let mut expiry = shared.cell.load_full();
        let result = loop {
            tokio::select! {
                result = &mut fetch => break result,
                () = sleep_until(expiry.as_ref().map(|t| t.usable_until())) => {
                    if let Some(token) = expiry.take() {
                        shared.retire(&token);
                    }
                }
            }
        };
        match result {
            Ok(token) => {
                let lifetime = token.expires_at() - token.issued_at();
                tracing::info!(
                    token = ?token.id(),
                    lifetime_s = lifetime.as_secs_f64(),
                    refresh_in_s = (token.refresh_at() - token.issued_at()).as_secs_f64(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "access token fetched"
                );
                shared.cell.store(Some(Arc::new(token)));
                failures = 0;
                retry_at = None;
                shared.publish(|s| *s = FetchState::default());
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                shared.failures.fetch_add(1, Ordering::Relaxed);
                let delay = shared.backoff(&error, failures, &mut rng);
                let at = Instant::now() + delay;
                retry_at = Some(at);
                tracing::warn!(
                    error = %error,
                    transient = error.is_transient(),
                    attempt = failures,
                    retry_in_ms = delay.as_millis() as u64,
                    serving_current_token = shared.cell.load().is_some(),
                    "access token fetch failed"
                );
                shared.publish(|s| {
                    s.fetching = false;
                    s.last_error = Some(error);
                    s.retry_at = Some(at);
                });
            }
        }
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
            assert!(err.to_string().contains("allow_http_loopback"), "{err}");
        }
        for remote in [
            "http://partner.entur.org/t",
            "http://10.0.0.1/t",
            "http://[::2]/t",
        ] {
            let err = check_url(&url(remote), true).unwrap_err();
            assert!(err.to_string().contains("HTTPS"), "{remote}: {err}");
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
            assert!(matches!(builder.build(), Err(Error::Config { .. })));
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
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }
}
