//! The token endpoint: the client-credentials grant, Auth0's way (audience required) or
//! strictly RFC 6749's.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use serde_json::{json, Value};

use crate::body::BodyInner;
use crate::handler::{
    basic_challenge, basic_challenge_value, insert_date, no_store_json, oauth_error, read_request,
    respond, status_response,
};
use crate::{
    assertion, log, Answer, BoxError, Fault, IssuedToken, PeerCertificate, RecordedRequest,
    RequestKind, Shared, TestBody, ORGANISATION_CLAIM,
};

/// Auth0's description when a token request names no audience and the tenant has no
/// default audience (with `403` and `"error":"access_denied"`).
///
/// Auth0's reference documentation does not show this answer; the shape is the one Auth0
/// integrations quote in their troubleshooting notes (`OAuth token exchange failed: 403 ...
/// "access_denied" ... "No audience parameter was provided"`, and `access_denied: No
/// audience parameter was provided, and no default audience has been configured`, found with
/// a search of public repositories), and hashicorp/terraform-provider-auth0#24 reports the
/// `403 Forbidden` from `/oauth/token` when the audience is missing. Auth0's support article
/// "Client Credentials Grant Requires 'audience' Parameter" describes the tenant setting
/// (a default audience) that [`TestServerBuilder::require_audience`]`(false)` stands for.
///
/// [`TestServerBuilder::require_audience`]: crate::TestServerBuilder::require_audience
pub(super) const NO_AUDIENCE: &str =
    "No audience parameter was provided, and no default audience has been configured";

/// Auth0's description for an audience that names no API of the tenant (`403`,
/// `"error":"access_denied"`), as quoted in the same troubleshooting notes
/// (`{"error":"access_denied","error_description":"Service not found"}`); Auth0 follows it
/// with the audience asked for.
pub(super) fn unknown_audience(audience: &str) -> String {
    format!("Service not found: {audience}")
}

pub(super) async fn token_endpoint<B>(
    shared: &Shared,
    request: Request<B>,
) -> io::Result<Response<TestBody>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let certificate = request.extensions().get::<PeerCertificate>().cloned();
    if let Some(certificate) = &certificate {
        shared
            .state()
            .client_certificates
            .push(certificate.0.clone());
    }
    let (recorded, body) = read_request(request).await;
    let (seq, fault) = {
        let mut state = shared.state();
        state.last_token_request = Some(recorded.clone());
        let seq = state.log.push(RequestKind::Token, recorded.clone(), None);
        let fault = state
            .faults
            .pop_front()
            .or_else(|| state.sticky_fault.clone());
        (seq, fault)
    };
    let mut trickle = None;
    if let Some(fault) = fault {
        tracing::debug!(?fault, "test server: applying fault to token request");
        let injected = match fault {
            Fault::Status {
                status,
                body,
                retry_after,
            } => {
                let mut response = status_response(
                    status,
                    body,
                    &[(http::header::RETRY_AFTER, retry_after.as_deref())],
                );
                response
                    .headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                insert_date(shared, response.headers_mut());
                Some(response)
            }
            Fault::Respond {
                status,
                headers,
                body,
            } => {
                let response = respond(status, headers, body);
                shared
                    .state()
                    .log
                    .answered(seq, log::summarize(&response, true), None);
                return Ok(response);
            }
            Fault::Delay(delay) => {
                tokio::time::sleep(delay).await;
                None
            }
            Fault::Hang => std::future::pending().await,
            Fault::Refuse => {
                shared.state().log.answered(seq, Answer::Refused, None);
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "connection refused (injected fault)",
                ));
            }
            Fault::Trickle { interval } => {
                trickle = Some(interval);
                None
            }
        };
        if let Some(response) = injected {
            let response = strict_headers(shared, response);
            shared
                .state()
                .log
                .answered(seq, log::summarize(&response, true), None);
            return Ok(response);
        }
    }
    let (mut response, issued_jti) = token_response(shared, &recorded, body, certificate.is_some());
    insert_date(shared, response.headers_mut());
    let response = strict_headers(shared, response);
    tracing::debug!(status = %response.status(), "test server: token request answered");
    shared
        .state()
        .log
        .answered(seq, log::summarize(&response, false), issued_jti);
    Ok(match trickle {
        None => response,
        Some(interval) => {
            let (parts, body) = response.into_parts();
            let data = match body.inner {
                BodyInner::Full(data) => data.unwrap_or_default(),
                BodyInner::Trickle { remaining, .. } => remaining,
                BodyInner::Trailers { data, .. } => data.unwrap_or_default(),
            };
            Response::from_parts(parts, TestBody::trickle(data, interval))
        }
    })
}

/// In strict mode: `Pragma: no-cache` (RFC 6749 section 5.1) and a challenge with every 401
/// (section 5.2).
fn strict_headers(shared: &Shared, mut response: Response<TestBody>) -> Response<TestBody> {
    if shared.strict {
        let unauthorized = response.status() == StatusCode::UNAUTHORIZED;
        let headers = response.headers_mut();
        headers.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
        if unauthorized && !headers.contains_key(WWW_AUTHENTICATE) {
            headers.insert(WWW_AUTHENTICATE, basic_challenge_value());
        }
    }
    response
}

/// Client-credentials grant, after faults: the answer, and the `jti` of the token issued.
pub(super) fn token_response(
    shared: &Shared,
    request: &RecordedRequest,
    body: Result<Bytes, BoxError>,
    client_certificate: bool,
) -> (Response<TestBody>, Option<String>) {
    match grant(shared, request, body, client_certificate) {
        Ok((body, jti)) => (no_store_json(StatusCode::OK, body), Some(jti)),
        Err(response) => (response, None),
    }
}

/// The token response's body and the token's `jti`, or the error answer.
// The error is the answer itself, made at most once per request: boxing it gains nothing.
#[allow(clippy::result_large_err)]
fn grant(
    shared: &Shared,
    request: &RecordedRequest,
    body: Result<Bytes, BoxError>,
    client_certificate: bool,
) -> Result<(Value, String), Response<TestBody>> {
    if request.method != Method::POST {
        let mut response = oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "the token endpoint accepts only POST",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return Err(response);
    }
    let body = body.map_err(|_| {
        oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body could not be read",
        )
    })?;
    let params = parse_params(&request.headers, &body, shared.strict).map_err(|description| {
        oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
    })?;

    // Client authentication: HTTP Basic (RFC 6749 section 2.3.1) or body.
    let basic = match request.headers.get(AUTHORIZATION) {
        None => None,
        Some(value) => match parse_basic(value) {
            Ok(credentials) => Some(credentials),
            Err(BasicError::OtherScheme) => {
                return Err(basic_challenge(oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "unsupported client authentication scheme",
                )))
            }
            Err(BasicError::Malformed) => {
                return Err(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "malformed Basic authorization header",
                ))
            }
        },
    };
    let used_basic = basic.is_some();
    let (client_id, client_secret) = match basic {
        Some((id, secret)) => {
            if params.client_secret.is_some() {
                return Err(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client credentials sent both in the Authorization header and in the body",
                ));
            }
            if params
                .client_id
                .as_ref()
                .is_some_and(|body_id| *body_id != id)
            {
                return Err(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_id in the body differs from the Authorization header",
                ));
            }
            (Some(id), Some(secret))
        }
        None => (params.client_id, params.client_secret),
    };

    let jwt_bearer = match params.grant_type.as_deref() {
        None => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing grant_type",
            ))
        }
        Some("client_credentials") => false,
        Some(JWT_BEARER_GRANT) if shared.client_key.is_some() => true,
        Some(_) => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                if shared.client_key.is_some() {
                    "only the client_credentials and jwt-bearer grants are supported"
                } else {
                    "only the client_credentials grant is supported"
                },
            ))
        }
    };

    // The JWT bearer grant (RFC 7523 section 2.1): the assertion is the grant, and the
    // client's proof. Its scope is a claim (Maskinporten's way) or a parameter.
    if jwt_bearer {
        let Some(grant) = params.assertion.as_deref() else {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing assertion",
            ));
        };
        let claims =
            assertion::verify(shared, grant, assertion::Use::Grant).map_err(|description| {
                oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", &description)
            })?;
        let scope = claims["scope"].as_str().map(str::to_owned).or(params.scope);
        return Ok(issued_body(shared, scope));
    }

    let used_assertion =
        params.client_assertion.is_some() || params.client_assertion_type.is_some();
    if used_assertion {
        // private_key_jwt (RFC 7523 section 2.2, OpenID Connect Core section 9).
        if used_basic || client_secret.is_some() {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "more than one client authentication method",
            ));
        }
        if params.client_assertion_type.as_deref() != Some(CLIENT_ASSERTION_TYPE) {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
        }
        let client_assertion = params.client_assertion.as_deref().unwrap_or_default();
        let verified = assertion::verify(
            shared,
            client_assertion,
            assertion::Use::ClientAuthentication,
        )
        .and_then(|_| match client_id.as_deref() {
            Some(id) if id != shared.client_id => {
                Err("client_id differs from the assertion's iss".to_owned())
            }
            _ => Ok(()),
        });
        if let Err(description) = verified {
            return Err(oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                &description,
            ));
        }
    } else if shared.strict && !used_basic {
        let description = if client_secret.is_some() {
            "client credentials in the request body are refused: authenticate with HTTP Basic (RFC 6749 section 2.3.1)"
        } else {
            "client authentication with HTTP Basic is required (RFC 6749 section 2.3.1)"
        };
        return Err(basic_challenge(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            description,
        )));
    }
    // Mutual TLS client authentication (RFC 8705 section 2): the client id alone, over a
    // connection whose client certificate the client CA issued.
    let used_certificate = !used_assertion && !used_basic && client_secret.is_none();
    if used_certificate && client_id.as_deref() == Some(shared.client_id.as_str()) {
        if !client_certificate {
            return Err(oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "no client secret, assertion or TLS client certificate",
            ));
        }
    } else if !used_assertion {
        let current = shared.state().client_secret.clone();
        let expected = current.as_deref().unwrap_or(&shared.client_secret);
        let authenticated = client_id.as_deref() == Some(shared.client_id.as_str())
            && client_secret.is_some_and(|secret| constant_time_eq(&secret, expected));
        if !authenticated {
            let response = oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
            return Err(if used_basic {
                basic_challenge(response)
            } else {
                response
            });
        }
    }

    // The audience, as Auth0 checks it (see NO_AUDIENCE).
    match params.audience.as_deref() {
        None if shared.require_audience => {
            return Err(oauth_error(
                StatusCode::FORBIDDEN,
                "access_denied",
                NO_AUDIENCE,
            ))
        }
        Some(audience) if audience != shared.audience => {
            return Err(oauth_error(
                StatusCode::FORBIDDEN,
                "access_denied",
                &unknown_audience(audience),
            ))
        }
        _ => {}
    }

    Ok(issued_body(shared, params.scope))
}

/// The token request's answer: a new token, its lifetime and scope.
fn issued_body(shared: &Shared, scope: Option<String>) -> (Value, String) {
    let issued = issue_token(shared, scope.as_deref());
    let mut body = json!({
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    });
    if let Some(scope) = scope {
        body["scope"] = Value::String(scope);
    }
    (body, issued.jti)
}

/// `client_assertion_type` of `private_key_jwt`.
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// `grant_type` of the JWT bearer grant.
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A token [`issue_token`] issued.
pub(super) struct Issued {
    pub(super) token: String,
    pub(super) jti: String,
    pub(super) expires_in: u64,
}

/// Issues a token (an RS256 JWT, with Auth0's claims for a client-credentials token and
/// Entur's organisation claim) and remembers it.
pub(super) fn issue_token(shared: &Shared, scope: Option<&str>) -> Issued {
    let lifetime = shared.state().lifetime;
    let jti = shared.next_jti.fetch_add(1, Ordering::SeqCst).to_string();
    // The server's clock: skewed when the test asks for it.
    let now = shared.issuer_now();
    let exp = ceil_secs(now.saturating_add(lifetime));
    let expires_in = ceil_secs(lifetime).max(1);

    let mut claims = json!({
        "iss": shared.issuer,
        "sub": format!("{}@clients", shared.client_id),
        "aud": shared.audience,
        "iat": now.as_secs(),
        "exp": exp,
        "jti": jti,
        "azp": shared.client_id,
        "gty": "client-credentials",
        ORGANISATION_CLAIM: 1,
    });
    if let Some(scope) = scope {
        claims["scope"] = Value::String(scope.to_owned());
    }
    let token = if shared.sign_tokens {
        shared.signer.sign(&claims)
    } else {
        shared.signer.fake_sign(&claims)
    };

    let deadline = tokio::time::Instant::now() + lifetime;
    shared.state().tokens.insert(
        token.clone(),
        IssuedToken {
            jti: jti.clone(),
            deadline,
            revoked: false,
        },
    );
    shared.tokens_issued.fetch_add(1, Ordering::SeqCst);
    tracing::debug!(jti, ?lifetime, "test server issued a token");
    Issued {
        token,
        jti,
        expires_in,
    }
}

/// Whole seconds, rounded up.
pub(super) fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

pub(super) fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The parameters of a token request; empty values count as absent
/// (RFC 6749 section 3.1).
#[derive(Default)]
pub(super) struct TokenParams {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    audience: Option<String>,
    scope: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
    assertion: Option<String>,
}

impl TokenParams {
    fn set(&mut self, name: &str, value: String) -> Result<(), &'static str> {
        let slot = match name {
            "grant_type" => &mut self.grant_type,
            "client_id" => &mut self.client_id,
            "client_secret" => &mut self.client_secret,
            "audience" => &mut self.audience,
            "scope" => &mut self.scope,
            "client_assertion_type" => &mut self.client_assertion_type,
            "client_assertion" => &mut self.client_assertion,
            "assertion" => &mut self.assertion,
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err("a parameter is repeated");
        }
        if !value.is_empty() {
            *slot = Some(value);
        }
        Ok(())
    }
}

pub(super) fn parse_params(
    headers: &HeaderMap,
    body: &[u8],
    strict: bool,
) -> Result<TokenParams, &'static str> {
    let media_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    let mut params = TokenParams::default();
    if strict && !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(
            "the content type must be application/x-www-form-urlencoded (RFC 6749 section 4.4.2)",
        );
    }
    if media_type.eq_ignore_ascii_case("application/json") {
        let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(body) else {
            return Err("the body is not a JSON object");
        };
        for (name, value) in object {
            match value {
                Value::String(value) => params.set(&name, value)?,
                Value::Null => {}
                _ if is_known_param(&name) => return Err("a parameter is not a string"),
                _ => {}
            }
        }
    } else if media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        for (name, value) in form_urlencoded::parse(body) {
            params.set(&name, value.into_owned())?;
        }
    } else {
        return Err(
            "the content type must be application/x-www-form-urlencoded or application/json",
        );
    }
    Ok(params)
}

pub(super) fn is_known_param(name: &str) -> bool {
    matches!(
        name,
        "grant_type"
            | "client_id"
            | "client_secret"
            | "audience"
            | "scope"
            | "client_assertion_type"
            | "client_assertion"
            | "assertion"
    )
}

pub(super) enum BasicError {
    OtherScheme,
    Malformed,
}

/// Decodes `Basic base64(urlencode(id) ":" urlencode(secret))`.
pub(super) fn parse_basic(value: &HeaderValue) -> Result<(String, String), BasicError> {
    let value = value.to_str().map_err(|_| BasicError::Malformed)?.trim();
    let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(BasicError::OtherScheme);
    }
    let decoded = STANDARD
        .decode(credentials.trim())
        .map_err(|_| BasicError::Malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| BasicError::Malformed)?;
    let (id, secret) = decoded.split_once(':').ok_or(BasicError::Malformed)?;
    let id = form_decode(id).ok_or(BasicError::Malformed)?;
    let secret = form_decode(secret).ok_or(BasicError::Malformed)?;
    Ok((id, secret))
}

/// `application/x-www-form-urlencoded` decoding of one component: `+` is a
/// space, `%XX` a byte; malformed escapes are kept as they are. `None` if the
/// result is not UTF-8.
pub(super) fn form_decode(input: &str) -> Option<String> {
    fn hex(byte: u8) -> Option<u8> {
        (byte as char).to_digit(16).map(|digit| digit as u8)
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' => {
                let escaped = bytes
                    .get(index + 1)
                    .and_then(|&high| hex(high))
                    .zip(bytes.get(index + 2).and_then(|&low| hex(low)));
                match escaped {
                    Some((high, low)) => {
                        out.push((high << 4) | low);
                        index += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).ok()
}
