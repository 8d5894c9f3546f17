//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use entur_auth::{BoxError, EnturAuth, EnturAuthLayer, TokenSource};
use entur_auth_test::TestServer;
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
pub fn client(server: &TestServer, source: &TokenSource) -> EnturAuth<entur_auth_test::ApiService> {
    EnturAuthLayer::new(source.clone()).layer(server.api_service())
}

/// Sends one request and reads the answer's body to its end, as a client does (the end of
/// a success is what accepts a token on probation); returns the status, or the error.
pub async fn send<S, B>(svc: &mut S, request: Request<Body>) -> Result<http::StatusCode, BoxError>
where
    S: Service<Request<Body>, Response = http::Response<B>, Error = BoxError>,
    B: http_body::Body,
{
    let response = svc.ready().await?.call(request).await?;
    let status = response.status();
    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
    Ok(status)
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

/// A user's own `tower::retry` policy around the auth layer: one more attempt after a 401
/// (an answer, or `ErrorForStatus`'s error), knowing nothing of tokens. The auth layer
/// inside drops the refused token whatever the policy does; each attempt reads the token
/// afresh.
#[derive(Clone, Debug, Default)]
pub struct RetryOnce401 {
    retried: bool,
}

impl<B, R> tower::retry::Policy<Request<B>, http::Response<R>, BoxError> for RetryOnce401
where
    B: entur_auth::replay::ReplayBody,
{
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<http::Response<R>, BoxError>,
    ) -> Option<Self::Future> {
        let refused = match result {
            Ok(response) => response.status() == http::StatusCode::UNAUTHORIZED,
            Err(error) => error
                .downcast_ref::<entur_auth::error_for_status::Refused>()
                .is_some_and(|e| {
                    e.kind() == entur_auth::error_for_status::RefusedKind::Unauthorized
                }),
        };
        if !refused || self.retried {
            return None;
        }
        self.retried = true;
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        let body = request.body().try_clone()?;
        let mut clone = Request::new(body);
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.headers_mut() = request.headers().clone();
        Some(clone)
    }
}
