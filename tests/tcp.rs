//! Over real sockets on 127.0.0.1 with the default token client and a hyper-util API client.

mod common;

use std::time::Duration;

use common::*;
use entur_auth::{EnturAuthLayer, TokenSource};
use http::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::ServiceBuilder;

#[tokio::test]
async fn plain_http_token_url_needs_the_loopback_opt_in() {
    let server = server(Duration::from_secs(60)).await;
    let error = TokenSource::builder(server.endpoint(), server.credentials())
        .build()
        .unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Config);
    assert!(
        error.report().to_string().contains("allow_http_loopback"),
        "{error}"
    );
}

#[tokio::test]
async fn default_client_fetches_and_refreshes_over_tcp() {
    // Real time, short tokens: 2 s lifetime, refresh at ~1.5 s, retired at 1.8 s.
    let server = server(Duration::from_secs(2)).await;
    let source = TokenSource::builder(server.endpoint(), server.credentials())
        .allow_http_loopback(true)
        .build()
        .unwrap();
    let http = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let mut api = ServiceBuilder::new()
        .layer(EnturAuthLayer::new(source.clone()))
        .service(http);
    let start = std::time::Instant::now();
    let mut requests = 0;
    while start.elapsed() < Duration::from_millis(3500) {
        let status = send(&mut api, api_request(&server, "/stops"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        requests += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(requests > 20);
    assert_eq!(server.api_rejections(), 0);
    let fetches = server.token_requests();
    assert!(
        (2..=4).contains(&fetches),
        "one fetch, then a refresh about every 1.5 s: {fetches}"
    );
}

#[tokio::test]
async fn unreachable_token_endpoint_is_a_transient_error() {
    // Bind a port, then free it: connecting to it is refused.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let endpoint =
        entur_auth::TokenEndpoint::new(&format!("http://127.0.0.1:{port}/oauth/token")).unwrap();
    let source = TokenSource::builder(endpoint, entur_auth::Credentials::new("id", "secret"))
        .allow_http_loopback(true)
        .build()
        .unwrap();
    let error = source.token().await.unwrap_err();
    assert!(
        (error.kind() == entur_auth::ErrorKind::Unavailable && error.status().is_none()),
        "{error:?}"
    );
    assert!(
        error.report().to_string().contains("unreachable"),
        "{error}"
    );
}
