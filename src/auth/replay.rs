//! Authentication plus the one replay after a refusal, in the right order: the default way
//! to build a stack.
//!
//! ```no_run
//! use entur_auth::{ClientName, EnturAuthLayer, TokenSource};
//! use entur_auth::error_for_status::ErrorForStatusLayer;
//! use tower::ServiceBuilder;
//!
//! # fn stack<S>(source: TokenSource, client: S) -> Result<(), entur_auth::Error> {
//! let api = ServiceBuilder::new()
//!     .layer(ErrorForStatusLayer::new()) // optional: refusals as typed errors
//!     .layer(EnturAuthLayer::new(source).client_name(ClientName::new("acme-app")?).with_replay())
//!     .service(client);
//! # let _ = api; Ok(()) }
//! ```
//!
//! When the API refuses the token (401, an Entur 408, gRPC `UNAUTHENTICATED`),
//! [`EnturAuth`] inside has already dropped it and started the one shared fetch. [`Replay`]
//! then waits for the new token and sends the request once more, if its body can be sent
//! twice ([`ReplayBody`]); a second refusal is final. While forced refreshes back off (the
//! API refused the last new tokens too), the request goes once more at once with the same
//! token: behind a load balancer another replica may take it, and an API that refuses every
//! token costs one more call and no token request. The answer that comes out carries a
//! [`Refusal`] saying what happened, so that
//! [`ErrorForStatusLayer`](crate::auth::error_for_status::ErrorForStatusLayer) can tell the truth:
//! refused again after a replay, not replayed because the body is a stream, or forced
//! refreshes backing off.
//!
//! This is the crate's one replay: the reqwest middleware replays by the same rules. Put a
//! timeout outside for a limit on the whole exchange (both attempts and the wait for the
//! token). Around a `tower::retry` layer of your own, put `EnturAuthLayer` inside it, so that
//! every attempt reads the current token.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

pub use super::collect::{CollectBody, CollectBodyLayer};
use crate::auth::future::RefusedBy;
use crate::auth::verdict::{self, Replay as Outcome};
use crate::auth::{EnturAuth, EnturAuthLayer, Refusal, ReplayOutcome, ResponseBody};
use crate::error::BoxError;
use crate::source::registry::{self, SourceKey};

/// A request body that may be cloned for a replay.
///
/// Implemented for the buffered bodies (`Full`, `Empty`, `String`, `Bytes`, `Vec<u8>`, `()`),
/// which replay, and for streaming bodies (`BoxBody`, `UnsyncBoxBody`, hyper's `Incoming`),
/// which do not. Implement it for your own body type to say whether it can be sent twice.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not say whether it can be replayed after a refused token",
    label = "request bodies must implement `entur_auth::replay::ReplayBody`",
    note = "collect streaming bodies (tonic's, axum's) with `entur_auth::replay::CollectBodyLayer` (they become `Full<Bytes>`), or implement `ReplayBody` for your body type (return `None` if it cannot be sent twice)"
)]
pub trait ReplayBody: Sized {
    /// A copy of the body to send again, or `None` if it cannot be sent twice.
    fn try_clone(&self) -> Option<Self>;
}

impl<D: Clone> ReplayBody for Full<D> {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for Empty<D> {
    fn try_clone(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

macro_rules! replay_by_clone {
    ($($t:ty),*) => {$(
        impl ReplayBody for $t {
            fn try_clone(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}
replay_by_clone!(String, Bytes, Vec<u8>, ());

impl<D, E> ReplayBody for http_body_util::combinators::UnsyncBoxBody<D, E> {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayBody for http_body_util::combinators::BoxBody<D, E> {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

#[cfg(feature = "rustls")]
impl ReplayBody for hyper::body::Incoming {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

/// A copy of `request` for a replay, if its body can be sent twice.
pub(crate) fn clone_request<B: ReplayBody>(request: &Request<B>) -> Option<Request<B>> {
    let body = request.body().try_clone()?;
    let mut clone = Request::new(body);
    *clone.method_mut() = request.method().clone();
    *clone.uri_mut() = request.uri().clone();
    *clone.version_mut() = request.version();
    *clone.headers_mut() = request.headers().clone();
    *clone.extensions_mut() = request.extensions().clone();
    Some(clone)
}

/// [`EnturAuth`] with one replay of a refused request; from
/// [`EnturAuthLayer::with_replay`]. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ReplayLayer {
    pub(super) auth: EnturAuthLayer,
}

impl<S> Layer<S> for ReplayLayer {
    type Service = Replay<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Replay {
            auth: self.auth.layer(inner),
        }
    }
}

/// [`EnturAuth`] around `S`, with one replay of a refused request; see [`ReplayLayer`].
#[derive(Clone, Debug)]
pub struct Replay<S> {
    auth: EnturAuth<S>,
}

impl<S> Replay<S> {
    inner_accessors!(auth: EnturAuth<S>);
}

impl<S, B, ResB> Service<Request<B>> for Replay<S>
where
    EnturAuth<S>:
        Service<Request<B>, Response = Response<ResponseBody<ResB>>, Error = BoxError> + Clone,
    B: ReplayBody,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = BoxError;
    type Future = ResponseFuture<EnturAuth<S>, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.auth.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The copy and a service for the replay are made only for bodies that can be sent
        // twice; a stream pays nothing (and is answered with `NotReplayable` if refused).
        let replay = clone_request(&request).map(|request| {
            Box::new(Second {
                request: Some(request),
                service: self.auth.clone(),
                token: None,
                refused_by: None,
            })
        });
        ResponseFuture {
            state: State::First {
                future: self.auth.call(request),
                replay,
            },
        }
    }
}

/// What a replay needs: the copy of the request and a service to send it with.
struct Second<S, B> {
    request: Option<Request<B>>,
    service: S,
    token: Option<crate::auth::future::TokenFuture>,
    /// The refusing source, once a refusal is seen.
    refused_by: Option<SourceKey>,
}

/// Counts what became of a refused request, for the source that refused it.
#[cold]
fn record(refused_by: Option<SourceKey>, outcome: Outcome) {
    verdict::replayed(refused_by.and_then(registry::lookup).as_deref(), outcome);
}

pin_project! {
    /// Response future of [`Replay`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        First {
            #[pin]
            future: S::Future,
            replay: Option<Box<Second<S, B>>>,
        },
        Waiting {
            replay: Box<Second<S, B>>,
        },
        Replayed {
            #[pin]
            future: S::Future,
            refused_by: Option<SourceKey>,
        },
    }
}

impl<S, B, ResB> Future for ResponseFuture<EnturAuth<S>, B>
where
    EnturAuth<S>: Service<Request<B>, Response = Response<ResponseBody<ResB>>, Error = BoxError>,
{
    type Output = Result<Response<ResponseBody<ResB>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::First { future, replay } => {
                    let mut response = ready!(future.poll(cx))?;
                    let Some(&refusal) = response.extensions().get::<Refusal>() else {
                        return Poll::Ready(Ok(response));
                    };
                    let refused_by = response.extensions().get::<RefusedBy>().map(|by| by.0);
                    let Some(fresh) = verdict::replay(refusal.invalidation) else {
                        return Poll::Ready(Ok(response));
                    };
                    let Some(mut replay) = replay.take() else {
                        if let Some(refusal) = response.extensions_mut().get_mut::<Refusal>() {
                            refusal.replay = ReplayOutcome::NotReplayable;
                        }
                        record(refused_by, Outcome::NotReplayable);
                        return Poll::Ready(Ok(response));
                    };
                    replay.refused_by = refused_by;
                    tracing::debug!(reason = ?refusal.reason, fresh, "token refused; replaying");
                    if fresh {
                        let source = replay.service.source().clone();
                        replay.token =
                            Some(Box::pin(
                                async move { source.token().await.map_err(Into::into) },
                            ));
                    }
                    this.state.set(State::Waiting { replay });
                }
                StateProj::Waiting { replay } => {
                    if let Some(token) = &mut replay.token {
                        // If the fetch fails, the replay fails in the auth layer with that
                        // error, which says more than the refusal would.
                        let _ = ready!(token.as_mut().poll(cx));
                        replay.token = None;
                    }
                    if let Err(error) = ready!(replay.service.poll_ready(cx)) {
                        record(replay.refused_by, Outcome::Failed);
                        return Poll::Ready(Err(error));
                    }
                    let Some(request) = replay.request.take() else {
                        return Poll::Ready(Err(
                            "replay ResponseFuture polled after completion".into()
                        ));
                    };
                    let future = replay.service.call(request);
                    let refused_by = replay.refused_by;
                    this.state.set(State::Replayed { future, refused_by });
                }
                StateProj::Replayed { future, refused_by } => {
                    let result = ready!(future.poll(cx));
                    record(
                        *refused_by,
                        match &result {
                            Err(_) => Outcome::Failed,
                            Ok(response) if response.extensions().get::<Refusal>().is_some() => {
                                Outcome::Refused
                            }
                            Ok(_) => Outcome::Accepted,
                        },
                    );
                    let mut response = result?;
                    if let Some(refusal) = response.extensions_mut().get_mut::<Refusal>() {
                        refusal.replay = ReplayOutcome::Replayed;
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
