//! What an API's answer means for authentication: re-authenticate, fail, or leave it to the
//! caller. Entur's documentation names what each status means; gRPC servers (tonic) answer
//! HTTP 200 with a `grpc-status` header instead, which is read too.
//!
//! | answer | meaning | [`Decision`] |
//! |---|---|---|
//! | 401, gRPC `UNAUTHENTICATED` (16) | token invalid, expired or revoked; or the secret changed | [`Decision::Reauthenticate`] |
//! | 408 | the token expired during the session | [`Decision::Reauthenticate`] |
//! | 403, gRPC `PERMISSION_DENIED` (7), 401 with `error="insufficient_scope"` | token valid, permission missing | [`Decision::Fail`] |
//! | 301, 302, 307, 308 | plain HTTP redirected to HTTPS: a configuration error | [`Decision::Fail`] |
//! | 405 | usually plain HTTP against an HTTPS-only API | [`Decision::Fail`] |
//! | 429, 503 | load | [`Decision::RetryLater`], with `Retry-After` |
//! | anything else | not about authentication | [`Decision::Pass`] |
//!
//! ```
//! use entur_auth::classify::{classify, Decision, Rejection};
//!
//! let forbidden = http::Response::builder().status(403).body(()).unwrap();
//! assert_eq!(classify(&forbidden), Decision::Fail(Rejection::PermissionDenied { grpc: false }));
//!
//! let grpc = http::Response::builder().header("grpc-status", "16").body(()).unwrap();
//! assert!(matches!(classify(&grpc), Decision::Reauthenticate(_)));
//! ```
//!
//! [`ReauthPolicy`](crate::retry::ReauthPolicy) acts on these decisions inside
//! `tower::retry`; [`ErrorForStatusLayer`] turns the failures into typed errors.

use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use http::header::{HeaderName, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::{sanitize, BoxError, Error};

/// The `grpc-status` header of trailers-only gRPC responses.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// What to do with an API's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Not an authentication problem: a success, or an error for the caller to handle.
    Pass,
    /// The token was refused: invalidate it, fetch a new one, replay the request once.
    Reauthenticate(Reauth),
    /// Retrying cannot help: report it.
    Fail(Rejection),
    /// The API is overloaded: leave it to the caller's retry policy, after `retry_after`.
    RetryLater {
        /// The API's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reauth {
    /// HTTP 401: the token is invalid, expired or revoked.
    Unauthorized,
    /// HTTP 408: the token expired during the session.
    SessionTimeout,
    /// gRPC status 16, `UNAUTHENTICATED`.
    GrpcUnauthenticated,
}

/// Why a request failed for good.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// HTTP 403 or gRPC `PERMISSION_DENIED`: the token is valid but lacks the permission.
    PermissionDenied {
        /// Whether it came as a gRPC status.
        grpc: bool,
    },
    /// A redirect: the request went over plain HTTP and was redirected to HTTPS.
    InsecureRedirect {
        /// The redirect status (301, 302, 307 or 308).
        status: StatusCode,
        /// Where the API redirected to.
        location: Option<String>,
    },
    /// HTTP 405: usually plain HTTP against an API that only speaks HTTPS.
    MethodNotAllowed,
}

/// Classifies an API's answer. See the [module docs](self) for the table.
pub fn classify<B>(response: &Response<B>) -> Decision {
    classify_parts(response.status(), response.headers())
}

/// Classifies an answer from its status and headers.
pub fn classify_parts(status: StatusCode, headers: &HeaderMap) -> Decision {
    match status.as_u16() {
        401 if bearer_error(headers) == Some("insufficient_scope") => {
            Decision::Fail(Rejection::PermissionDenied { grpc: false })
        }
        401 => Decision::Reauthenticate(Reauth::Unauthorized),
        408 => Decision::Reauthenticate(Reauth::SessionTimeout),
        403 => Decision::Fail(Rejection::PermissionDenied { grpc: false }),
        301 | 302 | 307 | 308 => Decision::Fail(Rejection::InsecureRedirect {
            status,
            location: headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|v| sanitize(v, 200)),
        }),
        405 => Decision::Fail(Rejection::MethodNotAllowed),
        429 | 503 => Decision::RetryLater {
            retry_after: crate::endpoint::retry_after(headers, SystemTime::now()),
        },
        _ => match grpc_status(headers) {
            Some(16) => Decision::Reauthenticate(Reauth::GrpcUnauthenticated),
            Some(7) => Decision::Fail(Rejection::PermissionDenied { grpc: true }),
            _ => Decision::Pass,
        },
    }
}

/// The code of a trailers-only gRPC response.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// The `error` parameter of a `WWW-Authenticate: Bearer …` challenge (RFC 6750 section 3).
fn bearer_error(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(WWW_AUTHENTICATE).iter().find_map(|value| {
        let value = value.to_str().ok()?;
        let (scheme, params) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        params.split(',').find_map(|param| {
            let (name, value) = param.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("error")
                .then(|| value.trim().trim_matches('"'))
        })
    })
}

impl Rejection {
    pub(crate) fn into_error(self) -> Error {
        match self {
            Self::PermissionDenied { grpc } => Error::PermissionDenied { grpc },
            Self::InsecureRedirect { status, location } => {
                Error::InsecureRedirect { status, location }
            }
            Self::MethodNotAllowed => Error::MethodNotAllowed,
        }
    }
}

/// Turns answers that mean "this will not work" into typed [`Error`]s instead of responses:
/// 403 and gRPC `PERMISSION_DENIED` → [`Error::PermissionDenied`], redirects →
/// [`Error::InsecureRedirect`] (never followed: the token is not sent to the new location),
/// 405 → [`Error::MethodNotAllowed`], and a 401 (or gRPC `UNAUTHENTICATED`) that reached it →
/// [`Error::Unauthorized`].
///
/// Put it outside `tower::retry` with [`ReauthPolicy`](crate::retry::ReauthPolicy), so that a
/// 401 is an error only once the replay with a new token was refused too:
///
/// ```no_run
/// # use entur_auth::{EnturAuthLayer, TokenSource, classify::ErrorForStatusLayer, retry::ReauthPolicy};
/// # fn stack<S>(source: TokenSource, client: S) {
/// let api = tower::ServiceBuilder::new()
///     .layer(ErrorForStatusLayer::new())
///     .retry(ReauthPolicy::new(source.clone()))
///     .layer(EnturAuthLayer::new(source))
///     .service(client);
/// # let _ = api; }
/// ```
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
    }
}

impl<F, ResB, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(self.project().inner.poll(cx)).map_err(Into::into)?;
        Poll::Ready(match classify(&response) {
            Decision::Fail(rejection) => Err(rejection.into_error().into()),
            Decision::Reauthenticate(reason) => Err(Error::Unauthorized {
                grpc: reason == Reauth::GrpcUnauthenticated,
            }
            .into()),
            _ => Ok(response),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut builder = Response::builder().status(status);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn the_table() {
        use Decision::*;
        assert_eq!(
            classify(&response(401, &[])),
            Reauthenticate(Reauth::Unauthorized)
        );
        assert_eq!(
            classify(&response(
                401,
                &[(
                    "www-authenticate",
                    r#"Bearer realm="x", error="invalid_token""#
                )]
            )),
            Reauthenticate(Reauth::Unauthorized)
        );
        assert_eq!(
            classify(&response(
                401,
                &[("www-authenticate", r#"Bearer error="insufficient_scope""#)]
            )),
            Fail(Rejection::PermissionDenied { grpc: false })
        );
        assert_eq!(
            classify(&response(408, &[])),
            Reauthenticate(Reauth::SessionTimeout)
        );
        assert_eq!(
            classify(&response(403, &[])),
            Fail(Rejection::PermissionDenied { grpc: false })
        );
        for status in [301, 302, 307, 308] {
            assert_eq!(
                classify(&response(status, &[("location", "https://api.entur.io/x")])),
                Fail(Rejection::InsecureRedirect {
                    status: StatusCode::from_u16(status).unwrap(),
                    location: Some("https://api.entur.io/x".into())
                })
            );
        }
        assert_eq!(
            classify(&response(405, &[])),
            Fail(Rejection::MethodNotAllowed)
        );
        assert_eq!(
            classify(&response(429, &[("retry-after", "7")])),
            RetryLater {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            classify(&response(503, &[])),
            RetryLater { retry_after: None }
        );
        assert_eq!(
            classify(&response(200, &[("grpc-status", "16")])),
            Reauthenticate(Reauth::GrpcUnauthenticated)
        );
        assert_eq!(
            classify(&response(200, &[("grpc-status", "7")])),
            Fail(Rejection::PermissionDenied { grpc: true })
        );
        for (status, headers) in [
            (200, &[][..]),
            (200, &[("grpc-status", "0")][..]),
            (404, &[][..]),
            (500, &[][..]),
        ] {
            assert_eq!(classify(&response(status, headers)), Pass);
        }
    }
}
