//! The instruments of the simulation in `tests/simulation.rs`: the [`Ledger`] every event is
//! written to, the [`Observer`] between the auth layer and the embedded API, the [`TokenTap`]
//! between a token source and the token endpoint, and (feature `shared-store`) the
//! [`SimStore`] a fleet of sources shares.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use entur_auth::{BoxError, FetchOutcome, Invalidation, TokenId, TokenRequestBody};
use entur_auth_test::{ApiService, TestBody, TokenTransport};
use futures_util::future::BoxFuture;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// Which source an event belongs to: every source built in a seed gets its own tag, so a
/// source rebuilt in a slot is a new one.
pub type Tag = u64;

/// A window of virtual time during which some fault could slow requests down; `None` is
/// open-ended (the fault is still active).
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub from: Instant,
    pub until: Option<Instant>,
}

impl Window {
    pub fn overlaps(&self, from: Instant, until: Instant) -> bool {
        self.from <= until && self.until.is_none_or(|end| from <= end)
    }
}

/// How a request to the API ended, as the caller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    /// The auth layer failed the request (no token): the error's kind.
    Error(ErrorKind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Transient,
    Rejected,
    OtherTokenError,
    Other,
}

impl ErrorKind {
    pub fn of(error: &BoxError) -> Self {
        match error.downcast_ref::<entur_auth::Error>() {
            Some(e) if e.is_transient() => Self::Transient,
            Some(e) if e.is_credentials() => Self::Rejected,
            Some(_) => Self::OtherTokenError,
            None => Self::Other,
        }
    }
}

/// Which stack a request went through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `EnturAuthLayer::with_replay()`, a `Full` body: refused requests are replayed once.
    Replay,
    /// `EnturAuthLayer::with_replay()`, a streaming body: refusals come back `NotReplayable`.
    ReplayStream,
    /// The bare `EnturAuthLayer`, a streaming body: refusals come back as they are.
    Bare,
}

/// One request to the API, from the caller's side.
#[derive(Debug)]
pub struct ApiRequest {
    pub tag: Tag,
    /// Which caller (numbered in the order the driver made them), and its how-manieth request.
    pub caller: (u64, usize),
    pub route: Route,
    pub start: Instant,
    pub end: Option<Instant>,
    pub outcome: Option<Outcome>,
    /// The source was `Health::Failing` (no token, last fetch failed) when the call was made.
    pub failing_at_start: bool,
    /// The caller was aborted before an answer came.
    pub cancelled: bool,
    /// The checks have looked at it.
    pub checked: bool,
}

/// One request to the token endpoint, from the tap's side.
#[derive(Debug)]
pub struct TokenRequest {
    pub tag: Tag,
    pub start: Instant,
    pub end: Option<Instant>,
    /// HTTP status, or `-1` for a refused connection, `-2` for a request given up (the fetch
    /// timeout fired or the source was dropped).
    pub outcome: Option<i32>,
}

/// An event of the determinism trace: virtual times in nanoseconds since the seed started.
/// It names no caller: which of the callers woken at one instant runs first is up to tokio
/// (see `canonical` in `tests/simulation.rs`), and with it which of them, say, started the
/// fetch after a refusal and which found the token already replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    Token {
        tag: Tag,
        at: u128,
        took: u128,
        outcome: i32,
    },
    Api {
        tag: Tag,
        route: Route,
        at: u128,
        took: u128,
        outcome: Outcome,
        refusal: Option<(Invalidation, entur_auth::ReplayOutcome)>,
    },
    Invalidate {
        tag: Tag,
        at: u128,
        result: Invalidation,
    },
}

impl TraceEvent {
    /// When it started, in nanoseconds since the seed started.
    pub fn at(&self) -> u128 {
        match *self {
            Self::Token { at, .. } | Self::Api { at, .. } | Self::Invalidate { at, .. } => at,
        }
    }
}

/// What a source obtained: a token, as the `on_fetch` hook reported it.
#[derive(Clone, Copy, Debug)]
struct Obtained {
    usable_until: Instant,
}

/// What the server issued: the instant, and how many key rotations had happened by then.
#[derive(Clone, Copy, Debug)]
struct Issue {
    at: Instant,
    rotations: usize,
}

/// Concurrent `invalidate` calls on one token, and what they returned.
#[derive(Debug)]
pub struct Storm {
    /// The token was no longer the source's current one.
    pub stale: bool,
    pub results: Vec<Invalidation>,
}

/// How many token requests a source made, and how many of them met a queued fault.
#[derive(Clone, Copy, Debug, Default)]
pub struct SourceCounts {
    pub token_requests: usize,
    pub queued_faults: usize,
}

// ---------------------------------------------------------------------------
// The ledger
// ---------------------------------------------------------------------------

/// Everything that happened in a seed, written by the instruments and read by the checks.
pub struct Books {
    pub origin: Instant,
    pub lifetime: Duration,
    /// The longest an obtain (store and fetch) can take: how long a fault can slow callers.
    pub obtain_max: Duration,
    issued: HashMap<Bytes, Issue>,
    pub rotations: usize,
    obtained: HashMap<(Tag, Bytes), Obtained>,
    ids: HashMap<TokenId, (Tag, Bytes)>,
    invalidated: HashMap<(Tag, Bytes), Instant>,
    /// Instants of `Invalidation::Started` seen per source (from refusals and direct calls).
    pub started: BTreeMap<Tag, Vec<Instant>>,
    /// Each storm of concurrent `invalidate` calls on one token.
    pub storms: Vec<Storm>,
    pub counts: BTreeMap<Tag, SourceCounts>,
    pub queued_pending: usize,
    pub token_requests: Vec<TokenRequest>,
    pub requests: Vec<ApiRequest>,
    pub disturbances: Vec<Window>,
    pub live_callers: usize,
    pub violations: Vec<String>,
    pub trace: Option<Vec<TraceEvent>>,
}

impl Books {
    fn since(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.origin).as_nanos()
    }

    fn violation(&mut self, message: String) {
        let at = Instant::now().saturating_duration_since(self.origin);
        self.violations.push(format!("at {at:?}: {message}"));
    }

    fn trace(&mut self, event: TraceEvent) {
        if let Some(trace) = &mut self.trace {
            trace.push(event);
        }
    }

    pub fn is_clean(&self, from: Instant, until: Instant) -> bool {
        !self.disturbances.iter().any(|w| w.overlaps(from, until))
    }
}

/// The seed's books, shared by the instruments (cheap to clone).
#[derive(Clone)]
pub struct Ledger(Arc<Mutex<Books>>);

impl Ledger {
    pub fn new(lifetime: Duration, obtain_max: Duration, trace: bool) -> Self {
        Ledger(Arc::new(Mutex::new(Books {
            origin: Instant::now(),
            lifetime,
            obtain_max,
            issued: HashMap::new(),
            rotations: 0,
            obtained: HashMap::new(),
            ids: HashMap::new(),
            invalidated: HashMap::new(),
            started: BTreeMap::new(),
            storms: Vec::new(),
            counts: BTreeMap::new(),
            queued_pending: 0,
            token_requests: Vec::new(),
            requests: Vec::new(),
            disturbances: Vec::new(),
            live_callers: 0,
            violations: Vec::new(),
            trace: trace.then(Vec::new),
        })))
    }

    /// The books; a panicking caller cannot poison them for the checks.
    pub fn books(&self) -> MutexGuard<'_, Books> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The `on_fetch` hook of source `tag`: remembers the token it obtained (fetched, or
    /// adopted from the shared store) and until when it may be sent.
    pub fn fetched(&self, tag: Tag, outcome: &FetchOutcome<'_>) {
        let Ok(token) = outcome.result else { return };
        let bearer = Bytes::copy_from_slice(token.header_value().as_bytes());
        let mut books = self.books();
        books.ids.insert(token.id(), (tag, bearer.clone()));
        books.obtained.insert(
            (tag, bearer),
            Obtained {
                usable_until: token.usable_until(),
            },
        );
    }

    /// Source `tag` dropped token `id` (an `Invalidation::Started`): it must never send it
    /// again.
    pub fn invalidated(&self, tag: Tag, id: TokenId) {
        let now = Instant::now();
        let mut books = self.books();
        books.started.entry(tag).or_default().push(now);
        match books.ids.get(&id).cloned() {
            Some(key) => {
                books.invalidated.entry(key).or_insert(now);
            }
            None => books.violation(format!(
                "source #{tag} invalidated token {id}, which it never reported obtaining"
            )),
        }
    }

    /// Records the result of one direct `invalidate` call of a storm.
    pub fn direct_invalidation(&self, storm: usize, tag: Tag, id: TokenId, result: Invalidation) {
        if result == Invalidation::Started {
            self.invalidated(tag, id);
        }
        let mut books = self.books();
        let at = books.since(Instant::now());
        books.storms[storm].results.push(result);
        books.trace(TraceEvent::Invalidate { tag, at, result });
    }

    /// A storm of `invalidate` calls on one token; `stale` when it was no longer current.
    pub fn new_storm(&self, stale: bool) -> usize {
        let mut books = self.books();
        books.storms.push(Storm {
            stale,
            results: Vec::new(),
        });
        books.storms.len() - 1
    }

    /// The key rotation (`TestServer::revoke_all`) just happened.
    pub fn rotated(&self) {
        self.books().rotations += 1;
    }

    pub fn queued_faults(&self, n: usize) {
        self.books().queued_pending += n;
    }

    pub fn disturbed(&self, window: Window) -> usize {
        let mut books = self.books();
        books.disturbances.push(window);
        books.disturbances.len() - 1
    }

    pub fn calm(&self, window: usize, until: Instant) {
        self.books().disturbances[window].until = Some(until);
    }

    /// A caller task exists until the returned guard is dropped (with its future).
    pub fn caller_alive(&self) -> CallerAlive {
        self.books().live_callers += 1;
        CallerAlive(self.clone())
    }

    /// A request to the API starts; the guard records its end, or its cancellation.
    pub fn request_started(
        &self,
        tag: Tag,
        caller: (u64, usize),
        route: Route,
        failing_at_start: bool,
    ) -> RequestGuard {
        let mut books = self.books();
        books.requests.push(ApiRequest {
            tag,
            caller,
            route,
            start: Instant::now(),
            end: None,
            outcome: None,
            failing_at_start,
            cancelled: false,
            checked: false,
        });
        RequestGuard {
            ledger: self.clone(),
            index: books.requests.len() - 1,
            done: false,
        }
    }

    /// The observer's check, in `call`, of the token a request carries to the API
    /// (invariants 1 and 2).
    fn sent(&self, tag: Tag, bearer: Option<&Bytes>) {
        let now = Instant::now();
        let mut books = self.books();
        match bearer {
            None => books.violation(format!("source #{tag} sent a request without a token")),
            Some(bearer) => {
                let key = (tag, bearer.clone());
                match books.obtained.get(&key).copied() {
                    None => books.violation(format!(
                        "source #{tag} sent a token it never reported obtaining"
                    )),
                    Some(obtained) if now > obtained.usable_until => {
                        let late = now - obtained.usable_until;
                        books.violation(format!(
                            "invariant 1: source #{tag} sent a token {late:?} past its usable time"
                        ))
                    }
                    Some(_) => {}
                }
                if let Some(&at) = books.invalidated.get(&key) {
                    let ago = now - at;
                    books.violation(format!(
                        "invariant 2: source #{tag} sent a token whose invalidation completed {ago:?} earlier"
                    ));
                }
            }
        }
    }

    /// The API is about to look at the token: it must not have expired at the server.
    /// Returns how many key rotations preceded its issue.
    fn arrived(&self, tag: Tag, bearer: Option<&Bytes>) -> Option<usize> {
        let now = Instant::now();
        let mut books = self.books();
        let issue = books.issued.get(bearer?).copied();
        let Some(issue) = issue else {
            books.violation(format!(
                "source #{tag} sent a bearer the token endpoint never issued"
            ));
            return None;
        };
        let expiry = issue.at + books.lifetime;
        if now >= expiry {
            let late = now - expiry;
            books.violation(format!(
                "source #{tag}'s token reached the API {late:?} after it expired at the server"
            ));
        }
        Some(issue.rotations)
    }

    /// The API answered 401: only a rotated-out (revoked) token may be refused.
    fn refused_by_api(&self, tag: Tag, rotations_at_issue: Option<usize>) {
        let mut books = self.books();
        if rotations_at_issue == Some(books.rotations) {
            books.violation(format!(
                "the API refused a token of source #{tag} that was neither revoked nor expired"
            ));
        }
    }

    fn token_request_began(&self, tag: Tag) -> usize {
        let now = Instant::now();
        let mut books = self.books();
        let queued = books.queued_pending > 0;
        if queued {
            books.queued_pending -= 1;
            // The fault this request met can slow callers for as long as an obtain lasts.
            let until = now + books.obtain_max;
            books.disturbances.push(Window {
                from: now,
                until: Some(until),
            });
        }
        let counts = books.counts.entry(tag).or_default();
        counts.token_requests += 1;
        counts.queued_faults += usize::from(queued);
        books.token_requests.push(TokenRequest {
            tag,
            start: now,
            end: None,
            outcome: None,
        });
        books.token_requests.len() - 1
    }

    fn token_request_ended(&self, index: usize, outcome: i32) {
        let now = Instant::now();
        let mut books = self.books();
        let request = &mut books.token_requests[index];
        request.end = Some(now);
        request.outcome = Some(outcome);
        let (tag, start) = (request.tag, request.start);
        if outcome != 200 || now != start {
            // A slow or failed token request slows its callers: a disturbance whatever
            // caused it.
            books.disturbances.push(Window {
                from: start,
                until: Some(now),
            });
        }
        let (at, took) = (books.since(start), (now - start).as_nanos());
        books.trace(TraceEvent::Token {
            tag,
            at,
            took,
            outcome,
        });
    }

    /// When the request for a token published just now was sent: the earliest start of the
    /// token requests that succeeded at this instant (a source publishes the token it fetched
    /// in the same poll as the fetch ends).
    #[cfg_attr(not(feature = "shared-store"), allow(dead_code))]
    fn sent_of_fresh_token(&self) -> Option<Instant> {
        let now = Instant::now();
        let books = self.books();
        books
            .token_requests
            .iter()
            .filter(|request| request.end == Some(now) && request.outcome == Some(200))
            .map(|request| request.start)
            .min()
    }

    fn issued(&self, bearer: Bytes, at: Instant, rotations: usize) {
        self.books().issued.insert(bearer, Issue { at, rotations });
    }
}

/// Counts a caller task as alive until dropped.
pub struct CallerAlive(Ledger);

impl Drop for CallerAlive {
    fn drop(&mut self) {
        self.0.books().live_callers -= 1;
    }
}

/// Records the end of one API request; dropped unfinished, it records a cancellation.
pub struct RequestGuard {
    ledger: Ledger,
    index: usize,
    done: bool,
}

impl RequestGuard {
    pub fn finish(
        mut self,
        outcome: Outcome,
        refusal: Option<(Invalidation, entur_auth::ReplayOutcome)>,
    ) {
        self.done = true;
        let now = Instant::now();
        let mut books = self.ledger.books();
        let request = &mut books.requests[self.index];
        request.end = Some(now);
        request.outcome = Some(outcome);
        let (tag, route, start) = (request.tag, request.route, request.start);
        let (at, took) = (books.since(start), (now - start).as_nanos());
        books.trace(TraceEvent::Api {
            tag,
            route,
            at,
            took,
            outcome,
            refusal,
        });
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.done {
            self.ledger.books().requests[self.index].cancelled = true;
        }
    }
}

// ---------------------------------------------------------------------------
// The observer and the token tap
// ---------------------------------------------------------------------------

/// How long the API takes to answer a request: planned by the caller with the request (in
/// its extensions), so that it does not depend on the order in which tasks woken at the
/// same instant reach the API (tokio's watch channel wakes its receivers in a random order).
#[derive(Clone, Copy, Debug)]
pub struct ApiLatency(pub Duration);

/// Between the auth layer and the embedded API: checks, synchronously in `call`, the token
/// every request carries (invariants 1 and 2), then waits the request's [`ApiLatency`] and
/// checks that the API gets a token that has not expired at the server and is refused only
/// if revoked.
#[derive(Clone)]
pub struct Observer {
    tag: Tag,
    ledger: Ledger,
    api: ApiService,
}

impl Observer {
    pub fn new(tag: Tag, ledger: Ledger, api: ApiService) -> Self {
        Self { tag, ledger, api }
    }
}

impl<B> Service<Request<B>> for Observer
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<TestBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<TestBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let bearer = request
            .headers()
            .get(AUTHORIZATION)
            .map(|value| Bytes::copy_from_slice(value.as_bytes()));
        self.ledger.sent(self.tag, bearer.as_ref());
        let latency = request
            .extensions()
            .get::<ApiLatency>()
            .map_or(Duration::ZERO, |latency| latency.0);
        let (tag, ledger, api) = (self.tag, self.ledger.clone(), self.api.clone());
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let rotations = ledger.arrived(tag, bearer.as_ref());
            let response = api.oneshot(request).await?;
            if response.status() == StatusCode::UNAUTHORIZED {
                ledger.refused_by_api(tag, rotations);
            }
            Ok(response)
        })
    }
}

/// Between a token source and the token endpoint: counts every token request per source,
/// notes which met a queued fault, and reads the token the server issued (and when), so
/// that the observer can check it against the server's own expiry.
#[derive(Clone)]
pub struct TokenTap {
    tag: Tag,
    ledger: Ledger,
    inner: TokenTransport,
}

impl TokenTap {
    pub fn new(tag: Tag, ledger: Ledger, inner: TokenTransport) -> Self {
        Self { tag, ledger, inner }
    }
}

impl Service<Request<TokenRequestBody>> for TokenTap {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<Full<Bytes>>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<TokenRequestBody>) -> Self::Future {
        let index = self.ledger.token_request_began(self.tag);
        let answer = self.inner.call(request);
        let mut pending = PendingTokenRequest {
            ledger: self.ledger.clone(),
            index,
            done: false,
        };
        let ledger = self.ledger.clone();
        Box::pin(async move {
            let response = match answer.await {
                Ok(response) => response,
                Err(error) => {
                    pending.end(-1);
                    return Err(error.into());
                }
            };
            // The handler issued the token just now; the body may still trickle.
            let issued_at = Instant::now();
            let rotations = ledger.books().rotations;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            if parts.status == StatusCode::OK {
                if let Some(token) = access_token(&body) {
                    let bearer = Bytes::from(format!("Bearer {token}"));
                    ledger.issued(bearer, issued_at, rotations);
                }
            }
            pending.end(i32::from(parts.status.as_u16()));
            Ok(Response::from_parts(parts, Full::new(body)))
        })
    }
}

fn access_token(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    json.get("access_token")?.as_str().map(str::to_owned)
}

/// A token request in flight; dropped unfinished (timeout, source dropped), it is recorded
/// as given up.
struct PendingTokenRequest {
    ledger: Ledger,
    index: usize,
    done: bool,
}

impl PendingTokenRequest {
    fn end(&mut self, outcome: i32) {
        self.done = true;
        self.ledger.token_request_ended(self.index, outcome);
    }
}

impl Drop for PendingTokenRequest {
    fn drop(&mut self) {
        if !self.done {
            self.ledger.token_request_ended(self.index, -2);
        }
    }
}

// ---------------------------------------------------------------------------
// The shared store
// ---------------------------------------------------------------------------

#[cfg(feature = "shared-store")]
pub use self::store::{SimStore, StoreMode};

#[cfg(feature = "shared-store")]
mod store {
    use super::*;
    use entur_auth::store::TokenStore;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum StoreMode {
        /// Answers at once, correctly.
        Up,
        /// Every call fails at once.
        Down,
        /// No call ever answers: the crate's `store_timeout` fires.
        Slow,
        /// `get` answers garbage bytes; the other calls work.
        Garbage,
    }

    struct Entry {
        value: Vec<u8>,
        /// When the request for the token was sent.
        sent: Instant,
        expires: Instant,
    }

    struct State {
        mode: StoreMode,
        freshness: Duration,
        entries: HashMap<String, Entry>,
        locks: HashMap<String, (String, Instant)>,
        garbage: fastrand::Rng,
    }

    /// A [`TokenStore`] in memory, on the virtual clock, with a fault mode.
    ///
    /// It forgets an entry `freshness` of virtual time after the request for its token was
    /// sent. The crate ages a token it adopts by the wall clock (`SystemTime`: the entry holds
    /// wall-clock issue and expiry instants), which tokio's paused clock does not move: a
    /// token whose request was sent `d` of virtual time before it is adopted would be sent up
    /// to `d` past its real usable time (a token that took 9 s to trickle in looks brand
    /// new). Forgetting entries at `freshness` (below the crate's 10 % safety margin) keeps
    /// every adopted token valid at the API, while replicas that refresh or wait on the lock
    /// together still share.
    #[derive(Clone)]
    pub struct SimStore {
        state: Arc<Mutex<State>>,
        ledger: Ledger,
    }

    impl SimStore {
        pub fn new(seed: u64, freshness: Duration, ledger: Ledger) -> Self {
            let state = State {
                mode: StoreMode::Up,
                freshness,
                entries: HashMap::new(),
                locks: HashMap::new(),
                garbage: fastrand::Rng::with_seed(seed ^ 0x5707e),
            };
            SimStore {
                state: Arc::new(Mutex::new(state)),
                ledger,
            }
        }

        fn state(&self) -> MutexGuard<'_, State> {
            self.state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }

        pub fn set_mode(&self, mode: StoreMode) {
            self.state().mode = mode;
        }

        pub fn mode(&self) -> StoreMode {
            self.state().mode
        }

        /// What the store does with a call in the current mode: `Err` to fail it, `None` to
        /// never answer.
        async fn gate(&self) -> Result<StoreMode, BoxError> {
            let mode = self.mode();
            match mode {
                StoreMode::Down => Err("token store down (simulated)".into()),
                StoreMode::Slow => std::future::pending().await,
                StoreMode::Up | StoreMode::Garbage => Ok(mode),
            }
        }
    }

    impl TokenStore for SimStore {
        fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
            Box::pin(async move {
                let mode = self.gate().await?;
                let now = Instant::now();
                let mut state = self.state();
                if mode == StoreMode::Garbage {
                    let len = state.garbage.usize(0..80);
                    let mut bytes: Vec<u8> = (0..len).map(|_| state.garbage.u8(..)).collect();
                    if let Some(first) = bytes.first_mut() {
                        *first = 1; // the entry version the crate writes
                    }
                    return Ok(Some(bytes));
                }
                let freshness = state.freshness;
                Ok(state
                    .entries
                    .get(key)
                    .filter(|e| now < e.expires && now - e.sent <= freshness)
                    .map(|e| e.value.clone()))
            })
        }

        fn set<'a>(
            &'a self,
            key: &'a str,
            value: Vec<u8>,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<(), BoxError>> {
            Box::pin(async move {
                self.gate().await?;
                let now = Instant::now();
                let entry = Entry {
                    value,
                    sent: self.ledger.sent_of_fresh_token().unwrap_or(now),
                    expires: now + ttl,
                };
                self.state().entries.insert(key.to_owned(), entry);
                Ok(())
            })
        }

        fn try_lock<'a>(
            &'a self,
            key: &'a str,
            holder: &'a str,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<bool, BoxError>> {
            Box::pin(async move {
                self.gate().await?;
                let now = Instant::now();
                let mut state = self.state();
                if state.locks.get(key).is_some_and(|(_, until)| now < *until) {
                    return Ok(false);
                }
                state
                    .locks
                    .insert(key.to_owned(), (holder.to_owned(), now + ttl));
                Ok(true)
            })
        }

        fn unlock<'a>(
            &'a self,
            key: &'a str,
            holder: &'a str,
        ) -> BoxFuture<'a, Result<(), BoxError>> {
            Box::pin(async move {
                self.gate().await?;
                let mut state = self.state();
                if state.locks.get(key).is_some_and(|(h, _)| h == holder) {
                    state.locks.remove(key);
                }
                Ok(())
            })
        }
    }
}
