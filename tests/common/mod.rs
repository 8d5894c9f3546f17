//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use entur_auth::testing::TestServer;
use entur_auth::{BoxError, EnturAuth, EnturAuthLayer, TokenSource};
use http::Request;
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};

pub type Body = Full<Bytes>;

pub async fn server(lifetime: Duration) -> TestServer {
    TestServer::builder()
        .token_lifetime(lifetime)
        .start()
        .await
        .expect("embedded server starts on 127.0.0.1")
}

/// A source that reaches the embedded server in-process (no TCP), with a fixed jitter seed.
pub fn source(server: &TestServer) -> TokenSource {
    server
        .source_builder()
        .jitter_seed(7)
        .build()
        .expect("valid configuration")
}

pub fn api_request(server: &TestServer, path: &str) -> Request<Body> {
    Request::get(format!("{}{path}", server.api_url()))
        .body(Body::default())
        .unwrap()
}

/// The layer around the embedded API, in-process.
pub fn client(
    server: &TestServer,
    source: &TokenSource,
) -> EnturAuth<entur_auth::testing::ApiService> {
    EnturAuthLayer::new(source.clone()).layer(server.api_service())
}

/// Sends one request; returns the status, or the error.
pub async fn send<S>(svc: &mut S, request: Request<Body>) -> Result<http::StatusCode, BoxError>
where
    S: Service<Request<Body>, Error = BoxError>,
    S::Response: HasStatus,
{
    let response = svc.ready().await?.call(request).await?;
    Ok(response.status())
}

pub trait HasStatus {
    fn status(&self) -> http::StatusCode;
}

impl<B> HasStatus for http::Response<B> {
    fn status(&self) -> http::StatusCode {
        http::Response::status(self)
    }
}

/// Lets every task that can run, run, without moving a paused clock.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Waits until `svc` is ready, then calls it, returning the response future unpolled.
pub async fn call<S>(svc: &mut S, request: Request<Body>) -> S::Future
where
    S: Service<Request<Body>, Error = BoxError>,
{
    ServiceExt::<Request<Body>>::ready(svc)
        .await
        .unwrap()
        .call(request)
}
