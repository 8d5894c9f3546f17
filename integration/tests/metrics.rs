//! The metrics (feature `metrics`), read the way Prometheus reads them: every test records
//! into its own `metrics-exporter-prometheus` recorder, set as the thread's local recorder
//! (the tests run in parallel; a global recorder would mix their counts), and asserts the
//! values of the rendered scrape after a known sequence.
#![cfg(feature = "metrics")]

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/logs.rs"]
mod logs;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use entur_auth::store::{MemoryStore, TokenStore};
use entur_auth::{BoxError, EnturAuthLayer, Error, TokenOrigin, TokenSource};
use entur_auth_test::{ApiFault, Fault, TestServer};
use futures_util::future::BoxFuture;
use http::{Request, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tower::{Layer, Service, ServiceExt};

/// A recorder of its own for one test, and the handle that renders its scrape.
fn prometheus() -> (PrometheusRecorder, PrometheusHandle) {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    (recorder, handle)
}

/// One rendered scrape, in the Prometheus text format.
struct Scrape(String);

impl Scrape {
    fn of(handle: &PrometheusHandle) -> Self {
        Self(handle.render())
    }

    /// The value of the series `name` whose labels include `labels`; `None` when there is
    /// none, a panic when several match.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for line in self
            .0
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                continue;
            }
            let pairs: Vec<(&str, &str)> = series_labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once("=\"").expect("k=\"v\"");
                    (k, v.trim_end_matches('"'))
                })
                .collect();
            if labels.iter().all(|l| pairs.contains(l)) {
                assert!(found.is_none(), "several series match {name} {labels:?}");
                found = Some(value.parse().expect("a number"));
            }
        }
        found
    }

    /// Every series with its value, sorted (the exporter renders them in no fixed order).
    fn series(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
        lines.sort_unstable();
        lines
    }

    /// As [`get`](Self::get), 0 when the series does not exist.
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// Records the origin of every token a source obtains.
fn origins(builder: entur_auth::TokenSourceBuilder) -> (TokenSource, Arc<Mutex<Vec<TokenOrigin>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook = seen.clone();
    let source = builder
        .on_fetch(move |outcome| {
            if outcome.result.is_ok() {
                hook.lock().unwrap().push(outcome.origin);
            }
        })
        .build()
        .unwrap();
    (source, seen)
}

const OK: (&str, &str) = ("outcome", "success");

/// The sequence: a fetch, a store adoption, a refusal with re-authentication and
/// replay, and a direct invalidation answered from the store; two sources share one store.
/// Token requests are counted once for the fleet, adoptions as store hits, never as token
/// requests; the hook and the log tell the two apart.
#[tokio::test(start_paused = true)]
async fn a_known_sequence_shows_in_the_scrape() {
    let (recorder, handle) = prometheus();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let (capture, _subscriber) = logs::capture_trace();

    let server = server(Duration::from_secs(3600)).await;
    let store = MemoryStore::default();
    let (a, a_origins) = origins(server.source_builder().shared_store(store.clone()));
    let (b, b_origins) = origins(server.source_builder().shared_store(store.clone()));
    let labels = [
        ("server_address", "127.0.0.1"),
        ("oauth_client_id", server.client_id()),
    ];

    // A fetch, and an adoption.
    a.prefetch().await.unwrap();
    b.prefetch().await.unwrap();
    assert_eq!(server.token_requests(), 1);
    assert_eq!(*a_origins.lock().unwrap(), [TokenOrigin::TokenEndpoint]);
    assert_eq!(*b_origins.lock().unwrap(), [TokenOrigin::SharedStore]);
    assert_eq!(
        (a.status().fetch_attempts, b.status().fetch_attempts),
        (1, 0)
    );
    let scrape = Scrape::of(&handle);
    assert_eq!(scrape.get("entur_auth_token_requests", &[OK]), Some(1.0));
    assert_eq!(
        scrape.get("entur_auth_token_requests", &[labels[0], labels[1], OK]),
        Some(1.0),
        "labelled with the token URL's host and the client id"
    );
    assert_eq!(
        scrape.get("entur_auth_token_request_duration_count", &[OK]),
        Some(1.0)
    );
    // A looked twice (before and after taking the lock), B once.
    assert_eq!(
        scrape.get("entur_auth_store_lookups", &[("result", "miss")]),
        Some(2.0)
    );
    assert_eq!(
        scrape.get("entur_auth_store_lookups", &[("result", "hit")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("entur_auth_source_health", &[("state", "fresh")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("entur_auth_source_health", &[("state", "fetching")]),
        Some(0.0)
    );
    let logs = capture.text();
    assert_eq!(logs.matches("access token fetched").count(), 1, "{logs}");
    assert_eq!(
        logs.matches("access token adopted from the shared store")
            .count(),
        1,
        "{logs}"
    );

    // The hot path records nothing.
    let mut api = EnturAuthLayer::new(a.clone())
        .with_replay()
        .layer(server.api_service());
    let before = Scrape::of(&handle).series();
    for _ in 0..100 {
        assert_eq!(
            send(&mut api, api_request(&server, "/x")).await.unwrap(),
            StatusCode::OK
        );
    }
    assert_eq!(
        Scrape::of(&handle).series(),
        before,
        "no metric moves per request"
    );

    // A refusal: A drops the token, fetches (the store holds only the refused token) and
    // replays.
    server.push_api_fault(ApiFault::invalid_token());
    assert_eq!(
        send(&mut api, api_request(&server, "/x")).await.unwrap(),
        StatusCode::OK
    );
    assert_eq!(server.token_requests(), 2);
    // B is told of a refusal directly, and adopts A's new token from the store.
    b.invalidate(b.current().unwrap().id());
    b.prefetch().await.unwrap();
    assert_eq!(server.token_requests(), 2, "adopted, not fetched");
    assert_eq!(
        b.current().unwrap().header_value(),
        a.current().unwrap().header_value()
    );
    assert_eq!(
        *a_origins.lock().unwrap(),
        [TokenOrigin::TokenEndpoint, TokenOrigin::TokenEndpoint]
    );
    assert_eq!(
        *b_origins.lock().unwrap(),
        [TokenOrigin::SharedStore, TokenOrigin::SharedStore]
    );

    let scrape = Scrape::of(&handle);
    assert_eq!(scrape.get("entur_auth_token_requests", &[OK]), Some(2.0));
    assert_eq!(
        scrape.get(
            "entur_auth_token_refusals",
            &[("reason", "http_401"), ("action", "started")]
        ),
        Some(1.0)
    );
    assert_eq!(
        scrape.get(
            "entur_auth_token_refusals",
            &[("reason", "direct"), ("action", "started")]
        ),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("entur_auth_replays", &[("outcome", "accepted")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("entur_auth_store_lookups", &[("result", "miss")]),
        Some(4.0)
    );
    assert_eq!(
        scrape.get("entur_auth_store_lookups", &[("result", "hit")]),
        Some(2.0)
    );
    assert_eq!(scrape.get("entur_auth_store_fallbacks", &[]), None);
    assert_eq!(scrape.get("entur_auth_store_errors", &[]), None);
    // Only these series exist.
    let names: std::collections::BTreeSet<&str> = scrape
        .0
        .lines()
        .filter(|l| l.starts_with("# TYPE"))
        .map(|l| l.split(' ').nth(2).unwrap())
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "entur_auth_replays",
            "entur_auth_source_health",
            "entur_auth_store_bypassed",
            "entur_auth_store_lookups",
            "entur_auth_token_refusals",
            "entur_auth_token_request_duration",
            "entur_auth_token_requests",
            "entur_auth_token_usable_for",
        ]
    );
    // The store answered every call: not bypassed.
    assert_eq!(scrape.get("entur_auth_store_bypassed", &[]), Some(0.0));
}

/// Failed token requests by kind, and their durations.
#[tokio::test(start_paused = true)]
async fn token_requests_are_counted_by_outcome_with_their_duration() {
    let (recorder, handle) = prometheus();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let server = server(Duration::from_secs(3600)).await;
    let faults = [
        (
            Fault::status(StatusCode::SERVICE_UNAVAILABLE),
            "unavailable",
        ),
        (
            Fault::oauth_error(StatusCode::UNAUTHORIZED, "invalid_client"),
            "rejected",
        ),
        (
            Fault::respond(
                403,
                &[("content-type", "text/html")],
                "<html><title>Request blocked</title></html>",
            ),
            "blocked",
        ),
        (Fault::respond(200, &[], "not json"), "invalid"),
        (Fault::Delay(Duration::from_secs(20)), "timeout"),
    ];
    for (fault, outcome) in faults {
        server.push_fault(fault);
        let source = server.source_builder().build().unwrap();
        let error = source.token().await.unwrap_err();
        let scrape = Scrape::of(&handle);
        assert_eq!(
            scrape.get("entur_auth_token_requests", &[("outcome", outcome)]),
            Some(1.0),
            "{error}"
        );
        assert_eq!(
            scrape.get("entur_auth_source_health", &[("state", "failing")]),
            Some(1.0)
        );
        assert_eq!(scrape.get("entur_auth_token_usable_for", &[]), Some(0.0));
    }
    // The timeout took the fetch timeout (10 s); a slow success its time.
    server.push_fault(Fault::Delay(Duration::from_millis(2500)));
    let source = server.source_builder().build().unwrap();
    source.prefetch().await.unwrap();
    let scrape = Scrape::of(&handle);
    assert_eq!(
        scrape.get(
            "entur_auth_token_request_duration_sum",
            &[("outcome", "timeout")]
        ),
        Some(10.0)
    );
    let took = scrape
        .get("entur_auth_token_request_duration_sum", &[OK])
        .unwrap();
    assert!((2.5..2.6).contains(&took), "{took}");
    assert_eq!(server.token_requests(), 6);
    let total: f64 = [
        "success",
        "unavailable",
        "rejected",
        "blocked",
        "invalid",
        "timeout",
    ]
    .iter()
    .map(|o| scrape.count("entur_auth_token_requests", &[("outcome", o)]))
    .sum();
    assert_eq!(total, 6.0);
}

/// The gauges move when the token changes and when `status()` is read, never per request.
#[tokio::test(start_paused = true)]
async fn the_gauges_follow_the_token_and_status() {
    let (recorder, handle) = prometheus();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    let _ = source.status();
    let scrape = Scrape::of(&handle);
    assert_eq!(
        scrape.get("entur_auth_source_health", &[("state", "idle")]),
        Some(1.0)
    );
    assert_eq!(scrape.get("entur_auth_token_usable_for", &[]), Some(0.0));

    source.prefetch().await.unwrap();
    // Retired 30 s before expiry.
    let usable_for = Scrape::of(&handle)
        .get("entur_auth_token_usable_for", &[])
        .unwrap();
    assert_eq!(usable_for, 3570.0);
    tokio::time::advance(Duration::from_secs(600)).await;
    assert_eq!(
        Scrape::of(&handle).get("entur_auth_token_usable_for", &[]),
        Some(3570.0),
        "nothing is recorded while nothing happens"
    );
    let status = source.status();
    assert_eq!(status.usable_for, Some(Duration::from_secs(2970)));
    let scrape = Scrape::of(&handle);
    assert_eq!(scrape.get("entur_auth_token_usable_for", &[]), Some(2970.0));
    assert_eq!(
        scrape.get("entur_auth_source_health", &[("state", "fresh")]),
        Some(1.0)
    );
    let states: f64 = [
        "idle",
        "fresh",
        "refreshing",
        "degraded",
        "fetching",
        "failing",
        "stopped",
    ]
    .iter()
    .map(|s| scrape.count("entur_auth_source_health", &[("state", s)]))
    .sum();
    assert_eq!(states, 1.0, "one state at a time");

    // The refresh fails: degraded, the token still sent.
    server.set_sticky_fault(Some(Fault::status(StatusCode::SERVICE_UNAVAILABLE)));
    tokio::time::sleep(Duration::from_secs(2400)).await;
    let scrape = Scrape::of(&handle);
    assert_eq!(
        scrape.get("entur_auth_source_health", &[("state", "degraded")]),
        Some(1.0)
    );
    assert!(scrape.count("entur_auth_token_requests", &[("outcome", "unavailable")]) >= 1.0);
    // Past the token's usable time: retired, failing.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let scrape = Scrape::of(&handle);
    assert_eq!(
        scrape.get("entur_auth_source_health", &[("state", "failing")]),
        Some(1.0)
    );
    assert_eq!(scrape.get("entur_auth_token_usable_for", &[]), Some(0.0));
}

type Streamed = UnsyncBoxBody<Bytes, BoxError>;

/// The token refusals counted with `reason` and `action`.
fn refusals(handle: &PrometheusHandle, reason: &str, action: &str) -> f64 {
    Scrape::of(handle).count(
        "entur_auth_token_refusals",
        &[("reason", reason), ("action", action)],
    )
}

/// The replays counted with `outcome`.
fn replays(handle: &PrometheusHandle, outcome: &str) -> f64 {
    Scrape::of(handle).count("entur_auth_replays", &[("outcome", outcome)])
}

/// Every way a refused request can end in the replay layer, and every refusal reason.
#[tokio::test(start_paused = true)]
async fn refusals_and_replays_by_reason_and_outcome() {
    let (recorder, handle) = prometheus();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    let mut api = EnturAuthLayer::new(source.clone())
        .with_replay()
        .layer(server.api_service());
    source.prefetch().await.unwrap();
    let refusals = |reason, action| refusals(&handle, reason, action);
    let replays = |outcome| replays(&handle, outcome);

    // Two requests in flight with the same token, both refused: one fetch, two replays.
    server.push_api_fault(ApiFault::invalid_token());
    server.push_api_fault(ApiFault::invalid_token());
    let first = call(&mut api, api_request(&server, "/a")).await;
    let second = call(&mut api, api_request(&server, "/b")).await;
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.unwrap().status(), StatusCode::OK);
    assert_eq!(second.unwrap().status(), StatusCode::OK);
    assert_eq!(refusals("http_401", "started"), 1.0);
    assert_eq!(refusals("http_401", "already_replaced"), 1.0);
    assert_eq!(replays("accepted"), 2.0);

    // Refused again after the replay: the second refusal comes within the forced-refresh
    // interval.
    tokio::time::sleep(Duration::from_secs(60)).await;
    server.push_api_fault(ApiFault::invalid_token());
    server.push_api_fault(ApiFault::invalid_token());
    let response = send(&mut api, api_request(&server, "/c")).await.unwrap();
    assert_eq!(response, StatusCode::UNAUTHORIZED);
    assert_eq!(replays("refused"), 1.0);
    assert_eq!(refusals("http_401", "started"), 2.0);
    assert_eq!(refusals("http_401", "rate_limited"), 1.0);

    // While forced refreshes back off, a refused request is replayed with the same token.
    server.push_api_fault(ApiFault::invalid_token());
    let response = send(&mut api, api_request(&server, "/d")).await.unwrap();
    assert_eq!(response, StatusCode::OK);
    assert_eq!(refusals("http_401", "rate_limited"), 2.0);
    assert_eq!(replays("accepted"), 3.0);

    // A streamed body is not replayed; an Entur 408 is a refusal.
    tokio::time::sleep(Duration::from_secs(600)).await;
    source.prefetch().await.unwrap();
    let mut streaming = EnturAuthLayer::new(source.clone())
        .with_replay()
        .layer(server.api_service());
    server.push_api_fault(ApiFault::entur_token_expired());
    let stream = futures_util::stream::iter([Ok::<_, BoxError>(http_body::Frame::data(
        Bytes::from_static(b"chunk"),
    ))]);
    let request = Request::post(format!("{}/e", server.api_url()))
        .body(Streamed::new(StreamBody::new(stream)))
        .unwrap();
    let response = ServiceExt::<Request<Streamed>>::ready(&mut streaming)
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(replays("not_replayable"), 1.0);
    assert_eq!(refusals("http_408", "started"), 1.0);

    // gRPC UNAUTHENTICATED in the trailers, seen when the body is read.
    tokio::time::sleep(Duration::from_secs(600)).await;
    source.prefetch().await.unwrap();
    server.push_api_fault(ApiFault::grpc_in_trailers(16, "token revoked"));
    let mut plain = EnturAuthLayer::new(source.clone()).layer(server.api_service());
    let response = call(&mut plain, api_request(&server, "/f"))
        .await
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(refusals("grpc_unauthenticated", "started"), 1.0);

    // The replay fails: no token to replay with.
    tokio::time::sleep(Duration::from_secs(600)).await;
    source.prefetch().await.unwrap();
    server.push_api_fault(ApiFault::invalid_token());
    server.set_sticky_fault(Some(Fault::status(StatusCode::SERVICE_UNAVAILABLE)));
    let error = send(&mut api, api_request(&server, "/g"))
        .await
        .unwrap_err();
    assert!(error.downcast_ref::<Error>().is_some(), "{error}");
    assert_eq!(replays("failed"), 1.0);
}

/// A store that fails every call, or never answers.
#[derive(Clone, Copy)]
enum BrokenStore {
    Failing,
    Hanging,
    /// Answers, but another replica holds the lock and never publishes.
    Locked,
}

impl TokenStore for BrokenStore {
    fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        self.answer(None)
    }
    fn set<'a>(
        &'a self,
        _: &'a str,
        _: Vec<u8>,
        _: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.answer(())
    }
    fn try_lock<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        self.answer(false)
    }
    fn unlock<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), BoxError>> {
        self.answer(())
    }
}

impl BrokenStore {
    fn answer<'a, T: Send + 'a>(&self, value: T) -> BoxFuture<'a, Result<T, BoxError>> {
        match self {
            Self::Failing => Box::pin(async { Err("connection refused".into()) }),
            Self::Hanging => Box::pin(std::future::pending()),
            Self::Locked => Box::pin(async { Ok(value) }),
        }
    }
}

/// Store errors and timeouts by operation, and the token requests made without the lock.
#[tokio::test(start_paused = true)]
async fn store_errors_timeouts_and_fallbacks() {
    let (recorder, handle) = prometheus();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let server = server(Duration::from_secs(3600)).await;
    for store in [
        BrokenStore::Failing,
        BrokenStore::Hanging,
        BrokenStore::Locked,
    ] {
        let source = server.source_builder().shared_store(store).build().unwrap();
        source.prefetch().await.unwrap();
    }
    let scrape = Scrape::of(&handle);
    let errors = |operation, kind| {
        scrape.count(
            "entur_auth_store_errors",
            &[("operation", operation), ("kind", kind)],
        )
    };
    // Failing and Hanging: the look fails, the token is fetched alone, publishing fails.
    assert_eq!(errors("get", "error"), 1.0);
    assert_eq!(errors("set", "error"), 1.0);
    assert_eq!(errors("get", "timeout"), 1.0);
    assert_eq!(errors("set", "timeout"), 1.0);
    assert_eq!(errors("lock", "error") + errors("lock", "timeout"), 0.0);
    assert_eq!(
        scrape.get("entur_auth_store_fallbacks", &[("reason", "unavailable")]),
        Some(2.0)
    );
    assert_eq!(
        scrape.get("entur_auth_store_fallbacks", &[("reason", "lock_wait")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("entur_auth_store_lookups", &[("result", "unavailable")]),
        Some(2.0)
    );
    assert_eq!(scrape.get("entur_auth_token_requests", &[OK]), Some(3.0));
    assert_eq!(server.token_requests(), 3);
}

/// A panic while obtaining a token is contained and counted as `internal`.
#[tokio::test(start_paused = true)]
async fn a_contained_panic_counts_as_internal() {
    let (recorder, handle) = prometheus();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let server = server(Duration::from_secs(3600)).await;
    let panicking = tower::service_fn(|_: Request<entur_auth::TokenRequestBody>| async {
        if true {
            panic!("a bug in the transport (this panic is expected by the test)");
        }
        Ok::<_, Infallible>(http::Response::new(Full::<Bytes>::default()))
    });
    let source = TokenSource::builder(server.endpoint(), server.credentials())
        .allow_http_loopback(true)
        .transport(panicking)
        .build()
        .unwrap();
    let error = source.token().await.unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Internal, "{error:?}");
    let scrape = Scrape::of(&handle);
    assert_eq!(
        scrape.get("entur_auth_token_requests", &[("outcome", "internal")]),
        Some(1.0)
    );
    assert_eq!(
        scrape.get("entur_auth_token_request_duration_count", &[]),
        None
    );
}

/// Sources with another client id have series of their own; with the exporter's
/// recommended naming, counters end in `_total` and the units in the names.
#[tokio::test(start_paused = true)]
async fn sources_are_told_apart_and_names_follow_the_exporters_conventions() {
    let recorder = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .build_recorder();
    let handle = recorder.handle();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let one = server(Duration::from_secs(3600)).await;
    let two = TestServer::builder()
        .client_id("second-client")
        .token_lifetime(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    source(&one).prefetch().await.unwrap();
    let second = source(&two);
    second.prefetch().await.unwrap();
    second.prefetch().await.unwrap();
    let _ = second.status();
    let scrape = Scrape::of(&handle);
    assert_eq!(
        scrape.get(
            "entur_auth_token_requests_total",
            &[("oauth_client_id", one.client_id()), OK]
        ),
        Some(1.0)
    );
    assert_eq!(
        scrape.get(
            "entur_auth_token_requests_total",
            &[("oauth_client_id", "second-client"), OK]
        ),
        Some(1.0)
    );
    assert_eq!(
        scrape.get(
            "entur_auth_token_usable_for_seconds",
            &[("oauth_client_id", "second-client")]
        ),
        Some(54.0),
        "60 s less the safety margin (10 %)"
    );
    assert!(scrape
        .get(
            "entur_auth_token_request_duration_seconds_count",
            &[("oauth_client_id", "second-client")]
        )
        .is_some());
    assert!(
        scrape
            .0
            .contains("# HELP entur_auth_token_requests_total Token requests sent"),
        "{}",
        scrape.0
    );
}

/// Defect: refusals seen by the reqwest middleware and the tonic interceptor were counted
/// with reason `direct`, and the middleware's replays not at all. Every adapter reads an
/// answer through the same verdict, so the series say the same whichever saw it.
#[cfg(all(feature = "reqwest", feature = "tonic"))]
#[tokio::test(start_paused = true)]
async fn every_adapter_counts_refusals_and_replays_alike() {
    use entur_auth::reqwest::EnturAuthMiddleware;
    use entur_auth::tonic::EnturAuthInterceptor;
    use tonic::service::Interceptor;

    let (recorder, handle) = prometheus();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let server = server(Duration::from_secs(24 * 3600)).await;
    let source = source(&server);
    source.prefetch().await.unwrap();
    let refusals = |reason, action| refusals(&handle, reason, action);
    let replays = |outcome| replays(&handle, outcome);

    // reqwest: a 401, then the replay with the new token.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let api = reqwest_middleware::ClientBuilder::new(http)
        .with(EnturAuthMiddleware::new(source.clone()))
        .build();
    server.push_api_fault(ApiFault::invalid_token());
    let response = api
        .get(format!("{}/a", server.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(refusals("http_401", "started"), 1.0);
    assert_eq!(replays("accepted"), 1.0);
    assert_eq!(refusals("direct", "started"), 0.0);

    // The tonic interceptor: UNAUTHENTICATED for the token it attached.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let auth = EnturAuthInterceptor::new(source.clone());
    auth.clone().call(tonic::Request::new(())).unwrap();
    let invalidation = auth.refused(&tonic::Status::unauthenticated("token expired"));
    assert_eq!(invalidation, Some(entur_auth::Invalidation::Started));
    assert_eq!(refusals("grpc_unauthenticated", "started"), 1.0);
    assert_eq!(refusals("direct", "started"), 0.0);
}
