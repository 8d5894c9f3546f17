//! The token-endpoint fault matrix: every case gives a typed error, never a panic, a bounded
//! number of attempts, and a token that is still usable keeps being sent.
//!
//! Each case first obtains a 60-second token, then breaks the endpoint and lets the refresh
//! (due at ~45 s) fail until just before the token is retired (54 s). Time is tokio's paused
//! clock; the endpoint is reached in-process.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use common::*;
use entur_auth::Error;
use entur_auth_test::Fault;
use http::StatusCode;

const LIFETIME: Duration = Duration::from_secs(60);

fn json(status: u16, body: impl Into<String>) -> Fault {
    Fault::Respond {
        status: StatusCode::from_u16(status).unwrap(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(body.into()),
    }
}

fn jwt(payload: &str) -> String {
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.c2lnbmF0dXJl",
        enc.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        enc.encode(payload)
    )
}

fn wall_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What a broken refresh led to.
struct Outcome {
    error: Error,
    attempts: usize,
    served: usize,
}

/// Gets a token, breaks the endpoint with `fault`, then sends a request every 250 ms until
/// just before the token is retired. Every request must succeed on the current token.
async fn refresh_under(fault: Fault, fetch_timeout: Duration) -> Outcome {
    let server = server(LIFETIME).await;
    let source = server
        .source_builder()
        .jitter_seed(11)
        .fetch_timeout(fetch_timeout)
        .build()
        .unwrap();
    let mut svc = client(&server, &source);
    assert_eq!(
        send(&mut svc, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
    let token = source.current().unwrap();
    server.set_sticky_fault(Some(fault));
    let before = server.token_requests();
    let mut served = 0;
    while tokio::time::Instant::now() < token.usable_until() - Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let status = send(&mut svc, api_request(&server, "/a")).await;
        assert_eq!(
            status.unwrap(),
            StatusCode::OK,
            "a usable token keeps being sent"
        );
        served += 1;
    }
    assert_eq!(
        source.current().unwrap().id(),
        token.id(),
        "never replaced by an error"
    );
    let status = source.status();
    assert!(status.health.is_serving());
    Outcome {
        error: status.last_error.expect("the refresh failed"),
        attempts: server.token_requests() - before,
        served,
    }
}

/// Like `refresh_under`, with the default 10 s fetch timeout.
async fn refresh_fails(fault: Fault) -> Outcome {
    refresh_under(fault, Duration::from_secs(10)).await
}

/// A transient failure: retried with backoff, a handful of times in ~9 s, never per request.
fn assert_backoff(outcome: &Outcome) {
    assert!(
        (2..=12).contains(&outcome.attempts),
        "{} attempts during {} requests",
        outcome.attempts,
        outcome.served
    );
    assert!(outcome.error.is_transient(), "{}", outcome.error);
}

/// A non-transient failure: the slow schedule allows one attempt in that window.
fn assert_slow(outcome: &Outcome) {
    assert_eq!(outcome.attempts, 1, "{}", outcome.error);
    assert!(!outcome.error.is_transient());
}

fn assert_invalid(outcome: &Outcome, says: &str) {
    assert_slow(outcome);
    assert!(
        outcome.error.kind() == entur_auth::ErrorKind::InvalidResponse,
        "{:?}",
        outcome.error
    );
    assert!(
        outcome.error.report().to_string().contains(says),
        "{}",
        outcome.error
    );
}

#[tokio::test(start_paused = true)]
async fn connection_refused() {
    let o = refresh_fails(Fault::Refuse).await;
    assert_backoff(&o);
    assert_eq!(o.error.kind(), entur_auth::ErrorKind::Unavailable);
    assert_eq!(o.error.status(), None);
    assert!(std::error::Error::source(&o.error).is_some(), "the cause");
}

#[tokio::test(start_paused = true)]
async fn accepted_but_never_answered_times_out() {
    let o = refresh_under(Fault::Hang, Duration::from_secs(2)).await;
    assert!(
        (o.error.kind() == entur_auth::ErrorKind::Timeout),
        "{:?}",
        o.error
    );
    assert!(
        o.error.to_string().contains("within 2000 ms"),
        "{}",
        o.error
    );
    assert_backoff(&o);
}

#[tokio::test(start_paused = true)]
async fn status_500_and_502() {
    for status in [500, 502] {
        let o = refresh_fails(Fault::status(StatusCode::from_u16(status).unwrap())).await;
        assert_backoff(&o);
        assert_eq!(o.error.kind(), entur_auth::ErrorKind::Unavailable);
        assert_eq!(o.error.status().map(|s| s.as_u16()), Some(status));
    }
}

/// 503 and 429 with `Retry-After` in seconds and as an HTTP date: the next attempt waits
/// exactly as long as asked, not the (shorter) backoff.
#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_in_seconds_and_http_date_form() {
    for status in [503u16, 429] {
        for date_form in [false, true] {
            let server = server(Duration::from_secs(3600)).await;
            let source = server.source_builder().build().unwrap();
            let retry_after = if date_form {
                httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(121))
            } else {
                "120".to_owned()
            };
            server.push_fault(Fault::Status {
                status: StatusCode::from_u16(status).unwrap(),
                body: String::new(),
                retry_after: Some(retry_after),
            });
            let error = source.token().await.unwrap_err();
            let asked = error.retry_after().expect("Retry-After kept");
            assert!(
                (Duration::from_secs(119)..=Duration::from_secs(121)).contains(&asked),
                "{asked:?}"
            );
            assert_eq!(error.kind(), entur_auth::ErrorKind::Unavailable);
            assert_eq!(error.status().map(|s| s.as_u16()), Some(status));
            // Backoff alone would retry after 500 ms; Retry-After holds it off.
            tokio::time::sleep(Duration::from_secs(118)).await;
            assert_eq!(server.token_requests(), 1, "{status} date={date_form}");
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert_eq!(server.token_requests(), 2, "{status} date={date_form}");
            assert!(source.current().is_some(), "recovered after the wait");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn ok_with_invalid_json() {
    let o = refresh_fails(json(200, "{not json")).await;
    assert_invalid(&o, "not a JSON token response");
}

#[tokio::test(start_paused = true)]
async fn ok_without_access_token() {
    let o = refresh_fails(json(200, r#"{"token_type":"Bearer","expires_in":60}"#)).await;
    assert_invalid(&o, "no access_token");
}

/// Some servers answer 200 with an OAuth error body: its code is kept.
#[tokio::test(start_paused = true)]
async fn ok_with_an_oauth_error() {
    let o = refresh_fails(json(
        200,
        r#"{"error":"unauthorized_client","error_description":"client disabled"}"#,
    ))
    .await;
    assert_slow(&o);
    assert!(
        o.error.oauth_code() == Some(&entur_auth::OAuthErrorCode::UnauthorizedClient)
            && o.error.status() == Some(StatusCode::OK),
        "{:?}",
        o.error
    );
    assert!(
        o.error.report().to_string().contains("client disabled"),
        "{}",
        o.error
    );
    // "Later" in a 200 is transient: the fast schedule.
    let o = refresh_fails(json(200, r#"{"error":"temporarily_unavailable"}"#)).await;
    assert_backoff(&o);
    assert_eq!(
        o.error.oauth_code(),
        Some(&entur_auth::OAuthErrorCode::TemporarilyUnavailable)
    );
}

/// A WAF's or CDN's block page is not a verdict on the credentials, and is not transient
/// either (retrying fast would hammer a gateway that blocks on purpose): the slow schedule.
#[tokio::test(start_paused = true)]
async fn html_refusal_from_a_gateway() {
    let o = refresh_fails(Fault::Respond {
        status: StatusCode::FORBIDDEN,
        headers: vec![
            ("content-type".into(), "text/html".into()),
            ("server".into(), "awselb/2.0".into()),
        ],
        body: Bytes::from_static(b"<html><head><title>403 Forbidden</title></head></html>"),
    })
    .await;
    assert_slow(&o);
    assert!(
        o.error.kind() == entur_auth::ErrorKind::Blocked,
        "{:?}",
        o.error
    );
    assert!(!o.error.is_credentials());
    let text = o.error.report().to_string();
    assert!(
        text.contains("answered 403 with an HTML page titled \"403 Forbidden\" (Server: awselb/2.0), not an OAuth error"),
        "{text}"
    );
    assert!(text.contains("more likely than bad credentials"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn token_type_that_needs_a_proof_of_possession() {
    for kind in ["MAC", "DPoP"] {
        let body = format!(r#"{{"access_token":"abc","token_type":"{kind}","expires_in":60}}"#);
        let o = refresh_fails(json(200, body)).await;
        assert_invalid(&o, "proof of possession");
    }
}

#[tokio::test(start_paused = true)]
async fn token_type_bearer_is_case_insensitive() {
    let server = server(LIFETIME).await;
    server.push_fault(json(
        200,
        r#"{"access_token":"abc.def.ghi","token_type":"bEaReR","expires_in":60}"#,
    ));
    let source = server.source_builder().build().unwrap();
    let token = source.token().await.unwrap();
    assert_eq!(token.header_value(), "Bearer abc.def.ghi");
}

#[tokio::test(start_paused = true)]
async fn expires_in_zero_negative_or_not_a_number() {
    // A string holding a positive number ("3600") is accepted: tests/lifetime.rs.
    for bad in ["0", "-60", "0.5", r#""0""#, r#""soon""#, "true"] {
        let body = format!(r#"{{"access_token":"abc","token_type":"Bearer","expires_in":{bad}}}"#);
        let o = refresh_fails(json(200, body)).await;
        assert_invalid(&o, "expires_in");
    }
}

#[tokio::test(start_paused = true)]
async fn expires_in_absurdly_large_is_capped_not_overflowed() {
    let server = server(LIFETIME).await;
    server.push_fault(json(
        200,
        r#"{"access_token":"abc","token_type":"Bearer","expires_in":1e300}"#,
    ));
    let source = server.source_builder().build().unwrap();
    let token = source.token().await.unwrap();
    assert_eq!(
        token.expires_at() - token.issued_at(),
        Duration::from_secs(365 * 24 * 3600)
    );
}

#[tokio::test(start_paused = true)]
async fn body_far_above_the_size_cap() {
    let huge = format!(
        r#"{{"access_token":"{}","token_type":"Bearer","expires_in":60}}"#,
        "a".repeat(4 * 1024 * 1024)
    );
    let o = refresh_fails(json(200, huge)).await;
    assert_invalid(&o, "larger than the 65536-byte cap");
}

#[tokio::test(start_paused = true)]
async fn token_with_characters_not_allowed_in_a_header() {
    for token in [
        "abc\\r\\nX-Injected: 1",
        "abc def",
        "abc\\u0000",
        "tøken",
        "a\\tb",
    ] {
        let body = format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":60}}"#);
        let o = refresh_fails(json(200, body)).await;
        assert_invalid(&o, "not allowed in a bearer token");
    }
}

#[tokio::test(start_paused = true)]
async fn body_that_trickles_slower_than_the_timeout() {
    let o = refresh_under(
        Fault::Trickle {
            interval: Duration::from_millis(500),
        },
        Duration::from_secs(2),
    )
    .await;
    assert!(
        o.error.kind() == entur_auth::ErrorKind::Timeout,
        "{:?}",
        o.error
    );
    assert_backoff(&o);
}

/// The lifetime of the token a one-off answer `body` gives.
async fn lifetime_of(body: String) -> Duration {
    let server = server(LIFETIME).await;
    server.push_fault(json(200, body));
    let source = server.source_builder().build().unwrap();
    let token = source.token().await.expect("a token, not an error");
    token.expires_at() - token.issued_at()
}

#[tokio::test(start_paused = true)]
async fn already_expired_jwt_is_a_token_not_an_error() {
    // exp already past by this machine's clock: either the server or this clock is wrong;
    // neither is a reason to fail the fetch. expires_in decides, else the default lifetime
    // (with a warning).
    let token = jwt(&format!(r#"{{"exp":{}}}"#, wall_now() - 10));
    let body = format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":60}}"#);
    assert_eq!(lifetime_of(body).await, Duration::from_secs(60));
    let body = format!(r#"{{"access_token":"{token}","token_type":"Bearer"}}"#);
    assert_eq!(lifetime_of(body).await, Duration::from_secs(300));
}

#[tokio::test(start_paused = true)]
async fn expires_in_contradicting_exp_minus_iat_takes_the_shorter() {
    let now = wall_now();
    let token = jwt(&format!(r#"{{"iat":{now},"exp":{}}}"#, now + 100));
    let body = format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3600}}"#);
    assert_eq!(lifetime_of(body).await, Duration::from_secs(100));
    // exp alone is never compared with this machine's clock when expires_in is there.
    let token = jwt(&format!(r#"{{"exp":{}}}"#, now + 100));
    let body = format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3600}}"#);
    assert_eq!(lifetime_of(body).await, Duration::from_secs(3600));
}

#[tokio::test(start_paused = true)]
async fn rejected_credentials_during_refresh_keep_the_token_and_retry_slowly() {
    let o = refresh_fails(Fault::oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    ))
    .await;
    assert_slow(&o);
    assert!(o.error.is_credentials());
}

#[tokio::test(start_paused = true)]
async fn redirect_from_the_token_endpoint_is_not_followed() {
    let o = refresh_fails(Fault::Respond {
        status: StatusCode::FOUND,
        headers: vec![("location".into(), "https://evil.example/token".into())],
        body: Bytes::new(),
    })
    .await;
    assert_slow(&o);
    assert!(o.error.kind() == entur_auth::ErrorKind::Config);
    assert!(o
        .error
        .report()
        .to_string()
        .contains("https://evil.example/token"));
}

/// Found by the simulation (seed 1164): a token endpoint slower than the token lifetime
/// delivered tokens already past their usable time; they were stored, retired at once, and
/// the waiting callers started the next fetch at once, without backoff, waiting forever.
/// Now such a token is a failed fetch: callers fail fast and retries follow the slow
/// schedule.
#[tokio::test(start_paused = true)]
async fn a_token_unusable_on_arrival_is_a_failed_fetch_not_a_fetch_loop() {
    let server = server(Duration::from_secs(6)).await;
    server.set_sticky_fault(Some(Fault::Delay(Duration::from_millis(6005))));
    let source = server
        .source_builder()
        // Seeded: with unlucky jitter, six 6-second attempts fit in five minutes.
        .jitter_seed(5)
        .fetch_timeout(Duration::from_secs(7))
        .build()
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(8), source.token())
        .await
        .expect("the caller gets an answer within the fetch timeout")
        .unwrap_err();
    assert!(
        error.kind() == entur_auth::ErrorKind::InvalidResponse,
        "{error:?}"
    );
    assert!(
        error
            .report()
            .to_string()
            .contains("already past its usable time"),
        "{error}"
    );
    // Fail fast: the next caller gets the same error at once, without a fetch.
    assert!(source.token().await.is_err());
    assert_eq!(server.token_requests(), 1);
    // Retries follow the slow schedule (30 s, doubling): a handful in five minutes, not
    // one every six seconds.
    tokio::time::sleep(Duration::from_secs(300)).await;
    let requests = server.token_requests();
    assert!(
        (2..=5).contains(&requests),
        "{requests} token requests in 5 minutes"
    );
    // The endpoint speeds up: the next retry brings a usable token.
    server.set_sticky_fault(None);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(source.token().await.is_ok());
}
