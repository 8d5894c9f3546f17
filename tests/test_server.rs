//! The embedded server as a product for users' tests: the audience Auth0 requires, faults
//! injected into the API, the request log, the strict RFC 6749 mode, and the RS256 signatures
//! with their JWKS.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use common::*;
use entur_auth::{EnturAuthLayer, OAuthErrorCode, Refusal, TokenEndpoint, TokenSource};
use entur_auth_test::{
    Answer, ApiFault, Fault, LoggedRequest, RequestKind, TestServer, TokenState,
};
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower::{Layer, Service, ServiceExt};

const NO_AUDIENCE: &str =
    "No audience parameter was provided, and no default audience has been configured";
const REALM_CHALLENGE: &str = r#"Basic realm="entur-auth-testing""#;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A token request with this content type and body, in-process.
async fn token_call(
    server: &TestServer,
    content_type: &str,
    body: String,
    authorization: Option<String>,
) -> (StatusCode, HeaderMap, Value) {
    let mut request = Request::post(server.token_url()).header(CONTENT_TYPE, content_type);
    if let Some(authorization) = authorization {
        request = request.header(AUTHORIZATION, authorization);
    }
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let response = server.token_transport().oneshot(request).await.unwrap();
    into_json(response).await
}

fn json_body(server: &TestServer, audience: Option<&str>) -> String {
    let mut body = json!({
        "grant_type": "client_credentials",
        "client_id": server.client_id(),
        "client_secret": server.client_secret(),
    });
    if let Some(audience) = audience {
        body["audience"] = Value::String(audience.to_owned());
    }
    body.to_string()
}

fn form_body(audience: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("audience", audience)
        .finish()
}

fn basic(server: &TestServer) -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", server.client_id(), server.client_secret()))
    )
}

async fn into_json<B>(response: Response<B>) -> (StatusCode, HeaderMap, Value)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, json)
}

/// A token from the server, through the crate's own source.
async fn token(server: &TestServer) -> String {
    let (status, _, json) = token_call(
        server,
        "application/json",
        json_body(server, Some(server.audience())),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json["access_token"].as_str().unwrap().to_owned()
}

fn api_get(server: &TestServer, path: &str, token: Option<&str>) -> Request<Body> {
    let mut request = Request::get(format!("{}{path}", server.api_url()));
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Body::default()).unwrap()
}

/// The answer of the last logged request.
fn last_answer(server: &TestServer) -> Answer {
    server.requests_log().last().unwrap().answer.clone()
}

fn sent(answer: &Answer) -> (StatusCode, Option<String>, Option<u32>, bool) {
    match answer {
        Answer::Sent {
            status,
            error,
            grpc_status,
            injected,
            ..
        } => (*status, error.clone(), *grpc_status, *injected),
        other => panic!("not answered: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Audience
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_client_that_forgets_the_audience_fails_as_against_auth0() {
    let server = TestServer::start().await.unwrap();

    // Raw: Auth0's answer, to the letter.
    let (status, headers, json) =
        token_call(&server, "application/json", json_body(&server, None), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    assert_eq!(
        json,
        json!({ "error": "access_denied", "error_description": NO_AUDIENCE })
    );
    let (status, _, json) = token_call(
        &server,
        "application/json",
        json_body(&server, Some("https://api.other.example")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(json["error"], "access_denied");
    assert_eq!(
        json["error_description"],
        "Service not found: https://api.other.example"
    );
    assert_eq!(server.tokens_issued(), 0);

    // Through the crate: a plain endpoint without `.audience(..)` is a rejected credential.
    let endpoint = TokenEndpoint::new(&server.token_url()).unwrap();
    let source = TokenSource::builder(endpoint, server.credentials())
        .allow_http_loopback(true)
        .transport(server.token_transport())
        .build()
        .unwrap();
    let error = source.prefetch().await.unwrap_err();
    assert_eq!(
        error.oauth_code(),
        Some(&OAuthErrorCode::AccessDenied),
        "{error:?}"
    );
    assert_eq!(error.status(), Some(StatusCode::FORBIDDEN));
    assert!(
        error.report().to_string().contains("No audience parameter"),
        "{error}"
    );

    // The server's own endpoint sends it, as Entur's presets do.
    server
        .source_builder()
        .build()
        .unwrap()
        .prefetch()
        .await
        .unwrap();
    assert_eq!(server.tokens_issued(), 1);
    let body = String::from_utf8(server.last_token_request().unwrap().body.to_vec()).unwrap();
    assert!(body.contains(server.audience()), "{body}");
}

#[tokio::test(start_paused = true)]
async fn require_audience_false_issues_tokens_for_the_configured_audience() {
    let server = TestServer::builder()
        .require_audience(false)
        .audience("https://api.example.com")
        .start()
        .await
        .unwrap();
    let (status, _, json) =
        token_call(&server, "application/json", json_body(&server, None), None).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let claims = claims(json["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], "https://api.example.com");

    // Another audience is still refused.
    let (status, _, json) = token_call(
        &server,
        "application/json",
        json_body(&server, Some("https://api.test.entur.io")),
        None,
    )
    .await;
    assert_eq!(
        (status, &json["error"]),
        (StatusCode::FORBIDDEN, &json!("access_denied"))
    );

    // A plain RFC 6749 client gets tokens and uses them.
    let endpoint = TokenEndpoint::new(&server.token_url()).unwrap();
    let source = TokenSource::builder(endpoint, server.credentials())
        .allow_http_loopback(true)
        .transport(server.token_transport())
        .build()
        .unwrap();
    let mut svc = client(&server, &source);
    assert_eq!(
        send(&mut svc, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------
// API faults
// ---------------------------------------------------------------------------

/// Sends `fault` to the API with a valid token; returns the answer and the log's summary.
async fn with_fault(
    server: &TestServer,
    token: &str,
    fault: ApiFault,
) -> (Response<entur_auth_test::TestBody>, Answer) {
    server.push_api_fault(fault);
    let response = server
        .api_service()
        .oneshot(api_get(server, "/faulted", Some(token)))
        .await
        .unwrap();
    (response, last_answer(server))
}

#[tokio::test(start_paused = true)]
async fn api_status_faults_look_like_real_api_answers() {
    let server = TestServer::start().await.unwrap();
    let token = token(&server).await;

    let (response, answer) = with_fault(&server, &token, ApiFault::invalid_token()).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        r#"Bearer error="invalid_token", error_description="injected fault""#
    );
    let (_, _, json) = into_json(response).await;
    assert_eq!(json["error"], "invalid_token");
    assert_eq!(
        sent(&answer),
        (
            StatusCode::UNAUTHORIZED,
            Some("invalid_token".into()),
            None,
            true
        )
    );
    assert_eq!(server.api_rejections(), 1, "an injected 401 is a rejection");

    let (response, answer) = with_fault(
        &server,
        &token,
        ApiFault::insufficient_scope("departures:read"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        r#"Bearer error="insufficient_scope", error_description="injected fault", scope="departures:read""#
    );
    assert_eq!(sent(&answer).1.as_deref(), Some("insufficient_scope"));

    let (response, answer) = with_fault(&server, &token, ApiFault::forbidden()).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
    assert_eq!(sent(&answer).1.as_deref(), Some("forbidden"));

    let (response, _) = with_fault(&server, &token, ApiFault::too_many_requests(Some(3))).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[RETRY_AFTER], "3");

    let (response, _) = with_fault(&server, &token, ApiFault::service_unavailable(None)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!response.headers().contains_key(RETRY_AFTER));

    let (response, _) = with_fault(&server, &token, ApiFault::entur_token_expired()).await;
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);

    let (response, _) =
        with_fault(&server, &token, ApiFault::status(StatusCode::BAD_GATEWAY)).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());

    // Every field, verbatim; a text body is typed as text.
    let fault = ApiFault::Status {
        status: StatusCode::UNAUTHORIZED,
        www_authenticate: Some(r#"Bearer realm="x", error="invalid_token""#.into()),
        retry_after: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
        body: "go away".into(),
    };
    let (response, _) = with_fault(&server, &token, fault).await;
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        r#"Bearer realm="x", error="invalid_token""#
    );
    assert_eq!(
        response.headers()[RETRY_AFTER],
        "Wed, 21 Oct 2015 07:28:00 GMT"
    );
    assert_eq!(
        response.headers()[CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "go away"
    );

    // Respond: exactly these headers.
    let fault = ApiFault::Respond {
        status: StatusCode::OK,
        headers: vec![("x-a".into(), "b".into())],
        body: Bytes::from_static(b"{\"ok\": tru"),
    };
    let (response, answer) = with_fault(&server, &token, fault).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().len(), 1);
    assert_eq!(response.headers()["x-a"], "b");
    assert!(sent(&answer).3, "injected");

    // Faults are spent: the token itself was fine all along.
    let response = server
        .api_service()
        .oneshot(api_get(&server, "/after", Some(&token)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!sent(&last_answer(&server)).3, "not injected");
    assert_eq!(server.api_requests(), 10);
}

#[tokio::test(start_paused = true)]
async fn grpc_faults_in_headers_and_in_trailers() {
    let server = TestServer::start().await.unwrap();
    let token = token(&server).await;

    let (response, answer) =
        with_fault(&server, &token, ApiFault::grpc(16, "token 100% bad: ø")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
    assert_eq!(response.headers()["grpc-status"], "16");
    assert_eq!(
        response.headers()["grpc-message"],
        "token 100%25 bad: %C3%B8"
    );
    assert_eq!(sent(&answer).2, Some(16));
    assert!(response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());

    let (response, answer) = with_fault(&server, &token, ApiFault::grpc_permission_denied()).await;
    assert_eq!(response.headers()["grpc-status"], "7");
    assert_eq!(sent(&answer).2, Some(7));

    // In the trailers: nothing in the headers, the status after the body.
    let fault = ApiFault::GrpcTrailers {
        code: 16,
        message: "expired".into(),
        body: Bytes::from_static(b"\0\0\0\0\0"),
    };
    let (response, answer) = with_fault(&server, &token, fault).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("grpc-status"));
    assert_eq!(sent(&answer).2, Some(16), "the log reads the trailers");
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap();
    assert_eq!(trailers["grpc-status"], "16");
    assert_eq!(trailers["grpc-message"], "expired");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"\0\0\0\0\0"));

    let (response, _) = with_fault(&server, &token, ApiFault::grpc_in_trailers(14, "")).await;
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
}

#[tokio::test]
async fn grpc_trailers_and_status_faults_over_tcp() {
    let server = TestServer::start().await.unwrap();
    let token = token(&server).await;
    let http = Client::builder(TokioExecutor::new()).build_http::<Body>();

    server.push_api_fault(ApiFault::grpc_in_trailers(16, "expired"));
    let mut request = api_get(&server, "/grpc", Some(&token));
    request
        .headers_mut()
        .insert("te", "trailers".parse().unwrap());
    let response = http.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "16");

    server.push_api_fault(ApiFault::too_many_requests(Some(1)));
    let response = http
        .request(api_get(&server, "/a", Some(&token)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[RETRY_AFTER], "1");
}

#[tokio::test(start_paused = true)]
async fn api_delay_and_hang() {
    let server = TestServer::start().await.unwrap();
    let token = token(&server).await;

    server.push_api_fault(ApiFault::Delay(Duration::from_secs(5)));
    let start = tokio::time::Instant::now();
    let api = server.api_service();
    let call = tokio::spawn(api.oneshot(api_get(&server, "/slow", Some(&token))));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(last_answer(&server), Answer::Pending, "still delayed");
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    let (status, _, _, injected) = sent(&last_answer(&server));
    assert_eq!(status, StatusCode::OK);
    assert!(!injected, "a delay holds the normal answer");

    // A delay long enough for the token to expire: the answer is about the token then.
    server.set_token_lifetime(Duration::from_secs(10));
    let short = self::token(&server).await;
    server.push_api_fault(ApiFault::Delay(Duration::from_secs(11)));
    let response = server
        .api_service()
        .oneshot(api_get(&server, "/slow", Some(&short)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let entry = server.api_requests_log().pop().unwrap();
    assert_eq!(
        entry.bearer.unwrap().state,
        TokenState::Valid,
        "when it arrived"
    );

    server.push_api_fault(ApiFault::Hang);
    let hang = tokio::time::timeout(
        Duration::from_secs(3600),
        server
            .api_service()
            .oneshot(api_get(&server, "/hang", Some(&token))),
    )
    .await;
    assert!(hang.is_err(), "a hanging request stays pending");
    assert_eq!(last_answer(&server), Answer::Pending);
}

#[tokio::test(start_paused = true)]
async fn queued_api_faults_come_first_then_the_sticky_one() {
    let server = TestServer::start().await.unwrap();
    let token = token(&server).await;
    server.set_sticky_api_fault(Some(ApiFault::service_unavailable(Some(9))));
    server.push_api_fault(ApiFault::forbidden());
    server.push_api_fault(ApiFault::too_many_requests(None));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = server
            .api_service()
            .oneshot(api_get(&server, "/", Some(&token)))
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [403, 429, 503, 503]);
    server.set_sticky_api_fault(None);
    let response = server
        .api_service()
        .oneshot(api_get(&server, "/", Some(&token)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// The crate's own layer reads the injected answers as it reads real ones: a refused token is
/// dropped and replaced, whether the refusal is a 401, a gRPC status in the headers, or one in
/// the trailers.
#[tokio::test(start_paused = true)]
async fn the_auth_layer_acts_on_injected_refusals() {
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    source.prefetch().await.unwrap();
    let mut svc = EnturAuthLayer::new(source.clone()).layer(server.api_service());

    for (round, fault) in [
        ApiFault::invalid_token(),
        ApiFault::grpc_unauthenticated(),
        ApiFault::grpc_in_trailers(16, "expired"),
    ]
    .into_iter()
    .enumerate()
    {
        // Past the forced-refresh backoff (`min_reauth_interval`, 5 s by default).
        tokio::time::advance(Duration::from_secs(10)).await;
        let before = source.current().unwrap().id();
        let trailers = matches!(fault, ApiFault::GrpcTrailers { .. });
        server.push_api_fault(fault);
        let response = ServiceExt::<Request<Body>>::ready(&mut svc)
            .await
            .unwrap()
            .call(api_request(&server, "/a"))
            .await
            .unwrap();
        if !trailers {
            let refusal = response.extensions().get::<Refusal>().copied();
            assert_eq!(refusal.map(|r| r.token), Some(before), "round {round}");
        }
        // The trailers are read with the body.
        response.into_body().collect().await.unwrap();
        settle().await;
        assert_eq!(
            server.token_requests(),
            round + 2,
            "round {round}: a new token"
        );
        assert_ne!(source.current().unwrap().id(), before);
    }

    // 403 insufficient_scope: the token is fine, it is kept.
    let before = source.current().unwrap().id();
    server.push_api_fault(ApiFault::insufficient_scope("admin"));
    assert_eq!(
        send(&mut svc, api_request(&server, "/a")).await.unwrap(),
        StatusCode::FORBIDDEN
    );
    settle().await;
    assert_eq!(source.current().unwrap().id(), before);
    assert_eq!(server.token_requests(), 4);
}

// ---------------------------------------------------------------------------
// Request log
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_log_keeps_every_request_in_order_with_its_answer() {
    let server = TestServer::start().await.unwrap();
    let source = source(&server);
    let mut svc = client(&server, &source);
    assert_eq!(
        send(&mut svc, api_request(&server, "/one")).await.unwrap(),
        StatusCode::OK
    );
    server.revoke_all();
    assert_eq!(
        send(&mut svc, api_request(&server, "/two")).await.unwrap(),
        StatusCode::UNAUTHORIZED
    );
    settle().await; // the refusal started a fetch
    assert_eq!(
        send(&mut svc, api_request(&server, "/three"))
            .await
            .unwrap(),
        StatusCode::OK
    );
    let response = server
        .api_service()
        .oneshot(
            Request::get("/.well-known/jwks.json")
                .body(Body::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.push_fault(Fault::Refuse);
    let _ = server
        .token_transport()
        .oneshot(
            Request::post(server.token_url())
                .body(Body::default())
                .unwrap(),
        )
        .await;

    let log = server.requests_log();
    let kinds: Vec<_> = log.iter().map(|entry| entry.kind).collect();
    use RequestKind::*;
    assert_eq!(kinds, [Token, Api, Api, Token, Api, Jwks, Token]);
    let seqs: Vec<u64> = log.iter().map(|entry| entry.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4, 5, 6]);
    assert!(log.windows(2).all(|w| w[0].received_at <= w[1].received_at));

    // Which token each API request carried, and how it was answered.
    let first_jti = log[0].issued_jti.clone().unwrap();
    let second_jti = log[3].issued_jti.clone().unwrap();
    assert_ne!(first_jti, second_jti);
    let paths: Vec<&str> = log.iter().map(|entry| entry.request.uri.path()).collect();
    assert_eq!(paths[1..3], ["/api/one", "/api/two"]);
    assert_eq!(log[1].jti(), Some(first_jti.as_str()));
    assert_eq!(log[1].bearer.as_ref().unwrap().state, TokenState::Valid);
    assert_eq!(log[2].jti(), Some(first_jti.as_str()));
    assert_eq!(log[2].bearer.as_ref().unwrap().state, TokenState::Revoked);
    assert_eq!(
        sent(&log[2].answer),
        (
            StatusCode::UNAUTHORIZED,
            Some("invalid_token".into()),
            None,
            false
        )
    );
    assert_eq!(log[4].jti(), Some(second_jti.as_str()));
    assert_eq!(log[4].status(), Some(StatusCode::OK));
    assert_eq!(log[6].answer, Answer::Refused);
    assert_eq!(log[6].status(), None);

    // The filtered views and the last requests agree with the log.
    let api: Vec<LoggedRequest> = server.api_requests_log();
    assert_eq!(api.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 4]);
    assert_eq!(server.token_requests_log().len(), 3);
    assert_eq!(
        server.last_api_request().unwrap().uri,
        api.last().unwrap().request.uri
    );
    assert_eq!(server.requests_log_dropped(), 0);

    // An unknown token and a missing one.
    let mut raw = server.api_service();
    raw.call(api_get(&server, "/x", Some("forged")))
        .await
        .unwrap();
    raw.call(api_get(&server, "/x", None)).await.unwrap();
    let api = server.api_requests_log();
    assert_eq!(api[3].bearer.as_ref().unwrap().state, TokenState::Unknown);
    assert_eq!(api[3].jti(), None);
    assert!(api[4].bearer.is_none());
    assert_eq!(sent(&api[4].answer).1.as_deref(), Some("unauthorized"));
}

#[tokio::test(start_paused = true)]
async fn the_log_is_bounded_and_counts_what_it_dropped() {
    let server = TestServer::builder()
        .request_log_capacity(3)
        .start()
        .await
        .unwrap();
    let token = token(&server).await;
    for index in 0..5 {
        server
            .api_service()
            .oneshot(api_get(&server, &format!("/{index}"), Some(&token)))
            .await
            .unwrap();
    }
    let log = server.requests_log();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(log[2].request.uri.path(), "/api/4");
    assert_eq!(server.requests_log_dropped(), 3);
    assert_eq!(server.last_api_request().unwrap().uri.path(), "/api/4");
    assert!(
        server.last_token_request().is_some(),
        "kept outside the log"
    );
    assert!(server.token_requests_log().is_empty());

    server.clear_requests_log();
    assert!(server.requests_log().is_empty());
    assert_eq!(server.requests_log_dropped(), 3, "clearing is not dropping");
    server
        .api_service()
        .oneshot(api_get(&server, "/after", Some(&token)))
        .await
        .unwrap();
    assert_eq!(server.requests_log()[0].seq, 6);

    // Capacity 0: nothing kept, everything counted; the counters still count.
    let server = TestServer::builder()
        .request_log_capacity(0)
        .start()
        .await
        .unwrap();
    let _ = self::token(&server).await;
    assert!(server.requests_log().is_empty());
    assert_eq!(server.requests_log_dropped(), 1);
    assert_eq!(server.token_requests(), 1);
    assert!(server.last_token_request().is_some());
}

#[tokio::test(start_paused = true)]
async fn the_default_log_holds_ten_thousand_entries() {
    let server = TestServer::start().await.unwrap();
    let mut api = server.api_service();
    for _ in 0..10_005 {
        api.call(api_get(&server, "", None)).await.unwrap();
    }
    let log = server.api_requests_log();
    assert_eq!(log.len(), 10_000);
    assert_eq!(log[0].seq, 5);
    assert_eq!(server.requests_log_dropped(), 5);
    assert_eq!(server.api_rejections(), 10_005);
}

// ---------------------------------------------------------------------------
// Strict RFC 6749 / RFC 6750
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn strict_token_endpoint_takes_forms_and_basic_only() {
    let server = TestServer::builder()
        .strict_rfc(true)
        .start()
        .await
        .unwrap();
    let form = "application/x-www-form-urlencoded";

    // JSON, even with Basic: refused.
    let (status, _, json) = token_call(
        &server,
        "application/json",
        json!({ "grant_type": "client_credentials", "audience": server.audience() }).to_string(),
        Some(basic(&server)),
    )
    .await;
    assert_eq!(
        (status, &json["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_request"))
    );

    // Credentials in the body: 401 invalid_client with a Basic challenge (RFC 6749 5.2).
    let body = format!(
        "{}&client_id={}&client_secret={}",
        form_body(server.audience()),
        server.client_id(),
        server.client_secret()
    );
    let (status, headers, json) = token_call(&server, form, body, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json["error"], "invalid_client");
    assert_eq!(headers[WWW_AUTHENTICATE], REALM_CHALLENGE);
    assert_eq!(headers[PRAGMA], "no-cache");

    // No credentials at all: the same.
    let (status, headers, _) = token_call(&server, form, form_body(server.audience()), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[WWW_AUTHENTICATE], REALM_CHALLENGE);

    // Form and Basic: a token, with the headers RFC 6749 5.1 asks for.
    let (status, headers, json) = token_call(
        &server,
        form,
        form_body(server.audience()),
        Some(basic(&server)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(headers[CACHE_CONTROL], "no-store");
    assert_eq!(headers[PRAGMA], "no-cache");

    // An injected 401 gets the challenge too; a Respond fault stays verbatim.
    server.push_fault(Fault::status(StatusCode::UNAUTHORIZED));
    let (status, headers, _) = token_call(
        &server,
        form,
        form_body(server.audience()),
        Some(basic(&server)),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[WWW_AUTHENTICATE], REALM_CHALLENGE);
    server.push_fault(Fault::Respond {
        status: StatusCode::UNAUTHORIZED,
        headers: vec![],
        body: Bytes::new(),
    });
    let (status, headers, _) = token_call(
        &server,
        form,
        form_body(server.audience()),
        Some(basic(&server)),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.is_empty());

    // The lenient default takes what the strict mode refuses.
    let lenient = TestServer::start().await.unwrap();
    let (status, headers, _) = token_call(
        &lenient,
        "application/json",
        json_body(&lenient, Some(lenient.audience())),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key(PRAGMA));
}

#[tokio::test(start_paused = true)]
async fn strict_endpoint_follows_the_mode_so_the_crate_still_works() {
    let server = TestServer::builder()
        .strict_rfc(true)
        .start()
        .await
        .unwrap();
    let source = source(&server);
    let mut svc = client(&server, &source);
    assert_eq!(
        send(&mut svc, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
    let request = server.last_token_request().unwrap();
    assert_eq!(
        request.headers[CONTENT_TYPE],
        "application/x-www-form-urlencoded"
    );
    assert!(request.headers[AUTHORIZATION]
        .to_str()
        .unwrap()
        .starts_with("Basic "));
}

#[tokio::test(start_paused = true)]
async fn strict_api_challenges_every_401_and_refuses_a_token_sent_twice() {
    let server = TestServer::builder()
        .strict_rfc(true)
        .start()
        .await
        .unwrap();
    let token = {
        let (_, _, json) = token_call(
            &server,
            "application/x-www-form-urlencoded",
            form_body(server.audience()),
            Some(basic(&server)),
        )
        .await;
        json["access_token"].as_str().unwrap().to_owned()
    };
    let mut api = server.api_service();
    let mut call = |request: Request<Body>| {
        let future = api.call(request);
        async move { into_json(future.await.unwrap()).await }
    };

    let (status, headers, _) = call(api_get(&server, "", None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers[WWW_AUTHENTICATE],
        r#"Bearer realm="entur-auth-testing""#
    );

    let (status, headers, _) = call(api_get(&server, "", Some("forged"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers[WWW_AUTHENTICATE],
        r#"Bearer realm="entur-auth-testing", error="invalid_token", error_description="unknown token""#
    );

    server.push_api_fault(ApiFault::status(StatusCode::UNAUTHORIZED));
    let (status, headers, _) = call(api_get(&server, "", Some(&token))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers[WWW_AUTHENTICATE],
        r#"Bearer realm="entur-auth-testing", error="invalid_token""#
    );

    // Two Authorization headers, or the header and the query parameter: invalid_request.
    let mut twice = api_get(&server, "", Some(&token));
    twice
        .headers_mut()
        .append(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    let (status, headers, json) = call(twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"], "invalid_request");
    assert!(headers[WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .contains(r#"error="invalid_request""#));
    let (status, _, _) = call(api_get(
        &server,
        &format!("?access_token={token}"),
        Some(&token),
    ))
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _, _) = call(api_get(&server, "/fine", Some(&token))).await;
    assert_eq!(status, StatusCode::OK);

    // Not strict: the same requests, the former answers.
    let lenient = TestServer::start().await.unwrap();
    let response = lenient
        .api_service()
        .oneshot(api_get(&lenient, "", None))
        .await
        .unwrap();
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
    lenient.push_api_fault(ApiFault::status(StatusCode::UNAUTHORIZED));
    let response = lenient
        .api_service()
        .oneshot(api_get(&lenient, "", None))
        .await
        .unwrap();
    assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
}

// ---------------------------------------------------------------------------
// RS256 and the JWKS
// ---------------------------------------------------------------------------

/// Verifies `jwt`'s RS256 signature with the key of `jwks` named by the token's `kid`.
fn verify(jwks: &Value, jwt: &str) -> Result<(), ring::error::Unspecified> {
    let (signing_input, signature) = jwt.rsplit_once('.').unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(signing_input.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "RS256");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["kid"] == header["kid"])
        .expect("the token's kid is in the JWKS");
    let decode = |field: &str| {
        URL_SAFE_NO_PAD
            .decode(key[field].as_str().unwrap())
            .unwrap()
    };
    let public = ring::signature::RsaPublicKeyComponents {
        n: decode("n"),
        e: decode("e"),
    };
    public.verify(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        signing_input.as_bytes(),
        &URL_SAFE_NO_PAD.decode(signature).unwrap(),
    )
}

#[tokio::test]
async fn tokens_verify_with_the_jwks_served_over_tcp() {
    let server = TestServer::start().await.unwrap();
    let token = token(&server).await;
    let http = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let response = http
                .request(Request::get(url).body(Body::default()).unwrap())
                .await
                .unwrap();
            into_json(response).await
        }
    };

    let (status, headers, jwks) = get(server.jwks_url()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    assert_eq!(jwks, server.jwks());
    let key = &jwks["keys"][0];
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(
        (&key["kty"], &key["alg"], &key["use"], &key["e"]),
        (
            &json!("RSA"),
            &json!("RS256"),
            &json!("sig"),
            &json!("AQAB")
        )
    );
    assert_eq!(key["kid"], server.key_id());
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(key["n"].as_str().unwrap())
            .unwrap()
            .len(),
        256
    );

    verify(&jwks, &token).expect("the signature checks out");
    // A changed payload does not.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims = claims(&token);
    claims["aud"] = json!("https://api.other.example");
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    assert!(verify(&jwks, &parts.join(".")).is_err());

    // The metadata, under both well-known names.
    for path in ["openid-configuration", "oauth-authorization-server"] {
        let (status, _, metadata) = get(format!("{}/.well-known/{path}", server.issuer())).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(metadata["issuer"], self::claims(&token)["iss"]);
        assert_eq!(metadata["issuer"], server.issuer());
        assert_eq!(metadata["token_endpoint"], server.token_url());
        assert_eq!(metadata["jwks_uri"], server.jwks_url());
        assert_eq!(
            metadata["grant_types_supported"],
            json!(["client_credentials"])
        );
    }
    let kinds: Vec<_> = server.requests_log().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            RequestKind::Token,
            RequestKind::Jwks,
            RequestKind::Metadata,
            RequestKind::Metadata
        ]
    );

    let response = http
        .request(
            Request::post(server.jwks_url())
                .body(Body::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(start_paused = true)]
async fn tokens_carry_auth0s_claims_and_sign_jwt_makes_others() {
    let server = TestServer::start().await.unwrap();
    let token = token(&server).await;
    let claims = claims(&token);
    assert_eq!(claims["azp"], server.client_id());
    assert_eq!(claims["gty"], "client-credentials");
    assert_eq!(claims["sub"], format!("{}@clients", server.client_id()));

    // A token the server would not issue, signed the same way: for a resource server's tests.
    let expired = server.sign_jwt(&json!({ "iss": server.issuer(), "exp": 1 }));
    verify(&server.jwks(), &expired).unwrap();
    let response = server
        .api_service()
        .oneshot(api_get(&server, "", Some(&expired)))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "not issued: refused"
    );

    // The PEM is the same key: its RSAPublicKey verifies the token too.
    let der = STANDARD
        .decode(
            server
                .public_key_pem()
                .lines()
                .filter(|line| !line.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    // SPKI of a 2048-bit RSA key: a 24-byte prefix, then the PKCS#1 RSAPublicKey.
    let pkcs1 = &der[24..];
    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, pkcs1)
        .verify(
            signing_input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).unwrap(),
        )
        .expect("the PEM's key verifies the token");
}

#[tokio::test(start_paused = true)]
async fn sign_tokens_false_keeps_the_shape_without_a_valid_signature() {
    let server = TestServer::builder()
        .sign_tokens(false)
        .start()
        .await
        .unwrap();
    let token = token(&server).await;
    assert_eq!(token.split('.').count(), 3);
    assert!(verify(&server.jwks(), &token).is_err());
    let response = server
        .api_service()
        .oneshot(api_get(&server, "", Some(&token)))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the API knows its tokens"
    );
}
