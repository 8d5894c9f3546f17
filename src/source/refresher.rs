//! The background task: the only place tokens are fetched, refreshed and retired.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::FutureExt as _;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::Instrument;

use super::{FetchOutcome, FetchState, Shared};
use crate::endpoint;
use crate::error::Error;
use crate::token::{AccessToken, Issued};

/// Retry-After is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl Shared {
    /// Hands an outcome to the user's hook; a panicking hook is logged, never fatal to the
    /// refresher.
    fn report(&self, outcome: FetchOutcome<'_>) {
        if let Some(hook) = &self.on_fetch {
            let call = std::panic::AssertUnwindSafe(|| hook(&outcome));
            if std::panic::catch_unwind(call).is_err() {
                tracing::error!("the on_fetch hook panicked; the refresher carries on");
            }
        }
    }

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

    /// A new token: from the fleet's shared store when there is one, else fetched.
    async fn obtain(&self, jitter_sample: f64) -> Result<AccessToken, Error> {
        #[cfg(feature = "shared-store")]
        if let Some(fleet) = &self.fleet {
            let current = self.cell.load_full();
            let fetch = || self.fetch(jitter_sample);
            return fleet
                .obtain(
                    current.as_deref(),
                    &self.settings.lifecycle,
                    jitter_sample,
                    fetch,
                )
                .await;
        }
        self.fetch(jitter_sample).await
    }

    /// One token request, with the fetch timeout around all of it.
    async fn fetch(&self, jitter_sample: f64) -> Result<AccessToken, Error> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
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
pub(super) async fn run(shared: Arc<Shared>, mut rng: fastrand::Rng) {
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
        let attempt = failures + 1;
        let span = tracing::info_span!("entur_auth_fetch", attempt, url = %shared.request.url());
        tracing::debug!(parent: &span, "fetching an access token");
        let started = Instant::now();
        // A panic while reading an answer would be a bug; it must not kill the refresher
        // (waiters would hang): it becomes an error like any other bad answer.
        let fetch = std::panic::AssertUnwindSafe(shared.obtain(rng.f64()))
            .catch_unwind()
            .map(|caught| {
                caught.unwrap_or_else(|_| {
                    Err(Error::invalid(
                        http::StatusCode::OK,
                        "reading it panicked, a bug in entur-auth: please report it",
                    ))
                })
            })
            .instrument(span.clone());
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
        let took = started.elapsed();
        match result {
            Ok(token) => {
                let token = Arc::new(token);
                let lifetime = token.expires_at() - token.issued_at();
                tracing::info!(
                    parent: &span,
                    token = %token.id(),
                    lifetime_s = lifetime.as_secs_f64(),
                    refresh_in_s = (token.refresh_at() - token.issued_at()).as_secs_f64(),
                    took_ms = took.as_millis() as u64,
                    "access token fetched"
                );
                shared.cell.store(Some(token.clone()));
                failures = 0;
                retry_at = None;
                shared.publish(|s| *s = FetchState::default());
                shared.report(FetchOutcome {
                    result: Ok(&token),
                    attempt,
                    took,
                    retry_in: None,
                    serving_token: true,
                });
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                shared.failures.fetch_add(1, Ordering::Relaxed);
                let delay = shared.backoff(&error, failures, &mut rng);
                let at = Instant::now() + delay;
                retry_at = Some(at);
                let serving_token = shared.cell.load().is_some();
                tracing::warn!(
                    parent: &span,
                    error = %error,
                    transient = error.is_transient(),
                    took_ms = took.as_millis() as u64,
                    retry_in_ms = delay.as_millis() as u64,
                    serving_token,
                    "access token fetch failed"
                );
                shared.report(FetchOutcome {
                    result: Err(&error),
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
        }
    }
}
