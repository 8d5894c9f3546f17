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

//! - If the task's runtime is shut down, or stops running it, the token it would have retired
//!   is no longer sent and the next caller's runtime takes the refreshing over (see
//!   [`Health::Stopped`]). A panic inside the task is contained: it counts as a failed fetch.

mod builder;
mod refresher;
pub(crate) mod registry;
mod watchdog;

use std::collections::VecDeque;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub use builder::TokenSourceBuilder;

use self::registry::SourceKey;
use self::watchdog::Probe;
use crate::config::{Credentials, TokenEndpoint};
use crate::endpoint::{TokenRequest, Transport};
use crate::error::Error;
use crate::token::{AccessToken, Lifecycle, TokenId};

/// The ceiling of the backoff between forced refreshes when the API keeps refusing tokens.
const MAX_REAUTH_INTERVAL: Duration = Duration::from_secs(600);
/// How many refused tokens a source remembers, so that it never adopts one again from a
/// shared store.
const REMEMBERED_REFUSALS: usize = 16;

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
    supervisor: Mutex<Supervisor>,
    /// The generation of the refresher that owns the cell; older ones end.
    generation: AtomicU64,
    closed: AtomicBool,
    request: TokenRequest,
    credentials: Credentials,
    transport: Transport,
    pub(crate) settings: Settings,
    attempts: AtomicU64,
    failures: AtomicU64,
    reauth: Mutex<Reauth>,
    on_fetch: Option<FetchHook>,
    #[cfg(feature = "shared-store")]
    fleet: Option<crate::store::Fleet>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        registry::deregister(self.key);
    }
}

/// How a refresher is reached.
#[derive(Default)]
pub(crate) struct Signals {
    /// Demand: a caller needs a token now.
    wake: Notify,
    /// The watchdog asks the refresher to show it is running.
    ping: Notify,
}

/// Who runs the refresher, and what it left behind when it stopped.
struct Supervisor {
    task: Option<AbortHandle>,
    generation: u64,
    /// Why the refresher is not running, when it is not.
    stopped: Option<Stopped>,
    /// The token the stopped refresher could no longer retire on time; the next refresher
    /// takes it back if it is still usable.
    parked: Option<Arc<AccessToken>>,
    rng: fastrand::Rng,
}

/// Why a refresher stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// Its runtime was shut down.
    RuntimeGone,
    /// Its runtime did not run it within `stall_timeout` of a probe.
    Unresponsive,
}

/// Forced refreshes: when, how many in a row, and which tokens were refused.
#[derive(Default)]
struct Reauth {
    last_forced: Option<Instant>,
    /// Forced refreshes since a token was last accepted.
    streak: u32,
    refused: VecDeque<u64>,
}

impl Reauth {
    /// The shortest time between the last forced refresh and the next: `min_interval`,
    /// doubling with every refresh forced since a token was last accepted, up to 10 minutes.
    fn interval(&self, min_interval: Duration) -> Duration {
        let doublings = self.streak.saturating_sub(1).min(16);
        min_interval
            .saturating_mul(1 << doublings)
            .min(MAX_REAUTH_INTERVAL.max(min_interval))
    }
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

/// What [`TokenSource::invalidate`] did with a refused token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// The token was dropped; a new one is being fetched.
    Started,
    /// The token was no longer the current one: it was already replaced (or is being
    /// replaced), so the next request carries another token. Nothing was fetched for it.
    AlreadyReplaced,
    /// The token is still the current one: the API has refused the tokens of several forced
    /// refreshes in a row, and the next forced refresh is allowed in `retry_in`. Forced
    /// refreshes back off (from
    /// [`min_reauth_interval`](TokenSourceBuilder::min_reauth_interval), doubling, up to 10
    /// minutes) so that an API that refuses every token cannot exhaust the token quota.
    RateLimited {
        /// When the next forced refresh is allowed.
        retry_in: Duration,
    },
    /// The token source no longer exists.
    SourceGone,
}

impl Invalidation {
    /// Whether the next request will carry a different token (so a replay is worth it).
    pub fn replaced(self) -> bool {
        matches!(self, Self::Started | Self::AlreadyReplaced)
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
    /// own schedule. [`Error::RefresherStopped`] when the refresher is not running and this
    /// call is not made on a tokio runtime that could take it over.
    pub async fn token(&self) -> Result<Arc<AccessToken>, Error> {
        self.handle.shared.token().await
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
    /// [`EnturAuth`](crate::EnturAuth) calls this itself when the API refuses the token a
    /// request carried; call it when you learn of a refusal some other way. If the token was
    /// already replaced, this does nothing, so that many requests refused with the same stale
    /// token cause one fetch, not one each. Forced refreshes back off: at most one per
    /// [`min_reauth_interval`](TokenSourceBuilder::min_reauth_interval) (default 5 s),
    /// doubling with each forced refresh whose token is refused again, up to one per 10
    /// minutes, until a request with the new token succeeds. So an API that refuses every
    /// token costs at most about 150 token requests a day, not one per request.
    pub fn invalidate(&self, rejected: TokenId) -> Invalidation {
        self.handle.shared.invalidate(rejected)
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
        let health = match (token.is_some(), state.fetching, state.last_error.is_some()) {
            _ if state.stopped.is_some() => Health::Stopped,
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
            forced_refreshes_in_a_row: shared.reauth().streak,
        }
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
}

impl Shared {
    fn reauth(&self) -> MutexGuard<'_, Reauth> {
        self.reauth
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn supervisor(&self) -> MutexGuard<'_, Supervisor> {
        self.supervisor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, change: impl FnOnce(&mut FetchState)) {
        self.state.send_modify(change);
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

    /// Asks the watchdog to make sure a refresher answers these waiting callers.
    fn probe_waiters(&self) {
        if !self.probing_waiters.swap(true, Ordering::AcqRel) {
            watchdog::schedule(self.key, Probe::Waiters, std::time::Instant::now());
        }
    }

    pub(crate) fn invalidate(&self, rejected: TokenId) -> Invalidation {
        let current = self.cell.load();
        let Some(token) = current.as_ref().filter(|t| t.id() == rejected) else {
            return Invalidation::AlreadyReplaced;
        };
        let now = Instant::now();
        let mut reauth = self.reauth();
        if let Some(last) = reauth.last_forced {
            let next = last
                .checked_add(reauth.interval(self.settings.min_reauth_interval))
                .unwrap_or(last);
            if now < next {
                let retry_in = next - now;
                tracing::debug!(token = %rejected, retry_in_ms = retry_in.as_millis() as u64, "token refused again soon after a forced refresh; keeping it (forced refreshes back off)");
                return Invalidation::RateLimited { retry_in };
            }
        }
        let previous = self.cell.compare_and_swap(&*current, None);
        if !previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, token)) {
            return Invalidation::AlreadyReplaced;
        }
        reauth.last_forced = Some(now);
        reauth.streak = reauth.streak.saturating_add(1);
        if reauth.refused.len() == REMEMBERED_REFUSALS {
            reauth.refused.pop_front();
        }
        reauth
            .refused
            .push_back(fingerprint(token.header_value().as_bytes()));
        let streak = reauth.streak;
        drop(reauth);
        tracing::info!(token = %rejected, forced_in_a_row = streak, "token refused by the API; fetching a new one");
        self.signals.load().wake.notify_one();
        Invalidation::Started
    }

    /// Whether a token was refused by the API (so it must never be adopted again).
    #[cfg_attr(not(feature = "shared-store"), allow(dead_code))]
    pub(crate) fn was_refused(&self, token: &AccessToken) -> bool {
        let print = fingerprint(token.header_value().as_bytes());
        self.reauth().refused.contains(&print)
    }

    /// A request with `token` was answered without a refusal: the forced-refresh backoff
    /// starts over.
    pub(crate) fn accepted(&self, token: TokenId) {
        let current = self.cell.load();
        if let Some(current) = current.as_ref().filter(|t| t.id() == token) {
            current.end_probation();
            let mut reauth = self.reauth();
            if reauth.streak > 0 {
                tracing::debug!(token = %token, "the API accepted the token of a forced refresh; forced refreshes no longer back off");
                reauth.streak = 0;
            }
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(task) = self.supervisor().task.take() {
            task.abort();
        }
    }

    fn is_current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
            && !self.closed.load(Ordering::Acquire)
    }

    /// Starts a refresher on `runtime`, replacing any other. Takes the supervisor lock and
    /// spawns without it: a runtime that is shutting down drops the task (and its guard,
    /// which takes the lock) at once.
    fn spawn_refresher(
        self: &Arc<Self>,
        mut supervisor: MutexGuard<'_, Supervisor>,
        runtime: &tokio::runtime::Handle,
    ) {
        supervisor.generation += 1;
        let generation = supervisor.generation;
        self.generation.store(generation, Ordering::Release);
        if let Some(old) = supervisor.task.take() {
            old.abort();
        }
        supervisor.stopped = None;
        let rng = supervisor.rng.fork();
        let signals = Arc::new(Signals::default());
        self.signals.store(signals.clone());
        drop(supervisor);
        let guard = refresher::Guard::new(self.clone(), generation);
        let task = runtime
            .spawn(refresher::run(guard, signals, rng))
            .abort_handle();
        let mut supervisor = self.supervisor();
        if supervisor.generation == generation && supervisor.stopped.is_none() {
            supervisor.task = Some(task);
        }
    }

    /// The refresher is not running: run it on this caller's runtime, with the token it left
    /// behind if that is still usable.
    fn take_over(self: &Arc<Self>) -> Result<(), Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::refresher_stopped(
                "its tokio runtime was shut down or stopped running it, and this call is not made on a tokio runtime that could take it over: call from within a tokio runtime",
            )
        })?;
        check_timers()?;
        let mut supervisor = self.supervisor();
        let Some(why) = supervisor.stopped else {
            return Ok(()); // another caller took over first
        };
        // The new refresher watches this token from its start.
        if let Some(token) = supervisor.parked.take() {
            if Instant::now() < token.usable_until() {
                self.cell.store(Some(token));
            }
        }
        // Published before the spawn: if the new task dies at once, its guard's verdict
        // comes after this and stands.
        self.publish(|s| *s = FetchState::default());
        self.spawn_refresher(supervisor, &runtime);
        tracing::warn!(reason = ?why, "the token refresher was not running; this caller's runtime took it over");
        Ok(())
    }

    /// Called by a refresher's guard when its task ends. If it was the current refresher
    /// and the source is still in use, its runtime is gone: park the token it can no longer
    /// retire, and let the next caller take over.
    fn refresher_ended(&self, generation: u64) {
        let mut supervisor = self.supervisor();
        if supervisor.generation != generation || self.closed.load(Ordering::Acquire) {
            return;
        }
        supervisor.task = None;
        self.stop(&mut supervisor, Stopped::RuntimeGone);
    }

    /// The watchdog's verdict: the refresher of `generation` did not answer a probe.
    fn stalled(&self, generation: u64, probe: Probe) {
        let mut supervisor = self.supervisor();
        if supervisor.generation != generation
            || supervisor.stopped.is_some()
            || self.closed.load(Ordering::Acquire)
        {
            return;
        }
        tracing::warn!(
            ?probe,
            stall_timeout_ms = self.settings.stall_timeout.as_millis() as u64,
            "the token refresher did not run when asked: its tokio runtime is not being driven; the current token is no longer sent and the next caller takes the refreshing over"
        );
        if let Some(task) = supervisor.task.take() {
            task.abort();
        }
        self.stop(&mut supervisor, Stopped::Unresponsive);
    }

    fn stop(&self, supervisor: &mut Supervisor, why: Stopped) {
        supervisor.stopped = Some(why);
        if let Some(token) = self.cell.swap(None) {
            supervisor.parked = Some(token);
        }
        self.publish(|s| {
            s.stopped = Some(why);
            s.fetching = false;
        });
    }

    /// The refresher's answer to the watchdog: it is running.
    fn beat(&self) {
        self.pulse.fetch_add(1, Ordering::AcqRel);
    }

    fn pulse(&self) -> (u64, u64) {
        (
            self.pulse.load(Ordering::Acquire),
            self.generation.load(Ordering::Acquire),
        )
    }

    fn ping(&self) {
        self.signals.load().ping.notify_one();
    }

    fn probe_needed(&self, probe: Probe) -> bool {
        if self.closed.load(Ordering::Acquire) || self.state.borrow().stopped.is_some() {
            return false;
        }
        match probe {
            Probe::Token(id) => self.cell.load().as_ref().is_some_and(|t| t.id() == id),
            Probe::Waiters => self.cell.load().is_none() && self.state.receiver_count() > 0,
        }
    }

    fn probe_done(&self, probe: Probe) {
        if probe == Probe::Waiters {
            self.probing_waiters.store(false, Ordering::Release);
            // A caller may have started waiting just before the flag was cleared.
            if self.probe_needed(probe) {
                self.probe_waiters();
            }
        }
    }

    /// Has the watchdog probe the refresher shortly before `token`'s usable time ends.
    fn watch_token(&self, token: &AccessToken) {
        let at = watchdog::ping_before(token.usable_until(), self.settings.stall_timeout);
        watchdog::schedule(self.key, Probe::Token(token.id()), at);
    }
}

/// Whether this runtime has timers: the refresher cannot work without them. Creating a
/// `Sleep` on a runtime without the time driver panics (tokio's message says to call
/// `enable_time`); that panic is caught here and becomes a configuration error.
fn check_timers() -> Result<(), Error> {
    let probe = std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO)));
    probe.map_err(|_| {
        Error::config(
            "the tokio runtime has no timers, which the token refresher needs: build it with `enable_time()` or `enable_all()`",
        )
    })
}

/// A keyed hash of a bearer token: enough to recognise a token again, useless to anyone
/// who reads it.
fn fingerprint(bytes: &[u8]) -> u64 {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEY.get_or_init(Default::default).hash_one(bytes)
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.handle.shared;
        f.debug_struct("TokenSource")
            .field("url", &shared.request.url())
            .field("client_id", &shared.credentials.client_id())
            .field("token", &shared.cell.load().as_ref().map(|t| t.id()))
            .field("key", &shared.key)
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
    /// Refreshes forced by refusals since the API last accepted a token: the forced-refresh
    /// backoff doubles with each (see [`TokenSource::invalidate`]).
    pub forced_refreshes_in_a_row: u32,
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
    /// The background refresher is not running: the tokio runtime it ran on was shut down, or
    /// did not run it when the watchdog asked (a runtime nobody drives). No token is sent;
    /// the next caller on a tokio runtime takes the refreshing over.
    Stopped,
}

impl Health {
    /// `true` while a usable token is being sent.
    pub fn is_serving(self) -> bool {
        matches!(self, Self::Fresh | Self::Refreshing | Self::Degraded)
    }
}
