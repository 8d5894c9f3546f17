//! Forced refreshes: dropping a token the API refused, backing off while the API keeps
//! refusing new ones, and remembering refused tokens so that none is adopted again.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::{Arc, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use crate::source::token::{AccessToken, TokenId};

/// The ceiling of the backoff between forced refreshes when the API keeps refusing tokens.
const MAX_REAUTH_INTERVAL: Duration = Duration::from_secs(600);
/// How long the API must go without refusing any token, after it accepted one, before forced
/// refreshes stop backing off. As long as the backoff's ceiling: an API that refuses some
/// tokens at least this often (one replica of ten refusing, say) stays at the ceiling, and
/// costs no more token requests than an API that refuses every token.
const QUIET: Duration = MAX_REAUTH_INTERVAL;
/// How many refused tokens a source remembers, so that it never adopts one again from a
/// shared store.
const REMEMBERED_REFUSALS: usize = 16;

/// Forced refreshes: when, how many in a row, and which tokens were refused.
#[derive(Default)]
pub(super) struct Backoff {
    last_forced: Option<Instant>,
    /// Forced refreshes since the backoff last started over.
    streak: u32,
    /// When the API last refused a token (acted on or not).
    last_refusal: Option<Instant>,
    /// Whether the API accepted a token since the last forced refresh.
    accepted: bool,
    refused: VecDeque<u64>,
}

impl Backoff {
    /// Forced refreshes in a row, the backoff ended if it has done its job.
    pub(super) fn streak(&mut self, now: Instant) -> u32 {
        self.settle(now);
        self.streak
    }

    /// Ends the backoff once the API accepted a token since the last forced refresh and
    /// then refused none for [`QUIET`]. One accepted answer is not enough: behind a load
    /// balancer, one replica in ten refusing every token would otherwise start the backoff
    /// over after each replay that lands elsewhere.
    fn settle(&mut self, now: Instant) {
        let quiet = self
            .last_refusal
            .is_none_or(|at| now.saturating_duration_since(at) >= QUIET);
        if self.streak > 0 && self.accepted && quiet {
            tracing::debug!("the API accepted the token of a forced refresh and refused none since; forced refreshes no longer back off");
            self.streak = 0;
        }
    }

    /// The shortest time between the last forced refresh and the next: `min_interval`,
    /// doubling with every refresh forced since a token was last accepted, up to 10 minutes.
    fn interval(&self, min_interval: Duration) -> Duration {
        let doublings = self.streak.saturating_sub(1).min(16);
        min_interval
            .saturating_mul(1 << doublings)
            .min(MAX_REAUTH_INTERVAL.max(min_interval))
    }
}

/// Why the API refused a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reauth {
    /// HTTP 401: the token is invalid, expired or revoked.
    Unauthorized,
    /// HTTP 408: the token expired during the session (Entur).
    SessionTimeout,
    /// gRPC status 16, `UNAUTHENTICATED`.
    GrpcUnauthenticated,
}

impl Reauth {
    /// The reason as the metrics label it: `http_401`, `http_408`, `grpc_unauthenticated`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "http_401",
            Self::SessionTimeout => "http_408",
            Self::GrpcUnauthenticated => "grpc_unauthenticated",
        }
    }
}

/// What [`TokenSource::invalidate`](super::TokenSource::invalidate) did with a refused token.
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
    /// [`min_reauth_interval`](super::TokenSourceBuilder::min_reauth_interval), doubling, up to 10
    /// minutes) so that an API that refuses every token cannot exhaust the token quota.
    RateLimited {
        /// When the next forced refresh is allowed.
        retry_in: Duration,
    },
    /// The token source no longer exists.
    SourceGone,
}

impl Invalidation {
    /// What was done, as the metrics label it: `started`, `already_replaced`,
    /// `rate_limited`, `source_gone`.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::AlreadyReplaced => "already_replaced",
            Self::RateLimited { .. } => "rate_limited",
            Self::SourceGone => "source_gone",
        }
    }
}

impl Shared {
    pub(super) fn reauth(&self) -> MutexGuard<'_, Backoff> {
        self.reauth
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// See [`TokenSource::invalidate`](super::TokenSource::invalidate): a refusal learnt of
    /// directly.
    pub(crate) fn invalidate(&self, rejected: TokenId) -> Invalidation {
        self.invalidate_because(rejected, None)
    }

    /// Drops `rejected`, which the API refused for `reason`, if it is still the current token,
    /// and starts a fetch (unless forced refreshes are backing off).
    pub(crate) fn invalidate_because(
        &self,
        rejected: TokenId,
        reason: Option<Reauth>,
    ) -> Invalidation {
        let action = self.drop_refused(rejected);
        #[cfg(feature = "metrics")]
        // Without the source there are no labels.
        if action != Invalidation::SourceGone {
            crate::metrics::refusal(
                &self.metric_labels(),
                reason.map_or("direct", Reauth::as_str),
                action.as_str(),
            );
        }
        #[cfg(not(feature = "metrics"))]
        let _ = reason;
        action
    }

    fn drop_refused(&self, rejected: TokenId) -> Invalidation {
        let now = Instant::now();
        let mut reauth = self.reauth();
        reauth.settle(now);
        reauth.last_refusal = Some(now);
        let current = self.cell.load();
        let Some(token) = current.as_ref().filter(|t| t.id() == rejected) else {
            return Invalidation::AlreadyReplaced;
        };
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
        reauth.accepted = false;
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

    /// The API accepted `token` (a success whose body finished without a refusal): its
    /// probation ends, and the forced-refresh backoff ends once no refusal follows for
    /// [`QUIET`].
    pub(crate) fn accepted(&self, token: TokenId) {
        let current = self.cell.load();
        if let Some(current) = current
            .as_ref()
            .filter(|t| t.id() == token && t.on_probation())
        {
            current.end_probation();
            let mut reauth = self.reauth();
            reauth.accepted = true;
            reauth.settle(Instant::now());
        }
    }
}

/// A keyed hash of a bearer token: enough to recognise a token again, useless to anyone
/// who reads it.
pub(super) fn fingerprint(bytes: &[u8]) -> u64 {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    KEY.get_or_init(Default::default).hash_one(bytes)
}
