//! Token lifecycle against the embedded server, in-process, on tokio's paused clock.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use entur_auth::Invalidation;
use entur_auth::{EnturAuthLayer, Error, OAuthErrorCode};
use entur_auth_test::Fault;
use futures_util::FutureExt;
use http::{Request, StatusCode};
use tower::{Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn ten_thousand_cold_callers_cause_one_token_request_and_share_its_bearer() {
    let server = server(Duration::from_secs(3600)).await;
    server.push_fault(Fault::Delay(Duration::from_millis(200)));
    let source = source(&server);
    let seen = Arc::new(Mutex::new(HashSet::<Vec<u8>>::new()));
    let record = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<Body>| {
            let seen = seen.clone();
            async move {
                let bearer = req.headers()[http::header::AUTHORIZATION]
                    .as_bytes()
                    .to_vec();
                seen.lock().unwrap().insert(bearer);
                Ok::<_, std::convert::Infallible>(http::Response::new(()))
            }
        })
    };
    let svc = EnturAuthLayer::new(source.clone()).layer(record);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10_000 {
        let svc = svc.clone();
        let req = api_request(&server, "/x");
        tasks.spawn(async move { svc.oneshot(req).await.map(drop) });
    }
    let mut ok = 0;
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
        ok += 1;
    }
    assert_eq!(ok, 10_000);
    assert_eq!(server.token_requests(), 1, "exactly one token request");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "every request carried the same bearer");
    assert!(seen.iter().next().unwrap().starts_with(b"Bearer "));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_caller_that_started_a_fetch_cancels_nothing() {
    let server = server(Duration::from_secs(3600)).await;
    server.push_fault(Fault::Delay(Duration::from_secs(1)));
    let source = source(&server);
    let mut first = client(&server, &source);
    let mut second = first.clone();

    // The first caller starts the fetch, then gives up long before it completes.
    let started = call(&mut first, api_request(&server, "/a")).await;
    assert!(tokio::time::timeout(Duration::from_millis(10), started)
        .await
        .is_err());
    assert_eq!(server.token_requests(), 1);

    // A second caller gets the token of that same fetch.
    let status = send(&mut second, api_request(&server, "/b")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.token_requests(), 1);
    assert_eq!(source.status().fetch_attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn steady_traffic_over_six_lifetimes_never_waits_and_refreshes_once_per_period() {
    let lifetime = Duration::from_secs(60);
    let server = server(lifetime).await;
    let source = source(&server);
    let mut svc = client(&server, &source);
    let span = lifetime * 6;
    let step = Duration::from_millis(500);
    let start = tokio::time::Instant::now();
    let mut requests = 0;
    while start.elapsed() < span {
        let fut = call(&mut svc, api_request(&server, "/trips")).await;
        if requests > 0 {
            assert!(
                fut.token_id().is_some(),
                "request {requests} at {:?} had to wait for a token",
                start.elapsed()
            );
        }
        assert_eq!(fut.await.unwrap().status(), StatusCode::OK);
        requests += 1;
        tokio::time::sleep(step).await;
    }
    assert_eq!(server.api_rejections(), 0, "every token sent was unexpired");
    // Refresh at 75 % (45 s) moved earlier by at most 5 % (3 s): between 360/45 and
    // 1 + 360/42 token requests. One per request would be 720.
    let fetches = server.token_requests();
    assert!((8..=10).contains(&fetches), "{fetches} token requests");
    assert_eq!(requests, 720);
}

#[tokio::test(start_paused = true)]
async fn outage_is_ridden_out_on_the_current_token_then_fails_fast_then_recovers() {
    let lifetime = Duration::from_secs(60);
    let server = server(lifetime).await;
    let source = source(&server);
    let mut svc = client(&server, &source);
    assert_eq!(
        send(&mut svc, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
    let token = source.current().unwrap();

    // Down from t=1 s, past the refresh at ~45 s, until just before the token is retired
    // at 54 s: no request fails.
    server.set_sticky_fault(Some(Fault::Status {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: "down".into(),
        retry_after: None,
    }));
    while tokio::time::Instant::now() < token.usable_until() - Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let status = send(&mut svc, api_request(&server, "/a")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    let during = server.token_requests();
    assert!(
        during >= 2,
        "the refresh was attempted and retried: {during}"
    );
    assert_eq!(
        source.current().unwrap().id(),
        token.id(),
        "still the first token"
    );

    // After the token is retired: callers fail at once with the typed error, and ten
    // minutes of traffic (6000 requests) cause a bounded number of token requests.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..6000 {
        let fut = call(&mut svc, api_request(&server, "/a")).await;
        let error = fut
            .now_or_never()
            .expect("fails fast, without waiting")
            .unwrap_err();
        let error = error.downcast_ref::<Error>().expect("an entur_auth::Error");
        assert!(error.is_transient(), "{error}");
        assert_eq!(error.kind(), entur_auth::ErrorKind::Unavailable);
        assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempts = server.token_requests() - during;
    assert!(
        (10..=60).contains(&attempts),
        "backoff keeps retrying without hammering: {attempts} attempts in 10 min"
    );

    // The endpoint comes back: the layer recovers by itself within one backoff ceiling.
    server.set_sticky_fault(None);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(
        send(&mut svc, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
    assert!(source.status().last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn rejected_credentials_are_distinct_errors_and_not_retried_per_request() {
    for (code, expected) in [
        ("invalid_client", OAuthErrorCode::InvalidClient),
        ("invalid_grant", OAuthErrorCode::InvalidGrant),
        ("unauthorized_client", OAuthErrorCode::UnauthorizedClient),
    ] {
        let server = server(Duration::from_secs(3600)).await;
        server.set_sticky_fault(Some(Fault::oauth_error(StatusCode::UNAUTHORIZED, code)));
        let source = source(&server);
        let mut svc = client(&server, &source);
        for _ in 0..50 {
            let error = send(&mut svc, api_request(&server, "/a"))
                .await
                .unwrap_err();
            let error = error.downcast_ref::<Error>().unwrap();
            assert_eq!(error.oauth_code(), Some(&expected), "{error}");
            assert!(error.kind() == entur_auth::ErrorKind::Rejected);
            assert!(!error.is_transient());
        }
        assert_eq!(server.token_requests(), 1, "{code}: one attempt, not 50");
        // Retried on the slow schedule only: the first retry comes 30 s later.
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(server.token_requests(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(server.token_requests(), 2);
    }
}

#[tokio::test(start_paused = true)]
async fn invalidate_drops_only_the_current_token() {
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    let first = source.token().await.unwrap();
    assert_eq!(source.invalidate(first.id()), Invalidation::Started);
    let second = source.token().await.unwrap();
    assert_ne!(first.id(), second.id());
    assert_eq!(server.token_requests(), 2);
    // A rejection of the old token, arriving late, changes nothing.
    assert_eq!(source.invalidate(first.id()), Invalidation::AlreadyReplaced);
    settle().await;
    assert_eq!(server.token_requests(), 2);
    assert_eq!(source.current().unwrap().id(), second.id());
}

#[tokio::test(start_paused = true)]
async fn prefetch_reports_bad_credentials_at_startup() {
    let server = server(Duration::from_secs(3600)).await;
    let source = server.source_builder().build().unwrap();
    source.prefetch().await.unwrap();
    assert!(source.current().is_some());

    let wrong = entur_auth::TokenSource::builder(
        server.endpoint(),
        entur_auth::Credentials::new(server.client_id(), "wrong-secret"),
    )
    .allow_http_loopback(true)
    .transport(server.token_transport())
    .build()
    .unwrap();
    let error = wrong.prefetch().await.unwrap_err();
    assert_eq!(error.oauth_code(), Some(&OAuthErrorCode::InvalidClient));
}

/// A pod starting: the token endpoint (or DNS, or a sidecar) is not reachable for the
/// first attempts. `prefetch` fails on the first; `ready` waits through the source's own
/// retries.
#[tokio::test(start_paused = true)]
async fn ready_waits_through_transient_failures_at_startup() {
    for first in [
        Fault::Refuse,
        Fault::status(StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let server = server(Duration::from_secs(3600)).await;
        let source = source(&server);
        for _ in 0..3 {
            server.push_fault(first.clone());
        }
        let started = tokio::time::Instant::now();
        source
            .ready(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{first:?}: {e}"));
        assert!(source.current().is_some());
        // 3 failures and the success, on the source's backoff (0.5 s doubling, jittered):
        // no requests of ready()'s own, and no waiting beyond the success.
        assert_eq!(server.token_requests(), 4, "{first:?}");
        let took = started.elapsed();
        assert!(
            (Duration::from_millis(1500)..Duration::from_secs(4)).contains(&took),
            "{first:?}: {took:?}"
        );
        // The same start with prefetch fails on the first refusal.
        let server = common::server(Duration::from_secs(3600)).await;
        server.push_fault(first.clone());
        let error = common::source(&server).prefetch().await.unwrap_err();
        assert!(error.is_transient(), "{error}");
    }
}

#[tokio::test(start_paused = true)]
async fn ready_fails_at_once_on_rejected_credentials() {
    let server = server(Duration::from_secs(3600)).await;
    server.set_sticky_fault(Some(Fault::oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    )));
    let source = source(&server);
    let started = tokio::time::Instant::now();
    let error = source.ready(Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(error.oauth_code(), Some(&OAuthErrorCode::InvalidClient));
    assert_eq!(server.token_requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn ready_gives_up_at_its_deadline_with_the_last_transient_error() {
    let server = server(Duration::from_secs(3600)).await;
    server.set_sticky_fault(Some(Fault::status(StatusCode::SERVICE_UNAVAILABLE)));
    let source = source(&server);
    let started = tokio::time::Instant::now();
    let error = source.ready(Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert_eq!(error.kind(), entur_auth::ErrorKind::NotReady, "{error:?}");
    let last = std::error::Error::source(&error)
        .and_then(|cause| cause.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("{error:?}"));
    assert_eq!(last.kind(), entur_auth::ErrorKind::Unavailable, "{last:?}");
    assert_eq!(last.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(error.is_transient());
    let text = error.report().to_string();
    assert!(text.contains("within the 30 s startup deadline"), "{text}");
    assert!(text.contains("answered 503"), "{text}");
    // It waited on the source's backoff (0.5 s doubling to 30 s): a handful of attempts.
    let attempts = server.token_requests();
    assert!((3..=8).contains(&attempts), "{attempts}");
    // The source carries on: once the endpoint is back, the token comes.
    server.set_sticky_fault(None);
    source.ready(Duration::from_secs(60)).await.unwrap();

    // Still unanswered at the deadline: no last error, and the message says so.
    let server = common::server(Duration::from_secs(3600)).await;
    server.set_sticky_fault(Some(Fault::Hang));
    let source = common::source(&server);
    let error = source.ready(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(error.kind(), entur_auth::ErrorKind::NotReady, "{error:?}");
    assert!(std::error::Error::source(&error).is_none(), "{error:?}");
    assert!(
        error.report().to_string().contains("still unanswered"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn ready_returns_at_once_with_a_token() {
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    source.prefetch().await.unwrap();
    source.ready(Duration::ZERO).await.unwrap();
    assert_eq!(server.token_requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_ends_the_background_task() {
    let server = server(Duration::from_secs(3600)).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let source = source(&server);
    let mut svc = client(&server, &source);
    let clone = svc.clone();
    send(&mut svc, api_request(&server, "/a")).await.unwrap();
    settle().await;
    assert_eq!(metrics.num_alive_tasks(), before + 1, "one background task");
    drop(source);
    drop(svc);
    settle().await;
    assert_eq!(
        metrics.num_alive_tasks(),
        before + 1,
        "a service clone still holds it"
    );
    drop(clone);
    settle().await;
    assert_eq!(
        metrics.num_alive_tasks(),
        before,
        "the task ended with the last handle"
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_endpoint_that_never_answers_times_out_with_a_typed_error() {
    let server = server(Duration::from_secs(3600)).await;
    server.push_fault(Fault::Hang);
    let source = server
        .source_builder()
        .fetch_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let error = source.token().await.unwrap_err();
    assert!(
        (error.kind() == entur_auth::ErrorKind::Timeout),
        "{error:?}"
    );
    assert!(error.to_string().contains("within 2000 ms"), "{error}");
    // The next attempt (after backoff) succeeds, with no caller involved.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(source.current().is_some());
    assert_eq!(server.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn status_and_the_fetch_hook_tell_what_happened() {
    use entur_auth::Health;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let server = server(Duration::from_secs(60)).await;
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (ok2, failed2) = (ok.clone(), failed.clone());
    let source = server
        .source_builder()
        .on_fetch(move |outcome| {
            match outcome.result {
                Ok(_) => ok2.fetch_add(1, Ordering::SeqCst),
                Err(_) => failed2.fetch_add(1, Ordering::SeqCst),
            };
            assert!(outcome.attempt >= 1);
            if outcome.attempt == 2 {
                panic!("a broken metrics hook");
            }
        })
        .build()
        .unwrap();
    assert_eq!(source.status().health, Health::Idle);
    source.prefetch().await.unwrap();
    let status = source.status();
    assert_eq!(status.health, Health::Fresh);
    assert_eq!(status.usable_for, Some(Duration::from_secs(54)));
    assert_eq!(status.fetch_attempts, 1);

    // The refresh fails twice (the hook panics on the second): degraded, still serving.
    server.set_sticky_fault(Some(Fault::status(StatusCode::SERVICE_UNAVAILABLE)));
    tokio::time::sleep(Duration::from_secs(47)).await;
    let status = source.status();
    assert_eq!(status.health, Health::Degraded);
    assert!(status.health.is_serving());
    assert!(status.retry_in.is_some());
    assert!(status.fetch_failures >= 2, "{status:?}");
    assert_eq!(
        status.last_error.as_ref().map(Error::kind),
        Some(entur_auth::ErrorKind::Unavailable)
    );

    // Past the end of the token: failing; then the endpoint heals and the refresher, which
    // survived the panicking hook, recovers.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(source.status().health, Health::Failing);
    server.set_sticky_fault(None);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(source.status().health, Health::Fresh);
    assert_eq!(ok.load(Ordering::SeqCst), 2);
    assert_eq!(
        failed.load(Ordering::SeqCst) as u64,
        source.status().fetch_failures
    );
}

#[tokio::test(start_paused = true)]
async fn single_flight_holds_when_the_refresher_races_a_forced_invalidation() {
    let server = server(Duration::from_secs(60)).await;
    let source = source(&server);
    let token = source.token().await.unwrap();
    // Every later token request takes 200 ms, so callers pile up behind it.
    server.set_sticky_fault(Some(Fault::Delay(Duration::from_millis(200))));
    let svc = client(&server, &source);
    // At the very instant the background refresh is due, the API refuses the token and
    // 10,000 callers arrive.
    tokio::time::sleep_until(token.refresh_at()).await;
    assert_eq!(source.invalidate(token.id()), Invalidation::Started);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10_000 {
        let svc = svc.clone();
        let req = api_request(&server, &format!("/{i}"));
        tasks.spawn(async move { svc.oneshot(req).await.map(|r| r.status()) });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap().unwrap(), StatusCode::OK);
    }
    assert_eq!(
        server.token_requests(),
        2,
        "the first fetch and exactly one more"
    );
    assert_ne!(source.current().unwrap().id(), token.id());
}
