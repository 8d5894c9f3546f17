//! What the failed-fetch log line says is sent meanwhile. A test binary of its own: tracing
//! can miss an event of a callsite that another thread registers at the same moment, and
//! every test of tests/faults.rs logs failed fetches.

mod common;
#[path = "common/logs.rs"]
mod logs;

use std::time::Duration;

use common::*;
use entur_auth_test::Fault;

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];
const LIFETIME: Duration = Duration::from_secs(60);

/// A 503 says what is sent meanwhile, truthfully: nothing before the first token, the
/// current token after it.
#[tokio::test(start_paused = true)]
async fn a_503_says_whether_a_token_is_still_sent() {
    let (logs, _guard) = logs::capture_trace();
    let server = server(LIFETIME).await;
    let source = server.source_builder().jitter_seed(11).build().unwrap();
    server.push_fault(Fault::respond(
        503,
        JSON,
        r#"{"error":"temporarily_unavailable"}"#,
    ));
    let error = source.prefetch().await.unwrap_err().report().to_string();
    assert!(error.contains("503"), "{error}");
    assert!(
        !error.contains("still sent"),
        "there is no token to send: {error}"
    );
    let first = logs.text();
    assert!(
        first.contains(
            "access token fetch failed; there is no token to send until a fetch succeeds"
        ),
        "{first}"
    );
    assert!(!first.contains("still sent"), "{first}");

    source.ready(Duration::from_secs(30)).await.unwrap();
    server.set_sticky_fault(Some(Fault::respond(
        503,
        JSON,
        r#"{"error":"temporarily_unavailable"}"#,
    )));
    tokio::time::sleep(LIFETIME * 4 / 5).await;
    assert!(source.current().is_some());
    assert!(
        logs.text().contains(
            "access token fetch failed; the current token is still sent until it expires"
        ),
        "{}",
        logs.text()
    );
}
