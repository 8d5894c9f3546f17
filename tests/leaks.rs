//! No secret and no token ever appears in logs (captured at TRACE level), in any `Debug` or
//! `Display`, or in any error chain — through refreshes, re-authentication, transient failures
//! and rejected credentials.

mod common;
#[path = "common/logs.rs"]
mod logs;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use entur_auth::error_for_status::ErrorForStatusLayer;
use entur_auth::{BoxError, EnturAuthLayer};
use entur_auth_test::{Fault, TestServer};
use http::StatusCode;
use logs::capture_trace;
use tower::ServiceBuilder;

const SECRET: &str = "SECRET-4c1d-marker-9f";

fn chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![error.to_string(), format!("{error:?}")];
    let mut next = error.source();
    while let Some(e) = next {
        out.push(e.to_string());
        out.push(format!("{e:?}"));
        next = e.source();
    }
    out
}

#[tokio::test(start_paused = true)]
async fn secrets_and_tokens_never_leak() {
    let (capture, _guard) = capture_trace();

    let server = TestServer::builder()
        .client_secret(SECRET)
        .token_lifetime(Duration::from_secs(20))
        .start()
        .await
        .unwrap();
    let tokens = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = tokens.clone();
    let source = server
        .source_builder()
        .on_fetch(move |outcome| {
            if let Ok(token) = outcome.result {
                let value = token.header_value().to_str().unwrap();
                seen.lock()
                    .unwrap()
                    .push(value["Bearer ".len()..].to_owned());
            }
        })
        .build()
        .unwrap();
    let mut api = ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .retry(RetryOnce401::default())
        .layer(EnturAuthLayer::new(source.clone()))
        .service(server.api_service());
    let mut texts: Vec<String> = Vec::new();
    let mut errors: Vec<BoxError> = Vec::new();

    // Steady traffic over three lifetimes: fetch and refreshes.
    for _ in 0..60 {
        assert_eq!(
            send(&mut api, api_request(&server, "/a")).await.unwrap(),
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Revocation: a 401, a re-authentication, a replay.
    server.revoke_all();
    assert_eq!(
        send(&mut api, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
    texts.push(format!("{:?}", source.status()));

    // Transient failures, then rejected credentials echoing the secret, past expiry.
    server.set_sticky_fault(Some(Fault::status(StatusCode::BAD_GATEWAY)));
    tokio::time::sleep(Duration::from_secs(25)).await;
    errors.extend(send(&mut api, api_request(&server, "/a")).await.err());
    server.set_sticky_fault(Some(Fault::Status {
        status: StatusCode::UNAUTHORIZED,
        body: format!(
            r#"{{"error":"unauthorized_client","error_description":"secret {SECRET} was changed"}}"#
        ),
        retry_after: None,
    }));
    tokio::time::sleep(Duration::from_secs(40)).await;
    errors.extend(send(&mut api, api_request(&server, "/a")).await.err());
    texts.push(format!("{:?}", source.status()));
    server.set_sticky_fault(None);
    tokio::time::sleep(Duration::from_secs(700)).await;
    assert_eq!(
        send(&mut api, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );

    let tokens = tokens.lock().unwrap().clone();
    assert!(
        tokens.len() >= 4,
        "fetches, refreshes and a re-auth: {}",
        tokens.len()
    );
    assert_eq!(errors.len(), 2);
    for error in &errors {
        texts.extend(chain(error.as_ref()));
    }
    assert!(texts.iter().any(|t| t.contains("unauthorized_client")));
    texts.extend([
        format!("{source:?}"),
        format!("{:?}", source.current()),
        format!("{api:?}").chars().take(10_000).collect(),
        format!("{:?}", server.credentials()),
        format!("{:?}", server.source_builder()),
    ]);

    let logs = capture.text();
    assert!(logs.contains("access token fetched"), "capture works");
    assert!(logs.contains("access token fetch failed"));
    assert!(logs.contains("token refused by the API"));
    texts.push(logs);
    for text in &texts {
        assert!(!text.contains(SECRET), "secret leaked in: {text}");
        for token in &tokens {
            assert!(!text.contains(token.as_str()), "token leaked in: {text}");
            // Not even the JWT payload or signature on their own.
            for part in token.split('.').skip(1) {
                assert!(!text.contains(part), "token part leaked in: {text}");
            }
        }
    }
}

const RSA_KEY: &str = include_str!("fixtures/test-only-client-rsa.key.pem");
const RSA_PUB: &str = include_str!("fixtures/test-only-client-rsa.pub.pem");

/// No private key material and no assertion (nor its signature) appears in logs at TRACE
/// level, in `Debug`, or in errors: through fetches, refreshes, refused assertions and a
/// server that echoes what it was sent.
#[tokio::test(start_paused = true)]
async fn private_keys_and_assertions_never_leak() {
    use entur_auth::assertion::PrivateKey;
    use entur_auth::{Credentials, TokenSource};

    let (capture, _guard) = capture_trace();

    let server = TestServer::builder()
        .client_public_key_pem(RSA_PUB)
        .token_lifetime(Duration::from_secs(20))
        .start()
        .await
        .unwrap();
    let key = || {
        PrivateKey::from_pem(RSA_KEY.as_bytes())
            .unwrap()
            .key_id("k1")
    };
    let builder = |endpoint: entur_auth::TokenEndpoint| {
        TokenSource::builder(
            endpoint,
            Credentials::private_key_jwt(server.client_id(), key()),
        )
        .allow_http_loopback(true)
        .transport(server.token_transport())
    };
    let mut texts = vec![
        format!("{:?}", key()),
        format!("{:?}", Credentials::private_key_jwt("c", key())),
        format!("{:?}", Credentials::jwt_bearer("c", key())),
        format!("{:?}", builder(server.endpoint())),
        format!(
            "{:?}",
            builder(server.endpoint())
                .client_certificate_pem(RSA_PUB.as_bytes(), RSA_KEY.as_bytes())
        ),
    ];
    let source = builder(server.endpoint()).build().unwrap();
    let mut api = ServiceBuilder::new()
        .layer(EnturAuthLayer::new(source.clone()))
        .service(server.api_service());
    for _ in 0..50 {
        assert_eq!(
            send(&mut api, api_request(&server, "/a")).await.unwrap(),
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Refused assertions: another audience; and a server that echoes the request body.
    let refused = builder(server.endpoint().assertion_audience("https://elsewhere"))
        .build()
        .unwrap();
    let error = refused.prefetch().await.unwrap_err();
    texts.extend(chain(&error));
    server.push_fault(Fault::Status {
        status: StatusCode::BAD_REQUEST,
        body: r#"{"error":"invalid_client","error_description":"ECHO"}"#.to_owned(),
        retry_after: None,
    });
    server.revoke_all();
    if let Err(error) = send(&mut api, api_request(&server, "/a")).await {
        texts.extend(chain(error.as_ref()));
    }
    tokio::time::sleep(Duration::from_secs(40)).await;
    texts.push(format!("{:?}", source.status()));
    texts.push(format!("{source:?}"));

    let assertions: Vec<String> = server
        .token_requests_log()
        .iter()
        .filter_map(|entry| {
            let params: serde_json::Value = serde_json::from_slice(&entry.request.body).ok()?;
            params["client_assertion"].as_str().map(str::to_owned)
        })
        .collect();
    assert!(assertions.len() >= 3, "{}", assertions.len());
    let logs = capture.text();
    assert!(logs.contains("access token fetched"), "capture works");
    assert!(logs.contains("access token fetch failed"));
    texts.push(logs);
    let key_lines: Vec<&str> = RSA_KEY
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() > 16)
        .collect();
    for text in &texts {
        assert!(!text.contains("PRIVATE KEY"), "key leaked in: {text}");
        for line in &key_lines {
            assert!(!text.contains(line), "key material leaked in: {text}");
        }
        for assertion in &assertions {
            assert!(
                !text.contains(assertion.as_str()),
                "assertion leaked in: {text}"
            );
            let signature = assertion.rsplit('.').next().unwrap();
            assert!(
                !text.contains(signature),
                "assertion signature leaked in: {text}"
            );
        }
    }
}

/// A server that echoes the assertion it was sent in its error: the error shows
/// `[redacted]` in its place.
#[tokio::test]
async fn an_echoed_assertion_is_redacted_from_the_error() {
    use entur_auth::assertion::PrivateKey;
    use entur_auth::{Credentials, TokenEndpoint, TokenRequestBody, TokenSource};
    use http_body_util::{BodyExt, Full};

    let echoed = Arc::new(Mutex::new(String::new()));
    let seen = echoed.clone();
    let transport = tower::service_fn(move |request: http::Request<TokenRequestBody>| {
        let seen = seen.clone();
        async move {
            let body = request.into_body().collect().await?.to_bytes();
            let assertion = form_urlencoded::parse(&body)
                .find(|(name, _)| name == "client_assertion")
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default();
            *seen.lock().unwrap() = assertion.clone();
            let answer = serde_json::json!({
                "error": "invalid_client",
                "error_description": format!("assertion {assertion} has a bad signature"),
            });
            Ok::<_, BoxError>(
                http::Response::builder()
                    .status(401)
                    .header("content-type", "application/json")
                    .body(Full::new(bytes::Bytes::from(answer.to_string())))
                    .unwrap(),
            )
        }
    });
    let key = PrivateKey::from_pem(RSA_KEY.as_bytes()).unwrap();
    let source = TokenSource::builder(
        TokenEndpoint::new("https://auth.example/token").unwrap(),
        Credentials::private_key_jwt("c", key),
    )
    .transport(transport)
    .build()
    .unwrap();
    let error = source.prefetch().await.unwrap_err();
    let assertion = echoed.lock().unwrap().clone();
    assert!(assertion.len() > 100, "the server saw the assertion");
    let texts = chain(&error);
    assert!(texts[0].contains("has a bad signature"), "{}", texts[0]);
    assert!(texts[0].contains("[redacted]"), "{}", texts[0]);
    for text in texts {
        assert!(!text.contains(&assertion), "assertion leaked in: {text}");
    }
}
