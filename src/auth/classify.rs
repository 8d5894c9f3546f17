//! What an API's answer means for authentication: re-authenticate, fail, or leave it to the
//! caller. Entur's documentation names what each status means; gRPC servers (tonic) answer
//! HTTP 200 with a `grpc-status` header, or send the status in the trailers after the body,
//! and both are read.
//!
//! | answer | meaning | [`Decision`] |
//! |---|---|---|
//! | 401, gRPC `UNAUTHENTICATED` (16) in headers or trailers | token invalid, expired or revoked; or the secret changed | [`Decision::Reauthenticate`] |
//! | 408 | Entur: the token expired during the session (elsewhere usually a proxy's timeout; see [`TokenEndpoint::reauth_on_408`](crate::TokenEndpoint::reauth_on_408)) | [`Decision::Reauthenticate`] |
//! | 403, gRPC `PERMISSION_DENIED` (7), 401 with a Bearer challenge `error="insufficient_scope"` | token valid, permission missing | [`Decision::Fail`] |
//! | 301, 302, 307, 308 | Entur: plain HTTP redirected to HTTPS | [`Decision::Redirect`] |
//! | 405 | usually plain HTTP against an HTTPS-only API | [`Decision::Fail`] |
//! | 429, 503 | load | [`Decision::RetryLater`], with `Retry-After` |
//! | anything else | not about authentication | [`Decision::Pass`] |
//!
//! `WWW-Authenticate` is read as RFC 9110 section 11.6.1 defines it: several challenges per
//! field and per header line, quoted strings that contain commas.
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
//! [`EnturAuth`](crate::EnturAuth) acts on refusals itself (it drops the refused token);
//! [`ReplayLayer`](crate::auth::replay::ReplayLayer) replays the request once;
//! [`ErrorForStatusLayer`](crate::auth::error_for_status::ErrorForStatusLayer) turns the
//! failures into typed errors.

use std::time::{Duration, SystemTime};

use http::header::{HeaderName, LOCATION};
use http::{HeaderMap, Response, StatusCode, Uri};

use crate::error::sanitize;
use crate::oauth::challenge::bearer_error;

/// The `grpc-status` header (or trailer) of gRPC responses.
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// gRPC `UNAUTHENTICATED`.
const GRPC_UNAUTHENTICATED: u32 = 16;
/// gRPC `PERMISSION_DENIED`.
const GRPC_PERMISSION_DENIED: u32 = 7;

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
    /// A redirect. Entur redirects plain-HTTP requests to HTTPS, so for a request that went
    /// over `http://` this is a configuration error; for an `https://` request it is the
    /// API's own business (a pre-signed download URL, say) and is passed on.
    Redirect {
        /// The redirect status.
        status: StatusCode,
        /// Where to, without its query or fragment (which may hold credentials).
        location: Option<String>,
    },
    /// The API is overloaded: leave it to the caller's retry policy, after `retry_after`.
    RetryLater {
        /// The API's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
}

pub use crate::source::Reauth;

/// Why a request failed for good.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// HTTP 403, gRPC `PERMISSION_DENIED`, or a 401 whose Bearer challenge says
    /// `insufficient_scope`: the token is valid but lacks the permission.
    PermissionDenied {
        /// Whether it came as a gRPC status.
        grpc: bool,
    },
    /// HTTP 405: usually plain HTTP against an API that only speaks HTTPS.
    MethodNotAllowed,
}

/// Classifies an API's answer by Entur's table (a 408 means the token expired). See the
/// [module docs](self).
pub fn classify<B>(response: &Response<B>) -> Decision {
    classify_parts(response.status(), response.headers())
}

/// Classifies an answer from its status and headers, by Entur's table.
pub(crate) fn classify_parts(status: StatusCode, headers: &HeaderMap) -> Decision {
    match status.as_u16() {
        401 if bearer_error(headers).as_deref() == Some("insufficient_scope") => {
            Decision::Fail(Rejection::PermissionDenied { grpc: false })
        }
        401 => Decision::Reauthenticate(Reauth::Unauthorized),
        408 => Decision::Reauthenticate(Reauth::SessionTimeout),
        403 => Decision::Fail(Rejection::PermissionDenied { grpc: false }),
        301 | 302 | 307 | 308 => Decision::Redirect {
            status,
            location: location(headers),
        },
        405 => Decision::Fail(Rejection::MethodNotAllowed),
        429 | 503 => Decision::RetryLater {
            retry_after: crate::oauth::exchange::retry_after(headers, SystemTime::now()),
        },
        _ => classify_grpc(headers),
    }
}

fn classify_grpc(headers: &HeaderMap) -> Decision {
    match grpc_status(headers) {
        Some(GRPC_UNAUTHENTICATED) => Decision::Reauthenticate(Reauth::GrpcUnauthenticated),
        Some(GRPC_PERMISSION_DENIED) => Decision::Fail(Rejection::PermissionDenied { grpc: true }),
        _ => Decision::Pass,
    }
}

/// Whether an answer refuses the token, for a source that does (or, for 408, does not)
/// follow Entur's table.
pub(crate) fn refusal(
    status: StatusCode,
    headers: &HeaderMap,
    reauth_on_408: bool,
) -> Option<Reauth> {
    match classify_parts(status, headers) {
        Decision::Reauthenticate(Reauth::SessionTimeout) if !reauth_on_408 => None,
        Decision::Reauthenticate(reason) => Some(reason),
        _ => None,
    }
}

/// The code of a gRPC status in headers (trailers-only responses) or trailers.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// The `Location` of a redirect, fit for an error message: scheme, host and path only. A
/// query (a pre-signed URL's signature, say) or userinfo would put credentials into logs.
pub(crate) fn location(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(LOCATION)?.to_str().ok()?;
    let without_query = raw.split(['?', '#']).next().unwrap_or_default();
    let shown = match without_query.parse::<Uri>() {
        Ok(uri) if uri.host().is_some() => {
            format!(
                "{}://{}{}",
                uri.scheme_str().unwrap_or("https"),
                uri.host().unwrap_or_default(),
                uri.port().map(|p| format!(":{p}")).unwrap_or_default()
            ) + uri.path()
        }
        Ok(uri) => uri.path().to_owned(),
        Err(_) => without_query
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    Some(sanitize(&shown, 200))
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
                Redirect {
                    status: StatusCode::from_u16(status).unwrap(),
                    location: Some("https://api.entur.io/x".into())
                }
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
