//! The layer's contract: headers, readiness, the exact token requests, and no leaks.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use entur_auth::Invalidation;
use entur_auth::{
    BodyEncoding, ClientAuth, ClientName, Credentials, EnturAuth, EnturAuthLayer, Environment,
    Error, TokenEndpoint, TokenSource, ET_CLIENT_NAME,
};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

/// A transport that records token requests and answers with a fixed token.
fn canned_transport(
    seen: Arc<Mutex<Vec<Request<Bytes>>>>,
) -> impl Service<
    Request<entur_auth::TokenRequestBody>,
    Response = Response<http_body_util::Full<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(move |req: Request<entur_auth::TokenRequestBody>| {
        let seen = seen.clone();
        async move {
            use http_body_util::BodyExt;
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push(Request::from_parts(parts, body));
            let answer =
                r#"{"access_token":"abc.def.ghi","token_type":"Bearer","expires_in":86400}"#;
            Ok(Response::new(http_body_util::Full::new(Bytes::from(
                answer,
            ))))
        }
    })
}

#[tokio::test]
async fn entur_dev_preset_sends_exactly_the_documented_request() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let source = TokenSource::builder(
        TokenEndpoint::entur(Environment::Dev),
        Credentials::new("Q2xpZW50X0lE", "super-secret"),
    )
    .transport(canned_transport(seen.clone()))
    .build()
    .unwrap();
    source.prefetch().await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(req.uri(), "https://partner.dev.entur.org/oauth/token");
    assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
    assert!(req.headers().get(AUTHORIZATION).is_none());
    let body: serde_json::Value = serde_json::from_slice(req.body()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": "Q2xpZW50X0lE",
            "client_secret": "super-secret",
            "audience": "https://api.dev.entur.io",
        })
    );
}

#[tokio::test(start_paused = true)]
async fn form_body_and_basic_auth_are_accepted_by_a_standard_server() {
    let secret = "p+ss:wörd";
    let server = entur_auth_test::TestServer::builder()
        .client_secret(secret)
        .start()
        .await
        .unwrap();
    for (encoding, auth) in [
        (BodyEncoding::Form, ClientAuth::Body),
        (BodyEncoding::Form, ClientAuth::Basic),
        (BodyEncoding::Json, ClientAuth::Basic),
    ] {
        let endpoint = server.endpoint().encoding(encoding).client_auth(auth);
        let source = TokenSource::builder(endpoint, server.credentials())
            .allow_http_loopback(true)
            .transport(server.token_transport())
            .build()
            .unwrap();
        source
            .prefetch()
            .await
            .unwrap_or_else(|e| panic!("{encoding:?}/{auth:?}: {e}"));
        let req = server.last_token_request().unwrap();
        let expected_type = match encoding {
            BodyEncoding::Form => "application/x-www-form-urlencoded",
            BodyEncoding::Json => "application/json",
        };
        assert_eq!(req.headers[CONTENT_TYPE], expected_type);
        let body = String::from_utf8(req.body.to_vec()).unwrap();
        match auth {
            ClientAuth::Basic => {
                // base64("test-client:p%2Bss%3Aw%C3%B6rd")
                assert_eq!(
                    req.headers[AUTHORIZATION],
                    "Basic dGVzdC1jbGllbnQ6cCUyQnNzJTNBdyVDMyVCNnJk"
                );
                assert!(!body.contains("client_secret"), "{body}");
            }
            ClientAuth::Body => {
                assert!(body.contains("client_secret=p%2Bss%3Aw%C3%B6rd"), "{body}");
                assert!(req.headers.get(AUTHORIZATION).is_none());
            }
            other => unreachable!("{other:?} is not in this test"),
        }
        assert!(body.contains("audience"), "audience sent: {body}");
    }
}

#[tokio::test(start_paused = true)]
async fn every_request_carries_the_bearer_and_the_client_name() {
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    let mut svc = EnturAuthLayer::new(source.clone())
        .client_name(ClientName::new("acme-ticketing").unwrap())
        .layer(server.api_service());
    for path in ["/a", "/b"] {
        let mut req = api_request(&server, path);
        // A stale Authorization header from the caller is replaced, not duplicated.
        req.headers_mut()
            .insert(AUTHORIZATION, "Bearer stale".parse().unwrap());
        assert_eq!(send(&mut svc, req).await.unwrap(), StatusCode::OK);
        let seen = server.last_api_request().unwrap();
        assert_eq!(seen.headers.get_all(AUTHORIZATION).iter().count(), 1);
        assert_eq!(
            seen.headers[AUTHORIZATION],
            source.current().unwrap().header_value()
        );
        assert_eq!(seen.headers[ET_CLIENT_NAME], "acme-ticketing");
    }
}

#[tokio::test(start_paused = true)]
async fn readiness_passes_through_and_only_the_ready_service_is_called() {
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<()>>();
    let mut svc = EnturAuth::new(mock, source.clone());

    // Not ready while the inner service is not ready.
    handle.allow(0);
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(svc.poll_ready(&mut cx).is_pending());

    // Cold start: the request waits for the token, then goes to the service that was
    // polled ready (tower-test panics if an unready clone is called).
    handle.allow(1);
    assert!(svc.poll_ready(&mut cx).is_ready());
    let fut = svc.call(api_request(&server, "/cold"));
    assert!(fut.token_id().is_none(), "no token yet: the future waits");
    let respond = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert!(req.headers()[AUTHORIZATION]
            .as_bytes()
            .starts_with(b"Bearer "));
        send.send_response(Response::new(()));
        handle
    });
    fut.await.unwrap();
    let mut handle = respond.await.unwrap();

    // Warm: the token is set synchronously in `call`.
    handle.allow(1);
    svc.ready().await.unwrap();
    let fut = svc.call(api_request(&server, "/warm"));
    assert!(fut.token_id().is_some());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(()));
    fut.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_unchanged() {
    let server = server(Duration::from_secs(3600)).await;
    let source = source(&server);
    let failing = tower::service_fn(|_req: Request<Body>| async {
        Err::<Response<()>, _>(std::io::Error::other("inner went away"))
    });
    let svc = EnturAuth::new(failing, source);
    let error = svc.oneshot(api_request(&server, "/a")).await.unwrap_err();
    assert!(error.downcast_ref::<std::io::Error>().is_some());
    assert!(error.downcast_ref::<Error>().is_none());
}

#[tokio::test(start_paused = true)]
async fn no_debug_or_display_output_contains_the_secret_or_a_token() {
    let secret = "SECRET-MARKER-4f1c";
    let server = entur_auth_test::TestServer::builder()
        .client_secret(secret)
        .start()
        .await
        .unwrap();
    let builder = server.source_builder();
    let mut outputs = vec![format!("{builder:?}"), format!("{server:?}")];
    let source = builder.build().unwrap();
    let layer =
        EnturAuthLayer::new(source.clone()).client_name(ClientName::new("acme-app").unwrap());
    let mut svc = layer.layer(server.api_service());
    send(&mut svc, api_request(&server, "/a")).await.unwrap();
    let token = source.current().unwrap();
    let bearer = server.last_api_request().unwrap().headers[AUTHORIZATION]
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned();
    assert!(bearer.len() > 20);

    // Errors, including a server that echoes the secret in its description.
    server.push_fault(entur_auth_test::Fault::Status {
        status: StatusCode::UNAUTHORIZED,
        body: format!(r#"{{"error":"invalid_client","error_description":"bad {secret}"}}"#),
        retry_after: None,
    });
    assert_eq!(source.invalidate(token.id()), Invalidation::Started);
    let error = source.token().await.unwrap_err();
    let boxed: entur_auth::BoxError = Box::new(error.clone());

    outputs.extend([
        format!("{:?}", server.credentials()),
        format!("{}", server.credentials().client_secret().unwrap()),
        format!("{:?}", server.endpoint()),
        format!("{source:?}"),
        format!("{layer:?}"),
        format!("{svc:?}"),
        format!("{token:?}"),
        format!("{:?}", token.header_value()),
        format!("{:?}", source.status()),
        format!("{error}"),
        format!("{error:?}"),
        format!("{boxed}"),
        format!("{boxed:?}"),
    ]);
    assert!(outputs.iter().any(|o| o.contains("invalid_client")));
    for output in outputs {
        assert!(!output.contains(secret), "secret leaked: {output}");
        assert!(!output.contains(&bearer), "token leaked: {output}");
    }
}
