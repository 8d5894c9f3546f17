//! Answers that mean "this will not work", as typed [`Error`]s instead of responses.
//!
//! | answer | error |
//! |---|---|
//! | a refusal of the token that reached it (401, gRPC `UNAUTHENTICATED`, an Entur 408) | [`Error::Unauthorized`], saying whether the token was dropped, whether forced refreshes back off, and whether the request was replayed |
//! | 403, gRPC `PERMISSION_DENIED`, 401 with `insufficient_scope` | [`Error::PermissionDenied`] |
//! | a redirect of a request sent over plain `http://` | [`Error::InsecureRedirect`], saying whether the token went with it |
//! | 405 | [`Error::MethodNotAllowed`] |
//!
//! Redirects of `https://` requests are the API's own business (a pre-signed download URL,
//! say) and pass through, as does everything else.
//!
//! Put it outside [`ReplayLayer`](crate::replay::ReplayLayer), so that a 401 becomes an
//! error only once the replay was refused too:
//!
//! ```no_run
//! # use entur_auth::{EnturAuthLayer, TokenSource, error_for_status::ErrorForStatusLayer};
//! # fn stack<S>(source: TokenSource, client: S) {
//! let api = tower::ServiceBuilder::new()
//!     .layer(ErrorForStatusLayer::new())
//!     .layer(EnturAuthLayer::new(source).with_replay())
//!     .service(client);
//! # let _ = api; }
//! ```
//!
//! Put it outside the replay, as above: inside, the replay would see an error instead of the
//! refused answer, and not replay.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::uri::Scheme;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{classify, Decision, Reauth};
use crate::error::{BoxError, Error};
use crate::layer::{Refusal, SentToken};

/// Turns refusals into typed [`Error`]s; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorForStatusLayer {
    _priv: (),
}

impl ErrorForStatusLayer {
    /// A layer that turns refusals into errors.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ErrorForStatusLayer {
    type Service = ErrorForStatus<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ErrorForStatus { inner }
    }
}

/// Turns refusals into typed errors; see [`ErrorForStatusLayer`].
#[derive(Clone, Debug)]
pub struct ErrorForStatus<S> {
    inner: S,
}

impl<S> ErrorForStatus<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ErrorForStatus<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        ResponseFuture {
            over_http: request.uri().scheme() == Some(&Scheme::HTTP),
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// Response future of [`ErrorForStatus`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        over_http: bool,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx)).map_err(Into::into)?;
        Poll::Ready(check(response, *this.over_http))
    }
}

fn check<B>(response: Response<B>, over_http: bool) -> Result<Response<B>, BoxError> {
    if let Some(refusal) = response.extensions().get::<Refusal>() {
        return Err(Error::Unauthorized {
            grpc: refusal.reason == Reauth::GrpcUnauthenticated,
            refusal: Some(*refusal),
        }
        .into());
    }
    match classify(&response) {
        // No auth layer below stamped it. A 408 it did not stamp is a plain timeout.
        Decision::Reauthenticate(reason) if reason != Reauth::SessionTimeout => {
            Err(Error::Unauthorized {
                grpc: reason == Reauth::GrpcUnauthenticated,
                refusal: None,
            }
            .into())
        }
        Decision::Fail(rejection) => Err(rejection.into_error().into()),
        Decision::Redirect { status, location } if over_http => Err(Error::InsecureRedirect {
            status,
            location,
            token_sent: response.extensions().get::<SentToken>().is_some(),
        }
        .into()),
        _ => Ok(response),
    }
}
