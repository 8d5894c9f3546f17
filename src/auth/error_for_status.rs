//! Answers that mean "this will not work", as typed [`Refused`] errors instead of responses.
//!
//! | answer | [`Refused`] |
//! |---|---|
//! | a refusal of the token that reached it (401, gRPC `UNAUTHENTICATED`, an Entur 408) | [`RefusedKind::Unauthorized`], with the [`Refusal`]: whether the token was dropped, whether forced refreshes back off, and whether the request was replayed |
//! | 403, gRPC `PERMISSION_DENIED`, 401 with `insufficient_scope` | [`RefusedKind::PermissionDenied`] |
//! | a redirect of a request sent over plain `http://` | [`RefusedKind::InsecureRedirect`], saying whether the token went with it |
//! | 405 | [`RefusedKind::MethodNotAllowed`] |
//!
//! The services fail with [`BoxError`], as tower middleware does:
//! `error.downcast_ref::<Refused>()` gives the refusal back.
//!
//! Redirects of `https://` requests are the API's own business (a pre-signed download URL,
//! say) and pass through, as does everything else.
//!
//! Put it outside [`ReplayLayer`](crate::auth::replay::ReplayLayer), so that a 401 becomes an
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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::uri::Scheme;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::classify::{classify, Decision, Reauth, Rejection};
use crate::auth::{Refusal, ReplayOutcome, SentToken};
use crate::error::BoxError;
use crate::source::Invalidation;

/// Turns refusals into typed [`Refused`] errors; see the [module docs](self).
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
    inner_accessors!(inner: S);
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
        return Err(Refused::new(Kind::Unauthorized {
            grpc: refusal.reason == Reauth::GrpcUnauthenticated,
            refusal: Some(*refusal),
        })
        .into());
    }
    match classify(&response) {
        // No auth layer below stamped it. A 408 it did not stamp is a plain timeout.
        Decision::Reauthenticate(reason) if reason != Reauth::SessionTimeout => {
            Err(Refused::new(Kind::Unauthorized {
                grpc: reason == Reauth::GrpcUnauthenticated,
                refusal: None,
            })
            .into())
        }
        Decision::Fail(rejection) => Err(Refused::new(match rejection {
            Rejection::PermissionDenied { grpc } => Kind::PermissionDenied { grpc },
            Rejection::MethodNotAllowed => Kind::MethodNotAllowed,
        })
        .into()),
        Decision::Redirect { status, location } if over_http => {
            Err(Refused::new(Kind::InsecureRedirect {
                status,
                location,
                token_sent: response.extensions().get::<SentToken>().is_some(),
            })
            .into())
        }
        _ => Ok(response),
    }
}

/// What the API said, as an error, from [`ErrorForStatus`]: it refused the token, the token
/// lacks a permission, a plain-`http://` request was redirected, or a 405. `Display` says
/// what happened; [`hint`](Self::hint) what to do.
#[derive(Clone, Debug)]
pub struct Refused {
    kind: Kind,
}

/// What the API said; see [`Refused::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusedKind {
    /// The API refused the token (401, gRPC `UNAUTHENTICATED`, or an Entur 408).
    Unauthorized,
    /// The API accepted the token but it lacks the permission (403, gRPC
    /// `PERMISSION_DENIED`, or a 401 with `error="insufficient_scope"`).
    PermissionDenied,
    /// A request sent over plain `http://` was redirected (Entur redirects plain HTTP to
    /// HTTPS); the redirect was not followed.
    InsecureRedirect,
    /// The API answered 405: usually a request over plain HTTP to an HTTPS-only API.
    MethodNotAllowed,
}

#[derive(Clone, Debug)]
enum Kind {
    Unauthorized {
        grpc: bool,
        refusal: Option<Refusal>,
    },
    PermissionDenied {
        grpc: bool,
    },
    InsecureRedirect {
        status: StatusCode,
        location: Option<String>,
        token_sent: bool,
    },
    MethodNotAllowed,
}

impl Refused {
    fn new(kind: Kind) -> Self {
        Self { kind }
    }

    /// What the API said.
    pub fn kind(&self) -> RefusedKind {
        match self.kind {
            Kind::Unauthorized { .. } => RefusedKind::Unauthorized,
            Kind::PermissionDenied { .. } => RefusedKind::PermissionDenied,
            Kind::InsecureRedirect { .. } => RefusedKind::InsecureRedirect,
            Kind::MethodNotAllowed => RefusedKind::MethodNotAllowed,
        }
    }

    /// Whether the API answered with a gRPC status.
    pub fn is_grpc(&self) -> bool {
        matches!(
            self.kind,
            Kind::Unauthorized { grpc: true, .. } | Kind::PermissionDenied { grpc: true }
        )
    }

    /// For a refused token: what [`EnturAuth`](crate::EnturAuth) and the replay did about
    /// it; `None` when no `EnturAuth` below saw the answer.
    pub fn refusal(&self) -> Option<&Refusal> {
        match &self.kind {
            Kind::Unauthorized { refusal, .. } => refusal.as_ref(),
            _ => None,
        }
    }

    /// For an insecure redirect: where to, without its query (which may hold credentials).
    pub fn location(&self) -> Option<&str> {
        match &self.kind {
            Kind::InsecureRedirect { location, .. } => location.as_deref(),
            _ => None,
        }
    }

    /// For an insecure redirect: whether the bearer token went with the plain-HTTP request
    /// (treat it as exposed).
    pub fn token_sent(&self) -> bool {
        matches!(
            self.kind,
            Kind::InsecureRedirect {
                token_sent: true,
                ..
            }
        )
    }

    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        const CHECK: &str = "the client_secret may have changed, or the token's audience is not this API's (Entur: the token server and the API must be the same environment)";
        match &self.kind {
            Kind::Unauthorized { refusal: None, .. } => {
                "build the stack with EnturAuthLayer::with_replay(), or put ErrorForStatusLayer outside EnturAuthLayer"
            }
            Kind::Unauthorized {
                refusal: Some(refusal),
                ..
            } => match (refusal.invalidation, refusal.replay) {
                (Invalidation::RateLimited { .. }, _) | (_, ReplayOutcome::Replayed) => CHECK,
                (Invalidation::SourceGone, _) => "keep the TokenSource alive while its layers are used",
                (_, ReplayOutcome::NotReplayable) => {
                    "send it again, or collect request bodies with CollectBodyLayer so that they can be replayed"
                }
                _ => "send it again, or build the stack with EnturAuthLayer::with_replay()",
            },
            Kind::PermissionDenied { .. } => {
                "ask Entur to grant the permission (scope) this endpoint needs, or check the client is set up for this API"
            }
            Kind::InsecureRedirect { .. } => "use https://",
            Kind::MethodNotAllowed => "use https:// (or check the HTTP method)",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Unauthorized { grpc, refusal } => unauthorized(f, *grpc, refusal.as_ref()),
            Kind::PermissionDenied { grpc } => write!(
                f,
                "the API accepted the token but refused the request ({}): the client lacks the permission (scope) this endpoint needs",
                if *grpc { "gRPC PERMISSION_DENIED" } else { "403 Forbidden" }
            ),
            Kind::InsecureRedirect {
                status,
                location,
                token_sent,
            } => write!(
                f,
                "the API answered {} to a request over plain http://, redirecting to {}; the redirect was not followed ({})",
                status.as_u16(),
                location.as_deref().unwrap_or("an unnamed location"),
                if *token_sent {
                    "the bearer token was sent with the plain-http request: treat it as exposed"
                } else {
                    "no bearer token was sent"
                }
            ),
            Kind::MethodNotAllowed => f.write_str(
                "the API answered 405 Method Not Allowed: this usually means the request went over plain http://, which Entur's APIs do not support",
            ),
        }
    }
}

impl std::error::Error for Refused {}

/// Says what happened to a refused token, from the [`Refusal`] the auth layer and the
/// replay recorded.
fn unauthorized(f: &mut fmt::Formatter<'_>, grpc: bool, refusal: Option<&Refusal>) -> fmt::Result {
    let answer = match refusal.map(|r| r.reason) {
        Some(Reauth::SessionTimeout) => "408: the token expired during the session",
        _ if grpc => "gRPC UNAUTHENTICATED",
        _ => "401 Unauthorized",
    };
    write!(f, "the API refused the token ({answer})")?;
    let Some(refusal) = refusal else {
        return f
            .write_str("; no EnturAuth layer below saw the answer, so the token was not dropped");
    };
    match (refusal.invalidation, refusal.replay) {
        (Invalidation::RateLimited { retry_in }, replay) => write!(
            f,
            " right after a forced refresh: the API keeps refusing new tokens, so re-authentication backs off (next in {} s){}",
            retry_in.as_secs().max(1),
            match replay {
                ReplayOutcome::Replayed => " and the request, replayed with the same token, was refused again",
                _ => " and the request was not replayed",
            }
        ),
        (_, ReplayOutcome::Replayed) => f.write_str(
            " again after re-authenticating: the request was replayed with a new token and refused too",
        ),
        (Invalidation::SourceGone, _) => {
            f.write_str("; the token source was dropped, so no new token is coming")
        }
        (_, ReplayOutcome::NotReplayable) => f.write_str(
            "; a new token is being fetched, but this request was not replayed because its body cannot be sent twice (a stream)",
        ),
        _ => f.write_str(
            "; a new token is being fetched, but this request was not replayed (no replay layer around EnturAuth)",
        ),
    }
}
