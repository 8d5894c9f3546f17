//! Response classification and re-authentication through `tower::retry`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use entur_auth::error_for_status::{ErrorForStatusLayer, Refused};
use entur_auth::replay::Replay;
use entur_auth::Invalidation;
use entur_auth::{EnturAuthLayer, TokenSource};
use http::header::{AUTHORIZATION, LOCATION};
use http::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};

/// auth with its replay → `inner`.
fn stack<S>(source: &TokenSource, inner: S) -> Replay<S> {
    ServiceBuilder::new()
        .layer(EnturAuthLayer::new(source.clone()).with_replay())
        .service(inner)
}

/// An API that answers every request with `status` (and `headers`), counting calls.
fn fixed(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future = std::future::Ready<Result<Response<Body>, std::convert::Infallible>>,
> + Clone {
    tower::service_fn(move |_req: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::builder().status(status);
        for (k, v) in headers {
            response = response.header(*k, *v);
        }
        std::future::ready(Ok(response.body(Body::default()).unwrap()))
    })
}

#[tokio::test(start_paused = true)]
async fn a_401_costs_one_fetch_and_the_replay_carries_the_new_token() {
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    source.prefetch().await.unwrap();
    let old = source.current().unwrap();
    server.revoke_all();

    let mut api = stack(&source, server.api_service());
    let status = send(&mut api, api_request(&server, "/a")).await.unwrap();
    assert_eq!(status, StatusCode::OK, "the caller sees the success");
    assert_eq!(server.token_requests(), 2, "prefetch + exactly one re-auth");
    assert_eq!(
        server.api_requests(),
        2,
        "the refused attempt and one replay"
    );
    let new = source.current().unwrap();
    assert_ne!(new.id(), old.id());
    assert_eq!(
        server.last_api_request().unwrap().headers[AUTHORIZATION],
        new.header_value()
    );
}

#[tokio::test(start_paused = true)]
async fn a_hundred_requests_refused_with_one_stale_token_cause_one_fetch() {
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    source.prefetch().await.unwrap();
    let stale = source.current().unwrap().id();
    server.revoke_all();

    // The API takes 10 ms to answer, so all 100 are in flight with the stale token.
    let slow_api = {
        let api = server.api_service();
        tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                api.oneshot(req).await
            }
        })
    };
    let api = stack(&source, slow_api);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let api = api.clone();
        let req = api_request(&server, &format!("/r/{i}"));
        tasks.spawn(async move { api.oneshot(req).await.unwrap().status() });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(server.token_requests(), 2, "one fetch for all 100 refusals");
    assert_eq!(server.api_requests(), 200);
    assert_eq!(server.api_rejections(), 100, "all 100 were refused once");

    // A late refusal of the replaced token causes no fetch.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(source.invalidate(stale), Invalidation::AlreadyReplaced);
    settle().await;
    assert_eq!(server.token_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_api_that_always_refuses_gets_one_replay_then_backoff_and_no_hammering() {
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = fixed(401, &[], calls.clone());
    let mut plain = stack(&source, inner.clone());
    let mut typed = ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .service(stack(&source, inner));
    // The first refusal forces a refresh and a replay; the replay is refused too.
    let response = send(&mut plain, api_request(&server, "/a")).await.unwrap();
    assert_eq!(response, StatusCode::UNAUTHORIZED, "the final 401 as is");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one replay");
    assert_eq!(server.token_requests(), 2, "the first fetch and one forced");
    // Within the backoff, a refusal cannot bring a new token: no fetch, and one replay with
    // the same token (behind a load balancer, another replica may take it).
    for i in 0..10 {
        let response = send(&mut plain, api_request(&server, "/a")).await.unwrap();
        assert_eq!(response, StatusCode::UNAUTHORIZED);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4 + 2 * i,
            "one replay with the same token while backing off"
        );
    }
    for _ in 0..10 {
        let error = send(&mut typed, api_request(&server, "/a"))
            .await
            .unwrap_err();
        let error = error.downcast_ref::<Refused>().unwrap();
        assert!(
            (error.kind() == entur_auth::error_for_status::RefusedKind::Unauthorized)
                && !error.is_grpc(),
            "{error:?}"
        );
        assert!(
            matches!(
                error.refusal().unwrap().invalidation,
                Invalidation::RateLimited { .. }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("backs off"), "{error}");
        assert!(
            error.to_string().contains("replayed with the same token"),
            "{error}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 42);
    assert_eq!(
        server.token_requests(),
        2,
        "the rest are within the backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn refusals_that_retrying_cannot_fix_are_typed_errors_and_not_retried() {
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    // The redirect points at a second server, which must never see a request.
    let elsewhere = common::server(Duration::from_secs(60)).await;
    let location: &'static str =
        Box::leak(format!("{}/moved", elsewhere.api_url()).into_boxed_str());
    let redirect_headers: &'static [(&str, &str)] =
        Box::leak(vec![(LOCATION.as_str(), location)].into_boxed_slice());
    for (status, headers) in [
        (403, &[][..]),
        (301, redirect_headers),
        (302, redirect_headers),
        (405, &[][..]),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let fetches = server.token_requests();
        let mut api = ServiceBuilder::new()
            .layer(ErrorForStatusLayer::new())
            .service(stack(&source, fixed(status, headers, calls.clone())));
        let error = send(&mut api, api_request(&server, "/a"))
            .await
            .unwrap_err();
        let error = error.downcast_ref::<Refused>().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{status}: not retried");
        assert!(
            server.token_requests() <= fetches.max(1),
            "{status}: no re-auth"
        );
        match status {
            403 => assert!(
                (error.kind() == entur_auth::error_for_status::RefusedKind::PermissionDenied)
                    && !error.is_grpc(),
                "{error:?}"
            ),
            301 | 302 => {
                assert!(
                    (error.kind() == entur_auth::error_for_status::RefusedKind::InsecureRedirect),
                    "{error:?}"
                );
                assert!(
                    error.to_string().contains(&format!("answered {status}")),
                    "{error}"
                );
                assert_eq!(error.location(), Some(location));
                assert_eq!(error.hint(), "use https://");
            }
            _ => {
                assert!(
                    (error.kind() == entur_auth::error_for_status::RefusedKind::MethodNotAllowed),
                    "{error:?}"
                );
                assert!(error.to_string().contains("plain http://"), "{error}");
            }
        }
    }
    assert_eq!(
        elsewhere.api_requests(),
        0,
        "the redirect was never followed"
    );
    assert_eq!(elsewhere.token_requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_408_is_handled_like_a_401() {
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    source.prefetch().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(AtomicUsize::new(0));
    let inner = {
        let calls = calls.clone();
        tower::service_fn(move |_req: Request<Body>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let status = if first.fetch_add(1, Ordering::SeqCst) == 0 {
                408
            } else {
                200
            };
            std::future::ready(Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(status)
                    .body(Body::default())
                    .unwrap(),
            ))
        })
    };
    let mut api = stack(&source, inner);
    let status = send(&mut api, api_request(&server, "/a")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(server.token_requests(), 2, "the 408 forced one re-auth");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_replayed_is_not_replayed() {
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::BodyExt;
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    source.prefetch().await.unwrap();
    server.revoke_all();
    let api = ServiceBuilder::new()
        .retry(RetryOnce401::default())
        .layer(EnturAuthLayer::new(source.clone()))
        .service(server.api_service());
    let body: UnsyncBoxBody<bytes::Bytes, std::convert::Infallible> =
        Body::from("streamed").boxed_unsync();
    let request = Request::post(format!("{}/upload", server.api_url()))
        .body(body)
        .unwrap();
    let response = api.oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "returned as is"
    );
    assert_eq!(server.api_requests(), 1, "sent once");
}

#[tokio::test]
async fn full_stack_over_tcp_rides_out_a_revocation_with_zero_failures() {
    let server = server(Duration::from_secs(3600)).await;
    let source = TokenSource::builder(server.endpoint(), server.credentials())
        .allow_http_loopback(true)
        .build()
        .unwrap();
    let http = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let api = ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .retry(RetryOnce401::default())
        .timeout(Duration::from_secs(5))
        .layer(EnturAuthLayer::new(source.clone()))
        .service(http);
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let api = api.clone();
        let url = format!("{}/w/{w}", server.api_url());
        workers.spawn(async move {
            let mut ok = 0;
            for _ in 0..60 {
                let req = Request::get(url.as_str()).body(Body::default()).unwrap();
                let response = api.clone().oneshot(req).await.expect("no request fails");
                assert_eq!(response.status(), StatusCode::OK);
                ok += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ok
        });
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.revoke_all();
    let mut ok = 0;
    while let Some(done) = workers.join_next().await {
        ok += done.unwrap();
    }
    assert_eq!(ok, 480, "zero failed requests seen by the caller");
    assert!(
        server.api_rejections() >= 1,
        "the revocation was seen by the API"
    );
    assert_eq!(server.token_requests(), 2, "one fetch, one re-auth");
}

#[tokio::test(start_paused = true)]
async fn a_buffered_streaming_body_is_replayed() {
    use entur_auth::replay::CollectBodyLayer;
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::BodyExt;
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    source.prefetch().await.unwrap();
    server.revoke_all();
    let api = ServiceBuilder::new()
        .layer(CollectBodyLayer::new(1024))
        .retry(RetryOnce401::default())
        .layer(EnturAuthLayer::new(source.clone()))
        .service(server.api_service());
    let streamed = |text: &'static str| -> UnsyncBoxBody<bytes::Bytes, std::convert::Infallible> {
        Body::from(text).boxed_unsync()
    };
    let request = Request::post(format!("{}/upload", server.api_url()))
        .body(streamed("payload"))
        .unwrap();
    let response = api.clone().oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "replayed with a new token"
    );
    assert_eq!(server.api_requests(), 2);
    assert_eq!(&server.last_api_request().unwrap().body[..], b"payload");

    // Over the limit: a clear error, nothing sent.
    let big: &'static str = Box::leak("x".repeat(2048).into_boxed_str());
    let request = Request::post(format!("{}/upload", server.api_url()))
        .body(streamed(big))
        .unwrap();
    let error = api.oneshot(request).await.unwrap_err();
    assert!(
        error.to_string().contains("1024-byte replay buffer"),
        "{error}"
    );
    assert_eq!(server.api_requests(), 2);
}
