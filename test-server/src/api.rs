//! The protected API: the bearer token check, and the faults injected into it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::Body;
use serde_json::json;

use crate::fault::grpc_message;
use crate::handler::{json_response, read_request, respond, status_response};
use crate::{
    log, ApiFault, BearerToken, BoxError, IssuedToken, RecordedRequest, RequestKind, Shared,
    TestBody, TokenState, REALM,
};

/// Why the API refuses a request, before any fault.
enum Refusal {
    /// No bearer token (RFC 6750 section 3.1: no error code).
    Missing,
    /// A token the server did not issue, revoked or expired.
    Invalid(&'static str),
    /// Strict mode: the token sent more than once (RFC 6750 section 3.1 `invalid_request`).
    Repeated,
}

pub(super) async fn api<B>(shared: &Shared, request: Request<B>) -> Response<TestBody>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    shared.api_requests.fetch_add(1, Ordering::SeqCst);
    let (recorded, _body) = read_request(request).await;
    let path = recorded.uri.path().to_owned();
    let token = bearer(&recorded.headers);
    let repeated = shared.strict && sends_token_twice(&recorded);
    let (seq, fault) = {
        let mut state = shared.state();
        state.last_api_request = Some(recorded.clone());
        let logged = token.as_ref().map(|token| {
            let (jti, token_state) = check(&state.tokens, token);
            BearerToken {
                token: token.clone(),
                jti,
                state: token_state,
            }
        });
        let seq = state.log.push(RequestKind::Api, recorded, logged);
        let fault = state
            .api_faults
            .pop_front()
            .or_else(|| state.sticky_api_fault.clone());
        (seq, fault)
    };
    let injected = match fault {
        None => None,
        Some(ApiFault::Delay(delay)) => {
            tracing::debug!(?delay, "test server: delaying API request");
            tokio::time::sleep(delay).await;
            None
        }
        Some(ApiFault::Hang) => std::future::pending().await,
        Some(fault) => {
            tracing::debug!(?fault, "test server: applying fault to API request");
            Some(fault_response(shared, fault))
        }
    };
    let is_injected = injected.is_some();
    let response = match injected {
        Some(response) => response,
        None => verdict(shared, &path, token.as_deref(), repeated),
    };
    if response.status() == StatusCode::UNAUTHORIZED {
        shared.api_rejections.fetch_add(1, Ordering::SeqCst);
    }
    let answer = log::summarize(&response, is_injected);
    shared.state().log.answered(seq, answer, None);
    response
}

/// The token of the first `Authorization: Bearer …` header, if any.
fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            let token = token.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
        })
}

/// Two `Authorization` headers, or one and an `access_token` query parameter.
fn sends_token_twice(request: &RecordedRequest) -> bool {
    let headers = request.headers.get_all(AUTHORIZATION).iter().count();
    let in_query = request.uri.query().is_some_and(|query| {
        form_urlencoded::parse(query.as_bytes()).any(|(name, _)| name == "access_token")
    });
    headers + usize::from(in_query) > 1
}

/// What the server knows of `token`: its `jti` if it issued it, and its state now.
fn check(tokens: &HashMap<String, IssuedToken>, token: &str) -> (Option<String>, TokenState) {
    match tokens.get(token) {
        None => (None, TokenState::Unknown),
        Some(issued) => {
            let state = if issued.revoked {
                TokenState::Revoked
            } else if tokio::time::Instant::now() >= issued.deadline {
                TokenState::Expired
            } else {
                TokenState::Valid
            };
            (Some(issued.jti.clone()), state)
        }
    }
}

/// The API's own answer: 200 for a valid token, 401 otherwise (400 for a token sent twice
/// in strict mode).
fn verdict(shared: &Shared, path: &str, token: Option<&str>, repeated: bool) -> Response<TestBody> {
    let outcome = if repeated {
        Err(Refusal::Repeated)
    } else {
        match token {
            None => Err(Refusal::Missing),
            Some(token) => match check(&shared.state().tokens, token) {
                (Some(jti), TokenState::Valid) => Ok(jti),
                (_, TokenState::Revoked) => Err(Refusal::Invalid("token revoked")),
                (_, TokenState::Expired) => Err(Refusal::Invalid("token expired")),
                _ => Err(Refusal::Invalid("unknown token")),
            },
        }
    };
    let refusal = match outcome {
        Ok(jti) => {
            tracing::debug!(path, jti, "test server: API request accepted");
            return json_response(
                StatusCode::OK,
                &json!({ "ok": true, "path": path, "jti": jti }),
            );
        }
        Err(refusal) => refusal,
    };
    let (status, error, description) = match refusal {
        Refusal::Missing => (StatusCode::UNAUTHORIZED, None, "no bearer token"),
        Refusal::Invalid(reason) => (StatusCode::UNAUTHORIZED, Some("invalid_token"), reason),
        Refusal::Repeated => (
            StatusCode::BAD_REQUEST,
            Some("invalid_request"),
            "the access token was sent more than once",
        ),
    };
    tracing::debug!(path, description, "test server: API request rejected");
    let body = json!({
        "error": error.unwrap_or("unauthorized"),
        "error_description": description,
    });
    // RFC 6750 section 3: the realm and the description in strict mode; as before otherwise.
    let challenge = match (shared.strict, error) {
        (false, None) => "Bearer".to_owned(),
        (false, Some(error)) => format!(r#"Bearer error="{error}""#),
        (true, None) => format!(r#"Bearer realm="{REALM}""#),
        (true, Some(error)) => {
            format!(r#"Bearer realm="{REALM}", error="{error}", error_description="{description}""#)
        }
    };
    let mut response = json_response(status, &body);
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).expect("the challenge is a valid header value"),
    );
    response
}

/// The answer an [`ApiFault`] makes (not `Delay` nor `Hang`, which only hold the answer).
fn fault_response(shared: &Shared, fault: ApiFault) -> Response<TestBody> {
    match fault {
        ApiFault::Status {
            status,
            www_authenticate,
            retry_after,
            body,
        } => {
            let mut response = status_response(
                status,
                body,
                &[
                    (WWW_AUTHENTICATE, www_authenticate.as_deref()),
                    (http::header::RETRY_AFTER, retry_after.as_deref()),
                ],
            );
            if shared.strict
                && status == StatusCode::UNAUTHORIZED
                && !response.headers().contains_key(WWW_AUTHENTICATE)
            {
                let challenge = format!(r#"Bearer realm="{REALM}", error="invalid_token""#);
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_str(&challenge).expect("a valid header value"),
                );
            }
            response
        }
        ApiFault::Grpc { code, message } => {
            let mut response = grpc_response(TestBody::empty());
            let headers = response.headers_mut();
            headers.insert("grpc-status", HeaderValue::from(code));
            headers.insert("grpc-message", grpc_message_value(&message));
            response
        }
        ApiFault::GrpcTrailers {
            code,
            message,
            body,
        } => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from(code));
            trailers.insert("grpc-message", grpc_message_value(&message));
            let mut response = grpc_response(TestBody::with_trailers(body, trailers));
            // HTTP/1.1 sends trailers only when announced (and asked for with `TE: trailers`).
            response.headers_mut().insert(
                http::header::TRAILER,
                HeaderValue::from_static("grpc-status, grpc-message"),
            );
            response
        }
        ApiFault::Respond {
            status,
            headers,
            body,
        } => respond(status, headers, body),
        ApiFault::Delay(_) | ApiFault::Hang => {
            unreachable!("delays and hangs hold the normal answer")
        }
    }
}

/// HTTP 200 with `content-type: application/grpc`, marked HTTP/2 as gRPC runs over HTTP/2
/// only (hyper's HTTP/1.1 server sends it as HTTP/1.1).
fn grpc_response(body: TestBody) -> Response<TestBody> {
    let mut response = Response::new(body);
    *response.version_mut() = Version::HTTP_2;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

fn grpc_message_value(message: &str) -> HeaderValue {
    HeaderValue::from_str(&grpc_message(message))
        .expect("a percent-encoded grpc-message is printable ASCII")
}
