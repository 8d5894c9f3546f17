//! Metrics on the [`metrics`](https://docs.rs/metrics) crate's facade (feature `metrics`): token
//! requests, refusals, replays, the shared store and the health of every [`TokenSource`], seen by
//! whatever recorder the application installs (Prometheus, OpenTelemetry, StatsD, …).
//!
//! ```no_run
//! use entur_auth::{EnturAuthLayer, TokenSource};
//! use tower::ServiceBuilder;
//!
//! # fn run<S, R>(source: TokenSource, client: S, recorder: R) -> Result<(), Box<dyn std::error::Error>>
//! # where R: metrics::Recorder + Sync + 'static {
//! // Any `metrics` recorder: metrics-exporter-prometheus's renders the Prometheus text format
//! // (the README's "Metrics" section shows it, with the `/metrics` handler).
//! metrics::set_global_recorder(recorder)?;
//! entur_auth::metrics::describe(); // units and help texts, before the first token request
//!
//! let api = ServiceBuilder::new()
//!     .layer(EnturAuthLayer::new(source.clone()).with_replay())
//!     .service(client);
//!
//! // In the `/metrics` handler: `status()` brings the source's gauges up to date.
//! let _ = source.status();
//! # let _ = api; Ok(()) }
//! ```
//!
//! Nothing is recorded per request: counters move on the refresher's work (token requests,
//! adoptions from the store) and on refused answers, the gauges when the token or the state
//! changes and whenever [`TokenSource::status`] is called. With no recorder installed, each of
//! these costs a check that there is none.
//!
//! Names follow OpenTelemetry's style: dot-separated, units given as metadata
//! ([`describe`]), not in the name. An exporter may rewrite them: the Prometheus exporter
//! (`metrics-exporter-prometheus`) turns dots into underscores (`entur_auth_token_requests`),
//! and with `with_recommended_naming(true)` adds `_total` to counters and the unit to the
//! rest (`entur_auth_token_request_duration_seconds`). It renders histograms as summaries
//! unless given buckets (`set_buckets_for_metric`).
//!
//! # Telling sources apart
//!
//! Every series carries the token URL's host, `server.address` (OpenTelemetry's attribute for
//! the server called), and the OAuth2 client id, `oauth.client_id`: public configuration,
//! never a secret, and one pair per source, so the number of series stays bounded. Sources
//! with the same host and client id share their series: counters add up (a fleet of sources
//! in one process counts its token requests together), the gauges show whichever source
//! updated them last.
//!
//! # The metrics
//!
//! | name | type, unit | labels (besides `server.address`, `oauth.client_id`) | counts |
//! |---|---|---|---|
//! | `entur_auth.token.requests` | counter | `outcome`: `success`, `rejected`, `blocked`, `unavailable`, `timeout`, `invalid`, `config`, `signer`, `internal` | token requests sent to the token endpoint, by how they ended; never a token adopted from the shared store |
//! | `entur_auth.token.request.duration` | histogram, seconds | `outcome` | how long each token request took |
//! | `entur_auth.token.usable_for` | gauge, seconds | | how much longer the current token will be sent; 0 without a usable token |
//! | `entur_auth.source.health` | gauge | `state`: `idle`, `fresh`, `refreshing`, `degraded`, `fetching`, `failing`, `stopped` | 1 for the source's [`Health`], 0 for the other states |
//! | `entur_auth.token.refusals` | counter | `reason`: `http_401`, `http_408`, `grpc_unauthenticated`, `direct`; `action`: `started`, `already_replaced`, `rate_limited` | refused tokens the source was told about, and what it did ([`Invalidation`]) |
//! | `entur_auth.replays` | counter | `outcome`: `accepted`, `refused`, `failed`, `not_replayable` | refused requests the replay layer or the reqwest middleware saw, and what became of them |
//! | `entur_auth.store.lookups` | counter | `result`: `hit`, `miss`, `unavailable` | reads of the shared store for a token; a hit is a token adopted |
//! | `entur_auth.store.errors` | counter | `operation`: `get`, `set`, `lock`, `unlock`; `kind`: `error`, `timeout` | store calls that failed or did not answer in time |
//! | `entur_auth.store.fallbacks` | counter | `reason`: `unavailable`, `lock_wait` | token requests made without the fleet lock: the store was down, or the lock holder published nothing in time |
//! | `entur_auth.store.bypassed` | gauge | | 1 while the store is bypassed (its last call failed or timed out: the source fetches for itself), 0 once it answers again; absent for sources without a store |
//!
//! Token request outcomes: `rejected` is [`ErrorKind::Rejected`] (the credentials or the grant),
//! `blocked` [`ErrorKind::Blocked`] (a gateway's refusal), `unavailable`
//! [`ErrorKind::Unavailable`], `timeout` [`ErrorKind::Timeout`], `invalid` [`ErrorKind::InvalidResponse`],
//! `config` [`ErrorKind::Config`], `signer` [`ErrorKind::Signer`] (nothing was sent), and
//! `internal` a contained panic (a bug, counted once per panic
//! in the refresher whether or not a request was under way).
//!
//! Refusal reasons: `http_401`, `http_408` (Entur: the token expired) and
//! `grpc_unauthenticated` (in the headers or the trailers), whichever saw the answer: the
//! tower layer, the reqwest middleware or the tonic interceptor; `direct` is a call of
//! [`TokenSource::invalidate`]. Replay outcomes, counted alike by the replay layer and the
//! reqwest middleware: the replay's answer did not refuse the token (`accepted`), refused it
//! too (`refused`), or the replay failed with an error (`failed`); or the request was not
//! replayed because its body is a stream (`not_replayable`).
//!
//! [`TokenSource`]: crate::TokenSource
//! [`TokenSource::status`]: crate::TokenSource::status
//! [`TokenSource::invalidate`]: crate::TokenSource::invalidate
//! [`Health`]: crate::Health
//! [`Invalidation`]: crate::Invalidation

use std::sync::Arc;
use std::time::Duration;

use ::metrics::{describe_counter, describe_gauge, describe_histogram, Label, SharedString, Unit};

use crate::error::{Error, ErrorKind};

/// Token requests, by `outcome`.
pub(crate) const TOKEN_REQUESTS: &str = "entur_auth.token.requests";
/// How long token requests took, in seconds, by `outcome`.
pub const TOKEN_REQUEST_DURATION: &str = "entur_auth.token.request.duration";
/// How much longer the current token will be sent, in seconds.
pub(crate) const TOKEN_USABLE_FOR: &str = "entur_auth.token.usable_for";
/// 1 for the source's health `state`, 0 for the others.
pub(crate) const SOURCE_HEALTH: &str = "entur_auth.source.health";
/// Refused tokens, by `reason` and `action`.
pub(crate) const TOKEN_REFUSALS: &str = "entur_auth.token.refusals";
/// Refused requests seen by the replay layer, by `outcome`.
pub(crate) const REPLAYS: &str = "entur_auth.replays";
/// Reads of the shared store for a token, by `result`.
pub(crate) const STORE_LOOKUPS: &str = "entur_auth.store.lookups";
/// Failed or timed-out calls to the shared store, by `operation` and `kind`.
pub(crate) const STORE_ERRORS: &str = "entur_auth.store.errors";
/// Token requests made without the fleet lock, by `reason`.
pub(crate) const STORE_FALLBACKS: &str = "entur_auth.store.fallbacks";
/// 1 while the shared store is bypassed (its last call failed), 0 while it answers.
pub(crate) const STORE_BYPASSED: &str = "entur_auth.store.bypassed";

/// Gives the installed recorder the unit and a description of every metric, which exporters
/// show as help texts and, when asked, as unit suffixes.
///
/// Call it once after installing the recorder. The token sources also call it after each
/// token request and adoption, so a recorder installed later learns them too.
pub fn describe() {
    describe_counter!(
        TOKEN_REQUESTS,
        Unit::Count,
        "Token requests sent to the token endpoint, by outcome (tokens adopted from the shared store are not token requests)."
    );
    describe_histogram!(
        TOKEN_REQUEST_DURATION,
        Unit::Seconds,
        "How long token requests took, by outcome."
    );
    describe_gauge!(
        TOKEN_USABLE_FOR,
        Unit::Seconds,
        "How much longer the current token will be sent (0: no usable token); updated when the token changes and by TokenSource::status()."
    );
    describe_gauge!(
        SOURCE_HEALTH,
        "1 for the token source's health state (idle, fresh, refreshing, degraded, fetching, failing, stopped), 0 for the others."
    );
    describe_counter!(
        TOKEN_REFUSALS,
        Unit::Count,
        "Tokens refused by the API, by reason, and what the token source did (started a fetch, found it already replaced, or backed off)."
    );
    describe_counter!(
        REPLAYS,
        Unit::Count,
        "Refused requests seen by the replay layer, by outcome."
    );
    describe_counter!(
        STORE_LOOKUPS,
        Unit::Count,
        "Reads of the shared store for a token: hit (adopted), miss, unavailable."
    );
    describe_counter!(
        STORE_ERRORS,
        Unit::Count,
        "Shared store calls that failed or did not answer in time, by operation."
    );
    describe_counter!(
        STORE_FALLBACKS,
        Unit::Count,
        "Token requests made without the fleet lock: the store was unavailable, or the lock holder published no token in time."
    );
    describe_gauge!(
        STORE_BYPASSED,
        "1 while the shared store is bypassed (its last call failed or timed out, the source fetches for itself), 0 while it answers."
    );
}

/// The labels that tell one source's series from another's: the token URL's host and the
/// client id. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct SourceLabels {
    server_address: Arc<str>,
    client_id: Arc<str>,
}

impl SourceLabels {
    pub(crate) fn new(url: &http::Uri, client_id: &str) -> Self {
        Self {
            server_address: url.host().unwrap_or_default().into(),
            client_id: client_id.into(),
        }
    }

    /// The source's labels and `extra`.
    fn with(&self, extra: &[(&'static str, &'static str)]) -> Vec<Label> {
        let mut labels = Vec::with_capacity(2 + extra.len());
        labels.push(Label::new(
            "server.address",
            SharedString::from(self.server_address.clone()),
        ));
        labels.push(Label::new(
            "oauth.client_id",
            SharedString::from(self.client_id.clone()),
        ));
        labels.extend(extra.iter().map(|&(key, value)| Label::new(key, value)));
        labels
    }
}

/// A token request ended, after `took`.
pub(crate) fn token_request(labels: &SourceLabels, result: Result<(), &Error>, took: Duration) {
    let outcome = [("outcome", request_outcome(result))];
    ::metrics::counter!(TOKEN_REQUESTS, labels.with(&outcome)).increment(1);
    ::metrics::histogram!(TOKEN_REQUEST_DURATION, labels.with(&outcome)).record(took.as_secs_f64());
}

/// The refresher panicked: a bug, contained, counted as an `internal` outcome.
pub(crate) fn token_request_panicked(labels: &SourceLabels) {
    ::metrics::counter!(TOKEN_REQUESTS, labels.with(&[("outcome", "internal")])).increment(1);
}

/// The source's health and how much longer its token will be sent.
pub(crate) fn source_state(labels: &SourceLabels, current: &str, usable_for: Option<Duration>) {
    ::metrics::gauge!(TOKEN_USABLE_FOR, labels.with(&[]))
        .set(usable_for.unwrap_or_default().as_secs_f64());
    for state in HEALTH_STATES {
        let value = if state == current { 1.0 } else { 0.0 };
        ::metrics::gauge!(SOURCE_HEALTH, labels.with(&[("state", state)])).set(value);
    }
}

/// The source was told that the API refused a token (`reason`: `http_401`, `http_408`,
/// `grpc_unauthenticated`, or `direct` for a call of `TokenSource::invalidate`), and did
/// `action` (`started`, `already_replaced`, `rate_limited`).
pub(crate) fn refusal(labels: &SourceLabels, reason: &'static str, action: &'static str) {
    ::metrics::counter!(
        TOKEN_REFUSALS,
        labels.with(&[("reason", reason), ("action", action)])
    )
    .increment(1);
}

/// What became of a refused request: replayed and `accepted`, `refused` or `failed`, or not
/// replayed (`not_replayable`).
pub(crate) fn replay(labels: &SourceLabels, outcome: &'static str) {
    ::metrics::counter!(REPLAYS, labels.with(&[("outcome", outcome)])).increment(1);
}

/// A read of the shared store for a token: `hit` (adopted), `miss` or `unavailable`.
#[cfg(feature = "shared-store")]
pub(crate) fn store_lookup(labels: &SourceLabels, result: &'static str) {
    ::metrics::counter!(STORE_LOOKUPS, labels.with(&[("result", result)])).increment(1);
}

/// A store call failed (`timeout`: did not answer in time).
#[cfg(feature = "shared-store")]
pub(crate) fn store_error(labels: &SourceLabels, operation: &'static str, timeout: bool) {
    let kind = if timeout { "timeout" } else { "error" };
    ::metrics::counter!(
        STORE_ERRORS,
        labels.with(&[("operation", operation), ("kind", kind)])
    )
    .increment(1);
}

/// A token request without the fleet lock: `unavailable` or `lock_wait`.
#[cfg(feature = "shared-store")]
pub(crate) fn store_fallback(labels: &SourceLabels, reason: &'static str) {
    ::metrics::counter!(STORE_FALLBACKS, labels.with(&[("reason", reason)])).increment(1);
}

/// The store stopped answering (`true`) or answers again.
#[cfg(feature = "shared-store")]
pub(crate) fn store_bypassed(labels: &SourceLabels, bypassed: bool) {
    ::metrics::gauge!(STORE_BYPASSED, labels.with(&[])).set(if bypassed { 1.0 } else { 0.0 });
}

pub(crate) const HEALTH_STATES: [&str; 7] = [
    "idle",
    "fresh",
    "refreshing",
    "degraded",
    "fetching",
    "failing",
    "stopped",
];

fn request_outcome(result: Result<(), &Error>) -> &'static str {
    let Err(error) = result else {
        return "success";
    };
    match error.kind() {
        ErrorKind::Rejected => "rejected",
        ErrorKind::Blocked => "blocked",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::InvalidResponse => "invalid",
        ErrorKind::Config => "config",
        ErrorKind::Signer => "signer",
        // The rest never come from a token request; a contained panic is `Internal`.
        _ => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_name_the_error_kinds() {
        let status = http::StatusCode::BAD_REQUEST;
        let cases = [
            (Error::invalid(status, "not a token"), "invalid"),
            (Error::config("bad"), "config"),
            (Error::internal("a bug"), "internal"),
            (Error::unavailable(None, None, None), "unavailable"),
            (Error::timeout(Duration::from_secs(1)), "timeout"),
            (
                Error::rejected(crate::OAuthErrorCode::InvalidClient, None, status),
                "rejected",
            ),
            (
                crate::error::Kind::Blocked {
                    status,
                    answer: "an HTML page".into(),
                    server: None,
                }
                .into(),
                "blocked",
            ),
        ];
        for (error, outcome) in cases {
            assert_eq!(request_outcome(Err(&error)), outcome, "{error:?}");
        }
        assert_eq!(request_outcome(Ok(())), "success");
    }

    #[test]
    fn labels_carry_the_host_and_client_id_only() {
        let url = "https://partner.entur.org/oauth/token?x=1".parse().unwrap();
        let labels = SourceLabels::new(&url, "acme-client").with(&[("outcome", "success")]);
        let pairs: Vec<_> = labels.iter().map(|l| (l.key(), l.value())).collect();
        assert_eq!(
            pairs,
            [
                ("server.address", "partner.entur.org"),
                ("oauth.client_id", "acme-client"),
                ("outcome", "success"),
            ]
        );
    }
}
