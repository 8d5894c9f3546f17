//! A backend-for-frontend: an axum server whose handler calls a protected upstream API through
//! one shared, authenticated hyper-util client, and answers the end user without the token.
//!
//! ```text
//! cargo run --example axum_bff
//! ```
//!
//! Entur asks that access tokens stay on the server side, out of end users' reach. Here the
//! BFF holds the token source; the browser (or app) calls `GET /departures/{stop}` on the BFF
//! and never sees a token. The upstream is the embedded protected API on 127.0.0.1; the
//! example starts the BFF on 127.0.0.1, sends it a few requests itself, checks that no answer
//! carries a token, prints the answers and exits 0. No network beyond loopback, no credentials.
//!
//! The BFF also serves its metrics on `GET /metrics` for Prometheus (the crate's feature
//! `metrics`, rendered by `metrics-exporter-prometheus`): after the upstream refuses a token
//! once, the example scrapes it and checks the token requests, the refusal and the replay.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use entur_auth::auth::ResponseBody;
use entur_auth::error_for_status::ErrorForStatusLayer;
use entur_auth::{BoxError, ClientName, EnturAuthLayer, TokenSource, ET_CLIENT_NAME};
use entur_auth_test::ApiFault;
use entur_auth_test::TestServer;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

/// The one authenticated upstream client, shared by every handler call: its clones share the
/// token source, so the whole BFF holds one token and refreshes it in one background task.
type Upstream =
    BoxCloneSyncService<Request<Full<Bytes>>, http::Response<ResponseBody<Incoming>>, BoxError>;

#[derive(Clone)]
struct AppState {
    upstream: Upstream,
    /// Base URL of the protected upstream API.
    api_url: Arc<str>,
    /// For `/metrics`: the source, whose `status()` brings its gauges up to date, and the
    /// Prometheus recorder's handle, which renders the scrape.
    source: TokenSource,
    prometheus: PrometheusHandle,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    // Metrics: a Prometheus recorder, installed for this process before anything records.
    // Token request durations as a histogram with buckets (the exporter's default is a
    // summary); the handle renders the scrape in the `/metrics` handler, so no exporter
    // listener is started.
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(entur_auth::metrics::TOKEN_REQUEST_DURATION.to_owned()),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )?
        .build_recorder();
    let prometheus = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    entur_auth::metrics::describe();

    // Upstream: the embedded authorization server and protected API.
    let upstream_server = TestServer::builder()
        .token_lifetime(Duration::from_secs(60))
        .start()
        .await?;
    let source = TokenSource::builder(upstream_server.endpoint(), upstream_server.credentials())
        .allow_http_loopback(true) // plain http only because the server is on 127.0.0.1
        .build()?;
    // Fail at startup, not on the first user, if credentials are bad; ride out an
    // authorization server that is not reachable yet for up to 30 s.
    source.ready(Duration::from_secs(30)).await?;

    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let upstream = ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .timeout(Duration::from_secs(5))
        .layer(
            EnturAuthLayer::new(source.clone())
                .client_name(ClientName::new("acme-bff")?)
                .with_replay(),
        )
        .service(http);
    let state = AppState {
        upstream: BoxCloneSyncService::new(upstream),
        api_url: upstream_server.api_url().into(),
        source: source.clone(),
        prometheus,
    };

    // The BFF itself.
    let app = Router::new()
        .route("/departures/{stop}", get(departures))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bff = listener.local_addr()?;
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("upstream API (embedded) {}", upstream_server.api_url());
    println!("BFF                     http://{bff}");
    println!();

    // The end user: a plain client with no credentials at all.
    let user = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let token = source
        .current()
        .ok_or("the token source has no token after prefetch")?;
    let token = token.header_value().to_str()?;
    let token = token.strip_prefix("Bearer ").unwrap_or(token).to_owned();
    let mut answered = 0;
    for stop in ["NSR:StopPlace:337", "NSR:StopPlace:58366", "NSR:Quay:7203"] {
        let uri = format!("http://{bff}/departures/{stop}");
        let response = user
            .request(Request::get(&uri).body(Full::default())?)
            .await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&body);
        println!("GET /departures/{stop} → {}", parts.status);
        println!("    {text}");
        if parts.status != StatusCode::OK {
            return Err(format!("the BFF answered {}", parts.status).into());
        }
        leaks_nothing(&parts.headers, &text, &token)?;
        answered += 1;
    }

    // A stop id that could reach another upstream path is refused before anything is sent.
    let before = upstream_server.api_requests();
    let uri = format!("http://{bff}/departures/..%2F..%2Foauth%2Ftoken");
    let response = user
        .request(Request::get(uri).body(Full::default())?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("GET /departures/..%2F..%2Foauth%2Ftoken → {status}");
    println!("    {}", String::from_utf8_lossy(&body));
    if status != StatusCode::BAD_REQUEST || upstream_server.api_requests() != before {
        return Err("an invalid stop id must be refused without calling upstream".into());
    }

    // What upstream saw: the BFF's token and client name, one token for every user request.
    let seen = upstream_server
        .last_api_request()
        .ok_or("upstream saw no request")?;
    let authorized = seen.headers.get(AUTHORIZATION).map(|v| v.as_bytes())
        == Some(format!("Bearer {token}").as_bytes());
    println!();
    println!(
        "upstream saw {} requests, refused {}; the last one carried the BFF's bearer token: {authorized}, ET-Client-Name {:?}",
        upstream_server.api_requests(),
        upstream_server.api_rejections(),
        seen.headers.get(ET_CLIENT_NAME)
    );
    println!(
        "token requests: {}; answers to the end user carrying a token: 0 of {answered}",
        upstream_server.token_requests()
    );
    if !authorized || upstream_server.token_requests() != 1 || upstream_server.api_rejections() != 0
    {
        return Err("upstream did not get the BFF's one token".into());
    }

    // Upstream refuses the BFF's token once (revoked, say): the BFF drops it, fetches a new
    // one and replays; the end user gets the departures all the same.
    upstream_server.push_api_fault(ApiFault::invalid_token());
    let uri = format!("http://{bff}/departures/NSR:StopPlace:337");
    let response = user
        .request(Request::get(&uri).body(Full::default())?)
        .await?;
    println!();
    println!(
        "upstream refused the token once; GET /departures/NSR:StopPlace:337 → {}",
        response.status()
    );
    if response.status() != StatusCode::OK {
        return Err(format!("the BFF answered {} after a refusal", response.status()).into());
    }

    // What Prometheus would scrape.
    let response = user
        .request(Request::get(format!("http://{bff}/metrics")).body(Full::default())?)
        .await?;
    let scrape = String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?;
    println!();
    println!("GET /metrics (the entur_auth series, without help texts, buckets and zeros):");
    for line in scrape
        .lines()
        .filter(|l| l.starts_with("entur_auth") && !l.contains("_bucket") && !l.ends_with(" 0"))
    {
        println!("    {line}");
    }
    // Two token requests (the first token, the one after the refusal), one refusal that
    // started a fetch, one replay whose new token was accepted.
    let source_labels = format!(
        r#"server_address="127.0.0.1",oauth_client_id="{}""#,
        upstream_server.client_id()
    );
    for expected in [
        format!(r#"entur_auth_token_requests{{{source_labels},outcome="success"}} 2"#),
        format!(
            r#"entur_auth_token_refusals{{{source_labels},reason="http_401",action="started"}} 1"#
        ),
        format!(r#"entur_auth_replays{{{source_labels},outcome="accepted"}} 1"#),
        format!(r#"entur_auth_source_health{{{source_labels},state="fresh"}} 1"#),
        format!(
            r#"entur_auth_token_request_duration_count{{{source_labels},outcome="success"}} 2"#
        ),
    ] {
        if !scrape.lines().any(|line| line == expected) {
            return Err(format!("/metrics lacks `{expected}`:\n{scrape}").into());
        }
    }
    if !scrape.contains("entur_auth_token_request_duration_bucket{") {
        return Err("token request durations are not a histogram".into());
    }
    serving.abort();
    Ok(())
}

/// `GET /metrics`: the Prometheus text format.
async fn metrics_text(State(state): State<AppState>) -> Response {
    // A cheap read that also brings the token source's gauges (health, how long the token
    // will still be sent) up to date for this scrape.
    let _ = state.source.status();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
        .into_response()
}

/// `GET /departures/{stop}`: the upstream's JSON, and nothing of the upstream's headers.
async fn departures(State(state): State<AppState>, Path(stop): Path<String>) -> Response {
    // The stop id goes into the upstream URL: allow only what stop ids are made of.
    let valid = !stop.is_empty()
        && stop.len() <= 64
        && stop
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'-');
    if !valid {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid stop id"}"#.into(),
        );
    }
    let request = Request::get(format!("{}/departures/{stop}", state.api_url))
        .body(Full::default())
        .expect("a valid URL: the stop id was checked");
    match upstream_json(state.upstream, request).await {
        Ok(body) => json(StatusCode::OK, body),
        Err(error) => {
            // Logged on the server; the end user gets no detail of the upstream or its auth.
            eprintln!("upstream call failed: {error}");
            json(
                StatusCode::BAD_GATEWAY,
                r#"{"error":"departures are unavailable"}"#.into(),
            )
        }
    }
}

async fn upstream_json(
    upstream: Upstream,
    request: Request<Full<Bytes>>,
) -> Result<Bytes, BoxError> {
    let response = upstream.oneshot(request).await?;
    if !response.status().is_success() {
        return Err(format!("upstream answered {}", response.status()).into());
    }
    Ok(response.into_body().collect().await?.to_bytes())
}

fn json(status: StatusCode, body: Bytes) -> Response {
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

/// Fails if what the end user received contains a bearer token or the BFF's token.
fn leaks_nothing(headers: &HeaderMap, body: &str, token: &str) -> Result<(), BoxError> {
    let mut seen = vec![body.to_owned()];
    for (name, value) in headers {
        seen.push(format!(
            "{name}: {}",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    for text in &seen {
        if text.to_ascii_lowercase().contains("bearer") || text.contains(token) {
            return Err("the answer to the end user contains the token".into());
        }
    }
    if headers.contains_key(AUTHORIZATION) {
        return Err("the answer to the end user has an Authorization header".into());
    }
    Ok(())
}
