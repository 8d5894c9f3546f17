//! The background refresher cannot die silently: runtimes that end or are never driven,
//! panics, runtimes without timers, settings that would overflow or defeat refresh, and a
//! hook that refers to its own source.
//!
//! The tests with more than one runtime use real time: the watchdog that notices a refresher
//! whose runtime is not driven is a thread, and reads the real clock. They set a short
//! `stall_timeout` so that each takes well under a second or two.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use entur_auth::{
    Credentials, EnturAuthLayer, Environment, Health, Invalidation, TokenEndpoint, TokenSource,
    WeakTokenSource,
};
use entur_auth_test::TestServer;
use http::StatusCode;
use tower::Layer;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A server and a source built on `runtime`, with a first token fetched there.
fn built_on(runtime: &tokio::runtime::Runtime, lifetime: Duration) -> (TestServer, TokenSource) {
    runtime.block_on(async {
        let server = common::server(lifetime).await;
        let source = server
            .source_builder()
            .stall_timeout(Duration::from_millis(100))
            .build()
            .unwrap();
        source.prefetch().await.unwrap();
        (server, source)
    })
}

/// Item 4: a source kept in a `static` and used by several `#[tokio::test]`s outlives the
/// runtime it was built on; each later runtime takes the refreshing over.
#[test]
fn a_source_outlives_the_runtime_it_was_built_on() {
    let first = runtime();
    let (server, source) = built_on(&first, Duration::from_secs(3600));
    let token = source.current().unwrap().id();
    drop(first);

    // The refresher went with its runtime: nothing could retire the token on time, so it
    // is no longer sent, and status() says why.
    assert_eq!(source.status().health, Health::Stopped);
    assert!(source.current().is_none());

    for round in 0..3 {
        let next = runtime();
        next.block_on(async {
            let taken = tokio::time::timeout(Duration::from_secs(5), source.token())
                .await
                .expect("no caller waits forever")
                .unwrap();
            assert_eq!(taken.id(), token, "the still-usable token is taken back");
            assert_eq!(server.token_requests(), 1, "without a fetch");
            assert_eq!(source.status().health, Health::Fresh, "round {round}");
            // Through the layer, too.
            let mut api = EnturAuthLayer::new(source.clone()).layer(server.api_service());
            assert_eq!(
                send(&mut api, api_request(&server, "/a")).await.unwrap(),
                StatusCode::OK
            );
        });
        drop(next);
        assert_eq!(source.status().health, Health::Stopped);
    }

    // The refresher really runs on the runtime that took over: a forced refresh works.
    let last = runtime();
    last.block_on(async {
        source.prefetch().await.unwrap();
        assert_eq!(source.invalidate(token), Invalidation::Started);
        let new = tokio::time::timeout(Duration::from_secs(5), source.token())
            .await
            .expect("the new refresher fetches")
            .unwrap();
        assert_ne!(new.id(), token);
        assert_eq!(server.token_requests(), 2);
    });
}

/// Item 4: with the refresher's runtime gone and no tokio runtime to take over, callers get a
/// clear error at once instead of waiting forever.
#[test]
fn a_caller_outside_any_runtime_gets_a_clear_error_at_once() {
    let first = runtime();
    let (_server, source) = built_on(&first, Duration::from_secs(3600));
    drop(first);
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut token = std::pin::pin!(source.token());
    match token.as_mut().poll(&mut cx) {
        Poll::Ready(Err(error)) if error.kind() == entur_auth::ErrorKind::Stopped => {
            let text = error.report().to_string();
            assert!(text.contains("within a tokio runtime"), "{text}");
        }
        other => panic!("expected an error at once, got {other:?}"),
    }
}

/// Item 4: a source built on a runtime that is never driven again (an idle current-thread
/// runtime) hangs no caller on another runtime: its refresher never answers the watchdog,
/// and the callers' runtime takes it over.
#[test]
fn callers_take_over_a_refresher_whose_runtime_is_never_driven() {
    let idle = runtime();
    let server = idle.block_on(common::server(Duration::from_secs(3600)));
    let source = {
        let _enter = idle.enter();
        server
            .source_builder()
            .stall_timeout(Duration::from_millis(100))
            .build()
            .unwrap()
    };
    // `idle` is alive but nobody drives it: its refresher task never runs.
    let callers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    callers.block_on(async {
        let mut waiting = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let source = source.clone();
            waiting.spawn(async move { source.token().await.map(|t| t.id()) });
        }
        let ids = tokio::time::timeout(Duration::from_secs(5), waiting.join_all())
            .await
            .expect("no caller waits forever");
        let first = ids[0].as_ref().unwrap();
        assert!(ids.iter().all(|id| id.as_ref().ok() == Some(first)));
        assert_eq!(server.token_requests(), 1, "one fetch for all 50 callers");
    });
    drop(idle);
}

/// Item 4: a token whose refresher's runtime stopped being driven is never sent past its
/// usable time: the watchdog parks it, and the callers' runtime fetches a new one.
#[test]
fn a_token_is_never_sent_past_its_usable_time_when_its_timer_cannot_fire() {
    let idle = runtime();
    // 1 s tokens, usable for 0.9 s; the API refuses them after exactly 1 s.
    let (server, source) = built_on(&idle, Duration::from_secs(1));
    // `idle` is no longer driven: its timers cannot retire the token.
    let callers = runtime();
    callers.block_on(async {
        let mut api = EnturAuthLayer::new(source.clone()).layer(server.api_service());
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(2500) {
            let status = tokio::time::timeout(
                Duration::from_secs(5),
                send(&mut api, api_request(&server, "/a")),
            )
            .await
            .expect("no request hangs")
            .unwrap();
            assert_eq!(status, StatusCode::OK, "never an expired token");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert_eq!(server.api_rejections(), 0);
    assert!(server.token_requests() >= 2, "new tokens were fetched");
    drop(idle);
}

/// Item 5: a runtime without timers is refused at build, with a clear error.
#[test]
fn a_runtime_without_timers_is_refused_at_build() {
    let no_timers = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let result = no_timers.block_on(async {
        TokenSource::builder(
            TokenEndpoint::entur(Environment::Dev),
            Credentials::new("id", "secret"),
        )
        .build()
    });
    let error = result.unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Config, "{error:?}");
    assert!(
        error.report().to_string().contains("enable_time"),
        "{error}"
    );
}

/// Item 5: panics inside the refresher (here, in the transport it calls) are contained:
/// callers get an error instead of hanging, and the refresher carries on.
#[tokio::test(start_paused = true)]
async fn panics_in_the_refresher_do_not_end_it() {
    let server = server(Duration::from_secs(3600)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let transport = {
        let calls = calls.clone();
        let inner = server.token_transport();
        tower::service_fn(
            move |request: http::Request<entur_auth::TokenRequestBody>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                let inner = inner.clone();
                async move {
                    if n < 2 {
                        panic!("a transport bug, attempt {n}");
                    }
                    tower::ServiceExt::oneshot(inner, request).await
                }
            },
        )
    };
    let source = TokenSource::builder(server.endpoint(), server.credentials())
        .allow_http_loopback(true)
        .transport(transport)
        .rejected_backoff(Duration::from_secs(1), Duration::from_secs(2))
        .build()
        .unwrap();
    // The first attempt panics: callers get an error at once instead of hanging.
    let error = source.token().await.unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Internal, "{error:?}");
    assert!(error.report().to_string().contains("panicked"), "{error}");
    // The refresher carries on by itself: the second attempt panics too, the third works.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(source.status().fetch_failures, 2);
    let token = source.token().await.expect("a token after the panics");
    assert_eq!(source.current().unwrap().id(), token.id());
}

/// Item 5: no configured value can overflow an `Instant`: absurd values are refused.
#[tokio::test]
async fn settings_that_would_overflow_are_refused_with_a_clear_error() {
    let builder = || {
        TokenSource::builder(
            TokenEndpoint::entur(Environment::Dev),
            Credentials::new("id", "secret"),
        )
    };
    for (name, result) in [
        (
            "backoff",
            builder().backoff(Duration::MAX, Duration::MAX).build(),
        ),
        (
            "rejected_backoff",
            builder()
                .rejected_backoff(Duration::from_secs(1), Duration::MAX)
                .build(),
        ),
        (
            "fetch_timeout",
            builder().fetch_timeout(Duration::MAX).build(),
        ),
        (
            "min_reauth_interval",
            builder().min_reauth_interval(Duration::MAX).build(),
        ),
        (
            "default_lifetime",
            builder().default_lifetime(Duration::MAX).build(),
        ),
        (
            "stall_timeout",
            builder().stall_timeout(Duration::ZERO).build(),
        ),
        // Zero would turn the forced-refresh backoff off (zero doubled is zero).
        (
            "min_reauth_interval",
            builder().min_reauth_interval(Duration::ZERO).build(),
        ),
    ] {
        let error = result.unwrap_err();
        assert!(
            error.kind() == entur_auth::ErrorKind::Config,
            "{name}: {error:?}"
        );
        assert!(error.report().to_string().contains(name), "{name}: {error}");
    }
    // The largest accepted values run without overflowing.
    let day = Duration::from_secs(24 * 3600);
    let source = builder()
        .backoff(day, day)
        .rejected_backoff(day, day)
        .fetch_timeout(Duration::from_millis(1))
        .build()
        .unwrap();
    assert!(source.status().last_error.is_none());
}

/// Item 8: settings that defeat proactive refresh are refused, in any builder order.
#[tokio::test]
async fn settings_that_defeat_refresh_are_refused() {
    let builder = || {
        TokenSource::builder(
            TokenEndpoint::entur(Environment::Dev),
            Credentials::new("id", "secret"),
        )
    };
    for result in [
        builder().refresh_at(0.1).refresh_jitter(0.25).build(),
        builder().refresh_jitter(0.25).refresh_at(0.1).build(),
    ] {
        let error = result.unwrap_err();
        assert!(
            error.report().to_string().contains("half of refresh_at"),
            "{error}"
        );
    }
    assert!(builder()
        .refresh_at(0.5)
        .refresh_jitter(0.25)
        .build()
        .is_ok());
}

/// Item 8: `refresh_at(0.95)` with 60 s tokens used to refresh after retirement, so callers
/// waited on a fetch every cycle; now the refresh always comes first.
#[tokio::test(start_paused = true)]
async fn a_late_refresh_point_still_refreshes_before_retirement() {
    let server = server(Duration::from_secs(60)).await;
    let source = server
        .source_builder()
        .refresh_at(0.95)
        .jitter_seed(3)
        .build()
        .unwrap();
    source.prefetch().await.unwrap();
    for step in 0..6000 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            source.current().is_some(),
            "step {step}: no usable token, callers would wait"
        );
    }
    let fetches = server.token_requests();
    assert!(
        (10..=13).contains(&fetches),
        "{fetches} fetches in 10 minutes"
    );
}

/// Item 10: an `on_fetch` hook that refers to its source through a weak handle does not
/// keep it alive; the background task ends with the last handle.
#[tokio::test(start_paused = true)]
async fn a_hook_can_refer_to_its_source_without_keeping_it_alive() {
    let server = server(Duration::from_secs(3600)).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let slot: Arc<OnceLock<WeakTokenSource>> = Arc::default();
    let seen = Arc::new(AtomicUsize::new(0));
    let source = {
        let slot = slot.clone();
        let seen = seen.clone();
        server
            .source_builder()
            .on_fetch(move |_outcome| {
                if let Some(source) = slot.get().and_then(WeakTokenSource::upgrade) {
                    // The hook reaches the source.
                    let _ = source.status();
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            })
            .build()
            .unwrap()
    };
    slot.set(source.downgrade()).unwrap();
    source.prefetch().await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    settle().await;
    assert_eq!(metrics.num_alive_tasks(), before + 1);
    drop(source);
    settle().await;
    assert_eq!(metrics.num_alive_tasks(), before, "the task ended");
    assert!(slot.get().unwrap().upgrade().is_none());
}
