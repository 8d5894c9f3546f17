//! No secret and no token ever appears in logs (captured at TRACE level), in any `Debug` or
//! `Display`, or in any error chain — through refreshes, re-authentication, transient failures
//! and rejected credentials.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use entur_auth::error_for_status::ErrorForStatusLayer;
use entur_auth::retry::ReauthPolicy;
use entur_auth::testing::{Fault, TestServer};
use entur_auth::{BoxError, EnturAuthLayer};
use http::StatusCode;
use tower::ServiceBuilder;
use tracing_subscriber::layer::{Layer as _, SubscriberExt};

const SECRET: &str = "SECRET-4c1d-marker-9f";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![error.to_string(), format!("{error:?}")];
    let mut next = error.source();
    while let Some(e) = next {
        out.push(e.to_string());
        out.push(format!("{e:?}"));
        next = e.source();
    }
    out
}

#[tokio::test(start_paused = true)]
async fn secrets_and_tokens_never_leak() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                // The crate's own events and spans; the embedded test server is a test tool
                // that logs the faults it was told to inject.
                !meta.target().starts_with("entur_auth::testing")
            })),
    );
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::builder()
        .client_secret(SECRET)
        .token_lifetime(Duration::from_secs(20))
        .start()
        .await
        .unwrap();
    let tokens = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = tokens.clone();
    let source = server
        .source_builder()
        .on_fetch(move |outcome| {
            if let Ok(token) = outcome.result {
                let value = token.header_value().to_str().unwrap();
                seen.lock()
                    .unwrap()
                    .push(value["Bearer ".len()..].to_owned());
            }
        })
        .build()
        .unwrap();
    let mut api = ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .retry(ReauthPolicy::new(source.clone()))
        .layer(EnturAuthLayer::new(source.clone()))
        .service(server.api_service());
    let mut texts: Vec<String> = Vec::new();
    let mut errors: Vec<BoxError> = Vec::new();

    // Steady traffic over three lifetimes: fetch and refreshes.
    for _ in 0..60 {
        assert_eq!(
            send(&mut api, api_request(&server, "/a")).await.unwrap(),
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Revocation: a 401, a re-authentication, a replay.
    server.revoke_all();
    assert_eq!(
        send(&mut api, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
    texts.push(format!("{:?}", source.status()));

    // Transient failures, then rejected credentials echoing the secret, past expiry.
    server.set_sticky_fault(Some(Fault::status(StatusCode::BAD_GATEWAY)));
    tokio::time::sleep(Duration::from_secs(25)).await;
    errors.extend(send(&mut api, api_request(&server, "/a")).await.err());
    server.set_sticky_fault(Some(Fault::Status {
        status: StatusCode::UNAUTHORIZED,
        body: format!(
            r#"{{"error":"unauthorized_client","error_description":"secret {SECRET} was changed"}}"#
        ),
        retry_after: None,
    }));
    tokio::time::sleep(Duration::from_secs(40)).await;
    errors.extend(send(&mut api, api_request(&server, "/a")).await.err());
    texts.push(format!("{:?}", source.status()));
    server.set_sticky_fault(None);
    tokio::time::sleep(Duration::from_secs(700)).await;
    assert_eq!(
        send(&mut api, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );

    let tokens = tokens.lock().unwrap().clone();
    assert!(
        tokens.len() >= 4,
        "fetches, refreshes and a re-auth: {}",
        tokens.len()
    );
    assert_eq!(errors.len(), 2);
    for error in &errors {
        texts.extend(chain(error.as_ref()));
    }
    assert!(texts.iter().any(|t| t.contains("unauthorized_client")));
    texts.extend([
        format!("{source:?}"),
        format!("{:?}", source.current()),
        format!("{api:?}").chars().take(10_000).collect(),
        format!("{:?}", server.credentials()),
        format!("{:?}", server.source_builder()),
    ]);

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("access token fetched"), "capture works");
    assert!(logs.contains("access token fetch failed"));
    assert!(logs.contains("token refused by the API"));
    texts.push(logs);
    for text in &texts {
        assert!(!text.contains(SECRET), "secret leaked in: {text}");
        for token in &tokens {
            assert!(!text.contains(token.as_str()), "token leaked in: {text}");
            // Not even the JWT payload or signature on their own.
            for part in token.split('.').skip(1) {
                assert!(!text.contains(part), "token part leaked in: {text}");
            }
        }
    }
}
