//! In-process access to the server: [`TokenTransport`] and [`ApiService`].

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use http_body::Body;
use serde_json::json;

use crate::handler::{handle, no_store_json};
use crate::{BoxError, Shared, TestBody};

/// The future returned by [`TokenTransport`] and [`ApiService`].
pub type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response<TestBody>, E>> + Send>>;

/// In-process access to a [`TestServer`]'s token endpoint, made by
/// [`TestServer::token_transport`].
///
/// A [`tower_service::Service`] that runs the server's request handler
/// directly, without TCP; the request is routed by its URI's path only.
/// [`Fault::Refuse`] makes it fail with an [`io::Error`] of kind
/// [`io::ErrorKind::ConnectionRefused`]. It keeps working after the
/// [`TestServer`] has been dropped.
///
/// [`TestServer`]: crate::TestServer
/// [`TestServer::token_transport`]: crate::TestServer::token_transport
/// [`Fault::Refuse`]: crate::Fault::Refuse
#[derive(Clone)]
pub struct TokenTransport {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for TokenTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenTransport")
            .field("token_url", &self.shared.token_url)
            .finish()
    }
}

impl<B> tower_service::Service<Request<B>> for TokenTransport
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<TestBody>;
    type Error = io::Error;
    type Future = ResponseFuture<io::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(handle(self.shared.clone(), request))
    }
}

/// In-process access to a [`TestServer`]'s protected API, made by
/// [`TestServer::api_service`].
///
/// A [`tower_service::Service`] that runs the server's request handler
/// directly, without TCP; the request is routed by its URI's path only. It
/// never fails (should a request to the token endpoint meet
/// [`Fault::Refuse`], it is answered with `502 Bad Gateway`). It keeps
/// working after the [`TestServer`] has been dropped.
///
/// [`TestServer`]: crate::TestServer
/// [`TestServer::api_service`]: crate::TestServer::api_service
/// [`Fault::Refuse`]: crate::Fault::Refuse
#[derive(Clone)]
pub struct ApiService {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for ApiService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiService")
            .field("api_url", &self.shared.api_url)
            .finish()
    }
}

impl<B> tower_service::Service<Request<B>> for ApiService
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<TestBody>;
    type Error = Infallible;
    type Future = ResponseFuture<Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            Ok(handle(shared, request).await.unwrap_or_else(|error| {
                no_store_json(
                    StatusCode::BAD_GATEWAY,
                    json!({ "error": "bad_gateway", "error_description": error.to_string() }),
                )
            }))
        })
    }
}
