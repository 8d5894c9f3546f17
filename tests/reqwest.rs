//! `EnturAuthMiddleware` in a real reqwest client, over TCP on 127.0.0.1, against the embedded
//! API. The token source reaches the token endpoint in-process, so tokio's paused clock rules
//! token lifetimes and forced-refresh backoff; the API's sockets are real.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{server, settle, source};
use entur_auth::reqwest::EnturAuthMiddleware;
use entur_auth::{
    ClientName, EnturAuthLayer, Error, Invalidation, OAuthErrorCode, Refusal, ReplayOutcome,
    TokenSource, ET_CLIENT_NAME,
};
use entur_auth_test::{ApiFault, Fault, TestServer, TokenState};
use http::StatusCode;
use reqwest_middleware::ClientWithMiddleware;

/// Entur-style tokens: long enough that no background refresh happens during a test.
const DAY: Duration = Duration::from_secs(24 * 3600);

/// A reqwest client (no proxy from the environment) with the middleware.
fn client(middleware: EnturAuthMiddleware) -> ClientWithMiddleware {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    reqwest_middleware::ClientBuilder::new(http)
        .with(middleware)
        .build()
}

fn middleware(source: &TokenSource) -> EnturAuthMiddleware {
    layer(source).into()
}

fn layer(source: &TokenSource) -> EnturAuthLayer {
    EnturAuthLayer::new(source.clone()).client_name(ClientName::new("acme-tests").unwrap())
}

fn url(server: &TestServer, path: &str) -> String {
    format!("{}{path}", server.api_url())
}

/// The `jti`s of the tokens the API saw, in order.
fn jtis(server: &TestServer) -> Vec<String> {
    server
        .api_requests_log()
        .iter()
        .map(|r| r.jti().unwrap_or("-").to_owned())
        .collect()
}

/// A request body that can be read once only: reqwest cannot clone the request.
fn stream_body(text: &'static str) -> reqwest::Body {
    let frames = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
        http_body::Frame::data(Bytes::from_static(text.as_bytes())),
    )]);
    reqwest::Body::wrap(http_body_util::StreamBody::new(frames))
}

#[tokio::test(start_paused = true)]
async fn bearer_and_client_name_arrive_after_one_shared_fetch() {
    let server = server(DAY).await;
    let source = source(&server);
    let api = client(middleware(&source));

    // Ten callers before any token: they wait on one fetch.
    let calls = (0..10).map(|i| api.get(url(&server, &format!("/stops/{i}"))).send());
    for response in futures_util::future::join_all(calls).await {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(server.token_requests(), 1);

    let response = api.get(url(&server, "/departures")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.extensions().get::<Refusal>().is_none());
    let seen = server.last_api_request().unwrap();
    let token = source.current().unwrap();
    assert_eq!(
        seen.headers.get("authorization"),
        Some(token.header_value())
    );
    assert_eq!(
        seen.headers.get(ET_CLIENT_NAME).map(|v| v.as_bytes()),
        Some(&b"acme-tests"[..])
    );
    assert_eq!(server.token_requests(), 1);
    assert_eq!(server.api_rejections(), 0);
}

#[tokio::test(start_paused = true)]
async fn without_a_client_name_no_header_is_sent() {
    let server = server(DAY).await;
    let api = client(EnturAuthMiddleware::new(source(&server)));
    let response = api.get(url(&server, "/x")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = server.last_api_request().unwrap();
    assert!(seen.headers.get(ET_CLIENT_NAME).is_none());
    assert!(seen.headers.get("authorization").is_some());
}

#[tokio::test(start_paused = true)]
async fn revoked_token_is_replaced_once_and_the_request_replayed_with_its_body() {
    let server = server(DAY).await;
    let source = source(&server);
    let api = client(middleware(&source));
    assert_eq!(
        api.get(url(&server, "/a")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let first = source.current().unwrap().id();

    server.revoke_all();
    let response = api
        .post(url(&server, "/orders"))
        .body("{\"stop\":\"NSR:StopPlace:58366\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The answer is the replay's: nothing refused it.
    assert!(response.extensions().get::<Refusal>().is_none());
    assert_eq!(server.token_requests(), 2, "one re-authentication");
    assert_eq!(
        server.api_requests(),
        3,
        "the first, the refused one, its replay"
    );
    assert_eq!(server.api_rejections(), 1);
    assert_ne!(source.current().unwrap().id(), first);

    let log = server.api_requests_log();
    let (refused, replayed) = (&log[1], &log[2]);
    assert_eq!(refused.bearer.as_ref().unwrap().state, TokenState::Revoked);
    assert_eq!(replayed.bearer.as_ref().unwrap().state, TokenState::Valid);
    assert_ne!(refused.jti(), replayed.jti());
    assert_eq!(replayed.request.method, http::Method::POST);
    assert_eq!(replayed.request.body, refused.request.body);
    assert_eq!(
        &replayed.request.body[..],
        b"{\"stop\":\"NSR:StopPlace:58366\"}"
    );
    assert_eq!(
        replayed.request.headers.get(ET_CLIENT_NAME),
        refused.request.headers.get(ET_CLIENT_NAME)
    );
}

#[tokio::test(start_paused = true)]
async fn stream_body_is_not_replayed_but_its_token_is_dropped() {
    let server = server(DAY).await;
    let source = source(&server);
    let api = client(middleware(&source));
    api.get(url(&server, "/a")).send().await.unwrap();
    let first = source.current().unwrap().id();

    server.revoke_all();
    let response = api
        .post(url(&server, "/upload"))
        .body(stream_body("one pass only"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let refusal = *response.extensions().get::<Refusal>().unwrap();
    assert_eq!(refusal.token, first);
    assert_eq!(refusal.invalidation, Invalidation::Started);
    assert_eq!(refusal.replay, ReplayOutcome::NotReplayable);
    assert_eq!(server.api_requests(), 2, "no replay");
    assert_eq!(
        &server.last_api_request().unwrap().body[..],
        b"one pass only"
    );

    // The refused token is gone and a new one is on its way: the next request carries it.
    settle().await;
    assert_eq!(server.token_requests(), 2);
    let response = api.get(url(&server, "/b")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_ne!(source.current().unwrap().id(), first);
    assert_eq!(server.api_rejections(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_second_refusal_is_returned_as_it_is() {
    let server = server(DAY).await;
    let source = source(&server);
    let api = client(middleware(&source));
    api.get(url(&server, "/a")).send().await.unwrap();

    server.push_api_fault(ApiFault::invalid_token());
    server.push_api_fault(ApiFault::invalid_token());
    let response = api.get(url(&server, "/b")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let refusal = *response.extensions().get::<Refusal>().unwrap();
    assert_eq!(refusal.replay, ReplayOutcome::Replayed);
    // The replay's token was refused right after a forced refresh: kept, backing off.
    assert!(
        matches!(refusal.invalidation, Invalidation::RateLimited { .. }),
        "{refusal:?}"
    );
    assert_eq!(server.api_requests(), 3, "one request, one replay");
    assert_eq!(server.token_requests(), 2);
    let distinct = jtis(&server);
    assert_ne!(distinct[1], distinct[2], "the replay carried the new token");
}

#[tokio::test(start_paused = true)]
async fn an_api_that_always_refuses_costs_a_bounded_number_of_calls() {
    let server = server(DAY).await;
    let source = source(&server);
    let api = client(middleware(&source));
    server.set_sticky_api_fault(Some(ApiFault::invalid_token()));

    // A simulated hour of requests every 10 s.
    let requests = 360;
    for i in 0..requests {
        let before = server.api_requests();
        let response = api
            .get(url(&server, &format!("/r/{i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let refusal = *response.extensions().get::<Refusal>().unwrap();
        let calls = server.api_requests() - before;
        // Replayed once: with a new token after a forced refresh, with the same one while
        // forced refreshes back off.
        assert_eq!(refusal.replay, ReplayOutcome::Replayed, "{refusal:?}");
        assert_eq!(calls, 2);
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let fetches = server.token_requests();
    // The first fetch, then forced refreshes at 0, 10, 20, 40, 80 s, … (from 5 s apart,
    // doubling, up to 10 minutes): 12 in the first hour. One per request would be 360.
    assert!((10..=14).contains(&fetches), "token requests: {fetches}");
    assert_eq!(
        server.api_requests(),
        2 * requests,
        "one replay per refusal"
    );
    assert!(source.status().forced_refreshes_in_a_row > 3);

    // The API takes the token again: the backoff ends once the API has accepted the token
    // (the answer's body read to its end) and refused none for 10 minutes.
    server.set_sticky_api_fault(None);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let response = api.get(url(&server, "/ok")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        source.status().forced_refreshes_in_a_row > 3,
        "not before the body's end"
    );
    response.bytes().await.unwrap();
    assert_eq!(source.status().forced_refreshes_in_a_row, 0);
}

#[tokio::test(start_paused = true)]
async fn insufficient_scope_is_not_a_refused_token() {
    let server = server(DAY).await;
    let source = source(&server);
    let api = client(middleware(&source));
    api.get(url(&server, "/a")).send().await.unwrap();
    let token = source.current().unwrap().id();

    server.push_api_fault(ApiFault::Status {
        status: StatusCode::UNAUTHORIZED,
        www_authenticate: Some(r#"Bearer error="insufficient_scope", scope="admin""#.into()),
        retry_after: None,
        body: String::new(),
    });
    let response = api.get(url(&server, "/admin")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.extensions().get::<Refusal>().is_none());
    assert_eq!(server.api_requests(), 2, "no replay");
    settle().await;
    assert_eq!(server.token_requests(), 1, "the token was kept");
    assert_eq!(source.current().unwrap().id(), token);
}

#[tokio::test(start_paused = true)]
async fn a_408_refuses_the_token_only_when_the_source_says_so() {
    // The embedded server's endpoint says a 408 means "token expired", as Entur's presets do.
    let server = server(DAY).await;
    let source = source(&server);
    let api = client(middleware(&source));
    api.get(url(&server, "/a")).send().await.unwrap();
    server.push_api_fault(ApiFault::entur_token_expired());
    let response = api.get(url(&server, "/b")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.token_requests(), 2);
    assert_eq!(server.api_requests(), 3);

    // Elsewhere a 408 is a timeout: passed on, the token kept.
    let other = common::server(DAY).await;
    let source = TokenSource::builder(other.endpoint().reauth_on_408(false), other.credentials())
        .allow_http_loopback(true)
        .transport(other.token_transport())
        .build()
        .unwrap();
    let api = client(middleware(&source));
    api.get(url(&other, "/a")).send().await.unwrap();
    other.push_api_fault(ApiFault::entur_token_expired());
    let response = api.get(url(&other, "/b")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(response.extensions().get::<Refusal>().is_none());
    settle().await;
    assert_eq!(other.token_requests(), 1);
    assert_eq!(other.api_requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn cleartext_to_a_remote_host_is_refused_before_anything_is_sent() {
    let server = server(DAY).await;
    let source = source(&server);
    // `api.entur.io` resolves to the embedded server in this client: were the request sent,
    // it would reach it (see below). No DNS lookup, no network.
    let connect_to = |middleware| {
        let http = reqwest::Client::builder()
            .no_proxy()
            .resolve("api.entur.io", server.addr())
            .build()
            .unwrap();
        reqwest_middleware::ClientBuilder::new(http)
            .with(middleware)
            .build()
    };
    let remote = format!("http://api.entur.io:{}/api/x", server.addr().port());

    let api = connect_to(middleware(&source));
    let error = api.get(&remote).send().await.unwrap_err();
    assert!(error.is_middleware(), "{error:?}");
    let reqwest_middleware::Error::Middleware(inner) = &error else {
        unreachable!()
    };
    let refused = inner
        .downcast_ref::<entur_auth::auth::CleartextRefused>()
        .unwrap_or_else(|| panic!("{inner:?}"));
    assert_eq!(refused.host(), "api.entur.io");
    assert_eq!(server.api_requests(), 0, "nothing was sent");
    assert_eq!(server.token_requests(), 0, "not even a token was fetched");

    // Opted in (a mesh with mTLS, say), the same request goes through.
    let api = connect_to(layer(&source).allow_plain_http(true).into());
    let response = api.get(&remote).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.api_requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn token_endpoint_failures_come_out_as_typed_errors() {
    // Bad credentials.
    let server = server(DAY).await;
    server.set_sticky_fault(Some(Fault::oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    )));
    let api = client(middleware(&source(&server)));
    let error = api.get(url(&server, "/a")).send().await.unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("{error:?}")
    };
    let typed = inner
        .downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("{inner:?}"));
    assert_eq!(typed.oauth_code(), Some(&OAuthErrorCode::InvalidClient));
    assert!(error.to_string().contains("invalid_client"), "{error}");
    assert_eq!(server.api_requests(), 0);

    // The token endpoint down: transient.
    let server = common::server(DAY).await;
    server.set_sticky_fault(Some(Fault::status(StatusCode::SERVICE_UNAVAILABLE)));
    let api = client(middleware(&source(&server)));
    let error = api.get(url(&server, "/a")).send().await.unwrap_err();
    let typed = match &error {
        reqwest_middleware::Error::Middleware(inner) => inner.downcast_ref::<Error>(),
        reqwest_middleware::Error::Reqwest(_) => None,
    };
    assert!(
        typed.is_some_and(|e| e.kind() == entur_auth::ErrorKind::Unavailable && e.is_transient()),
        "{error:?}"
    );
    assert_eq!(server.api_requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn many_requests_refused_with_one_stale_token_cause_one_fetch() {
    let server = server(DAY).await;
    let source = source(&server);
    let api = client(middleware(&source));
    api.get(url(&server, "/a")).send().await.unwrap();

    server.revoke_all();
    let calls = (0..16).map(|i| api.get(url(&server, &format!("/c/{i}"))).send());
    for response in futures_util::future::join_all(calls).await {
        assert_eq!(response.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(server.token_requests(), 2);
    assert_eq!(server.api_rejections(), 16);
    assert_eq!(server.api_requests(), 1 + 16 + 16);
}

/// Defect: reqwest drops `Authorization` when a redirect leaves the host (here, the port),
/// so the other host's 401 says nothing about the token; the middleware dropped it anyway,
/// and fetched a new one.
#[tokio::test(start_paused = true)]
async fn a_401_from_a_host_the_token_never_reached_keeps_the_token() {
    let server = server(DAY).await;
    let elsewhere = common::server(DAY).await;
    let source = source(&server);
    let api = client(middleware(&source));
    api.get(url(&server, "/a")).send().await.unwrap();
    let token = source.current().unwrap().id();

    server.push_api_fault(ApiFault::Respond {
        status: StatusCode::FOUND,
        headers: vec![("location".into(), url(&elsewhere, "/moved"))],
        body: Bytes::new(),
    });
    let response = api.get(url(&server, "/b")).send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "from the other host"
    );
    assert_eq!(elsewhere.api_requests(), 1, "the redirect was followed");
    assert_eq!(
        elsewhere.api_requests_log()[0].jti(),
        None,
        "without the token"
    );
    assert!(response.extensions().get::<Refusal>().is_none());
    assert_eq!(server.api_requests(), 2, "no replay");
    settle().await;
    assert_eq!(server.token_requests(), 1, "the token was kept");
    assert_eq!(source.current().unwrap().id(), token);
}
