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

mod builder;
mod refresher;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub use builder::TokenSourceBuilder;

use crate::config::{Credentials, TokenEndpoint};
use crate::endpoint::{TokenRequest, Transport};
use crate::error::Error;
use crate::token::{AccessToken, Lifecycle, TokenId};

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
    on_fetch: Option<FetchHook>,
    #[cfg(feature = "shared-store")]
    fleet: Option<crate::store::Fleet>,
}

/// A hook called after every token request; see [`TokenSourceBuilder::on_fetch`].
pub(crate) type FetchHook = Arc<dyn Fn(&FetchOutcome<'_>) + Send + Sync>;

/// What one token request came to, handed to the hook set with
/// [`TokenSourceBuilder::on_fetch`] (for metrics). Never contains a secret: the token's
/// `Debug` is redacted.
#[derive(Debug)]
#[non_exhaustive]
pub struct FetchOutcome<'a> {
    /// The new token, or why there is none.
    pub result: Result<&'a AccessToken, &'a Error>,
    /// 1 for the first attempt after a success, counting up while attempts fail.
    pub attempt: u32,
    /// How long the request took.
    pub took: Duration,
    /// After a failure: how long until the next attempt.
    pub retry_in: Option<Duration>,
    /// Whether a usable token is being sent meanwhile.
    pub serving_token: bool,
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
        let health = match (token.is_some(), state.fetching, state.last_error.is_some()) {
            (true, _, true) => Health::Degraded,
            (true, true, false) => Health::Refreshing,
            (true, false, false) => Health::Fresh,
            (false, _, true) => Health::Failing,
            (false, true, false) => Health::Fetching,
            (false, false, false) => Health::Idle,
        };
        Status {
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
}

/// The state of a [`TokenSource`] in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

impl Health {
    /// `true` while a usable token is being sent.
    pub fn is_serving(self) -> bool {
        matches!(self, Self::Fresh | Self::Refreshing | Self::Degraded)
    }
}
