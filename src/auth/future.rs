//! The response future of [`EnturAuth`](super::EnturAuth).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response, Version};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::{ResponseBody, Watch};
use super::verdict::{self, Head, Verdict};
use super::SentToken;
use crate::auth::classify::GRPC_STATUS;
use crate::error::BoxError;
use crate::source::registry::{self, SourceKey};
use crate::source::token::{AccessToken, TokenId};

/// Which source the token of a refused answer came from, next to the [`Refusal`]: the
/// replay layer counts its outcome there. Set on refusals only.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RefusedBy(pub(crate) SourceKey);

/// A boxed wait for the source's token.
pub(crate) type TokenFuture =
    Pin<Box<dyn Future<Output = Result<Arc<AccessToken>, BoxError>> + Send>>;

/// What the future needs to act on a refusal: which source, which token, and how to read
/// the answer. Plain data: no reference count is taken per request.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sent {
    pub(super) key: SourceKey,
    pub(super) token: Option<TokenId>,
    /// The token was fetched while the API was refusing tokens: an accepted answer ends the
    /// forced-refresh backoff.
    pub(super) probation: bool,
    pub(super) reauth_on_408: bool,
}

pin_project! {
    /// Response future of [`EnturAuth`](super::EnturAuth).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
        sent: Sent,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Called {
            #[pin]
            future: S::Future,
        },
        // Boxed, so that the future is no larger than the inner one: the fast path moves it.
        Waiting {
            waiting: Box<Waiting<S, B>>,
        },
    }
}

/// A request waiting for a token, with the inner service that was polled ready for it.
struct Waiting<S, B> {
    token: TokenFuture,
    request: Option<Request<B>>,
    inner: S,
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(super) fn called(future: S::Future, sent: Sent) -> Self {
        Self {
            state: State::Called { future },
            sent,
        }
    }

    pub(super) fn waiting(token: TokenFuture, request: Request<B>, inner: S, sent: Sent) -> Self {
        Self {
            state: State::Waiting {
                waiting: Box::new(Waiting {
                    token,
                    request: Some(request),
                    inner,
                }),
            },
            sent,
        }
    }

    /// The token the request was sent with; `None` while it still waits for one.
    pub fn token_id(&self) -> Option<TokenId> {
        self.sent.token
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResB>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let sent = *this.sent;
                    // A success costs a status comparison, and over HTTP/2 a look for
                    // `grpc-status` (gRPC runs over HTTP/2 only; trailers are watched by the
                    // body whatever the version).
                    let status = response.status().as_u16();
                    let mut accept = None;
                    if sent.probation
                        || matches!(status, 300..=308 | 401 | 408)
                        || (response.version() == Version::HTTP_2
                            && response.headers().contains_key(GRPC_STATUS))
                    {
                        accept = inspect(&mut response, sent);
                    }
                    let watch = sent.token.map(|token| Watch::new(sent.key, token, accept));
                    return Poll::Ready(Ok(response.map(|body| ResponseBody::new(body, watch))));
                }
                StateProj::Waiting { waiting } => {
                    let future = ready!(poll_waiting(waiting, this.sent, cx))?;
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// Acts on an answer that may refuse the token, by [`verdict`]: a refusal drops the token
/// (once per token, however many requests carried it) and is recorded in a [`Refusal`]; a
/// token on probation is accepted by a success that finished (or, returned `Some(grpc)`,
/// will be once its body finishes without a refusal). Marks redirects with the token that
/// was sent.
#[cold]
#[inline(never)]
fn inspect<B>(response: &mut Response<B>, sent: Sent) -> Option<bool> {
    let token = sent.token?;
    if response.status().is_redirection() {
        response.extensions_mut().insert(SentToken(token));
        return None;
    }
    let verdict = match verdict::head(response.status(), response.headers(), sent.reauth_on_408) {
        Head::Body { grpc } => return sent.probation.then_some(grpc),
        Head::Done(Verdict::Accepted) if !sent.probation => return None,
        Head::Done(verdict) => verdict,
    };
    let shared = registry::lookup(sent.key);
    if let Some(refusal) = verdict::refusal(shared.as_deref(), token, verdict) {
        response.extensions_mut().insert(refusal);
        response.extensions_mut().insert(RefusedBy(sent.key));
    }
    None
}

/// The slow path of [`ResponseFuture::poll`]: waits for the token, then calls the inner
/// service with it. Out of line, so that the fast path stays small enough to inline.
#[cold]
#[inline(never)]
fn poll_waiting<S, B>(
    waiting: &mut Waiting<S, B>,
    sent: &mut Sent,
    cx: &mut Context<'_>,
) -> Poll<Result<S::Future, BoxError>>
where
    S: Service<Request<B>>,
{
    let Waiting {
        token,
        request,
        inner,
    } = waiting;
    let token = match ready!(token.as_mut().poll(cx)) {
        Ok(token) => token,
        Err(error) => return Poll::Ready(Err(error)),
    };
    let Some(mut request) = request.take() else {
        return Poll::Ready(Err("ResponseFuture polled after completion".into()));
    };
    request
        .headers_mut()
        .insert(AUTHORIZATION, token.header_value().clone());
    sent.token = Some(token.id());
    sent.probation = token.on_probation();
    Poll::Ready(Ok(inner.call(request)))
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("sent", &self.sent.token)
            .finish_non_exhaustive()
    }
}
