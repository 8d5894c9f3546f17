//! The API refuses a token: the token is dropped where the refusal is seen, in every stack a
//! user builds (any order of the documented layers, with or without a replay, with bodies
//! that can or cannot be replayed), and the errors say what really happened. Also: no bearer
//! over cleartext, redirects, `WWW-Authenticate`, gRPC statuses in trailers, and the bound
//! on token requests when an API refuses every token.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use entur_auth::error_for_status::{ErrorForStatusLayer, Refused};
use entur_auth::{
    BoxError, EnturAuthLayer, Invalidation, Refusal, ReplayOutcome, TokenEndpoint, TokenSource,
};
use entur_auth_test::TestServer;
use http::header::{AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

type Stream = UnsyncBoxBody<Bytes, Infallible>;

/// A request whose body cannot be sent twice, as tonic's, axum's and hyper's `Incoming` are.
fn streaming_request(server: &TestServer, path: &str) -> Request<Stream> {
    let body = Body::from(Bytes::from_static(b"{\"q\":1}"))
        .map_err(|never| match never {})
        .boxed_unsync();
    Request::post(format!("{}{path}", server.api_url()))
        .body(body)
        .unwrap()
}

/// Waits until `svc` is ready for a `Request<B>` and sends `request`.
async fn request<S, B>(svc: &mut S, request: Request<B>) -> Result<S::Response, S::Error>
where
    S: Service<Request<B>>,
{
    ServiceExt::<Request<B>>::ready(svc)
        .await?
        .call(request)
        .await
}

async fn setup() -> (TestServer, TokenSource) {
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    source.prefetch().await.unwrap();
    (server, source)
}

/// Item 1: a streaming body cannot be replayed, so `tower::retry` never consults the
/// policy; the token must be dropped anyway, by the auth layer itself.
#[tokio::test(start_paused = true)]
async fn a_refused_streaming_request_drops_the_token_in_every_stack() {
    // The bare layer: nothing around it at all.
    let (server, source) = setup().await;
    let old = source.current().unwrap().id();
    server.revoke_all();
    let mut bare = EnturAuthLayer::new(source.clone()).layer(server.api_service());
    let response = request(&mut bare, streaming_request(&server, "/a"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let refusal = *response.extensions().get::<Refusal>().unwrap();
    assert_eq!(refusal.token, old);
    assert_eq!(refusal.invalidation, Invalidation::Started);
    settle().await;
    assert_eq!(server.token_requests(), 2, "the refusal started the fetch");
    assert_ne!(source.current().unwrap().id(), old);
    let response = request(&mut bare, streaming_request(&server, "/b"))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the next request is fine"
    );

    // tower::retry with ReauthPolicy: the policy is never consulted for this body.
    let (server, source) = setup().await;
    server.revoke_all();
    let mut retry = ServiceBuilder::new()
        .retry(RetryOnce401::default())
        .layer(EnturAuthLayer::new(source.clone()))
        .service(server.api_service());
    let status = request(&mut retry, streaming_request(&server, "/a"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    settle().await;
    assert_eq!(server.token_requests(), 2);

    // The replay layer: not replayed, and the answer says why.
    let (server, source) = setup().await;
    server.revoke_all();
    let mut replay = ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .layer(EnturAuthLayer::new(source.clone()).with_replay())
        .service(server.api_service());
    let error = request(&mut replay, streaming_request(&server, "/a"))
        .await
        .unwrap_err();
    let error = error.downcast_ref::<Refused>().unwrap();
    let refusal = error.refusal().unwrap_or_else(|| panic!("{error:?}"));
    assert_eq!(refusal.replay, ReplayOutcome::NotReplayable);
    assert_eq!(refusal.invalidation, Invalidation::Started);
    assert!(
        error.to_string().contains("cannot be sent twice"),
        "{error}"
    );
    assert!(
        error.hint().contains("CollectBodyLayer"),
        "{}",
        error.hint()
    );
    settle().await;
    assert_eq!(server.token_requests(), 2);
    assert_eq!(server.api_requests(), 1, "a stream is sent once");
}

/// Sends one request after the server revoked every token; returns the final status.
async fn after_revocation<S, B>(mut svc: S, server: &TestServer) -> Result<StatusCode, BoxError>
where
    S: Service<Request<Body>, Response = Response<B>, Error = BoxError>,
    B: http_body::Body,
{
    server.revoke_all();
    send(&mut svc, api_request(server, "/a")).await
}

/// Item 2: every order of the documented layers re-authenticates; a wrong (but compiling)
/// order no longer disables it.
#[tokio::test(start_paused = true)]
async fn every_order_of_the_documented_layers_recovers_from_a_revocation() {
    let timeout = Duration::from_secs(30);
    macro_rules! recovers {
        ($name:literal, |$source:ident| $stack:expr) => {{
            let (server, $source) = setup().await;
            let old = $source.current().unwrap().id();
            let svc = $stack.service(server.api_service());
            let status = after_revocation(svc, &server).await;
            assert!(
                matches!(status, Ok(StatusCode::OK)),
                "{}: {status:?}",
                $name
            );
            assert_ne!($source.current().unwrap().id(), old, "{}", $name);
            assert_eq!(server.token_requests(), 2, "{}: one re-auth", $name);
            assert_eq!(server.api_requests(), 2, "{}: one replay", $name);
        }};
    }
    recovers!("with_replay", |source| ServiceBuilder::new()
        .layer(EnturAuthLayer::new(source.clone()).with_replay()));
    recovers!("errors → with_replay", |source| ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .layer(EnturAuthLayer::new(source.clone()).with_replay()));
    recovers!("timeout → errors → with_replay", |source| {
        ServiceBuilder::new()
            .timeout(timeout)
            .layer(ErrorForStatusLayer::new())
            .layer(EnturAuthLayer::new(source.clone()).with_replay())
    });
    recovers!("errors → retry → timeout → auth (README)", |source| {
        ServiceBuilder::new()
            .layer(ErrorForStatusLayer::new())
            .retry(RetryOnce401::default())
            .timeout(timeout)
            .layer(EnturAuthLayer::new(source.clone()))
    });
    recovers!("retry → errors → auth (the wrong order)", |source| {
        ServiceBuilder::new()
            .retry(RetryOnce401::default())
            .layer(ErrorForStatusLayer::new())
            .layer(EnturAuthLayer::new(source.clone()))
    });
    recovers!("retry → timeout → errors → auth", |source| {
        ServiceBuilder::new()
            .retry(RetryOnce401::default())
            .timeout(timeout)
            .layer(ErrorForStatusLayer::new())
            .layer(EnturAuthLayer::new(source.clone()))
    });

    // Without any replay: this request fails, but the token is already replaced and the
    // error says so; the next request succeeds.
    let (server, source) = setup().await;
    let mut api = ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .layer(EnturAuthLayer::new(source.clone()))
        .service(server.api_service());
    server.revoke_all();
    let error = send(&mut api, api_request(&server, "/a"))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("a new token is being fetched"), "{text}");
    assert!(text.contains("not replayed"), "{text}");
    assert!(!text.contains("again after re-authenticating"), "{text}");
    assert_eq!(
        send(&mut api, api_request(&server, "/b")).await.unwrap(),
        StatusCode::OK
    );
    assert_eq!(server.token_requests(), 2);
}

/// An API that answers every request with `status` (and `headers`), counting calls and
/// recording the `Authorization` header of each.
#[derive(Clone, Default)]
struct Fixed {
    status: u16,
    headers: Vec<(&'static str, String)>,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Option<http::HeaderValue>>>>,
}

impl Fixed {
    fn new(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

impl<B> Service<Request<B>> for Fixed {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen
            .lock()
            .unwrap()
            .push(request.headers().get(AUTHORIZATION).cloned());
        let mut response = Response::builder().status(self.status);
        for (name, value) in &self.headers {
            response = response.header(*name, value);
        }
        std::future::ready(Ok(response.body(Body::default()).unwrap()))
    }
}

/// Item 9: an API that refuses every token costs a bounded number of token requests per
/// day (it was one forced fetch per 5 s, ~17,000 a day), and each one is still tried.
#[tokio::test(start_paused = true)]
async fn an_api_that_refuses_every_token_costs_about_150_token_requests_a_day() {
    let (server, source) = setup().await;
    let api = Fixed::new(401);
    let mut svc = ServiceBuilder::new()
        .layer(EnturAuthLayer::new(source.clone()).with_replay())
        .service(api.clone());
    let start = tokio::time::Instant::now();
    let mut requests = 0;
    while start.elapsed() < Duration::from_secs(24 * 3600) {
        let status = send(&mut svc, api_request(&server, "/a")).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        requests += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    // 5 s doubling to 10 minutes: 8 forced refreshes in the first ~11 minutes, then one per
    // 10 minutes: ~151 a day, plus the first fetch.
    let fetches = server.token_requests();
    assert!(
        (140..=160).contains(&fetches),
        "{fetches} token requests for {requests} refused requests in 24 h"
    );
    assert!(source.status().forced_refreshes_in_a_row > 100);

    // The API starts accepting: the first accepted request ends the backoff.
    let api_ok = Fixed::new(200);
    let mut svc = EnturAuthLayer::new(source.clone()).layer(api_ok);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        send(&mut svc, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
    assert_eq!(source.status().forced_refreshes_in_a_row, 0);
    // And the next refusal is acted on at once, from min_reauth_interval again.
    let token = source.current().unwrap().id();
    assert_eq!(source.invalidate(token), Invalidation::Started);
}

/// Item 9: for an API that is not Entur's, a 408 is a proxy's timeout, not an expired token.
#[tokio::test(start_paused = true)]
async fn a_408_from_an_api_that_is_not_entur_forces_no_fetch() {
    let server = server(Duration::from_secs(3600)).await;
    let endpoint = TokenEndpoint::new(&server.token_url())
        .unwrap()
        .audience(server.audience());
    assert_eq!(
        endpoint,
        endpoint.clone().reauth_on_408(false),
        "the default"
    );
    let source = TokenSource::builder(endpoint, server.credentials())
        .allow_http_loopback(true)
        .transport(server.token_transport())
        .build()
        .unwrap();
    let api = Fixed::new(408);
    let mut svc = ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .layer(EnturAuthLayer::new(source.clone()).with_replay())
        .service(api.clone());
    for _ in 0..20 {
        let status = send(&mut svc, api_request(&server, "/a")).await.unwrap();
        assert_eq!(
            status,
            StatusCode::REQUEST_TIMEOUT,
            "passed on as an answer"
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    assert_eq!(server.token_requests(), 1);
    assert_eq!(api.calls.load(Ordering::SeqCst), 20, "no replays");

    // Opting in makes it a refusal, as with Entur.
    let endpoint = TokenEndpoint::new(&server.token_url())
        .unwrap()
        .audience(server.audience())
        .reauth_on_408(true);
    let source = TokenSource::builder(endpoint, server.credentials())
        .allow_http_loopback(true)
        .transport(server.token_transport())
        .build()
        .unwrap();
    let mut svc = EnturAuthLayer::new(source.clone()).with_replay().layer(api);
    send(&mut svc, api_request(&server, "/a")).await.unwrap();
    assert_eq!(server.token_requests(), 3, "the first fetch and one forced");
}

/// Item 6: the bearer never goes out over plain http:// to a remote host.
#[tokio::test(start_paused = true)]
async fn no_bearer_goes_over_cleartext_to_a_remote_host() {
    let (_server, source) = setup().await;
    let api = Fixed::new(200);
    let mut svc = EnturAuthLayer::new(source.clone()).layer(api.clone());
    let get = |uri: &str| Request::get(uri).body(Body::default()).unwrap();

    // These are refused before anything is sent (no connection is ever made: the inner
    // service is a stub that would only record the header).
    for uri in [
        "http://api.entur.io/journey-planner/v3/graphql",
        "http://API.ENTUR.IO:80/x",
        "http://10.0.0.1/x",
    ] {
        let error = request(&mut svc, get(uri)).await.unwrap_err();
        let error = error
            .downcast_ref::<entur_auth::auth::CleartextRefused>()
            .unwrap_or_else(|| panic!("{uri}: {error:?}"));
        assert!(error.to_string().contains("cleartext"), "{error}");
        assert!(error.hint().contains("https://"), "{}", error.hint());
    }
    assert_eq!(api.calls.load(Ordering::SeqCst), 0, "nothing was sent");

    // These pass, with the token: loopback over http (tests, local sidecars), and https.
    for uri in [
        "http://127.0.0.1:8080/x",
        "http://localhost/x",
        "http://[::1]:9/x",
        "https://api.entur.io/x",
    ] {
        let response = request(&mut svc, get(uri)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
    }
    let seen = api.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(Option::is_some));

    // A relative URI, as tonic sends them to a Channel (which adds its endpoint's scheme and
    // host below the layer): where it goes cannot be told, so it is refused...
    let grpc = "/grpc.health.v1.Health/Check";
    let error = request(&mut svc, get(grpc)).await.unwrap_err();
    let error = error
        .downcast_ref::<entur_auth::auth::CleartextRefused>()
        .unwrap_or_else(|| panic!("{error:?}"));
    assert!(error.to_string().contains("no scheme and host"), "{error}");
    assert!(
        error.hint().contains("EnturAuthLayer::origin"),
        "{}",
        error.hint()
    );
    assert_eq!(error.host(), "");
    // ...judged by the origin declared for it: https and loopback pass...
    for origin in ["https://grpc.example.com", "http://127.0.0.1:50051"] {
        let mut declared = EnturAuthLayer::new(source.clone())
            .origin(origin.parse().unwrap())
            .layer(api.clone());
        let response = request(&mut declared, get(grpc)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{origin}");
    }
    assert_eq!(api.calls.load(Ordering::SeqCst), 6);
    // ...plain http to a remote host, or an origin that is no URL of either, do not.
    for (origin, says) in [
        ("http://grpc.example.com:50051", "grpc.example.com"),
        (
            "grpc.example.com:443",
            "not an absolute http:// or https:// URL",
        ),
    ] {
        let mut declared = EnturAuthLayer::new(source.clone())
            .origin(origin.parse().unwrap())
            .layer(api.clone());
        let error = request(&mut declared, get(grpc)).await.unwrap_err();
        let error = error
            .downcast_ref::<entur_auth::auth::CleartextRefused>()
            .unwrap_or_else(|| panic!("{origin}: {error:?}"));
        assert!(error.to_string().contains(says), "{error}");
    }
    assert_eq!(api.calls.load(Ordering::SeqCst), 6, "nothing more was sent");

    // Opting in lifts the check.
    let mut allowed = EnturAuthLayer::new(source)
        .allow_plain_http(true)
        .layer(api.clone());
    let response = request(&mut allowed, get("http://api.entur.io/x"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Items 6 and 14: a redirect is "insecure" only when the request really went over
/// http://; the error says whether the token went with it; no query (which may hold
/// credentials) is copied into an error message.
#[tokio::test(start_paused = true)]
async fn redirects_are_insecure_only_over_http_and_never_leak_the_location_query() {
    let (server, source) = setup().await;
    let presigned =
        "https://storage.example/bucket/file?X-Amz-Signature=SIGNATURE123&X-Amz-Credential=CRED456";
    let api = Fixed::new(302).header(LOCATION.as_str(), presigned);
    let mut svc = ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .layer(EnturAuthLayer::new(source.clone()).with_replay())
        .service(api.clone());

    // https: the API's own business, passed on as an answer.
    let download = Request::get("https://api.entur.io/download")
        .body(Body::default())
        .unwrap();
    let response = request(&mut svc, download).await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);

    // http to loopback: the token went out in cleartext, and the error says so.
    let error = send(&mut svc, api_request(&server, "/download"))
        .await
        .unwrap_err();
    let error = error.downcast_ref::<Refused>().unwrap();
    assert!(
        (error.kind() == entur_auth::error_for_status::RefusedKind::InsecureRedirect),
        "{error:?}"
    );
    assert!(error.token_sent());
    assert_eq!(
        error.location(),
        Some("https://storage.example/bucket/file")
    );
    let text = error.to_string();
    assert!(text.contains("treat it as exposed"), "{text}");
    for secret in ["SIGNATURE123", "CRED456", "X-Amz"] {
        assert!(!text.contains(secret), "{text}");
        assert!(!format!("{error:?}").contains(secret));
    }

    // Credentials in the Location's userinfo are not copied either.
    let api = Fixed::new(301).header(LOCATION.as_str(), "http://user:hunter2@api.entur.io/x?k=v");
    let mut svc = ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .layer(EnturAuthLayer::new(source).with_replay())
        .service(api);
    let error = send(&mut svc, api_request(&server, "/x"))
        .await
        .unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(!text.contains("hunter2") && !text.contains("k=v"), "{text}");
    assert!(text.contains("http://api.entur.io/x"), "{text}");
}

/// Item 13: `WWW-Authenticate` as RFC 9110 defines it.
#[tokio::test(start_paused = true)]
async fn www_authenticate_with_several_challenges_is_read_correctly() {
    let (server, source) = setup().await;
    // Two challenges in one field: a permission problem, not a token to replace.
    let scope = Fixed::new(401).header(
        WWW_AUTHENTICATE.as_str(),
        r#"Basic realm="api", Bearer error="insufficient_scope", scope="tickets:write""#,
    );
    let mut svc = ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .layer(EnturAuthLayer::new(source.clone()).with_replay())
        .service(scope.clone());
    let error = send(&mut svc, api_request(&server, "/a"))
        .await
        .unwrap_err();
    let error = error.downcast_ref::<Refused>().unwrap();
    assert!(
        (error.kind() == entur_auth::error_for_status::RefusedKind::PermissionDenied)
            && !error.is_grpc(),
        "{error:?}"
    );
    assert_eq!(scope.calls.load(Ordering::SeqCst), 1, "no replay");
    assert_eq!(server.token_requests(), 1, "no useless forced fetch");

    // A comma inside a quoted description does not split the value.
    let expired = Fixed::new(401).header(
        WWW_AUTHENTICATE.as_str(),
        r#"Bearer realm="api", error="invalid_token", error_description="expired, renew it""#,
    );
    let mut svc = EnturAuthLayer::new(source.clone())
        .with_replay()
        .layer(expired);
    let response = request(&mut svc, api_request(&server, "/a")).await.unwrap();
    let refusal = response.extensions().get::<Refusal>().unwrap();
    assert_eq!(refusal.replay, ReplayOutcome::Replayed);
    assert_eq!(server.token_requests(), 2, "an invalid token is replaced");
}

type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;
type GrpcAnswer = std::future::Ready<Result<Response<StreamBody<Frames>>, Infallible>>;

/// A gRPC answer whose status comes in the trailers, after the headers (as tonic sends it
/// for streaming calls and for failures after the headers went out).
fn grpc_with_trailers(
    code: &'static str,
) -> tower::util::ServiceFn<impl FnMut(Request<Body>) -> GrpcAnswer + Clone> {
    tower::service_fn(move |_request: Request<Body>| {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", code.parse().unwrap());
        trailers.insert("grpc-message", "token revoked".parse().unwrap());
        let frames = vec![Ok(Frame::trailers(trailers))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let response = Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap();
        std::future::ready(Ok(response))
    })
}

/// Item 12: `UNAUTHENTICATED` in the trailers drops the token when the body is read.
#[tokio::test(start_paused = true)]
async fn grpc_unauthenticated_in_trailers_drops_the_token() {
    let (server, source) = setup().await;
    let old = source.current().unwrap().id();
    let mut svc = EnturAuthLayer::new(source.clone()).layer(grpc_with_trailers("0"));
    let response = request(&mut svc, api_request(&server, "/grpc"))
        .await
        .unwrap();
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    settle().await;
    assert_eq!(
        source.current().unwrap().id(),
        old,
        "OK in the trailers: kept"
    );

    let mut svc = EnturAuthLayer::new(source.clone()).layer(grpc_with_trailers("16"));
    let response = request(&mut svc, api_request(&server, "/grpc"))
        .await
        .unwrap();
    assert!(
        response.extensions().get::<Refusal>().is_none(),
        "the headers said nothing yet"
    );
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(
        collected.trailers().unwrap()["grpc-status"],
        "16",
        "the trailers reach the caller unchanged"
    );
    settle().await;
    assert_eq!(
        server.token_requests(),
        2,
        "UNAUTHENTICATED started a fetch"
    );
    assert_ne!(source.current().unwrap().id(), old);
}

/// What a scripted API answers to one call.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// This status, with a short body.
    Status(u16),
    /// gRPC: 200, `content-type: application/grpc`, one message, then `grpc-status: code`
    /// in the trailers.
    GrpcTrailers(u32),
}

/// An API whose answer to its `n`-th call (from 0) is `script(n)`.
#[derive(Clone)]
struct Scripted {
    calls: Arc<AtomicUsize>,
    script: fn(usize) -> Answer,
}

impl Scripted {
    fn new(script: fn(usize) -> Answer) -> Self {
        Self {
            calls: Arc::default(),
            script,
        }
    }
}

impl<B> Service<Request<B>> for Scripted {
    type Response = Response<Stream>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Stream>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let response = match (self.script)(n) {
            Answer::Status(status) => Response::builder().status(status).body(
                http_body_util::Full::new(Bytes::from_static(b"{}"))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            ),
            Answer::GrpcTrailers(code) => {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", code.into());
                let frames = futures_util::stream::iter([
                    Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                    Ok(Frame::trailers(trailers)),
                ]);
                Response::builder()
                    .header("content-type", "application/grpc")
                    .body(StreamBody::new(frames).boxed_unsync())
            }
        };
        std::future::ready(Ok(response.unwrap()))
    }
}

/// A simulated day of `per_tick` requests every `tick` through the layer with its replay
/// over `api`, each answer's body read to its end as a client does. Returns the token
/// requests made (the first fetch included) and how many answers the callers saw that were
/// not 200.
async fn a_day(api: Scripted, tick: Duration, per_tick: usize) -> (usize, usize) {
    let server = server(Duration::from_secs(24 * 3600)).await;
    let source = source(&server);
    source.prefetch().await.unwrap();
    let mut svc = EnturAuthLayer::new(source.clone()).with_replay().layer(api);
    let start = tokio::time::Instant::now();
    let mut failed = 0;
    while start.elapsed() < Duration::from_secs(24 * 3600) {
        for _ in 0..per_tick {
            let request = Request::get(format!("{}/a", server.api_url()))
                .body(Body::default())
                .unwrap();
            if send(&mut svc, request).await.unwrap() != StatusCode::OK {
                failed += 1;
            }
        }
        tokio::time::sleep(tick).await;
    }
    let fetches = server.token_requests();
    eprintln!("a simulated day: {fetches} token requests, {failed} answers other than 200");
    (fetches, failed)
}

/// An API that refuses every token costs ~150 token requests a day; an API that refuses
/// only some must cost no more.
const A_DAY_OF_REFUSALS: usize = 160;

/// Defect: a forced refresh's token was "accepted" as soon as an answer's headers carried
/// no refusal, so a gRPC API that refuses in the trailers ended the backoff on every call
/// (~8,600 token requests a day at one call per 10 s).
#[tokio::test(start_paused = true)]
async fn a_grpc_api_refusing_in_the_trailers_costs_no_more_than_one_refusing_every_token() {
    let api = Scripted::new(|_| Answer::GrpcTrailers(16));
    let (fetches, _) = a_day(api, Duration::from_secs(10), 1).await;
    assert!(
        fetches <= A_DAY_OF_REFUSALS,
        "{fetches} token requests in a day"
    );
}

/// Defect: a gateway's 503 between refusals was taken for an accepted token and ended the
/// backoff (~4,300 token requests a day).
#[tokio::test(start_paused = true)]
async fn gateway_errors_between_refusals_accept_nothing() {
    let api = Scripted::new(|n| match n % 4 {
        0 => Answer::Status(401),
        1 => Answer::Status(503),
        2 => Answer::Status(429),
        _ => Answer::Status(502),
    });
    let (fetches, _) = a_day(api, Duration::from_secs(10), 1).await;
    assert!(
        fetches <= A_DAY_OF_REFUSALS,
        "{fetches} token requests in a day"
    );
}

/// Ten replicas behind a load balancer, one of which refuses every token.
fn one_replica_in_ten_refuses(n: usize) -> Answer {
    match n % 10 {
        0 => Answer::Status(401),
        _ => Answer::Status(200),
    }
}

/// Defect: one accepted request ended the whole backoff, so one replica in ten refusing
/// every token cost ~960 token requests a day at one request per 10 s, more than an API
/// refusing everything. The callers see no refusal: the replay lands on another replica.
#[tokio::test(start_paused = true)]
async fn one_refusing_replica_in_ten_costs_no_more_at_one_request_per_10_s() {
    let api = Scripted::new(one_replica_in_ten_refuses);
    let (fetches, failed) = a_day(api.clone(), Duration::from_secs(10), 1).await;
    assert!(
        fetches <= A_DAY_OF_REFUSALS,
        "{fetches} token requests in a day"
    );
    assert_eq!(failed, 0, "every refused request was replayed elsewhere");
    assert!(api.calls.load(Ordering::SeqCst) > 8640, "refusals happened");
}

/// As above at 10 requests a second (a forced refresh per `min_reauth_interval` before).
#[tokio::test(start_paused = true)]
async fn one_refusing_replica_in_ten_costs_no_more_at_10_requests_a_second() {
    let api = Scripted::new(one_replica_in_ten_refuses);
    let (fetches, failed) = a_day(api, Duration::from_secs(1), 10).await;
    assert!(
        fetches <= A_DAY_OF_REFUSALS,
        "{fetches} token requests in a day"
    );
    assert_eq!(failed, 0, "every refused request was replayed elsewhere");
}
