//! The background task: the only place tokens are fetched, refreshed and retired.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::Instrument;

use super::{FetchOutcome, FetchState, Shared, Signals, TokenOrigin};
use crate::error::Error;
use crate::oauth::exchange;
use crate::source::token::{AccessToken, Issued};

/// Retry-After is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// After this many panics in a row the refresher stops using timers (a runtime whose timers
/// panic) and only answers demand.
const MAX_PANICS_IN_A_ROW: u32 = 3;

impl Shared {
    /// Hands an outcome to the user's hook; a panicking hook is logged, never fatal to the
    /// refresher.
    fn report(&self, outcome: FetchOutcome<'_>) {
        // Units and help texts, for a recorder installed after the source was built.
        #[cfg(feature = "metrics")]
        crate::metrics::describe();
        if let Some(hook) = &self.on_fetch {
            let call = AssertUnwindSafe(|| hook(&outcome));
            if std::panic::catch_unwind(call).is_err() {
                tracing::error!("the on_fetch hook panicked; the refresher carries on");
            }
        }
    }

    /// The labels of this source's metrics.
    #[cfg(feature = "metrics")]
    pub(crate) fn metric_labels(&self) -> crate::metrics::SourceLabels {
        crate::metrics::SourceLabels::new(self.request.url(), self.credentials.load().client_id())
    }

    /// Brings the source's gauges (health, how long the token will still be sent) up to date.
    #[cfg(feature = "metrics")]
    pub(crate) fn record_state(&self) {
        let token = self.cell.load();
        let health = self.state.borrow().health(token.is_some());
        let usable_for = token
            .as_ref()
            .map(|t| t.usable_until().saturating_duration_since(Instant::now()));
        crate::metrics::source_state(&self.metric_labels(), health.as_str(), usable_for);
    }

    /// [`TokenSource::set_credentials`](super::TokenSource::set_credentials).
    pub(super) fn set_credentials(&self, credentials: crate::Credentials) -> Result<(), Error> {
        let current = self.credentials.load();
        if credentials.client_id() != current.client_id() {
            return Err(Error::config(format!(
                "set_credentials was given credentials for client id {:?}, but this source belongs to {:?}: build another source for another client",
                crate::error::sanitize(credentials.client_id(), 100),
                crate::error::sanitize(current.client_id(), 100),
            )));
        }
        self.request.check(&credentials)?;
        tracing::info!(method = ?credentials.method(), "credentials replaced; the next token request uses them");
        self.credentials.store(Arc::new(credentials));
        self.credentials_changed.store(true, Ordering::SeqCst);
        // The refresher looks at the flag when it next wakes.
        self.signals.load().ping.notify_one();
        Ok(())
    }

    /// After a refusal that may mean a rotated secret (`invalid_client`,
    /// `unauthorized_client`, or any 401: Auth0, Entur's server, answers a wrong secret with
    /// 401 `access_denied`): reads the secret file again, if the secret came from one, and
    /// uses it if it changed. Whether it did.
    fn reload_secret_file(&self, error: &Error) -> bool {
        use crate::error::{Kind, OAuthErrorCode};
        let Kind::Rejected { code, status, .. } = error.inner() else {
            return false;
        };
        let client_refused = matches!(
            code,
            OAuthErrorCode::InvalidClient | OAuthErrorCode::UnauthorizedClient
        ) || *status == http::StatusCode::UNAUTHORIZED;
        if !client_refused {
            return false;
        }
        let current = self.credentials.load_full();
        let Some(path) = current.client_secret().and_then(|s| s.file()) else {
            return false;
        };
        match crate::ClientSecret::from_file(path) {
            Ok(secret) if secret.expose() != current.client_secret().map_or("", |s| s.expose()) => {
                tracing::info!(file = %path.display(), refused = %error, "the token endpoint refused the client secret and its file changed: retrying now with the new secret");
                let renewed = crate::Credentials::with_secret(current.client_id(), secret);
                self.credentials.store(Arc::new(renewed));
                true
            }
            Ok(_) => {
                tracing::debug!(file = %path.display(), "the client secret file is unchanged");
                false
            }
            Err(error) => {
                tracing::warn!(error = %error.report(), "the client secret file cannot be read again; keeping the secret read before");
                false
            }
        }
    }

    /// Where `token` (the current one) came from.
    pub(crate) fn origin(&self, token: &AccessToken) -> TokenOrigin {
        if self.adopted.load(Ordering::Relaxed) == token.id().get() {
            TokenOrigin::SharedStore
        } else {
            TokenOrigin::TokenEndpoint
        }
    }

    /// The shared store's state, when the source has one.
    pub(crate) fn store_state(&self) -> Option<super::StoreState> {
        #[cfg(feature = "shared-store")]
        if let Some(fleet) = &self.fleet {
            return Some(if fleet.bypassed() {
                super::StoreState::Bypassed
            } else {
                super::StoreState::Sharing
            });
        }
        None
    }

    /// Token requests made without the fleet lock.
    pub(crate) fn store_fallbacks(&self) -> u64 {
        #[cfg(feature = "shared-store")]
        if let Some(fleet) = &self.fleet {
            return fleet.fallbacks();
        }
        0
    }

    /// Drops `token` from the cell if it is still there.
    fn retire(&self, token: &Arc<AccessToken>) {
        let previous = self.cell.compare_and_swap(token, None);
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, token)) {
            tracing::debug!(token = ?token.id(), "token retired at the end of its usable lifetime");
            #[cfg(feature = "metrics")]
            self.record_state();
        }
    }

    /// A new token: from the fleet's shared store when there is one, else fetched.
    async fn obtain(&self, jitter_sample: f64) -> Result<(AccessToken, TokenOrigin), Error> {
        #[cfg(feature = "shared-store")]
        if let Some(fleet) = &self.fleet {
            let current = self.cell.load_full();
            let fetch = || self.fetch(jitter_sample);
            let refused = |token: &AccessToken| self.was_refused(token);
            return fleet
                .obtain(
                    current.as_deref(),
                    &refused,
                    &self.settings.lifecycle,
                    jitter_sample,
                    fetch,
                )
                .await;
        }
        let token = self.fetch(jitter_sample).await?;
        Ok((token, TokenOrigin::TokenEndpoint))
    }

    /// One token request; when it is refused and the client secret file changed (a
    /// rotation), one more at once with the new secret, so that the call waiting for this
    /// fetch gets a token instead of the refusal. At most two token requests, each counted.
    async fn fetch(&self, jitter_sample: f64) -> Result<AccessToken, Error> {
        match self.counted_request(jitter_sample).await {
            Err(error) if self.reload_secret_file(&error) => {
                self.counted_request(jitter_sample).await
            }
            result => result,
        }
    }

    /// One token request, counted in the metrics.
    async fn counted_request(&self, jitter_sample: f64) -> Result<AccessToken, Error> {
        #[cfg(feature = "metrics")]
        let started = Instant::now();
        let result = self.request_token(jitter_sample).await;
        #[cfg(feature = "metrics")]
        crate::metrics::token_request(
            &self.metric_labels(),
            result.as_ref().map(drop),
            started.elapsed(),
        );
        result
    }

    /// One token request, with the fetch timeout around all of it.
    async fn request_token(&self, jitter_sample: f64) -> Result<AccessToken, Error> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let credentials = self.credentials.load_full();
        let sent_at = Instant::now();
        let sent_wall = SystemTime::now();
        let timeout = self.settings.fetch_timeout;
        // Signing (a KMS call, perhaps) counts towards the fetch timeout.
        let exchange = async {
            let (request, redact) = self.request.build(&credentials).await?;
            let response = self
                .transport
                .clone()
                .oneshot(request)
                .await
                .map_err(exchange::transport_error)?;
            Ok::<_, Error>((response, redact))
        };
        let (response, redact) = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return Err(Error::timeout(timeout)),
            Ok(result) => result?,
        };
        let granted =
            exchange::read_response(&response, &redact, self.request.client_auth(&credentials))?;
        let issued = Issued {
            access_token: &granted.access_token,
            expires_in: granted.expires_in,
            scope: granted.scope,
            sent_at,
            sent_wall,
            server_date: granted.server_date,
        };
        let token = AccessToken::from_issued(issued, &self.settings.lifecycle, jitter_sample)?;
        // A token whose lifetime was shorter than the request for it took cannot be used: a
        // failed request (and never published to a shared store).
        if Instant::now() >= token.usable_until() {
            return Err(unusable_on_arrival(&token, sent_at.elapsed()));
        }
        Ok(token)
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

/// The error for a token that arrived already past its usable time.
fn unusable_on_arrival(token: &AccessToken, took: Duration) -> Error {
    let lifetime = token.expires_at() - token.issued_at();
    Error::invalid(
        http::StatusCode::OK,
        format!(
            "the token arrived already past its usable time: its lifetime ({:.1} s) is barely longer than the token request took ({:.1} s); retrying on the slow schedule (check the token endpoint's latency, or a lifetime this short)",
            lifetime.as_secs_f64(),
            took.as_secs_f64()
        ),
    )
}

/// `now + delay`, saturating far in the future instead of overflowing.
fn later(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ends the refresher's generation when its task ends: if the task was dropped while it was
/// still the current refresher (its runtime shut down), the source learns of it at once.
pub(super) struct Guard {
    shared: Arc<Shared>,
    generation: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.refresher_ended(self.generation);
    }
}

impl Guard {
    pub(super) fn new(shared: Arc<Shared>, generation: u64) -> Self {
        Self { shared, generation }
    }
}

/// The background task of one refresher generation. The guard is an argument, not made
/// inside: a task dropped before it was ever polled (its runtime shut down first) still
/// drops it.
pub(super) async fn run(guard: Guard, signals: Arc<Signals>, rng: fastrand::Rng) {
    let shared = guard.shared.clone();
    let generation = guard.generation;
    let mut refresher = Refresher {
        shared,
        signals,
        rng,
        failures: 0,
        retry_at: None,
        panics: 0,
    };
    // The current token may have come from a refresher before this one: watch it.
    if let Some(token) = refresher.shared.cell.load_full() {
        refresher.shared.watch_token(&token);
    }
    while refresher.shared.is_current(generation) {
        // No panic ends the refresher: a bug in one step (or in a transport or store it
        // calls) counts as a failed fetch, and the loop carries on.
        match AssertUnwindSafe(refresher.step()).catch_unwind().await {
            Ok(()) => refresher.panics = 0,
            Err(_) => refresher.panicked(),
        }
    }
    drop(guard);
}

struct Refresher {
    shared: Arc<Shared>,
    signals: Arc<Signals>,
    rng: fastrand::Rng,
    /// Failed attempts since the last success.
    failures: u32,
    /// When the next attempt after a failure is due.
    retry_at: Option<Instant>,
    panics: u32,
}

impl Refresher {
    /// Waits for the next thing to do (a refresh, a retirement, demand, a probe) and does it.
    async fn step(&mut self) {
        let shared = self.shared.clone();
        let signals = self.signals.clone();
        shared.beat();
        // The refresher woke (a refresh, a retirement, demand, a probe): a cheap moment to
        // bring the gauges up to date.
        #[cfg(feature = "metrics")]
        shared.record_state();
        if self.panics >= MAX_PANICS_IN_A_ROW {
            // Timers keep panicking: answer demand only.
            tokio::select! {
                () = signals.wake.notified() => {}
                () = signals.ping.notified() => return,
            }
            return self.fetch().await;
        }
        if shared.credentials_changed.swap(false, Ordering::SeqCst) && self.retry_at.is_some() {
            // New credentials: the backoff was for the old ones.
            self.retry_at = None;
            if shared.cell.load().is_none() {
                return self.fetch().await;
            }
        }
        let current = shared.cell.load_full();
        if let Some(token) = &current {
            if Instant::now() >= token.usable_until() {
                shared.retire(token);
                return;
            }
        }
        let due = self.retry_at.or(current.as_ref().map(|t| t.refresh_at()));
        let expiry = current.as_ref().map(|t| t.usable_until());
        let watch = self.watch_point(current.as_deref());
        tokio::select! {
            () = signals.wake.notified() => {
                // Demand: only an empty cell outside backoff warrants a fetch now.
                if self.retry_at.is_some() || shared.cell.load().is_some() {
                    return;
                }
            }
            () = signals.ping.notified() => return,
            () = sleep_until(watch) => return self.mark_watch_point(current.as_deref()),
            () = sleep_until(due) => {}
            () = sleep_until(expiry) => return,
        }
        self.fetch().await;
    }

    /// When to mark `token`'s watch point for the watchdog, unless it is marked already.
    fn watch_point(&self, token: Option<&AccessToken>) -> Option<Instant> {
        let token = token?;
        (!self.shared.reached_watch_point(token.id())).then(|| self.shared.watch_point(token))
    }

    fn mark_watch_point(&self, token: Option<&AccessToken>) {
        if let Some(token) = token {
            self.shared.mark_watch_point(token);
        }
    }

    async fn fetch(&mut self) {
        let shared = self.shared.clone();
        let signals = self.signals.clone();
        shared.publish(|s| s.fetching = true);
        let attempt = self.failures + 1;
        let span = tracing::info_span!("entur_auth_fetch", attempt, url = %shared.request.url());
        tracing::debug!(parent: &span, "fetching an access token");
        let started = Instant::now();
        let fetch = shared.obtain(self.rng.f64()).instrument(span.clone());
        tokio::pin!(fetch);
        // Keep retiring the current token on time, and answering the watchdog, while the
        // fetch runs.
        let mut expiry = shared.cell.load_full();
        let result = loop {
            let watch = self.watch_point(expiry.as_deref());
            tokio::select! {
                result = &mut fetch => break result,
                () = signals.ping.notified() => shared.beat(),
                () = sleep_until(watch) => self.mark_watch_point(expiry.as_deref()),
                () = sleep_until(expiry.as_ref().map(|t| t.usable_until())) => {
                    if let Some(token) = expiry.take() {
                        shared.retire(&token);
                    }
                }
            }
        };
        let took = started.elapsed();
        match result {
            Ok((token, origin)) => self.succeeded(token, origin, attempt, took, &span),
            Err(error) => self.failed(error, attempt, took, &span),
        }
    }

    fn succeeded(
        &mut self,
        token: AccessToken,
        origin: TokenOrigin,
        attempt: u32,
        took: Duration,
        span: &tracing::Span,
    ) {
        // A token whose lifetime was shorter than the request for it took cannot be used:
        // storing it would only retire it again at once, and waiting callers would start
        // the next fetch without any backoff. It is a failed fetch. (`fetch` checks this
        // on arrival; this catches the time spent publishing to a shared store.)
        if Instant::now() >= token.usable_until() {
            return self.failed(unusable_on_arrival(&token, took), attempt, took, span);
        }
        let shared = &self.shared;
        let token = Arc::new(token);
        let lifetime = token.expires_at() - token.issued_at();
        // A token fetched while the API was refusing tokens is on probation: the first
        // request it gets accepted ends the forced-refresh backoff.
        if shared.reauth().streak(Instant::now()) > 0 {
            token.start_probation();
        }
        let refresh_in_s = (token.refresh_at() - token.issued_at()).as_secs_f64();
        let took_ms = took.as_millis() as u64;
        match origin {
            TokenOrigin::TokenEndpoint => tracing::info!(
                parent: span,
                token = %token.id(),
                lifetime_s = lifetime.as_secs_f64(),
                refresh_in_s,
                took_ms,
                "access token fetched"
            ),
            TokenOrigin::SharedStore => tracing::info!(
                parent: span,
                token = %token.id(),
                lifetime_s = lifetime.as_secs_f64(),
                refresh_in_s,
                took_ms,
                "access token adopted from the shared store"
            ),
        }
        let adopted = match origin {
            TokenOrigin::SharedStore => token.id().get(),
            _ => 0,
        };
        shared.adopted.store(adopted, Ordering::Relaxed);
        shared.cell.store(Some(token.clone()));
        shared.watch_token(&token);
        self.failures = 0;
        self.retry_at = None;
        shared.publish(|s| *s = FetchState::default());
        shared.report(FetchOutcome {
            result: Ok(&token),
            origin,
            attempt,
            took,
            retry_in: None,
            serving_token: true,
        });
    }

    fn failed(&mut self, error: Error, attempt: u32, took: Duration, span: &tracing::Span) {
        let shared = &self.shared;
        self.failures = self.failures.saturating_add(1);
        shared.failures.fetch_add(1, Ordering::Relaxed);
        let delay = shared.backoff(&error, self.failures, &mut self.rng);
        let at = later(delay);
        self.retry_at = Some(at);
        let serving_token = shared.cell.load().is_some();
        tracing::warn!(
            parent: span,
            error = %error.report(),
            transient = error.is_transient(),
            took_ms = took.as_millis() as u64,
            retry_in_ms = delay.as_millis() as u64,
            serving_token,
            "access token fetch failed; {}",
            match serving_token {
                true => "the current token is still sent until it expires",
                false => "there is no token to send until a fetch succeeds",
            }
        );
        shared.report(FetchOutcome {
            result: Err(&error),
            origin: TokenOrigin::TokenEndpoint,
            attempt,
            took,
            retry_in: Some(delay),
            serving_token,
        });
        shared.publish(|s| {
            s.fetching = false;
            s.last_error = Some(error);
            s.retry_at = Some(at);
        });
    }

    /// A step panicked: a bug. Waiting callers get an error instead of hanging, and the
    /// next attempt follows the slow schedule.
    fn panicked(&mut self) {
        self.panics = self.panics.saturating_add(1);
        tracing::error!(
            panics_in_a_row = self.panics,
            "the token refresher panicked (a bug in entur-auth or in the transport or store it called: please report it); it carries on"
        );
        let error = Error::internal(
            "the token refresher panicked (a bug: please report it); it retries on the slow schedule",
        );
        #[cfg(feature = "metrics")]
        crate::metrics::token_request_panicked(&self.shared.metric_labels());
        let span = tracing::Span::current();
        self.failed(error, self.failures + 1, Duration::ZERO, &span);
    }
}
