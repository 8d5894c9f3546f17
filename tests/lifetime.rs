//! Token lifetimes when the authorization server's clock disagrees with this machine's, and
//! `expires_in` sent as a string: against the embedded server, in-process, on tokio's paused
//! clock.
//!
//! The lifetime comes from `expires_in` and the JWT's `exp − iat`, which need no agreement
//! between clocks. An earlier version compared `exp` with this machine's clock: with the
//! server's clock 2 h behind, every fetch failed (35 token requests in a minute); 59 min
//! behind, a one-hour token was fetched again every ~2 s.

mod common;

use std::cell::RefCell;
use std::io::Write;
use std::sync::Once;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use entur_auth::TokenSource;
use entur_auth_test::{Fault, TestServer};
use http::StatusCode;

const HOUR: i64 = 3600;

/// A server issuing one-hour tokens, its clock `offset_secs` from this machine's.
async fn skewed_server(offset_secs: i64) -> TestServer {
    TestServer::builder()
        .token_lifetime(Duration::from_secs(3600))
        .issuer_clock_offset_secs(offset_secs)
        .start()
        .await
        .expect("embedded server starts on 127.0.0.1")
}

thread_local! {
    /// What this thread logged: each test runs on its own thread, and so does the refresher
    /// of its source (a current-thread runtime).
    static LOGGED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes into this thread's [`LOGGED`].
struct ThreadLog;

impl Write for ThreadLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGGED.with(|logged| logged.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing this thread's events. One global subscriber for the whole binary, not a
/// scoped one per test: with scoped subscribers on parallel test threads, tracing's
/// per-callsite interest cache let a warning through in one test and not in another.
fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| ThreadLog)
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    });
    LOGGED.with(|logged| logged.borrow_mut().clear());
}

/// What this thread logged since [`capture_logs`].
fn logged() -> String {
    LOGGED.with(|logged| String::from_utf8(logged.borrow().clone()).unwrap())
}

/// Fetches a token, then sends one API request a second for a minute of paused time: every
/// request must succeed on the first token, with no other token request.
async fn one_token_request_over_a_minute(server: &TestServer, source: &TokenSource) {
    let token = source.token().await.expect("the first fetch succeeds");
    assert_eq!(
        token.expires_at() - token.issued_at(),
        Duration::from_secs(3600),
        "the full hour, whatever the clocks say"
    );
    let mut api = client(server, source);
    for second in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let status = send(&mut api, api_request(server, "/x")).await.unwrap();
        assert_eq!(status, StatusCode::OK, "after {second} s");
    }
    assert_eq!(server.token_requests(), 1, "one token request in a minute");
    let status = source.status();
    assert_eq!((status.fetch_attempts, status.fetch_failures), (1, 0));
    assert_eq!(status.token, Some(token.id()));
}

#[tokio::test(start_paused = true)]
async fn server_clock_two_hours_behind_one_fetch_and_one_warning() {
    capture_logs();
    let server = skewed_server(-2 * HOUR).await;
    let source = source(&server);
    one_token_request_over_a_minute(&server, &source).await;

    let text = logged();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    let warning = warnings[0];
    let skew: i64 = warning
        .split("clock_skew_s=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the skew is a field of the warning");
    assert!((7199..=7201).contains(&skew), "{warning}");
    assert!(warning.contains("ahead of the token issuer's"), "{warning}");
    assert!(warning.contains("refresh is unaffected"), "{warning}");
    let token = source.current().unwrap();
    let secret = std::str::from_utf8(&token.header_value().as_bytes()[7..]).unwrap();
    assert!(!text.contains(secret), "the token is never logged");
}

#[tokio::test(start_paused = true)]
async fn server_clock_two_hours_ahead_one_fetch() {
    let server = skewed_server(2 * HOUR).await;
    let source = source(&server);
    one_token_request_over_a_minute(&server, &source).await;
}

#[tokio::test(start_paused = true)]
async fn server_clock_59_minutes_behind_one_fetch() {
    let server = skewed_server(-59 * 60).await;
    let source = source(&server);
    one_token_request_over_a_minute(&server, &source).await;
}

#[tokio::test(start_paused = true)]
async fn server_clock_in_agreement_one_fetch_and_no_warning() {
    capture_logs();
    let server = skewed_server(0).await;
    let source = source(&server);
    one_token_request_over_a_minute(&server, &source).await;
    let text = logged();
    assert!(!text.contains("WARN"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn numeric_string_expires_in_is_accepted_and_drives_the_refresh() {
    let server = server(Duration::from_secs(3600)).await;
    let body =
        r#"{"access_token":"opaque-string-lifetime","token_type":"Bearer","expires_in":"120"}"#;
    server.push_fault(Fault::Respond {
        status: StatusCode::OK,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from_static(body.as_bytes()),
    });
    let source = server
        .source_builder()
        .refresh_jitter(0.0)
        .build()
        .expect("valid configuration");

    let token = source
        .token()
        .await
        .expect("a string expires_in is accepted");
    assert_eq!(token.header_value(), "Bearer opaque-string-lifetime");
    assert_eq!(
        token.expires_at() - token.issued_at(),
        Duration::from_secs(120)
    );
    assert_eq!(
        token.refresh_at() - token.issued_at(),
        Duration::from_secs(90)
    );

    // The refresh starts at 75 % of the 120 s, not earlier, not later.
    tokio::time::sleep_until(token.refresh_at() - Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(server.token_requests(), 1);
    tokio::time::sleep(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(server.token_requests(), 2);
    let next = source.current().expect("the refreshed token");
    assert_ne!(next.id(), token.id());
    assert_eq!(
        next.expires_at() - next.issued_at(),
        Duration::from_secs(3600)
    );
}
