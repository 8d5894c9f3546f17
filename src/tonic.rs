//! A tonic [`Interceptor`]: [`EnturAuthInterceptor`] sets `authorization: Bearer <token>`
//! (and `et-client-name`) on every call of a client built with tonic's `with_interceptor`.
//!
//! ```no_run
//! use entur_auth::tonic::EnturAuthInterceptor;
//! use entur_auth::{ClientName, Credentials, EnturAuthLayer, Environment, TokenEndpoint, TokenSource};
//! use tonic::service::interceptor::InterceptedService;
//!
//! # async fn run<Channel>(channel: Channel) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let source = TokenSource::builder(TokenEndpoint::entur(Environment::Dev), Credentials::from_env()?)
//!     .build()?;
//! // The interceptor cannot wait: fetch the first token at startup.
//! source.ready(std::time::Duration::from_secs(30)).await?;
//!
//! let auth = EnturAuthInterceptor::from(
//!     EnturAuthLayer::new(source).client_name(ClientName::new("acme-grpc")?),
//! );
//! // What a generated client's `with_interceptor(channel, auth.clone())` builds around a
//! // `tonic::transport::Channel` (the README shows a whole call with tonic-health's client).
//! let service = InterceptedService::new(channel, auth.clone());
//!
//! // `observe` drops the token when the server answers UNAUTHENTICATED: the next call
//! // carries a new one.
//! let answer: Result<tonic::Response<()>, tonic::Status> =
//!     Err(tonic::Status::unauthenticated("token revoked"));
//! assert!(auth.observe(answer).is_err());
//! # let _ = service; Ok(()) }
//! ```
//!
//! # The interceptor or the layer
//!
//! A tonic interceptor is synchronous and sees only the request. So it cannot wait for a
//! token, and cannot see the answer. The tower layer, [`EnturAuthLayer`]
//! with [`with_replay()`](crate::EnturAuthLayer::with_replay) around a `Channel`, can do both.
//!
//! | | `EnturAuthInterceptor` | `EnturAuthLayer::with_replay()` over a `Channel` |
//! |---|---|---|
//! | no token yet | the call fails at once with `UNAVAILABLE`, and the fetch starts: call [`TokenSource::ready`] at startup | the call waits for the one shared fetch |
//! | the server answers `UNAUTHENTICATED` | the call fails; you report it with [`refused`](EnturAuthInterceptor::refused) or [`observe`](EnturAuthInterceptor::observe), which drop the token, and the next call carries a new one | the layer sees it (in the headers or the trailers) and drops the token itself; the call is replayed once with the new token (with `CollectBodyLayer` outside) |
//! | the client's type | `Client<InterceptedService<Channel, EnturAuthInterceptor>>`, tonic's usual pattern | a tower stack; the request body goes through `Full<Bytes>` for the replay |
//! | `http://` to a host that is not loopback | sent: the interceptor does not see the URI (use `https://` endpoints) | refused before anything is sent, judged by the channel's origin declared with [`origin`](crate::EnturAuthLayer::origin) (calls are refused without it) |
//!
//! Pick the interceptor when the code base already builds clients `with_interceptor`, or
//! the client's type must stay simple; call `ready()` at startup and `observe` the results.
//! Pick the layer when a refused call should be replayed without the caller noticing, or
//! when refusals must be caught whoever makes the call.
//!
//! # Per call
//!
//! With a token cached, a call costs one lock-free pointer load (a per-interceptor
//! [`arc_swap::Cache`]), one reference-count increment of the token's prebuilt, sensitive
//! header value, inserted into the call's metadata as it is (no `MetadataValue` is built),
//! and one load of an atomic shared by the interceptor's clones (stored to only when the
//! token changes). No lock, and no allocation: `integration/tests/interceptor.rs` counts the
//! allocations of a call through a generated client and `InterceptedService`, the same with
//! this interceptor as with one that does nothing. The metadata tonic hands an interceptor
//! already holds tonic's own headers, so the two inserts fit; on an empty `MetadataMap`
//! (an interceptor called by hand) the first insert allocates the map's table, whoever
//! inserts.
//!
//! # Refusals
//!
//! tonic's client returns a `Status` that carries nothing of the request: not its metadata,
//! not its extensions. So the interceptor remembers the id of the token it attached last
//! (one atomic, shared by its clones), and [`refused`](EnturAuthInterceptor::refused) drops
//! that token when the status is `UNAUTHENTICATED` and the token is still the current one,
//! through [`TokenSource::invalidate`]. Many calls refused with the same stale token cause
//! one fetch: the first report drops it, the others find it already replaced.
//!
//! One case is ambiguous: a call sent with an old token whose refusal is reported after a
//! call with the new token was made. The report then names the new token. That costs at
//! most one extra fetch, and none within
//! [`min_reauth_interval`](crate::TokenSourceBuilder::min_reauth_interval) (5 s) of the
//! refresh the old token's refusal forced: the source's forced-refresh backoff holds back
//! the rest. Putting the token's id in the request's extensions would not help: tonic 0.14
//! does not hand them back with the response or the status, only a tower layer below the
//! interceptor could read them (that layer is `EnturAuthLayer`), and inserting one costs an
//! allocation per call.
//!
//! The interceptor itself never fails a call with `UNAUTHENTICATED`: every such status a
//! client sees came from the server (or a proxy), so reporting all of them is right.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ::tonic::service::Interceptor;
use ::tonic::{Request, Status};
use arc_swap::{ArcSwapOption, Cache};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};

use crate::auth::verdict::{self, Verdict};
use crate::auth::{EnturAuthLayer, ET_CLIENT_NAME};
use crate::error::ErrorKind;
use crate::source::token::{AccessToken, TokenId};
use crate::source::{Invalidation, TokenSource};

/// The message of the `UNAVAILABLE` status for a call made before the first token.
const NO_TOKEN_YET: &str = "no access token yet: the first fetch has started; retry, or call TokenSource::ready() at startup";

/// The message of the `UNAVAILABLE` status for a call made while a dropped token (refused,
/// or past its usable time) is being replaced.
const NO_TOKEN_NOW: &str =
    "no access token at the moment: a new one is being fetched (the last was dropped); retry";

/// A tonic [`Interceptor`] that sets `authorization: Bearer <token>` from a shared
/// [`TokenSource`], and `et-client-name` when configured. See the [module docs](self).
///
/// Cheap to clone. Clones share the token source and the id of the token attached last, so
/// that a clone kept next to the client can report the client's refused calls
/// ([`refused`](Self::refused), [`observe`](Self::observe)). Each clone keeps its own
/// lock-free view of the current token.
#[derive(Clone)]
pub struct EnturAuthInterceptor {
    source: TokenSource,
    cache: Cache<Arc<ArcSwapOption<AccessToken>>, Option<Arc<AccessToken>>>,
    client_name: Option<HeaderValue>,
    /// The id of the token this interceptor or a clone attached last; 0 before the first.
    sent: Arc<AtomicU64>,
}

impl From<EnturAuthLayer> for EnturAuthInterceptor {
    /// The interceptor that sends what `auth` sends: its token source's tokens and its
    /// `ET-Client-Name`.
    fn from(auth: EnturAuthLayer) -> Self {
        Self {
            cache: Cache::new(auth.source.cell().clone()),
            source: auth.source,
            client_name: auth.client_name,
            sent: Arc::default(),
        }
    }
}

impl EnturAuthInterceptor {
    /// An interceptor that authorizes calls with tokens from `source`, and sets the
    /// source's `et-client-name` (see [`TokenSourceBuilder::client_name`](crate::TokenSourceBuilder::client_name)), if it has
    /// one. For another client name, configure an [`EnturAuthLayer`] and convert it:
    /// `EnturAuthInterceptor::from(layer)`.
    pub fn new(source: TokenSource) -> Self {
        Self::from(EnturAuthLayer::new(source))
    }

    /// Reports a call's error status. When it is `UNAUTHENTICATED`, the token this
    /// interceptor (or a clone) attached last is dropped if it is still the current one, and
    /// a fetch starts: the next call carries a new token. Returns what the source did, or
    /// `None` for any other status (nothing is done).
    ///
    /// Many calls refused with the same token cause one fetch, and forced refreshes back off
    /// when the server keeps refusing new tokens (see [`TokenSource::invalidate`]). Call it
    /// with the status of a unary call, or of a stream's message.
    pub fn refused(&self, status: &Status) -> Option<Invalidation> {
        match verdict::grpc(code_of(status)) {
            refused @ Verdict::Refused(_) => self.act(refused),
            _ => None,
        }
    }

    /// Reports a call's result, and returns it unchanged:
    /// `auth.observe(client.method(request).await)?`.
    ///
    /// An error is reported with [`refused`](Self::refused). A success accepts the token
    /// attached last only when the call has finished: a unary call's response holds the
    /// trailers' `grpc-status`. A streaming call's response comes before its trailers and
    /// accepts nothing; report its end with [`observe_message`](Self::observe_message).
    /// After forced refreshes, an accepted token lets their backoff end, by the same rule
    /// as the tower layer's.
    ///
    /// # Errors
    ///
    /// The `status` of `result`, unchanged.
    pub fn observe<T>(
        &self,
        result: Result<::tonic::Response<T>, Status>,
    ) -> Result<::tonic::Response<T>, Status> {
        let verdict = match &result {
            Ok(response) => verdict::finished(response.metadata().as_ref()),
            Err(status) => verdict::grpc(code_of(status)),
        };
        self.act(verdict);
        result
    }

    /// Reports what a stream gave, and returns it unchanged:
    /// `while let Some(m) = auth.observe_message(stream.message().await)? { … }`.
    ///
    /// The end of the stream (`Ok(None)`: the trailers said `OK`) accepts the token attached
    /// last, as a finished unary call does; an error is reported with
    /// [`refused`](Self::refused); a message says nothing yet.
    ///
    /// # Errors
    ///
    /// The `status` of `item`, unchanged.
    pub fn observe_message<M>(&self, item: Result<Option<M>, Status>) -> Result<Option<M>, Status> {
        let verdict = match &item {
            Ok(Some(_)) => Verdict::Neither,
            Ok(None) => Verdict::Accepted,
            Err(status) => verdict::grpc(code_of(status)),
        };
        self.act(verdict);
        item
    }

    /// Acts on a verdict about the token attached last, by the layer's rules.
    fn act(&self, verdict: Verdict) -> Option<Invalidation> {
        let token = TokenId::from_raw(self.sent.load(Ordering::Relaxed))?;
        verdict::act(Some(self.source.shared()), token, verdict)
    }

    /// Sets the metadata from `token`.
    #[inline]
    fn attach(
        token: &AccessToken,
        client_name: Option<&HeaderValue>,
        sent: &AtomicU64,
        mut request: Request<()>,
    ) -> Request<()> {
        let headers: &mut HeaderMap = request.metadata_mut().as_mut();
        headers.insert(AUTHORIZATION, token.header_value().clone());
        if let Some(name) = client_name {
            headers.insert(ET_CLIENT_NAME, name.clone());
        }
        // Written only when the token changes: the clones' calls on other threads keep
        // reading a cache line nobody writes.
        let id = token.id().get();
        if sent.load(Ordering::Relaxed) != id {
            sent.store(id, Ordering::Relaxed);
        }
        request
    }

    /// No usable token: starts the fetch. A stopped refresher is taken over on this
    /// runtime, and the token it left behind, if still usable, goes with this call; else
    /// the call fails with why it cannot go now.
    #[cold]
    #[inline(never)]
    fn no_token(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if let Err(error) = self.source.start_fetch() {
            // Only the message reaches the caller: `InterceptedService` sends the status
            // through its HTTP form, so a source would be lost.
            let message = match error.kind() {
                ErrorKind::Stopped => format!("no access token: {}", error.report()),
                _ => format!(
                    "no access token: the last token fetch failed: {}",
                    error.report()
                ),
            };
            return Err(Status::unavailable(message));
        }
        if let Some(token) = self.cache.load() {
            return Ok(Self::attach(
                token,
                self.client_name.as_ref(),
                &self.sent,
                request,
            ));
        }
        let message = match self.sent.load(Ordering::Relaxed) {
            0 => NO_TOKEN_YET,
            _ => NO_TOKEN_NOW,
        };
        Err(Status::unavailable(message))
    }
}

impl Interceptor for EnturAuthInterceptor {
    /// Sets the metadata from the cached token.
    ///
    /// # Errors
    ///
    /// `UNAVAILABLE` when there is no usable token: before the first one (the fetch starts,
    /// and the message says to retry, or to call [`TokenSource::ready`] at startup), while a
    /// dropped one is being replaced, or when the last fetch failed (the message says why,
    /// from the [`Error`](crate::Error)'s report, which holds no secret).
    #[inline]
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.cache.load() {
            Some(token) => Ok(Self::attach(
                token,
                self.client_name.as_ref(),
                &self.sent,
                request,
            )),
            None => self.no_token(request),
        }
    }
}

impl fmt::Debug for EnturAuthInterceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnturAuthInterceptor")
            .field("source", &self.source)
            .field("client_name", &self.client_name)
            .field("sent", &self.sent.load(Ordering::Relaxed))
            .finish()
    }
}

/// A status's gRPC code, as it goes over the wire.
fn code_of(status: &Status) -> u32 {
    u32::try_from(i32::from(status.code())).unwrap_or(u32::MAX)
}
