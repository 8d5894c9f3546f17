//! Faults injected into the token endpoint ([`Fault`]) and into the protected API
//! ([`ApiFault`]).

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

/// The `error_description` of the bodies the fault constructors make.
const INJECTED: &str = "injected fault";

/// A fault injected into the token endpoint with [`TestServer::push_fault`]
/// or [`TestServer::set_sticky_fault`].
///
/// A fault is applied after the request has been counted and recorded.
///
/// [`TestServer::push_fault`]: crate::TestServer::push_fault
/// [`TestServer::set_sticky_fault`]: crate::TestServer::set_sticky_fault
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status, body and optional `Retry-After` header value
    /// (sent verbatim).
    ///
    /// The response has `Cache-Control: no-store` and, if the body is not
    /// empty, `Content-Type: application/json` when the body is valid JSON
    /// and `text/plain` otherwise. In [strict
    /// mode](crate::TestServerBuilder::strict_rfc), a 401 gets the server's `Basic`
    /// challenge and every answer `Pragma: no-cache`.
    Status {
        /// Status of the response.
        status: StatusCode,
        /// Body of the response.
        body: String,
        /// Value of the `Retry-After` header, if any.
        retry_after: Option<String>,
    },
    /// Answer with an arbitrary status, headers and body (for instance
    /// malformed JSON, a huge body or a strange token).
    ///
    /// Exactly the given headers are sent (headers whose name or value is not
    /// valid HTTP are skipped with a warning).
    Respond {
        /// Status of the response.
        status: StatusCode,
        /// Headers of the response, as `(name, value)` pairs, in order.
        headers: Vec<(String, String)>,
        /// Body of the response.
        body: Bytes,
    },
    /// Wait this long (with [`tokio::time::sleep`], so paused clocks work),
    /// then answer normally.
    Delay(Duration),
    /// Never answer: the response future stays pending forever (over TCP the
    /// connection is kept open silently).
    Hang,
    /// Refuse the connection: the in-process [`TokenTransport`] fails with an
    /// [`io::Error`] of kind [`io::ErrorKind::ConnectionRefused`]; over TCP
    /// the connection is closed without an answer.
    ///
    /// [`TokenTransport`]: crate::TokenTransport
    /// [`io::Error`]: std::io::Error
    /// [`io::ErrorKind::ConnectionRefused`]: std::io::ErrorKind::ConnectionRefused
    Refuse,
    /// Process the request normally (so a valid request gets a 200 with a
    /// valid token response) but send the response body one byte per
    /// `interval`, as a streamed body (over TCP and in-process).
    Trickle {
        /// Time before each byte of the body.
        interval: Duration,
    },
}

impl Fault {
    /// An RFC 6749 (section 5.2) error response with this status and
    /// `error` code, i.e. the body
    /// `{"error": code, "error_description": "injected fault"}`.
    pub fn oauth_error(status: StatusCode, code: &str) -> Fault {
        let body = json!({ "error": code, "error_description": "injected fault" });
        Fault::Status {
            status,
            body: body.to_string(),
            retry_after: None,
        }
    }

    /// A response with this status, an empty body and no `Retry-After`.
    pub fn status(status: StatusCode) -> Fault {
        Fault::Status {
            status,
            body: String::new(),
            retry_after: None,
        }
    }

    /// [`Fault::Respond`] from plain values: exactly these headers and body, for replaying
    /// what a real server sends.
    ///
    /// # Panics
    ///
    /// If `status` is not a valid HTTP status code (100 to 999).
    pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Fault {
        Fault::Respond {
            status: StatusCode::from_u16(status).expect("a status code from 100 to 999"),
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            body: body.into(),
        }
    }
}

/// A fault injected into the protected API with [`TestServer::push_api_fault`] or
/// [`TestServer::set_sticky_api_fault`].
///
/// A fault is applied after the request has been counted and logged, whatever token it
/// carries. The constructors make the answers real APIs send: [`invalid_token`] (401 with
/// `WWW-Authenticate: Bearer error="invalid_token"`), [`insufficient_scope`] (403, RFC 6750
/// section 3.1), [`forbidden`], [`too_many_requests`], [`service_unavailable`],
/// [`entur_token_expired`] (Entur's 408), and gRPC statuses in the headers ([`grpc`]) or in
/// the trailers ([`grpc_in_trailers`]).
///
/// gRPC answers are marked HTTP/2, as gRPC runs over HTTP/2 only, when they are reached
/// in-process through [`TestServer::api_service`]; the TCP server speaks HTTP/1.1, where
/// trailers reach only a client that sent `TE: trailers`.
///
/// [`invalid_token`]: ApiFault::invalid_token
/// [`insufficient_scope`]: ApiFault::insufficient_scope
/// [`forbidden`]: ApiFault::forbidden
/// [`too_many_requests`]: ApiFault::too_many_requests
/// [`service_unavailable`]: ApiFault::service_unavailable
/// [`entur_token_expired`]: ApiFault::entur_token_expired
/// [`grpc`]: ApiFault::grpc
/// [`grpc_in_trailers`]: ApiFault::grpc_in_trailers
/// [`TestServer::push_api_fault`]: crate::TestServer::push_api_fault
/// [`TestServer::set_sticky_api_fault`]: crate::TestServer::set_sticky_api_fault
/// [`TestServer::api_service`]: crate::TestServer::api_service
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ApiFault {
    /// Answer with this status, body and optional `WWW-Authenticate` and `Retry-After`
    /// header values (sent verbatim).
    ///
    /// If the body is not empty, `Content-Type` is `application/json` when the body is valid
    /// JSON and `text/plain` otherwise. In [strict mode](crate::TestServerBuilder::strict_rfc), a
    /// 401 without a `www_authenticate` gets the server's `Bearer` challenge, as RFC 6750
    /// section 3 requires.
    Status {
        /// Status of the response.
        status: StatusCode,
        /// Value of the `WWW-Authenticate` header, if any.
        www_authenticate: Option<String>,
        /// Value of the `Retry-After` header, if any.
        retry_after: Option<String>,
        /// Body of the response.
        body: String,
    },
    /// A gRPC status in the headers: HTTP 200, `content-type: application/grpc`,
    /// `grpc-status` and `grpc-message` (percent-encoded, as gRPC requires) and no body, the
    /// "Trailers-Only" answer of a gRPC server to a call that fails before any message.
    Grpc {
        /// The gRPC status code (16 `UNAUTHENTICATED`, 7 `PERMISSION_DENIED`, 14
        /// `UNAVAILABLE`, …).
        code: u32,
        /// The `grpc-message`, before percent-encoding.
        message: String,
    },
    /// A gRPC status in the trailers: HTTP 200, `content-type: application/grpc`, this body
    /// (gRPC messages, or nothing), then trailers with `grpc-status` and `grpc-message`, as
    /// a gRPC server ends a call that fails after the headers went out.
    GrpcTrailers {
        /// The gRPC status code.
        code: u32,
        /// The `grpc-message`, before percent-encoding.
        message: String,
        /// The body before the trailers.
        body: Bytes,
    },
    /// Answer with an arbitrary status, headers and body. Exactly the given headers are sent
    /// (headers whose name or value is not valid HTTP are skipped with a warning).
    Respond {
        /// Status of the response.
        status: StatusCode,
        /// Headers of the response, as `(name, value)` pairs, in order.
        headers: Vec<(String, String)>,
        /// Body of the response.
        body: Bytes,
    },
    /// Wait this long (with [`tokio::time::sleep`], so paused clocks work), then answer
    /// normally.
    Delay(Duration),
    /// Never answer: the response future stays pending forever (over TCP the connection is
    /// kept open silently).
    Hang,
}

impl ApiFault {
    /// A response with this status, an empty body and no extra header.
    pub fn status(status: StatusCode) -> ApiFault {
        ApiFault::Status {
            status,
            www_authenticate: None,
            retry_after: None,
            body: String::new(),
        }
    }

    /// 401 with `WWW-Authenticate: Bearer error="invalid_token", error_description="…"`
    /// (RFC 6750 section 3.1): the token is refused, as for an expired or revoked token.
    pub fn invalid_token() -> ApiFault {
        bearer_error(StatusCode::UNAUTHORIZED, "invalid_token", None)
    }

    /// 403 with `WWW-Authenticate: Bearer error="insufficient_scope", scope="…"` (RFC 6750
    /// section 3.1): the token is valid but lacks the `scope` the request needs.
    pub fn insufficient_scope(scope: &str) -> ApiFault {
        bearer_error(StatusCode::FORBIDDEN, "insufficient_scope", Some(scope))
    }

    /// 403 without a challenge, as Entur's APIs answer a valid token without the permission
    /// the request needs.
    pub fn forbidden() -> ApiFault {
        json_fault(StatusCode::FORBIDDEN, "forbidden", None, None)
    }

    /// 429, with `Retry-After` in seconds if given.
    pub fn too_many_requests(retry_after_secs: Option<u64>) -> ApiFault {
        json_fault(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            None,
            retry_after_secs,
        )
    }

    /// 503, with `Retry-After` in seconds if given.
    pub fn service_unavailable(retry_after_secs: Option<u64>) -> ApiFault {
        json_fault(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            None,
            retry_after_secs,
        )
    }

    /// 408, which Entur's APIs answer when the token expired during the session (see
    /// [`TokenEndpoint::reauth_on_408`](entur_auth::TokenEndpoint::reauth_on_408)).
    pub fn entur_token_expired() -> ApiFault {
        json_fault(StatusCode::REQUEST_TIMEOUT, "token_expired", None, None)
    }

    /// A gRPC status in the headers ([`ApiFault::Grpc`]).
    pub fn grpc(code: u32, message: impl Into<String>) -> ApiFault {
        ApiFault::Grpc {
            code,
            message: message.into(),
        }
    }

    /// A gRPC status in the trailers, after an empty body ([`ApiFault::GrpcTrailers`]).
    pub fn grpc_in_trailers(code: u32, message: impl Into<String>) -> ApiFault {
        ApiFault::GrpcTrailers {
            code,
            message: message.into(),
            body: Bytes::new(),
        }
    }

    /// gRPC `UNAUTHENTICATED` (16) in the headers.
    pub fn grpc_unauthenticated() -> ApiFault {
        ApiFault::grpc(16, "invalid token (injected fault)")
    }

    /// gRPC `PERMISSION_DENIED` (7) in the headers.
    pub fn grpc_permission_denied() -> ApiFault {
        ApiFault::grpc(7, "permission denied (injected fault)")
    }
}

/// An RFC 6750 section 3 error: the challenge, and the same error in a JSON body.
fn bearer_error(status: StatusCode, code: &str, scope: Option<&str>) -> ApiFault {
    let mut challenge = format!(r#"Bearer error="{code}", error_description="{INJECTED}""#);
    if let Some(scope) = scope {
        challenge.push_str(&format!(r#", scope="{}""#, scope.replace(['"', '\\'], "")));
    }
    json_fault(status, code, Some(challenge), None)
}

fn json_fault(
    status: StatusCode,
    code: &str,
    www_authenticate: Option<String>,
    retry_after_secs: Option<u64>,
) -> ApiFault {
    ApiFault::Status {
        status,
        www_authenticate,
        retry_after: retry_after_secs.map(|secs| secs.to_string()),
        body: json!({ "error": code, "error_description": INJECTED }).to_string(),
    }
}

/// Percent-encodes a `grpc-message`: bytes outside printable ASCII, and `%` (gRPC over
/// HTTP/2, "Responses").
pub(super) fn grpc_message(message: &str) -> String {
    let mut encoded = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}
