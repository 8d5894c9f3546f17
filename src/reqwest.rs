//! The same token source for [reqwest](https://docs.rs/reqwest) clients: [`EnturAuthMiddleware`],
//! a [`reqwest_middleware::Middleware`] that sets `Authorization: Bearer <token>` (and
//! `ET-Client-Name`), drops a token the API refuses and replays the request once with a new
//! one. Feature `reqwest`; built on reqwest-middleware 0.5 and reqwest 0.13.
//!
//! ```no_run
//! use entur_auth::reqwest::EnturAuthMiddleware;
//! use entur_auth::{ClientName, Credentials, EnturAuthLayer, Environment, TokenEndpoint, TokenSource};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let source = TokenSource::builder(TokenEndpoint::entur(Environment::Dev), Credentials::from_env()?)
//!     .build()?;
//! let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(EnturAuthMiddleware::from(
//!         EnturAuthLayer::new(source).client_name(ClientName::new("acme-ticketing")?),
//!     ))
//!     .build();
//! let response = api.get("https://api.dev.entur.io/some/api").send().await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! ```
//!
//! # What it does, per request
//!
//! - Sets `Authorization` to the current token's prebuilt header value and, when configured,
//!   `ET-Client-Name`. With no usable token yet, the request waits on the one fetch shared
//!   by every caller of the source ([`TokenSource::token`]).
//! - Refuses a request to `http://` on a host that is not loopback with
//!   [`CleartextRefused`](crate::auth::CleartextRefused) before anything is sent (no DNS lookup, no connection);
//!   a middleware made from an [`EnturAuthLayer`] with
//!   [`allow_plain_http(true)`](EnturAuthLayer::allow_plain_http) lets it through.
//! - Reads the answer as [`EnturAuth`](crate::EnturAuth) does: a 401 (but not one whose
//!   Bearer challenge says `insufficient_scope`), and a 408 when the source's endpoint says a
//!   408 means "token expired" ([`TokenEndpoint::reauth_on_408`](crate::TokenEndpoint::reauth_on_408),
//!   on for Entur's presets), drops the token that request carried
//!   ([`TokenSource::invalidate`]) and stamps a [`Refusal`] on the response's extensions.
//! - Replays the request once, with the new token (or the same one while forced refreshes
//!   back off), if the request can be cloned
//!   ([`reqwest::Request::try_clone`]: not when its body is a stream). A second refusal is
//!   returned as it is, with [`ReplayOutcome::Replayed`]. A refused stream is returned with
//!   [`ReplayOutcome::NotReplayable`]; its token is dropped all the same, so the next request
//!   carries the new one.
//!
//! Forced refreshes back off as they do for the tower layer (see
//! [`TokenSource::invalidate`]): an API that refuses every token costs a bounded number of
//! token requests; while refreshes back off, the request is replayed once with the same
//! token (another replica behind a load balancer may take it), as the tower replay does.
//!
//! # Errors
//!
//! A token that cannot be had comes out as [`reqwest_middleware::Error::Middleware`]
//! wrapping an [`entur_auth::Error`](Error), and a refused cleartext request wrapping a
//! [`CleartextRefused`](crate::auth::CleartextRefused); get them back with `downcast_ref`:
//!
//! ```
//! # async fn run(api: reqwest_middleware::ClientWithMiddleware) {
//! match api.get("http://api.entur.io/journey-planner/v3").send().await {
//!     Err(reqwest_middleware::Error::Middleware(error)) => {
//!         if let Some(refused) = error.downcast_ref::<entur_auth::auth::CleartextRefused>() {
//!             eprintln!("not over http: {refused}; {}", refused.hint());
//!         } else if let Some(error) = error.downcast_ref::<entur_auth::Error>() {
//!             match error.is_transient() {
//!                 true => eprintln!("token endpoint down, retry later: {error}"),
//!                 false => eprintln!("fix the configuration: {error}"),
//!             }
//!         } else {
//!             eprintln!("another middleware failed: {error}");
//!         }
//!     }
//!     Err(error) => eprintln!("reqwest failed: {error}"),
//!     Ok(response) => println!("{}", response.status()),
//! }
//! # }
//! ```
//!
//! The API's own answers (a 401 after the replay, a 403) are responses, not errors, as
//! reqwest returns them; `Response::error_for_status` turns them into reqwest errors.
//!
//! # Where it goes in the chain, and what reqwest does below it
//!
//! Middlewares run in the order they were added. Put `EnturAuthMiddleware` after (inside) a
//! retry middleware such as `reqwest-retry`'s, so that every attempt reads the current
//! token. Below the middleware, the reqwest client follows redirects (up to 10 by default);
//! it removes `Authorization` when a redirect leaves the request's host, port or scheme. A
//! reqwest request timeout (`RequestBuilder::timeout`) applies to each attempt; the wait for
//! a token is bounded by the source's
//! [`fetch_timeout`](crate::TokenSourceBuilder::fetch_timeout).

use std::sync::Arc;

use ::reqwest::header::AUTHORIZATION;
use ::reqwest::{Request, Response, ResponseBuilderExt, Url};
use http::Extensions;
use reqwest_middleware::{Middleware, Next};

use crate::auth::verdict::{self, Head, Replay as Outcome};
use crate::auth::{
    refuse_cleartext, EnturAuthLayer, Refusal, ReplayOutcome, ResponseBody, ET_CLIENT_NAME,
};
use crate::error::Error;
use crate::source::token::AccessToken;
use crate::source::{Invalidation, TokenSource};

/// A [`reqwest_middleware::Middleware`] that authenticates requests with tokens from a
/// shared [`TokenSource`]; see the [module docs](self). Made from an [`EnturAuthLayer`]
/// (`From`), it sends the layer's `ET-Client-Name` and follows its plain-HTTP policy: one
/// configuration for every stack.
///
/// Cheap to clone; clones share the token source, and so do the tower layers made from the
/// same source: one token, one background task, for every client.
#[derive(Clone, Debug)]
pub struct EnturAuthMiddleware {
    auth: EnturAuthLayer,
    reauth_on_408: bool,
}

impl From<EnturAuthLayer> for EnturAuthMiddleware {
    fn from(auth: EnturAuthLayer) -> Self {
        Self {
            reauth_on_408: auth.source.reauth_on_408(),
            auth,
        }
    }
}

impl EnturAuthMiddleware {
    /// A middleware that authorizes requests with tokens from `source`, and sets the
    /// source's `ET-Client-Name` (see [`TokenSourceBuilder::client_name`](crate::TokenSourceBuilder::client_name)), if it has
    /// one. For another client name, or to allow plain `http://`, configure an
    /// [`EnturAuthLayer`] and convert it: `EnturAuthMiddleware::from(layer)`.
    pub fn new(source: TokenSource) -> Self {
        Self::from(EnturAuthLayer::new(source))
    }

    /// A usable token: the cached one, or the one shared fetch.
    async fn token(&self) -> Result<Arc<AccessToken>, Error> {
        match self.auth.source.current() {
            Some(token) => Ok(token),
            None => self.auth.source.token().await,
        }
    }

    /// Acts on an answer to a request that carried `token` to `sent_to`, by the same
    /// verdict as [`EnturAuth`](crate::EnturAuth): a refusal drops the token and is stamped
    /// on the response; a success for a token on probation has its body watched, and accepts
    /// the token once the body finishes. An answer from a host the token never reached
    /// (reqwest drops `Authorization` when a redirect leaves the host) says nothing about it.
    /// Returns the response and what the source did with a refused token.
    fn inspect(
        &self,
        mut response: Response,
        token: &AccessToken,
        sent_to: &Url,
    ) -> (Response, Option<Invalidation>) {
        let reached = same_origin(sent_to, response.url());
        let head = verdict::head_from(
            response.status(),
            response.headers(),
            self.reauth_on_408,
            reached,
        );
        let verdict = match head {
            Head::Body { grpc } if token.on_probation() => {
                return (self.watch(response, token, grpc), None);
            }
            Head::Body { .. } => return (response, None),
            Head::Done(verdict) => verdict,
        };
        let refusal = verdict::refusal(Some(self.auth.source.shared()), token.id(), verdict);
        if let Some(refusal) = refusal {
            response.extensions_mut().insert(refusal);
        }
        (response, refusal.map(|refusal| refusal.invalidation))
    }

    /// The response with its body watched by the layer's [`ResponseBody`]: its end accepts
    /// `token`. Only for a token on probation (rare), as it boxes the body.
    #[cold]
    fn watch(&self, response: Response, token: &AccessToken, grpc: bool) -> Response {
        let url = response.url().clone();
        let response: http::Response<::reqwest::Body> = response.into();
        let (mut parts, body) = response.into_parts();
        let watched = ResponseBody::watching(body, self.auth.source.key(), token.id(), grpc);
        // `From<http::Response>` takes the URL from an extension only reqwest can name.
        if let Ok(with_url) = http::Response::builder().url(url).body(()) {
            parts.extensions.extend(with_url.into_parts().0.extensions);
        }
        Response::from(http::Response::from_parts(
            parts,
            ::reqwest::Body::wrap(watched),
        ))
    }
}

/// Whether `answered` is the origin `sent_to` was: reqwest keeps `Authorization` on a
/// redirect only within the same scheme, host and port.
fn same_origin(sent_to: &Url, answered: &Url) -> bool {
    sent_to.scheme() == answered.scheme()
        && sent_to.host_str() == answered.host_str()
        && sent_to.port_or_known_default() == answered.port_or_known_default()
}

#[async_trait::async_trait]
impl Middleware for EnturAuthMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let url = request.url();
        if url.scheme() == "http" && !self.auth.allow_plain_http {
            if let Some(refused) = refuse_cleartext(url.host_str().unwrap_or_default()) {
                return Err(reqwest_middleware::Error::middleware(refused));
            }
        }
        if let Some(name) = &self.auth.client_name {
            request.headers_mut().insert(ET_CLIENT_NAME, name.clone());
        }
        let token = self
            .token()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        request
            .headers_mut()
            .insert(AUTHORIZATION, token.header_value().clone());
        let sent_to = request.url().clone();
        // A copy for the replay, made before the request is consumed; `None` for a stream.
        let replay = request.try_clone();
        let response = next.clone().run(request, extensions).await?;
        let (mut response, invalidation) = self.inspect(response, &token, &sent_to);
        let Some(invalidation) = invalidation else {
            return Ok(response);
        };
        let shared = Some(self.auth.source.shared());
        let Some(fresh) = verdict::replay(invalidation) else {
            return Ok(response);
        };
        let Some(mut replay) = replay else {
            set_replay(&mut response, ReplayOutcome::NotReplayable);
            verdict::replayed(shared, Outcome::NotReplayable);
            return Ok(response);
        };
        tracing::debug!(fresh, "token refused; replaying");
        // The refused answer is dropped here; the replay's answer, or the fetch's error
        // (which says more than the refusal would), is what the caller gets.
        drop(response);
        let token = match fresh {
            true => self.auth.source.token().await,
            false => Ok(token),
        };
        let token = match token {
            Ok(token) => token,
            Err(error) => {
                verdict::replayed(shared, Outcome::Failed);
                return Err(reqwest_middleware::Error::middleware(error));
            }
        };
        replay
            .headers_mut()
            .insert(AUTHORIZATION, token.header_value().clone());
        let response = match next.run(replay, extensions).await {
            Ok(response) => response,
            Err(error) => {
                verdict::replayed(shared, Outcome::Failed);
                return Err(error);
            }
        };
        let (mut response, refused) = self.inspect(response, &token, &sent_to);
        if refused.is_some() {
            set_replay(&mut response, ReplayOutcome::Replayed);
            verdict::replayed(shared, Outcome::Refused);
        } else {
            verdict::replayed(shared, Outcome::Accepted);
        }
        Ok(response)
    }
}

fn set_replay(response: &mut Response, outcome: ReplayOutcome) {
    if let Some(refusal) = response.extensions_mut().get_mut::<Refusal>() {
        refusal.replay = outcome;
    }
}
