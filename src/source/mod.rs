//! The token source: the current token in an `ArcSwap`, one background task that fetches
//! and refreshes it, and the single-flight wait for callers that have no token.
//!
//! ```no_run
//! use entur_auth::{Credentials, Environment, TokenEndpoint, TokenSource};
//!
//! # async fn run() -> Result<(), entur_auth::Error> {
//! let source = TokenSource::builder(TokenEndpoint::entur(Environment::Dev), Credentials::from_env()?)
//!     .build()?;
//! // Optional: fail at startup on bad credentials instead of on the first request, riding
//! // out a token endpoint (or DNS, or sidecar) that is not reachable yet for up to 30 s.
//! source.ready(std::time::Duration::from_secs(30)).await?;
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

//! - If the task's runtime is shut down, or stops running it, the token it would have retired
//!   is no longer sent and the next caller's runtime takes the refreshing over (see
//!   [`Health::Stopped`]). A panic inside the task is contained: it counts as a failed fetch.

mod builder;
mod reauth;
mod refresher;
pub(crate) mod registry;
#[cfg(feature = "shared-store")]
pub mod store;
mod supervisor;
pub(crate) mod token;
mod watchdog;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;
use tokio::time::Instant;

pub use builder::TokenSourceBuilder;
pub use reauth::{Invalidation, Reauth};
pub use token::{AccessToken, TokenId};

use self::supervisor::{Signals, Stopped, Supervisor};

use self::registry::SourceKey;
use self::token::Lifecycle;
use crate::error::Error;
use crate::oauth::exchange::{TokenRequest, Transport};
use crate::oauth::{Credentials, TokenEndpoint};

/// A shared, self-refreshing source of access tokens. Cheap to clone; every clone, and every
/// layer and service made from it, shares one token and one background task.
#[derive(Clone)]
pub struct TokenSource {
    handle: Arc<Handle>,
}

/// A handle to a [`TokenSource`] that does not keep it alive, from
/// [`TokenSource::downgrade`]: for an [`on_fetch`](TokenSourceBuilder::on_fetch) hook or
/// anything else the source owns that needs to refer back to it.
#[derive(Clone, Debug)]
pub struct WeakTokenSource {
    handle: Weak<Handle>,
}

impl WeakTokenSource {
    /// The source, if a [`TokenSource`] handle still exists.
    pub fn upgrade(&self) -> Option<TokenSource> {
        self.handle.upgrade().map(|handle| TokenSource { handle })
    }
}

/// The user's handles share this; when the last one goes, the background task is stopped.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

pub(crate) struct Shared {
    pub(crate) key: SourceKey,
    pub(crate) cell: Arc<ArcSwapOption<AccessToken>>,
    state: watch::Sender<FetchState>,
    /// How callers and the watchdog reach the current refresher. Each refresher generation
    /// has its own: a stalled refresher still registered on the old ones cannot swallow a
    /// notification meant for its successor.
    signals: ArcSwap<Signals>,
    /// Moves every time the refresher runs; the watchdog compares it before and after a ping.
    pulse: AtomicU64,
    /// A watchdog probe for waiting callers is scheduled.
    probing_waiters: AtomicBool,
    /// The id of the last token whose watch point the refresher reached (0: none).
    watched: AtomicU64,
    supervisor: Mutex<Supervisor>,
    /// The generation of the refresher that owns the cell; older ones end.
    generation: AtomicU64,
    closed: AtomicBool,
    request: TokenRequest,
    /// Replaced by [`TokenSource::set_credentials`] and by a re-read secret file; read once
    /// per fetch, never on the request path.
    credentials: ArcSwap<Credentials>,
    /// Set when the credentials were replaced; the refresher then drops its backoff.
    credentials_changed: AtomicBool,
    transport: Transport,
    pub(crate) settings: Settings,
    attempts: AtomicU64,
    failures: AtomicU64,
    /// The id of the last token adopted from the shared store (0: none).
    adopted: AtomicU64,
    reauth: Mutex<reauth::Backoff>,
    on_fetch: Option<FetchHook>,
    #[cfg(feature = "shared-store")]
    fleet: Option<crate::source::store::Fleet>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        registry::deregister(self.key);
    }
}

/// A hook called after every token request; see [`TokenSourceBuilder::on_fetch`].
pub(crate) type FetchHook = Arc<dyn Fn(&FetchOutcome<'_>) + Send + Sync>;

/// What one attempt to obtain a token came to, handed to the hook set with
/// [`TokenSourceBuilder::on_fetch`] (for metrics). Never contains a secret: the token's
/// `Debug` is redacted.
///
/// With a [shared store](TokenSourceBuilder::shared_store), a token may come from the store
/// instead of a token request: [`origin`](Self::origin) says which. Count only
/// [`TokenOrigin::TokenEndpoint`] outcomes as token requests, or a fleet's count grows with
/// its size.
#[derive(Debug)]
#[non_exhaustive]
pub struct FetchOutcome<'a> {
    /// The new token, or why there is none.
    pub result: Result<&'a AccessToken, &'a Error>,
    /// Where the token came from. A failure is always a token request's
    /// ([`TokenOrigin::TokenEndpoint`]): a store that is down or slow never fails a
    /// fetch, the source then asks the token endpoint alone.
    pub origin: TokenOrigin,
    /// 1 for the first attempt after a success, counting up while attempts fail.
    pub attempt: u32,
    /// How long the attempt took: the token request, or for an adopted token the reads of
    /// the store.
    pub took: Duration,
    /// After a failure: how long until the next attempt.
    pub retry_in: Option<Duration>,
    /// Whether a usable token is being sent meanwhile.
    pub serving_token: bool,
}

/// Where a token in a [`FetchOutcome`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenOrigin {
    /// A token request to the authorization server.
    TokenEndpoint,
    /// Adopted from the fleet's [shared store](TokenSourceBuilder::shared_store), where
    /// another source (in this process or another) published it: no token request was sent.
    SharedStore,
}

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) lifecycle: Lifecycle,
    pub(crate) fetch_timeout: Duration,
    pub(crate) min_reauth_interval: Duration,
    pub(crate) transient: (Duration, Duration),
    pub(crate) rejected: (Duration, Duration),
    /// How long a refresher may leave a watchdog probe unanswered before it counts as stopped.
    pub(crate) stall_timeout: Duration,
    /// Whether an API's 408 means "the token expired" (Entur) rather than a plain timeout.
    pub(crate) reauth_on_408: bool,
    /// The `ET-Client-Name` every adapter built from the source sends, unless told otherwise.
    pub(crate) client_name: Option<http::HeaderValue>,
}

/// What callers without a token look at to decide whether to wait or fail fast.
#[derive(Clone, Default)]
struct FetchState {
    fetching: bool,
    /// The error of the last fetch, until a fetch succeeds.
    last_error: Option<Error>,
    retry_at: Option<Instant>,
    stopped: Option<Stopped>,
}

impl FetchState {
    /// The state in one word, given whether a usable token is cached.
    fn health(&self, has_token: bool) -> Health {
        match (has_token, self.fetching, self.last_error.is_some()) {
            _ if self.stopped.is_some() => Health::Stopped,
            (true, _, true) => Health::Degraded,
            (true, true, false) => Health::Refreshing,
            (true, false, false) => Health::Fresh,
            (false, _, true) => Health::Failing,
            (false, true, false) => Health::Fetching,
            (false, false, false) => Health::Idle,
        }
    }
}

impl TokenSource {
    /// Starts configuring a token source for `endpoint` with `credentials`.
    pub fn builder(endpoint: TokenEndpoint, credentials: Credentials) -> TokenSourceBuilder {
        TokenSourceBuilder::new(endpoint, credentials)
    }

    /// A usable token, fetching one if there is none.
    ///
    /// Returns at once when a token is cached. Otherwise waits on the one fetch in flight
    /// (starting it if needed), shared with every other caller. If the background refresher
    /// is not running (its runtime was shut down or is not being driven), this caller's
    /// runtime takes it over.
    ///
    /// # Errors
    ///
    /// The error of the fetch. When the last fetch failed and no usable token exists, that
    /// error is returned at once, without a new fetch: the background task retries on its
    /// own schedule. [`ErrorKind::Stopped`](crate::ErrorKind::Stopped) when the refresher is not running and this
    /// call is not made on a tokio runtime that could take it over.
    pub async fn token(&self) -> Result<Arc<AccessToken>, Error> {
        self.handle.shared.token().await
    }

    /// Fetches a token now if there is none, and fails on the **first** error, transient
    /// ones included: one refused connection while a pod's network or sidecar is still
    /// starting fails it. At startup, prefer [`ready`](Self::ready), which rides those out.
    ///
    /// # Errors
    ///
    /// As [`token`](Self::token).
    pub async fn prefetch(&self) -> Result<(), Error> {
        self.token().await.map(drop)
    }

    /// Waits until a token is there, for at most `deadline`: the call to make at startup, so
    /// that a service fails there on bad credentials instead of on its first request, and
    /// does not fail on a token endpoint that is briefly unreachable.
    ///
    /// Fetches a token if there is none. Transient failures (unreachable, timeout, 5xx,
    /// 429, DNS not ready yet) do not end the wait: the background refresher retries them on
    /// its own backoff (see [`TokenSourceBuilder::backoff`]), and this call waits through its
    /// retries until one succeeds or `deadline` has passed. It sends no requests of its own,
    /// and dropping it cancels nothing. `Duration::MAX` waits as long as it takes.
    ///
    /// ```no_run
    /// # async fn run(source: entur_auth::TokenSource) -> Result<(), entur_auth::Error> {
    /// source.ready(std::time::Duration::from_secs(30)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// - At once, an error that waiting will not fix: [`ErrorKind::Rejected`](crate::ErrorKind::Rejected) (bad
    ///   credentials), [`ErrorKind::Blocked`](crate::ErrorKind::Blocked), [`ErrorKind::InvalidResponse`](crate::ErrorKind::InvalidResponse),
    ///   [`ErrorKind::Config`](crate::ErrorKind::Config), [`ErrorKind::Stopped`](crate::ErrorKind::Stopped).
    /// - [`ErrorKind::NotReady`](crate::ErrorKind::NotReady) when `deadline` passes first: it says how long it waited and
    ///   holds the last transient failure.
    pub async fn ready(&self, deadline: Duration) -> Result<(), Error> {
        self.handle.shared.ready(deadline).await
    }

    /// The current token, if a usable one is cached. Never waits, never fetches.
    pub fn current(&self) -> Option<Arc<AccessToken>> {
        self.handle.shared.cell.load_full()
    }

    /// Drops the token `rejected` if it is still the current one, and starts a fetch.
    ///
    /// [`EnturAuth`](crate::EnturAuth) calls this itself when the API refuses the token a
    /// request carried; call it when you learn of a refusal some other way. If the token was
    /// already replaced, this does nothing, so that many requests refused with the same stale
    /// token cause one fetch, not one each. Forced refreshes back off: at most one per
    /// [`min_reauth_interval`](TokenSourceBuilder::min_reauth_interval) (default 5 s),
    /// doubling with each forced refresh, up to one per 10 minutes, until the API has
    /// accepted a new token (a success whose body finished without a refusal) and then
    /// refused none for 10 minutes. So an API that refuses every token, or only some (one
    /// replica of ten), costs at most about 150 token requests a day, not one per request.
    pub fn invalidate(&self, rejected: TokenId) -> Invalidation {
        self.handle.shared.invalidate(rejected)
    }

    /// Replaces the credentials of this running source (a rotated secret, a new key, a
    /// secret changed to a key): the next token request uses them. Every clone of the source
    /// and every layer and service made from it follow; nothing is rebuilt.
    ///
    /// The current token keeps being sent until it is replaced: at its usual refresh, or now
    /// with [`invalidate`](Self::invalidate). If the last token request was refused (the
    /// server already knew only the new credentials), the next attempt is made at once
    /// instead of on the slow schedule.
    ///
    /// A secret read from a file ([`ClientSecret::from_file`](crate::ClientSecret::from_file),
    /// `ENTUR_CLIENT_SECRET_FILE`) needs no call: the file is read again when the token
    /// endpoint answers `invalid_client`, `unauthorized_client` or any 401 (Entur's server
    /// answers a wrong secret with 401 `access_denied`).
    ///
    /// With a [shared store](TokenSourceBuilder::shared_store), the encryption key stays the
    /// one derived when the source was built; set a
    /// [store key](TokenSourceBuilder::store_key) so that replicas on the old and the new
    /// secret keep sharing.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the client id differs (a source belongs to one client: build
    /// another for another), or the credentials cannot be sent to this endpoint (as
    /// [`TokenSourceBuilder::build`] checks them).
    pub fn set_credentials(&self, credentials: Credentials) -> Result<(), Error> {
        self.handle.shared.set_credentials(credentials)
    }

    /// A handle that does not keep the source alive; see [`WeakTokenSource`].
    pub fn downgrade(&self) -> WeakTokenSource {
        WeakTokenSource {
            handle: Arc::downgrade(&self.handle),
        }
    }

    /// A snapshot of the source's state, cheap enough for a health endpoint.
    pub fn status(&self) -> Status {
        let shared = &self.handle.shared;
        let state = shared.state.borrow().clone();
        let now = Instant::now();
        let token = shared.cell.load();
        let health = state.health(token.is_some());
        let status = Status {
            health,
            token: token.as_ref().map(|t| t.id()),
            usable_for: token
                .as_ref()
                .map(|t| t.usable_until().saturating_duration_since(now)),
            refresh_in: token
                .as_ref()
                .map(|t| t.refresh_at().saturating_duration_since(now)),
            fetching: state.fetching,
            retry_in: state.retry_at.map(|at| at.saturating_duration_since(now)),
            last_error: state.last_error,
            fetch_attempts: shared.attempts.load(Ordering::Relaxed),
            fetch_failures: shared.failures.load(Ordering::Relaxed),
            forced_refreshes_in_a_row: shared.reauth().streak(now),
            origin: token.as_ref().map(|t| shared.origin(t)),
            store: shared.store_state(),
            store_fallbacks: shared.store_fallbacks(),
        };
        // A cheap moment to bring the gauges up to date (no work is done per request).
        #[cfg(feature = "metrics")]
        crate::metrics::source_state(&shared.metric_labels(), health.as_str(), status.usable_for);
        status
    }

    pub(crate) fn cell(&self) -> &Arc<ArcSwapOption<AccessToken>> {
        &self.handle.shared.cell
    }

    pub(crate) fn key(&self) -> SourceKey {
        self.handle.shared.key
    }

    pub(crate) fn reauth_on_408(&self) -> bool {
        self.handle.shared.settings.reauth_on_408
    }

    /// The `ET-Client-Name` given to [`TokenSourceBuilder::client_name`], the one every
    /// adapter built from this source sends.
    pub(crate) fn client_name(&self) -> Option<&http::HeaderValue> {
        self.handle.shared.settings.client_name.as_ref()
    }

    /// The shared state, for the refusal verdicts of the adapters that hold the source
    /// (reqwest, tonic); the layer's response future reaches it through the registry.
    #[cfg(any(feature = "reqwest", feature = "tonic"))]
    pub(crate) fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// For callers that cannot wait (the tonic interceptor): with no usable token, starts
    /// the fetch as [`token`](Self::token) does (waking the refresher, or taking it over on
    /// this caller's runtime if it stopped), and returns without waiting for it.
    ///
    /// # Errors
    ///
    /// As [`token`](Self::token) without the wait: the last fetch's error while no fetch has
    /// succeeded since (nothing is started: the refresher retries on its own schedule), or
    /// [`ErrorKind::Stopped`](crate::ErrorKind::Stopped) when the refresher stopped and this call is not made on a
    /// tokio runtime that could take it over.
    #[cfg(feature = "tonic")]
    pub(crate) fn start_fetch(&self) -> Result<(), Error> {
        let shared = &self.handle.shared;
        let mut state = shared.state.borrow().clone();
        if state.stopped.is_some() {
            shared.take_over()?;
            state = shared.state.borrow().clone();
        }
        if shared.cell.load().is_some() {
            return Ok(());
        }
        if let Some(error) = state.last_error {
            return Err(error);
        }
        if !state.fetching {
            shared.signals.load().wake.notify_one();
            shared.probe_waiters();
        }
        Ok(())
    }
}

impl Shared {
    fn publish(&self, change: impl FnOnce(&mut FetchState)) {
        self.state.send_modify(change);
        #[cfg(feature = "metrics")]
        self.record_state();
    }

    pub(crate) async fn token(self: &Arc<Self>) -> Result<Arc<AccessToken>, Error> {
        let mut state = self.state.subscribe();
        loop {
            // Read the state first, then the cell: the task stores a token before it
            // publishes the state, so a token stored after this read wakes `changed` below.
            let seen = state.borrow_and_update().clone();
            if let Some(token) = self.cell.load_full() {
                return Ok(token);
            }
            if seen.stopped.is_some() {
                self.take_over()?;
                continue;
            }
            if let Some(error) = seen.last_error {
                return Err(error);
            }
            if !seen.fetching {
                self.signals.load().wake.notify_one();
                self.probe_waiters();
            }
            // The sender lives in `self`, which we hold: this never errors.
            let _ = state.changed().await;
        }
    }
}

impl Shared {
    /// See [`TokenSource::ready`].
    async fn ready(self: &Arc<Self>, deadline: Duration) -> Result<(), Error> {
        let until = Instant::now().checked_add(deadline);
        let mut last = None;
        let wait = async {
            loop {
                // Subscribed before the attempt: a change during it wakes the wait below at
                // once, and the next `token()` reads the outcome.
                let mut state = self.state.subscribe();
                match self.token().await {
                    Ok(_) => return Ok(()),
                    Err(error) if error.is_transient() => last = Some(error),
                    Err(error) => return Err(error),
                }
                // `token()` fails fast with the last error until a fetch succeeds: wait for
                // the refresher's next move (a retry starting or ending) before asking again.
                // The sender lives in `self`, which we hold: this never errors.
                let _ = state.changed().await;
            }
        };
        let result = match until {
            Some(until) => tokio::time::timeout_at(until, wait).await,
            None => Ok(wait.await),
        };
        result.unwrap_or_else(|_elapsed| Err(Error::not_ready(deadline, last)))
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.handle.shared;
        f.debug_struct("TokenSource")
            .field("url", &shared.request.url())
            .field("client_id", &shared.credentials.load().client_id())
            .field("token", &shared.cell.load().as_ref().map(|t| t.id()))
            .field("key", &shared.key)
            .field("settings", &shared.settings)
            .finish_non_exhaustive()
    }
}

/// A snapshot of a [`TokenSource`], from [`TokenSource::status`].
///
/// Its `Display` is one line for a log or a health endpoint, never with a secret or a token,
/// e.g. `fresh: token #3 usable for 64799 s, refresh in 48599 s; 1 fetch, 0 failed`. With the
/// `serde` feature it implements `Serialize`: the fields below, durations in milliseconds
/// (`usable_for_ms`, `refresh_in_ms`, `retry_in_ms`), `health` as its word, `serving` as
/// [`Health::is_serving`], the token as its number and the last error as its message.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Status {
    /// The state in one word, for a health endpoint.
    pub health: Health,
    /// The current token's id, when there is a usable one.
    pub token: Option<TokenId>,
    /// How much longer the current token will be sent; `None` when there is no usable token.
    pub usable_for: Option<Duration>,
    /// How long until the current token's background refresh starts (zero once due).
    pub refresh_in: Option<Duration>,
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
    /// Refreshes forced by refusals since the backoff last ended (a token accepted, then 10
    /// minutes without a refusal): the forced-refresh backoff doubles with each (see
    /// [`TokenSource::invalidate`]).
    pub forced_refreshes_in_a_row: u32,
    /// Where the current token came from: a token request, or the fleet's shared store;
    /// `None` without a usable token.
    pub origin: Option<TokenOrigin>,
    /// The [shared store](TokenSourceBuilder::shared_store), when the source has one:
    /// whether it answered the last time it was asked, or is being bypassed.
    pub store: Option<StoreState>,
    /// Token requests made without the fleet's lock (the store was unavailable, or the
    /// replica holding the lock published nothing in time), since the source was built;
    /// 0 without a shared store. Each is also counted in `fetch_attempts`.
    pub store_fallbacks: u64,
}

/// Whether a source's [shared store](TokenSourceBuilder::shared_store) is in use, from
/// [`Status::store`].
///
/// The store is asked only when the token is due for refresh or missing, so this is the
/// answer of the last refresh: it changes at the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "lowercase")
)]
#[non_exhaustive]
pub enum StoreState {
    /// The store answered (or was not asked yet): the source shares the fleet's token.
    Sharing,
    /// The last call to the store failed or did not answer in time: the source fetches
    /// for itself (each such token request is a [fallback](Status::store_fallbacks)) until
    /// the store answers again. Requests are served all the same.
    Bypassed,
}

impl StoreState {
    /// The state as one lower-case word: `sharing` or `bypassed`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Sharing => "sharing",
            Self::Bypassed => "bypassed",
        }
    }
}

impl fmt::Display for StoreState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a [`TokenSource`] in one word.
///
/// `Display` (and, with the `serde` feature, `Serialize`) gives the word in lower case:
/// `idle`, `fresh`, `refreshing`, `degraded`, `fetching`, `failing`, `stopped`.
///
/// # Readiness and liveness
///
/// A readiness probe should report ready exactly while a token is being sent,
/// [`is_serving`](Self::is_serving): `Fresh`, `Refreshing` and `Degraded`.
///
/// | state | requests get a token | ready | |
/// |---|---|---|---|
/// | `Idle` | not yet | no | sources fetch lazily: nothing is fetched until a request (or [`TokenSource::ready`]) asks. Call `ready(deadline)` at startup, before the probe is served: a probe waiting for a token that only traffic would fetch never becomes ready |
/// | `Fetching` | they wait for it | no | the first fetch, or one after the token was retired |
/// | `Fresh` | yes | yes | |
/// | `Refreshing` | yes | yes | the refresh of a token that is still valid is under way |
/// | `Degraded` | yes | yes | the refresh failed and is retried with backoff; the current token is still valid and still sent (Entur's leave about six hours). Alert if it lasts |
/// | `Failing` | no: they fail fast | no | no valid token and the last fetch failed; [`Status::last_error`] says why |
/// | `Stopped` | no | no | the refresher is not running; the next caller on a tokio runtime takes it over |
///
/// Leave liveness out of it: restarting the process fixes neither an authorization server
/// outage nor wrong credentials, and every restart costs a token request (Entur counts them
/// against a quota). `Stopped` that lasts is the one state a restart may cure: a runtime
/// nobody drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "lowercase")
)]
#[non_exhaustive]
pub enum Health {
    /// No token yet and none asked for (sources fetch lazily).
    Idle,
    /// A usable token; no refresh under way.
    Fresh,
    /// A usable token; its refresh is under way.
    Refreshing,
    /// A usable token, but the last refresh failed: it is being retried with backoff.
    Degraded,
    /// No usable token; a fetch is under way.
    Fetching,
    /// No usable token and the last fetch failed: requests fail fast until a retry succeeds.
    Failing,
    /// The background refresher is not running: the tokio runtime it ran on was shut down, or
    /// did not run it when the watchdog asked (a runtime nobody drives). No token is sent;
    /// the next caller on a tokio runtime takes the refreshing over.
    Stopped,
}

impl Health {
    /// `true` while a usable token is being sent: `Fresh`, `Refreshing` or `Degraded`. The
    /// answer for a readiness probe; see [the table](Self#readiness-and-liveness).
    pub fn is_serving(self) -> bool {
        matches!(self, Self::Fresh | Self::Refreshing | Self::Degraded)
    }

    /// The state as one lower-case word, as `Display` writes it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Fresh => "fresh",
            Self::Refreshing => "refreshing",
            Self::Degraded => "degraded",
            Self::Fetching => "fetching",
            Self::Failing => "failing",
            Self::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.health)?;
        match (self.token, self.usable_for) {
            (Some(token), Some(usable_for)) => {
                write!(f, "token {token} usable for {}", Secs(usable_for))?
            }
            (Some(token), None) => write!(f, "token {token}")?,
            (None, _) if self.health == Health::Idle => f.write_str(
                "no token yet (fetched on the first request, or by TokenSource::ready)",
            )?,
            (None, _) => f.write_str("no token")?,
        }
        match (self.fetching, self.token.is_some(), self.refresh_in) {
            (true, true, _) => f.write_str(", refresh under way")?,
            (true, false, _) => f.write_str(", fetch under way")?,
            // Once a refresh failed, the retry below is what comes next.
            (false, true, Some(refresh_in)) if self.last_error.is_none() => {
                write!(f, ", refresh in {}", Secs(refresh_in))?
            }
            _ => {}
        }
        if let Some(retry_in) = self.retry_in {
            write!(f, "; retry in {}", Secs(retry_in))?;
        }
        if let Some(error) = &self.last_error {
            // One line whatever the error says.
            f.write_str("; last error: ")?;
            for c in error.to_string().chars().filter(|c| !c.is_control()) {
                fmt::Write::write_char(f, c)?;
            }
        }
        write!(
            f,
            "; {} fetch{}, {} failed",
            self.fetch_attempts,
            if self.fetch_attempts == 1 { "" } else { "es" },
            self.fetch_failures
        )?;
        if let Some(store) = self.store {
            write!(f, "; shared store {store}")?;
            if self.origin == Some(TokenOrigin::SharedStore) {
                f.write_str(", token adopted from it")?;
            }
            if self.store_fallbacks > 0 {
                write!(
                    f,
                    ", {} fetch{} without it",
                    self.store_fallbacks,
                    if self.store_fallbacks == 1 { "" } else { "es" }
                )?;
            }
        }
        if self.forced_refreshes_in_a_row > 0 {
            write!(
                f,
                "; {} forced refresh{} in a row (the API refused new tokens)",
                self.forced_refreshes_in_a_row,
                if self.forced_refreshes_in_a_row == 1 {
                    ""
                } else {
                    "es"
                }
            )?;
        }
        Ok(())
    }
}

/// A duration for a status line: whole seconds from 10 s up, else with one decimal.
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= Duration::from_secs(10) {
            write!(f, "{} s", self.0.as_secs())
        } else {
            write!(f, "{:.1} s", self.0.as_secs_f64())
        }
    }
}

#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        let millis =
            |d: Option<Duration>| d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut s = serializer.serialize_struct("Status", 14)?;
        s.serialize_field("health", &self.health)?;
        s.serialize_field("serving", &self.health.is_serving())?;
        s.serialize_field("token", &self.token.map(TokenId::get))?;
        s.serialize_field("usable_for_ms", &millis(self.usable_for))?;
        s.serialize_field("refresh_in_ms", &millis(self.refresh_in))?;
        s.serialize_field("fetching", &self.fetching)?;
        s.serialize_field("retry_in_ms", &millis(self.retry_in))?;
        s.serialize_field(
            "last_error",
            &self.last_error.as_ref().map(ToString::to_string),
        )?;
        s.serialize_field("fetch_attempts", &self.fetch_attempts)?;
        s.serialize_field("fetch_failures", &self.fetch_failures)?;
        s.serialize_field("forced_refreshes_in_a_row", &self.forced_refreshes_in_a_row)?;
        let origin = self.origin.map(|origin| match origin {
            TokenOrigin::TokenEndpoint => "token_endpoint",
            TokenOrigin::SharedStore => "shared_store",
        });
        s.serialize_field("origin", &origin)?;
        s.serialize_field("store", &self.store)?;
        s.serialize_field("store_fallbacks", &self.store_fallbacks)?;
        s.end()
    }
}
