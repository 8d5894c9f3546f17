//! The one handler behind the TCP server and the in-process services: routing, the
//! well-known documents, and the helpers the endpoints share.

use std::io;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};

use crate::{
    api, log, token_endpoint, BoxError, RecordedRequest, RequestKind, Shared, TestBody, API_PATH,
    JWKS_PATH, MAX_BODY, OAUTH_METADATA_PATH, OPENID_CONFIGURATION_PATH, REALM, TOKEN_PATH,
};

/// The one request handler of the server, for TCP and in-process requests.
///
/// Fails only for [`Fault::Refuse`].
///
/// [`Fault::Refuse`]: crate::Fault::Refuse
pub(super) async fn handle<B>(
    shared: Arc<Shared>,
    request: Request<B>,
) -> io::Result<Response<TestBody>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let path = request.uri().path();
    if path == TOKEN_PATH {
        token_endpoint::token_endpoint(&shared, request).await
    } else if path == API_PATH || path.starts_with("/api/") {
        Ok(api::api(&shared, request).await)
    } else {
        Ok(other(&shared, request).await)
    }
}

/// Reads the whole body (up to [`MAX_BODY`]) and returns the request parts.
pub(super) async fn read_request<B>(
    request: Request<B>,
) -> (RecordedRequest, Result<Bytes, BoxError>)
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(|collected| collected.to_bytes());
    let recorded = RecordedRequest {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body: body.as_ref().map(Bytes::clone).unwrap_or_default(),
    };
    (recorded, body)
}

/// The JWK Set, the metadata, and 404 for any other path.
async fn other<B>(shared: &Shared, request: Request<B>) -> Response<TestBody>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let (recorded, _) = read_request(request).await;
    let kind = match recorded.uri.path() {
        JWKS_PATH => RequestKind::Jwks,
        OPENID_CONFIGURATION_PATH | OAUTH_METADATA_PATH => RequestKind::Metadata,
        _ => RequestKind::NotFound,
    };
    let method = recorded.method.clone();
    let path = recorded.uri.path().to_owned();
    let seq = shared.state().log.push(kind, recorded, None);
    let response = match kind {
        RequestKind::NotFound => {
            tracing::debug!(%method, path, "test server: unknown path");
            no_store_json(
                StatusCode::NOT_FOUND,
                json!({ "error": "not_found", "error_description": "no such endpoint" }),
            )
        }
        _ if method != Method::GET && method != Method::HEAD => {
            let mut response = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "error": "method_not_allowed", "error_description": "only GET" }),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        RequestKind::Jwks => json_response(StatusCode::OK, &shared.signer.jwks()),
        _ => json_response(StatusCode::OK, &metadata(shared)),
    };
    let answer = log::summarize(&response, false);
    shared.state().log.answered(seq, answer, None);
    response
}

/// The authorization server's metadata (RFC 8414 section 2, and the fields OpenID Connect
/// Discovery 1.0 shares with it): what a client-credentials client and a resource server
/// read.
fn metadata(shared: &Shared) -> Value {
    let mut auth_methods: Vec<&str> = if shared.strict {
        vec!["client_secret_basic"]
    } else {
        vec!["client_secret_basic", "client_secret_post"]
    };
    let mut grants = vec!["client_credentials"];
    if shared.requires_client_certificate {
        auth_methods.push("tls_client_auth");
    }
    if shared.client_key.is_some() {
        auth_methods.push("private_key_jwt");
        grants.push("urn:ietf:params:oauth:grant-type:jwt-bearer");
    }
    json!({
        "issuer": shared.issuer,
        "token_endpoint": shared.token_url,
        "jwks_uri": shared.jwks_url,
        "grant_types_supported": grants,
        "token_endpoint_auth_methods_supported": auth_methods,
        "id_token_signing_alg_values_supported": ["RS256"],
    })
}

// ---------------------------------------------------------------------------
// Response helpers
// ---------------------------------------------------------------------------

/// The `Date` header, by the server's clock (see
/// [`TestServerBuilder::issuer_clock_offset_secs`]). Over TCP, hyper keeps it
/// rather than adding its own.
///
/// [`TestServerBuilder::issuer_clock_offset_secs`]: crate::TestServerBuilder::issuer_clock_offset_secs
pub(super) fn insert_date(shared: &Shared, headers: &mut HeaderMap) {
    let date = httpdate::fmt_http_date(UNIX_EPOCH + shared.issuer_now());
    let value = HeaderValue::from_str(&date).expect("an HTTP date is a valid header value");
    headers.insert(http::header::DATE, value);
}

/// `application/json` response.
pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<TestBody> {
    let mut response = Response::new(TestBody::full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `application/json` response that must not be cached.
pub(super) fn no_store_json(status: StatusCode, body: Value) -> Response<TestBody> {
    let mut response = json_response(status, &body);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// RFC 6749 section 5.2 error response.
pub(super) fn oauth_error(
    status: StatusCode,
    error: &str,
    description: &str,
) -> Response<TestBody> {
    no_store_json(
        status,
        json!({ "error": error, "error_description": description }),
    )
}

/// The challenge RFC 6749 section 5.2 asks for when a client that used HTTP Basic (or, in
/// strict mode, any client) fails to authenticate.
pub(super) fn basic_challenge_value() -> HeaderValue {
    HeaderValue::from_str(&format!(r#"Basic realm="{REALM}""#))
        .expect("the realm is a valid header value")
}

/// Adds [`basic_challenge_value`] to a response.
pub(super) fn basic_challenge(mut response: Response<TestBody>) -> Response<TestBody> {
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, basic_challenge_value());
    response
}

/// The answer of a `Status` fault: this status and body (typed as JSON when it parses, as
/// text otherwise), with the given header values if they are valid.
pub(super) fn status_response(
    status: StatusCode,
    body: String,
    extra: &[(HeaderName, Option<&str>)],
) -> Response<TestBody> {
    let mut response = Response::new(TestBody::empty());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if !body.is_empty() {
        let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    for (name, value) in extra {
        let Some(value) = value else { continue };
        match HeaderValue::from_str(value) {
            Ok(value) => {
                headers.insert(name.clone(), value);
            }
            Err(_) => tracing::warn!(
                %name,
                value,
                "test server: invalid header value in fault, skipped"
            ),
        }
    }
    *response.body_mut() = TestBody::full(body);
    response
}

/// The answer of a `Respond` fault: exactly these headers (invalid ones skipped).
pub(super) fn respond(
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: Bytes,
) -> Response<TestBody> {
    let mut response = Response::new(TestBody::full(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => tracing::warn!(name, value, "test server: invalid header in fault, skipped"),
        }
    }
    response
}
