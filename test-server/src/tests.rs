//! Tests of the embedded server.

use std::fmt;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower_service::Service;

use crate::token_endpoint::form_decode;
use crate::{
    fault, log, signing, Answer, ApiFault, ApiService, Fault, LoggedRequest, RecordedRequest,
    RequestKind, ResponseFuture, TestBody, TestServer, TokenTransport, ORGANISATION_CLAIM,
};

type TcpClient = Client<HttpConnector, Full<Bytes>>;

fn tcp_client() -> TcpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn json_request(server: &TestServer) -> Request<Full<Bytes>> {
    let body = json!({
        "grant_type": "client_credentials",
        "client_id": server.client_id(),
        "client_secret": server.client_secret(),
        "audience": server.audience(),
    });
    Request::post(server.token_url())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn form_request(url: &str, content_type: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn api_request(server: &TestServer, path: &str, token: Option<&str>) -> Request<Full<Bytes>> {
    let mut builder = Request::get(format!("{}{path}", server.api_url()));
    if let Some(token) = token {
        builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

fn basic(id: &str, secret: &str) -> String {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
    )
}

async fn into_json<B>(response: Response<B>) -> (StatusCode, HeaderMap, Value)
where
    B: Body,
    B::Error: fmt::Debug,
{
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, json)
}

async fn in_process<S>(
    service: &mut S,
    request: Request<Full<Bytes>>,
) -> (StatusCode, HeaderMap, Value)
where
    S: Service<Request<Full<Bytes>>, Response = Response<TestBody>>,
    S::Error: fmt::Debug,
{
    into_json(service.call(request).await.unwrap()).await
}

async fn get_token(server: &TestServer) -> String {
    let (status, _, json) = in_process(&mut server.token_transport(), json_request(server)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json["access_token"].as_str().unwrap().to_owned()
}

fn claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(
        header,
        json!({ "alg": "RS256", "typ": "JWT", "kid": signing::signer().kid() })
    );
    assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 256);
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

#[test]
fn public_types_are_send_sync_static() {
    fn check<T: Send + Sync + 'static>() {}
    check::<TestServer>();
    check::<TokenTransport>();
    check::<ApiService>();
    check::<TestBody>();
    check::<Fault>();
    check::<RecordedRequest>();
    check::<ApiFault>();
    check::<LoggedRequest>();
    fn check_send<T: Send>() {}
    check_send::<ResponseFuture<io::Error>>();
}

#[test]
fn form_decoding() {
    assert_eq!(
        form_decode("p%2Bss%3Aw%C3%B6rd").as_deref(),
        Some("p+ss:wörd")
    );
    assert_eq!(form_decode("a+b").as_deref(), Some("a b"));
    assert_eq!(form_decode("%zz%4").as_deref(), Some("%zz%4"));
    assert_eq!(form_decode("%FF"), None);
}

#[tokio::test]
async fn tcp_json_token_is_accepted_by_api() {
    let server = TestServer::start().await.unwrap();
    assert!(server.addr().ip().is_loopback());
    assert_eq!(
        server.token_url(),
        format!("http://127.0.0.1:{}/oauth/token", server.addr().port())
    );
    let client = tcp_client();

    let (status, headers, json) =
        into_json(client.request(json_request(&server)).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    assert_eq!(headers[CACHE_CONTROL], "no-store");
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 60);
    assert!(json.get("scope").is_none());
    let token = json["access_token"].as_str().unwrap().to_owned();
    let claims = claims(&token);
    assert_eq!(claims["iss"], format!("http://{}", server.addr()));
    assert_eq!(claims["sub"], "test-client@clients");
    assert_eq!(claims["aud"], "https://api.test.entur.io");
    assert_eq!(claims[ORGANISATION_CLAIM], 1);
    let iat = claims["iat"].as_u64().unwrap();
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp >= iat + 60 && exp <= iat + 61, "{claims}");
    assert_eq!(server.token_requests(), 1);
    assert_eq!(server.tokens_issued(), 1);
    let recorded = server.last_token_request().unwrap();
    assert_eq!(recorded.method, Method::POST);
    assert_eq!(recorded.uri.path(), "/oauth/token");
    assert!(!recorded.body.is_empty());

    let (status, _, json) = into_json(
        client
            .request(api_request(&server, "/departures?q=1", Some(&token)))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json,
        json!({ "ok": true, "path": "/api/departures", "jti": claims["jti"] })
    );
    assert_eq!(
        server.last_api_request().unwrap().headers[AUTHORIZATION],
        format!("Bearer {token}").as_str()
    );

    let (status, headers, _) = into_json(
        client
            .request(api_request(&server, "", None))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[http::header::WWW_AUTHENTICATE], "Bearer");
    let (status, headers, _) = into_json(
        client
            .request(api_request(&server, "/x", Some("nope")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers[http::header::WWW_AUTHENTICATE],
        r#"Bearer error="invalid_token""#
    );
    assert_eq!(server.api_requests(), 3);
    assert_eq!(server.api_rejections(), 2);

    let response = client
        .request(
            Request::get(format!("http://{}/apix", server.addr()))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(server.api_requests(), 3);
}

#[tokio::test]
async fn tcp_form_with_basic_auth_and_special_secret() {
    let server = TestServer::builder()
        .client_id("my client")
        .client_secret("p+ss:wörd")
        .start()
        .await
        .unwrap();
    let client = tcp_client();
    let body = format!(
        "grant_type=client_credentials&audience={}&scope=read+write&extra=1",
        form_urlencoded::byte_serialize(server.audience().as_bytes()).collect::<String>()
    );
    let mut request = form_request(
        &server.token_url(),
        "application/x-www-form-urlencoded; charset=UTF-8",
        &body,
    );
    request.headers_mut().insert(
        AUTHORIZATION,
        basic("my client", "p+ss:wörd").parse().unwrap(),
    );
    let (status, _, json) = into_json(client.request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["scope"], "read write");
    let claims = claims(json["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "my client@clients");
    assert_eq!(claims["scope"], "read write");

    // Unencoded '+' means a space: the secret no longer matches.
    let raw = format!("Basic {}", STANDARD.encode("my+client:p+ss:wörd"));
    let mut request = form_request(
        &server.token_url(),
        "application/x-www-form-urlencoded",
        "grant_type=client_credentials",
    );
    request
        .headers_mut()
        .insert(AUTHORIZATION, raw.parse().unwrap());
    let (status, headers, json) = into_json(client.request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json["error"], "invalid_client");
    assert!(headers[http::header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .starts_with("Basic"));

    // Credentials both in the header and in the body.
    let mut request = form_request(
        &server.token_url(),
        "application/x-www-form-urlencoded",
        "grant_type=client_credentials&client_id=my+client&client_secret=x",
    );
    request.headers_mut().insert(
        AUTHORIZATION,
        basic("my client", "p+ss:wörd").parse().unwrap(),
    );
    let (status, _, json) = into_json(client.request(request).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"], "invalid_request");
    assert_eq!(server.tokens_issued(), 1);
    assert_eq!(server.token_requests(), 3);
}

#[tokio::test]
async fn tcp_wrong_secret_is_invalid_client() {
    let server = TestServer::start().await.unwrap();
    let body = "grant_type=client_credentials&client_id=test-client&client_secret=wrong-secret";
    let request = form_request(
        &server.token_url(),
        "application/x-www-form-urlencoded",
        body,
    );
    let response = tcp_client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_eq!(parts.headers[CONTENT_TYPE], "application/json");
    assert_eq!(parts.headers[CACHE_CONTROL], "no-store");
    let json: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["error"], "invalid_client");
    assert!(!text.contains("wrong-secret") && !text.contains("test-secret"));
    assert!(!parts.headers.contains_key(http::header::WWW_AUTHENTICATE));
    assert_eq!(server.tokens_issued(), 0);
    assert_eq!(server.token_requests(), 1);
}

#[tokio::test]
async fn token_endpoint_errors() {
    let server = TestServer::start().await.unwrap();
    let url = server.token_url();
    let mut transport = server.token_transport();
    let form = "application/x-www-form-urlencoded";
    let ok = "grant_type=client_credentials&client_id=test-client&client_secret=test-secret";
    let cases: Vec<(Request<Full<Bytes>>, StatusCode, &str)> = vec![
        (
            Request::get(&url).body(Full::default()).unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
        ),
        (
            form_request(&url, "text/plain", ok),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            form_request(&url, "application/json", "{not json"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            form_request(&url, form, &format!("{ok}&client_id=test-client")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            form_request(
                &url,
                form,
                "client_id=test-client&client_secret=test-secret",
            ),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            form_request(&url, form, &ok.replace("client_credentials", "password")),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            form_request(&url, form, &ok.replace("test-client", "other")),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            form_request(&url, form, "grant_type=client_credentials"),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            form_request(&url, form, &format!("{ok}&audience=https%3A%2F%2Fother")),
            StatusCode::FORBIDDEN,
            "access_denied",
        ),
    ];
    for (index, (request, status, error)) in cases.into_iter().enumerate() {
        let (got, headers, json) = in_process(&mut transport, request).await;
        assert_eq!((index, got), (index, status), "{json}");
        assert_eq!(json["error"], error, "case {index}");
        assert!(json["error_description"].is_string());
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert!(!json.to_string().contains("test-secret"));
    }
    assert_eq!(server.token_requests(), 9);
    assert_eq!(server.tokens_issued(), 0);

    let (status, _, _) = in_process(&mut transport, form_request(&url, "Application/JSON ; charset=utf-8", r#"{"grant_type":"client_credentials","client_id":"test-client","client_secret":"test-secret","audience":"https://api.test.entur.io","other":[1]}"#)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = in_process(&mut transport, form_request("/nowhere", form, ok)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(start_paused = true)]
async fn token_expires_after_its_lifetime() {
    let server = TestServer::builder()
        .token_lifetime(Duration::from_millis(30_500))
        .start()
        .await
        .unwrap();
    let (_, _, json) = in_process(&mut server.token_transport(), json_request(&server)).await;
    assert_eq!(json["expires_in"], 31);
    let token = json["access_token"].as_str().unwrap().to_owned();
    let claims = claims(&token);
    assert!(claims["exp"].as_u64().unwrap() >= claims["iat"].as_u64().unwrap() + 31);
    let mut api = server.api_service();

    tokio::time::advance(Duration::from_secs(30)).await;
    let (status, _, _) = in_process(&mut api, api_request(&server, "", Some(&token))).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::advance(Duration::from_millis(500)).await;
    let (status, headers, _) = in_process(&mut api, api_request(&server, "", Some(&token))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers[http::header::WWW_AUTHENTICATE],
        r#"Bearer error="invalid_token""#
    );
    assert_eq!(server.api_rejections(), 1);

    server.set_token_lifetime(Duration::from_millis(10));
    let (_, _, json) = in_process(&mut server.token_transport(), json_request(&server)).await;
    assert_eq!(json["expires_in"], 1);
    server.set_token_lifetime(Duration::ZERO);
    let token = get_token(&server).await;
    let (status, _, _) = in_process(&mut api, api_request(&server, "", Some(&token))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(start_paused = true)]
async fn revoke_all_rejects_earlier_tokens() {
    let server = TestServer::start().await.unwrap();
    let first = get_token(&server).await;
    let second = get_token(&server).await;
    assert_ne!(first, second);
    assert_ne!(claims(&first)["jti"], claims(&second)["jti"]);
    server.revoke_all();
    let mut api = server.api_service();
    for token in [&first, &second] {
        let (status, _, _) = in_process(&mut api, api_request(&server, "/a", Some(token))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let third = get_token(&server).await;
    let (status, _, json) = in_process(&mut api, api_request(&server, "/a", Some(&third))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["jti"], claims(&third)["jti"]);
    assert_eq!((server.api_requests(), server.api_rejections()), (3, 2));
}

#[tokio::test(start_paused = true)]
async fn faults_are_applied_in_order() {
    let server = TestServer::start().await.unwrap();
    let mut transport = server.token_transport();
    server.set_sticky_fault(Some(Fault::status(StatusCode::INTERNAL_SERVER_ERROR)));
    server.push_fault(Fault::Status {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: "busy".into(),
        retry_after: Some("7".into()),
    });
    server.push_fault(Fault::oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"));
    server.push_fault(Fault::Respond {
        status: StatusCode::OK,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-a".into(), "b".into()),
        ],
        body: Bytes::from_static(b"{\"access_token\": 12"),
    });

    let response = transport.call(json_request(&server)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[http::header::RETRY_AFTER], "7");
    assert_eq!(
        response.headers()[CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "busy"
    );

    let (status, headers, json) = in_process(&mut transport, json_request(&server)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"], "invalid_grant");
    assert_eq!(headers[CONTENT_TYPE], "application/json");

    let response = transport.call(json_request(&server)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-a"], "b");
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "{\"access_token\": 12"
    );

    for _ in 0..2 {
        let response = transport.call(json_request(&server)).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    server.set_sticky_fault(None);
    let (status, _, _) = in_process(&mut transport, json_request(&server)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.token_requests(), 6);
    assert_eq!(server.tokens_issued(), 1);

    server.push_fault(Fault::Delay(Duration::from_secs(5)));
    let start = tokio::time::Instant::now();
    let (status, _, _) = in_process(&mut transport, json_request(&server)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_secs(5));
    assert_eq!((server.token_requests(), server.tokens_issued()), (7, 2));
}

#[tokio::test(start_paused = true)]
async fn refuse_and_hang_in_process() {
    let server = TestServer::start().await.unwrap();
    let mut transport = server.token_transport();
    server.push_fault(Fault::Refuse);
    let error = transport.call(json_request(&server)).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);

    server.push_fault(Fault::Hang);
    let pending = tokio::time::timeout(
        Duration::from_secs(3600),
        transport.call(json_request(&server)),
    )
    .await;
    assert!(pending.is_err(), "a hanging request must stay pending");
    assert_eq!((server.token_requests(), server.tokens_issued()), (2, 0));

    // The API service never fails, even when sent to a refusing token endpoint.
    server.push_fault(Fault::Refuse);
    let response = server
        .api_service()
        .call(json_request(&server))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let _ = get_token(&server).await;
}

#[tokio::test(start_paused = true)]
async fn trickle_in_process() {
    let server = TestServer::start().await.unwrap();
    server.push_fault(Fault::Trickle {
        interval: Duration::from_millis(100),
    });
    let start = tokio::time::Instant::now();
    let response = server
        .token_transport()
        .call(json_request(&server))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let total = body.size_hint().exact().unwrap() as usize;
    let mut collected = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        assert_eq!(data.len(), 1);
        collected.extend_from_slice(&data);
    }
    assert_eq!(collected.len(), total);
    assert_eq!(start.elapsed(), Duration::from_millis(100) * total as u32);
    let json: Value = serde_json::from_slice(&collected).unwrap();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(server.tokens_issued(), 1);
}

#[tokio::test]
async fn tcp_faults() {
    let server = TestServer::start().await.unwrap();
    let client = tcp_client();

    server.push_fault(Fault::Refuse);
    assert!(tcp_client().request(json_request(&server)).await.is_err());

    server.push_fault(Fault::Hang);
    let hang = tokio::time::timeout(
        Duration::from_millis(200),
        tcp_client().request(json_request(&server)),
    )
    .await;
    assert!(hang.is_err());

    server.push_fault(Fault::Trickle {
        interval: Duration::from_millis(1),
    });
    let start = std::time::Instant::now();
    let (status, _, json) = into_json(client.request(json_request(&server)).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let len = json.to_string().len();
    assert!(
        start.elapsed() >= Duration::from_millis(len as u64),
        "{:?}",
        start.elapsed()
    );
    assert_eq!((server.token_requests(), server.tokens_issued()), (3, 1));
}

#[tokio::test]
async fn dropping_the_server_stops_it() {
    let server = TestServer::start().await.unwrap();
    let addr = server.addr();
    let clone = server.clone();
    drop(server);
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());

    // A connection kept open by a hanging request is closed too.
    clone.push_fault(Fault::Hang);
    let transport = clone.token_transport();
    let request = json_request(&clone);
    let pending = tokio::spawn(tcp_client().request(request));
    while clone.token_requests() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(clone);
    let result = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_err());
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "the listener must be closed");

    // In-process access keeps working.
    let mut transport = transport;
    let body = r#"{"grant_type":"client_credentials","client_id":"test-client","client_secret":"test-secret","audience":"https://api.test.entur.io"}"#;
    let (status, _, _) = in_process(
        &mut transport,
        form_request("/oauth/token", "application/json", body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn debug_hides_secrets() {
    let server = TestServer::builder()
        .client_secret("s3cr3t-value")
        .start()
        .await
        .unwrap();
    let token = get_token(&server).await;
    let debug = format!(
        "{server:?} {:?} {:?} {:?}",
        TestServer::builder().client_secret("s3cr3t-value"),
        server.token_transport(),
        server.api_service()
    );
    assert!(!debug.contains("s3cr3t-value"), "{debug}");
    assert!(!debug.contains(&token));
    assert!(debug.contains("tokens_issued: 1"));
}

/// `(iat, exp)` of a token, and the `Date` of its response, in seconds since the epoch.
fn issuer_times(headers: &HeaderMap, json: &Value) -> (u64, u64, u64) {
    let claims = claims(json["access_token"].as_str().unwrap());
    let date = headers[http::header::DATE].to_str().unwrap();
    let date = httpdate::parse_http_date(date)
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
        date,
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(start_paused = true)]
async fn issuer_clock_offset_moves_iat_exp_and_date_only() {
    for offset in [-7200i64, 0, 7200] {
        let server = TestServer::builder()
            .token_lifetime(Duration::from_secs(3600))
            .issuer_clock_offset_secs(offset)
            .start()
            .await
            .unwrap();
        let before = unix_now().saturating_add_signed(offset);
        let (status, headers, json) =
            in_process(&mut server.token_transport(), json_request(&server)).await;
        let after = unix_now().saturating_add_signed(offset);
        assert_eq!(status, StatusCode::OK, "{json}");
        let (iat, exp, date) = issuer_times(&headers, &json);
        assert!(
            (before..=after).contains(&iat),
            "offset {offset}: iat {iat}"
        );
        assert!(
            (before..=after).contains(&date),
            "offset {offset}: date {date}"
        );
        assert!(exp == iat + 3600 || exp == iat + 3601, "{exp} {iat}");
        // Relative and monotonic: unchanged.
        assert_eq!(json["expires_in"], 3600);
        let token = json["access_token"].as_str().unwrap().to_owned();
        let mut api = server.api_service();
        tokio::time::advance(Duration::from_secs(3599)).await;
        let (status, _, _) = in_process(&mut api, api_request(&server, "", Some(&token))).await;
        assert_eq!(status, StatusCode::OK);
        tokio::time::advance(Duration::from_secs(1)).await;
        let (status, _, _) = in_process(&mut api, api_request(&server, "", Some(&token))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // OAuth errors and injected statuses carry the server's Date too.
        server.push_fault(Fault::status(StatusCode::SERVICE_UNAVAILABLE));
        let (_, headers, _) =
            in_process(&mut server.token_transport(), json_request(&server)).await;
        let date = headers[http::header::DATE].to_str().unwrap();
        let date = httpdate::parse_http_date(date).unwrap();
        let skew = date.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 - unix_now() as i64;
        assert!((skew - offset).abs() <= 1, "offset {offset}: {skew}");
    }
}

#[tokio::test]
async fn issuer_clock_offset_reaches_tcp_clients_and_is_kept_in_range() {
    let server = TestServer::builder()
        .issuer_clock_offset_secs(-3600)
        .start()
        .await
        .unwrap();
    let response = tcp_client().request(json_request(&server)).await.unwrap();
    let (status, headers, json) = into_json(response).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(headers.get_all(http::header::DATE).iter().count(), 1);
    let (iat, _, date) = issuer_times(&headers, &json);
    let expect = unix_now() - 3600;
    assert!(iat.abs_diff(expect) <= 1 && date.abs_diff(expect) <= 1);

    // Far beyond what an HTTP date can say: clamped, never a panic.
    for offset in [i64::MIN, i64::MAX] {
        let server = TestServer::builder()
            .issuer_clock_offset_secs(offset)
            .start()
            .await
            .unwrap();
        let (status, headers, json) =
            in_process(&mut server.token_transport(), json_request(&server)).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        let (iat, _, date) = issuer_times(&headers, &json);
        let expect = if offset < 0 { 0 } else { 253_402_300_799 };
        assert_eq!((iat, date), (expect, expect));
    }
}

fn recorded(path: &str) -> RecordedRequest {
    RecordedRequest {
        method: Method::GET,
        uri: path.parse().unwrap(),
        headers: HeaderMap::new(),
        body: Bytes::new(),
    }
}

#[test]
fn request_log_is_a_ring_buffer() {
    let mut log = log::RequestLog::new(2);
    let seqs: Vec<u64> = (0..3)
        .map(|index| log.push(RequestKind::Api, recorded(&format!("/{index}")), None))
        .collect();
    assert_eq!(seqs, [0, 1, 2]);
    assert_eq!(log.dropped(), 1);
    let sent = Answer::Sent {
        status: StatusCode::OK,
        error: None,
        grpc_status: None,
        injected: false,
        at: tokio::time::Instant::now(),
    };
    // Answers find their entry by number; an evicted one is ignored.
    log.answered(0, sent.clone(), Some("x".into()));
    log.answered(2, sent.clone(), Some("7".into()));
    let entries = log.entries(None);
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(entries[0].answer, Answer::Pending);
    assert_eq!((&entries[1].answer, entries[1].jti()), (&sent, Some("7")));
    assert!(log.entries(Some(RequestKind::Token)).is_empty());
    log.clear();
    log.answered(2, Answer::Refused, None);
    assert!(log.entries(None).is_empty());
    assert_eq!(log.push(RequestKind::Token, recorded("/t"), None), 3);

    let mut none = log::RequestLog::new(0);
    none.push(RequestKind::Api, recorded("/"), None);
    none.answered(0, Answer::Refused, None);
    assert!(none.entries(None).is_empty());
    assert_eq!(none.dropped(), 1);
}

#[test]
fn grpc_messages_are_percent_encoded() {
    assert_eq!(fault::grpc_message("plain text"), "plain text");
    assert_eq!(fault::grpc_message("100%\nø"), "100%25%0A%C3%B8");
}

#[test]
fn the_log_reads_the_error_of_an_answer() {
    let with_challenge = |value: &'static str, body: &str| {
        let mut response = Response::new(TestBody::full(body.to_owned()));
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(value));
        match log::summarize(&response, false) {
            Answer::Sent { error, .. } => error,
            other => panic!("{other:?}"),
        }
    };
    let body = r#"{"error":"from_body"}"#;
    assert_eq!(
        with_challenge(r#"Bearer error="invalid_token""#, body).as_deref(),
        Some("invalid_token")
    );
    assert_eq!(
        with_challenge(
            r#"Bearer error_description="no error=here", error=insufficient_scope"#,
            body
        )
        .as_deref(),
        Some("insufficient_scope")
    );
    assert_eq!(with_challenge("Bearer", body).as_deref(), Some("from_body"));
    assert_eq!(with_challenge("Bearer", "not json"), None);
}
