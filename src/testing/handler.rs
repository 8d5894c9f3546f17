//! The one handler behind the TCP server and the in-process services: the token endpoint
//! and the protected API.

use super::body::BodyInner;
use super::*;

// ---------------------------------------------------------------------------
// Handler (shared by TCP and in-process)
// ---------------------------------------------------------------------------

/// The one request handler of the server, for TCP and in-process requests.
///
/// Fails only for [`Fault::Refuse`].
pub(super) async fn handle<B>(
    shared: Arc<Shared>,
    request: Request<B>,
) -> io::Result<Response<TestBody>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let path = request.uri().path();
    let response = if path == TOKEN_PATH {
        token_endpoint(&shared, request).await?
    } else if path == API_PATH || path.starts_with("/api/") {
        api(&shared, request).await
    } else {
        let response = no_store_json(
            StatusCode::NOT_FOUND,
            json!({ "error": "not_found", "error_description": "no such endpoint" }),
        );
        tracing::debug!(method = %request.method(), path, "test server: unknown path");
        response
    };
    Ok(response)
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

pub(super) async fn token_endpoint<B>(
    shared: &Shared,
    request: Request<B>,
) -> io::Result<Response<TestBody>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let (recorded, body) = read_request(request).await;
    let fault = {
        let mut state = shared.state();
        state.last_token_request = Some(recorded.clone());
        state
            .faults
            .pop_front()
            .or_else(|| state.sticky_fault.clone())
    };
    let mut trickle = None;
    if let Some(fault) = fault {
        tracing::debug!(?fault, "test server: applying fault to token request");
        match fault {
            Fault::Status {
                status,
                body,
                retry_after,
            } => {
                let mut response = Response::new(TestBody::empty());
                *response.status_mut() = status;
                let headers = response.headers_mut();
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                if !body.is_empty() {
                    let content_type = if serde_json::from_str::<Value>(&body).is_ok() {
                        "application/json"
                    } else {
                        "text/plain; charset=utf-8"
                    };
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                }
                insert_date(shared, headers);
                if let Some(retry_after) = retry_after {
                    match HeaderValue::from_str(&retry_after) {
                        Ok(value) => {
                            headers.insert(http::header::RETRY_AFTER, value);
                        }
                        Err(_) => tracing::warn!(
                            retry_after,
                            "test server: invalid Retry-After value in fault, skipped"
                        ),
                    }
                }
                *response.body_mut() = TestBody::full(body);
                return Ok(response);
            }
            Fault::Respond {
                status,
                headers,
                body,
            } => {
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
                        _ => tracing::warn!(
                            name,
                            value,
                            "test server: invalid header in fault, skipped"
                        ),
                    }
                }
                return Ok(response);
            }
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::Hang => std::future::pending::<()>().await,
            Fault::Refuse => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "connection refused (injected fault)",
                ))
            }
            Fault::Trickle { interval } => trickle = Some(interval),
        }
    }
    let mut response = token_response(shared, &recorded, body);
    insert_date(shared, response.headers_mut());
    tracing::debug!(status = %response.status(), "test server: token request answered");
    Ok(match trickle {
        None => response,
        Some(interval) => {
            let (parts, body) = response.into_parts();
            let data = match body.inner {
                BodyInner::Full(data) => data.unwrap_or_default(),
                BodyInner::Trickle { remaining, .. } => remaining,
            };
            Response::from_parts(parts, TestBody::trickle(data, interval))
        }
    })
}

/// The `Date` header, by the server's clock (see
/// [`TestServerBuilder::issuer_clock_offset_secs`]). Over TCP, hyper keeps it
/// rather than adding its own.
fn insert_date(shared: &Shared, headers: &mut HeaderMap) {
    let date = httpdate::fmt_http_date(UNIX_EPOCH + shared.issuer_now());
    let value = HeaderValue::from_str(&date).expect("an HTTP date is a valid header value");
    headers.insert(http::header::DATE, value);
}

/// Client-credentials grant, after faults.
pub(super) fn token_response(
    shared: &Shared,
    request: &RecordedRequest,
    body: Result<Bytes, BoxError>,
) -> Response<TestBody> {
    if request.method != Method::POST {
        let mut response = oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "the token endpoint accepts only POST",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let body = match body {
        Ok(body) => body,
        Err(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body could not be read",
            )
        }
    };
    let params = match parse_params(&request.headers, &body) {
        Ok(params) => params,
        Err(description) => {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description)
        }
    };

    // Client authentication: HTTP Basic (RFC 6749 section 2.3.1) or body.
    let basic = match request.headers.get(AUTHORIZATION) {
        None => None,
        Some(value) => match parse_basic(value) {
            Ok(credentials) => Some(credentials),
            Err(BasicError::OtherScheme) => {
                return basic_challenge(oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "unsupported client authentication scheme",
                ))
            }
            Err(BasicError::Malformed) => {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "malformed Basic authorization header",
                )
            }
        },
    };
    let (client_id, client_secret) = match basic {
        Some((id, secret)) => {
            if params.client_secret.is_some() {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client credentials sent both in the Authorization header and in the body",
                );
            }
            if params
                .client_id
                .as_ref()
                .is_some_and(|body_id| *body_id != id)
            {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_id in the body differs from the Authorization header",
                );
            }
            (Some(id), Some(secret))
        }
        None => (params.client_id, params.client_secret),
    };
    let used_basic = request.headers.contains_key(AUTHORIZATION);

    match params.grant_type.as_deref() {
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing grant_type",
            )
        }
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only the client_credentials grant is supported",
            )
        }
    }

    let authenticated = client_id.as_deref() == Some(shared.client_id.as_str())
        && client_secret.is_some_and(|secret| constant_time_eq(&secret, &shared.client_secret));
    if !authenticated {
        let response = oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
        return if used_basic {
            basic_challenge(response)
        } else {
            response
        };
    }

    if params
        .audience
        .as_ref()
        .is_some_and(|audience| *audience != shared.audience)
    {
        return oauth_error(
            StatusCode::FORBIDDEN,
            "access_denied",
            "the requested audience is not allowed for this client",
        );
    }

    let (access_token, expires_in) = issue_token(shared, params.scope.as_deref());
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
    });
    if let Some(scope) = params.scope {
        body["scope"] = Value::String(scope);
    }
    no_store_json(StatusCode::OK, body)
}

/// Issues a token, remembers it and returns it with its `expires_in`.
pub(super) fn issue_token(shared: &Shared, scope: Option<&str>) -> (String, u64) {
    let lifetime = shared.state().lifetime;
    let jti = shared.next_jti.fetch_add(1, Ordering::SeqCst);
    // The server's clock: skewed when the test asks for it.
    let now = shared.issuer_now();
    let exp = ceil_secs(now.saturating_add(lifetime));
    let expires_in = ceil_secs(lifetime).max(1);

    let header = json!({ "alg": "HS256", "typ": "JWT" });
    let mut claims = json!({
        "iss": shared.issuer,
        "sub": format!("{}@clients", shared.client_id),
        "aud": shared.audience,
        "iat": now.as_secs(),
        "exp": exp,
        "jti": jti.to_string(),
        ORGANISATION_CLAIM: 1,
    });
    if let Some(scope) = scope {
        claims["scope"] = Value::String(scope.to_owned());
    }
    let mut signature = [0u8; 32];
    for (index, chunk) in signature.chunks_mut(8).enumerate() {
        let word = shared
            .hasher
            .hash_one((jti, index, now.as_nanos(), shared.addr.port()));
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    let token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature),
    );

    let deadline = tokio::time::Instant::now() + lifetime;
    shared.state().tokens.insert(
        token.clone(),
        IssuedToken {
            jti: jti.to_string(),
            deadline,
            revoked: false,
        },
    );
    shared.tokens_issued.fetch_add(1, Ordering::SeqCst);
    tracing::debug!(jti, ?lifetime, "test server issued a token");
    (token, expires_in)
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
}

impl TokenParams {
    fn set(&mut self, name: &str, value: String) -> Result<(), &'static str> {
        let slot = match name {
            "grant_type" => &mut self.grant_type,
            "client_id" => &mut self.client_id,
            "client_secret" => &mut self.client_secret,
            "audience" => &mut self.audience,
            "scope" => &mut self.scope,
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

pub(super) fn parse_params(headers: &HeaderMap, body: &[u8]) -> Result<TokenParams, &'static str> {
    let media_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::trim)
        .unwrap_or_default();
    let mut params = TokenParams::default();
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
        "grant_type" | "client_id" | "client_secret" | "audience" | "scope"
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

/// The protected API.
pub(super) async fn api<B>(shared: &Shared, request: Request<B>) -> Response<TestBody>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    shared.api_requests.fetch_add(1, Ordering::SeqCst);
    let (recorded, _body) = read_request(request).await;
    let path = recorded.uri.path().to_owned();
    let token = recorded
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            let token = token.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
        });
    let outcome = {
        let mut state = shared.state();
        state.last_api_request = Some(recorded);
        match &token {
            None => Err(None),
            Some(token) => match state.tokens.get(token) {
                None => Err(Some("unknown token")),
                Some(issued) if issued.revoked => Err(Some("token revoked")),
                Some(issued) if tokio::time::Instant::now() >= issued.deadline => {
                    Err(Some("token expired"))
                }
                Some(issued) => Ok(issued.jti.clone()),
            },
        }
    };
    match outcome {
        Ok(jti) => {
            tracing::debug!(path, jti, "test server: API request accepted");
            json_response(
                StatusCode::OK,
                &json!({ "ok": true, "path": path, "jti": jti }),
            )
        }
        Err(reason) => {
            shared.api_rejections.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(path, reason, "test server: API request rejected");
            let (challenge, body) = match reason {
                None => (
                    "Bearer",
                    json!({ "error": "unauthorized", "error_description": "no bearer token" }),
                ),
                Some(reason) => (
                    r#"Bearer error="invalid_token""#,
                    json!({ "error": "invalid_token", "error_description": reason }),
                ),
            };
            let mut response = json_response(StatusCode::UNAUTHORIZED, &body);
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            response
        }
    }
}

// ---------------------------------------------------------------------------
// Response helpers
// ---------------------------------------------------------------------------

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

/// Adds the challenge RFC 6749 section 5.2 asks for when a client that used
/// HTTP Basic fails to authenticate.
pub(super) fn basic_challenge(mut response: Response<TestBody>) -> Response<TestBody> {
    response.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Basic realm="entur-auth-testing""#),
    );
    response
}
