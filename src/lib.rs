//! Tower middleware that authenticates outgoing requests with the OAuth2 client credentials
//! grant, as Entur's partner APIs require, and works with any OAuth2 authorization server.
//!
//! A [`TokenSource`] holds the current access token in an `ArcSwap` and refreshes it in the
//! background before it expires, one fetch at a time for any number of callers.
//! [`EnturAuthLayer`] wraps any tower HTTP service (a hyper-util client, a tonic channel, the
//! client inside an axum service) and sets `Authorization: Bearer <token>` and Entur's
//! `ET-Client-Name` on every request, with no lock and no allocation per request.
//!
//! ```no_run
//! use entur_auth::{ClientName, Credentials, EnturAuthLayer, Environment, TokenEndpoint, TokenSource};
//! use tower::ServiceBuilder;
//!
//! # async fn run<S>(client: S) -> Result<(), entur_auth::Error> {
//! let source = TokenSource::builder(
//!     TokenEndpoint::entur(Environment::Staging),
//!     Credentials::from_env()?, // ENTUR_CLIENT_ID, ENTUR_CLIENT_SECRET
//! )
//! .build()?;
//!
//! let api = ServiceBuilder::new()
//!     .layer(
//!         EnturAuthLayer::new(source)
//!             .client_name(ClientName::new("acme-ticketing")?)
//!             .with_replay(), // a refused token is replaced and the request sent once more
//!     )
//!     .service(client);
//! # let _ = api; Ok(()) }
//! ```
//!
//! The auth layer drops a token the API refuses (401, an Entur 408, gRPC `UNAUTHENTICATED`)
//! wherever it sits in the stack; [`replay`] adds the one replay, [`error_for_status`] typed
//! errors, [`classify`] the table behind both. The background refresher is supervised: see
//! [`TokenSource`].
//!
//! # Features
//!
//! - `rustls` (default): the HTTPS client for the token endpoint (hyper-util + rustls with
//!   the webpki roots). Without it, give a transport with
//!   [`TokenSourceBuilder::transport`].
//! - `shared-store`: `store`, one token shared by a fleet through a [`store::TokenStore`],
//!   encrypted at rest.
//! - `redis`: `store::RedisStore`, the token store on Redis.
//! - `tonic`: `tonic::EnturAuthInterceptor`, the same tokens for tonic clients built with
//!   `with_interceptor`.
//! - `reqwest`: `reqwest::EnturAuthMiddleware`, the same token source for reqwest clients
//!   through reqwest-middleware 0.5 (reqwest 0.13). It enables no TLS of reqwest's: your
//!   client chooses it.
//! - `serde`: `Deserialize` for [`Config`] (configuration files), `Serialize` for
//!   [`Health`] and [`Status`] (health endpoints).
//! - `metrics`: `metrics`, token requests, refusals, replays, the shared store and health on
//!   the `metrics` crate's facade, for any exporter.
//!
//! For tests and demos, the [`entur-auth-test`](https://docs.rs/entur-auth-test) crate runs
//! an OAuth2 authorization server and protected API on loopback, with fault injection.
//!
//! Besides the refresher task on your runtime, the crate starts one thread per process,
//! `entur-auth-watchdog`, asleep until its next deadline: it notices a refresher whose
//! runtime stopped running it (see [`TokenSourceBuilder::stall_timeout`]).
//!
//! # Errors
//!
//! Token failures are [`Error`]s: match on [`Error::kind`], act on
//! [`is_transient`](Error::is_transient) or [`is_credentials`](Error::is_credentials), log
//! [`report`](Error::report). [`EnturAuth`] fails with [`BoxError`] like other tower
//! middleware; `downcast_ref` gives back an [`Error`], an
//! [`auth::CleartextRefused`], or, from
//! [`ErrorForStatus`](error_for_status::ErrorForStatus), an [`error_for_status::Refused`].
#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
mod config;
mod error;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod oauth;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
mod source;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod tonic;

pub use auth::{classify, error_for_status, replay};
pub use auth::{EnturAuth, EnturAuthLayer, Refusal, ReplayOutcome, ET_CLIENT_NAME};
pub use config::Config;
pub use error::{BoxError, Error, ErrorKind, OAuthErrorCode, Report};
pub use oauth::assertion;
pub use oauth::{
    BodyEncoding, ClientAuth, ClientName, ClientSecret, Credentials, Environment,
    MaskinportenEnvironment, TokenEndpoint, TokenRequestBody,
};
pub use replay::ReplayLayer;
#[cfg(feature = "shared-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "shared-store")))]
pub use source::store;
pub use source::{
    AccessToken, FetchOutcome, Health, Invalidation, Status, StoreState, TokenId, TokenOrigin,
    TokenSource, TokenSourceBuilder, WeakTokenSource,
};

/// Entry points for the fuzz targets in `fuzz/` and the property tests. Not part of the API.
#[doc(hidden)]
pub mod __fuzz {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, StatusCode};

    use crate::oauth::exchange::{read_response, RawResponse};
    use crate::source::token::{AccessToken, Claims, Issued, Lifecycle};

    /// Reads a token endpoint answer the way the token source does, up to the finished
    /// `AccessToken`, with the request sent now. Returns the token's lifetime, or the error.
    ///
    /// `header` is sent as both `Retry-After` and `Date`, the two header values the reader
    /// parses: error answers read the first, successes the second (the token server's clock).
    pub fn token_response(
        status: u16,
        header: &[u8],
        body: &[u8],
    ) -> Result<Duration, crate::Error> {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(header) {
            headers.insert(http::header::RETRY_AFTER, value.clone());
            headers.insert(http::header::DATE, value);
        }
        let raw = RawResponse {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            headers,
            body: Bytes::copy_from_slice(body),
        };
        let granted = read_response(&raw, "fuzz-secret", crate::ClientAuth::Body)?;
        let sent_at = tokio::time::Instant::now();
        let issued = Issued {
            access_token: &granted.access_token,
            expires_in: granted.expires_in,
            scope: granted.scope,
            sent_at,
            sent_wall: SystemTime::now(),
            server_date: granted.server_date,
        };
        let token = AccessToken::from_issued(issued, &Lifecycle::default(), 0.5)?;
        assert!(token.header_value().is_sensitive());
        assert!(token.refresh_at() <= token.usable_until());
        assert!(token.usable_until() <= token.expires_at());
        Ok(token.expires_at() - sent_at)
    }

    /// The claims this crate reads from a JWT, as `jwt_claims` returns them.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct JwtClaims {
        /// `exp`, seconds since the epoch, fractions dropped.
        pub exp: Option<u64>,
        /// `iat`, seconds since the epoch, fractions dropped.
        pub iat: Option<u64>,
        /// `scope`: the string, or an array of strings joined with spaces.
        pub scope: Option<String>,
    }

    /// Reads the claims this crate uses from a JWT-shaped token; `None` when it is not one
    /// with a JSON object as payload.
    pub fn jwt_claims(token: &str) -> Option<JwtClaims> {
        Claims::read(token).map(|c| JwtClaims {
            exp: c.exp,
            iat: c.iat,
            scope: c.scope,
        })
    }
}
