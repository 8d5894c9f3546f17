//! A hyper-util client with the full stack: typed errors, re-authentication, a per-attempt
//! timeout and the bearer layer, calling the embedded protected API over TCP on 127.0.0.1.
//!
//! ```text
//! cargo run --example hyper_client
//! ```
//!
//! It needs no network beyond loopback and no credentials, runs for about two seconds with
//! 2-second tokens and shows, in order:
//!
//! 1. requests succeeding, each carrying `Authorization: Bearer <token>` and `ET-Client-Name`;
//! 2. the token refreshed in the background ahead of its expiry, with no request refused;
//! 3. every token revoked by the server mid-run (`TestServer::revoke_all`), and the next
//!    request still succeeding through exactly one re-authentication.
//!
//! It exits 0 when all of that happened, non-zero otherwise.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use entur_auth::auth::ResponseBody;
use entur_auth::error_for_status::ErrorForStatusLayer;
use entur_auth::{AccessToken, BoxError, ClientName, EnturAuthLayer, TokenSource, ET_CLIENT_NAME};
use entur_auth_test::TestServer;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};

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
    let lifetime = Duration::from_secs(2);
    let server = TestServer::builder()
        .token_lifetime(lifetime)
        .start()
        .await?;
    println!("embedded token endpoint {}", server.token_url());
    println!("embedded protected API  {}", server.api_url());
    println!("token lifetime          {} s", lifetime.as_secs());

    let source = TokenSource::builder(server.endpoint(), server.credentials())
        .allow_http_loopback(true) // plain http only because the server is on 127.0.0.1
        .build()?;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    // Outermost first: typed errors see the final answer; the timeout bounds the whole
    // exchange; the auth layer with its one replay after a refused token comes last, so the
    // replay reads the token afresh.
    let api = ServiceBuilder::new()
        .layer(ErrorForStatusLayer::new())
        .timeout(Duration::from_secs(2))
        .layer(
            EnturAuthLayer::new(source.clone())
                .client_name(ClientName::new("acme-hyperclient")?)
                .with_replay(),
        )
        .service(http);

    let start = Instant::now();
    let at = || format!("[{:>4.2} s]", start.elapsed().as_secs_f64());
    let mut sent = 0u32;

    // (a) and (b): requests every 100 ms until the background refresh has replaced the first
    // token, which must happen before that token expires.
    println!("\n(a) requests succeed");
    let (status, jti) = get(&api, &server, &mut sent).await?;
    let first = current(&source)?;
    println!(
        "{} GET /api/departures/{sent} → {status}, the API saw token jti {jti}",
        at()
    );
    let header = server
        .last_api_request()
        .and_then(|r| r.headers.get(ET_CLIENT_NAME).cloned());
    println!("         ET-Client-Name seen by the API: {header:?}");
    if header.as_ref().map(|h| h.as_bytes()) != Some(b"acme-hyperclient") {
        return Err("the API did not receive ET-Client-Name".into());
    }
    let refreshed = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, jti) = get(&api, &server, &mut sent).await?;
        let now = current(&source)?;
        if now.id() != first.id() {
            let left = first
                .expires_at()
                .saturating_duration_since(tokio::time::Instant::now());
            println!("\n(b) token refreshed ahead of expiry");
            println!(
                "{} token {} replaced by {} in the background, {:.2} s before {} would expire",
                at(),
                first.id(),
                now.id(),
                left.as_secs_f64(),
                first.id(),
            );
            println!(
                "{} GET /api/departures/{sent} → {status}, the API saw token jti {jti}",
                at()
            );
            if left.is_zero() {
                return Err("the token was replaced only after it expired".into());
            }
            break now;
        }
        if sent % 4 == 1 {
            println!(
                "{} GET /api/departures/{sent} → {status}, the API saw token jti {jti}",
                at()
            );
        }
        if start.elapsed() > lifetime + Duration::from_secs(1) {
            return Err("no refresh ahead of expiry within the token's lifetime".into());
        }
    };
    if server.api_rejections() != 0 || server.token_requests() != 2 {
        return Err(format!(
            "expected 0 refusals and 2 token requests before the revocation, got {} and {}",
            server.api_rejections(),
            server.token_requests()
        )
        .into());
    }

    // (c): the server revokes every token; the next request is refused once, the policy
    // drops that token, the source fetches one new token, and the replay succeeds.
    println!("\n(c) revocation mid-run");
    let before = server.token_requests();
    server.revoke_all();
    println!(
        "{} server revoked every token (token requests so far: {before})",
        at()
    );
    let (status, jti) = get(&api, &server, &mut sent).await?;
    let after = server.token_requests();
    let renewed = current(&source)?;
    println!(
        "{} GET /api/departures/{sent} → {status}, the API saw token jti {jti} (token {})",
        at(),
        renewed.id()
    );
    println!(
        "         token requests: {before} before, {after} after; API refusals: {}",
        server.api_rejections()
    );
    if after != before + 1 || server.api_rejections() != 1 || renewed.id() == refreshed.id() {
        return Err("expected exactly one refusal and one re-authentication".into());
    }
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, jti) = get(&api, &server, &mut sent).await?;
        println!(
            "{} GET /api/departures/{sent} → {status}, the API saw token jti {jti}",
            at()
        );
    }

    println!(
        "\n{sent} requests, all succeeded; {} token requests; {} refused by the API and recovered.",
        server.token_requests(),
        server.api_rejections()
    );
    Ok(())
}

/// One GET through the stack; any failure (an error, or a status other than 200) is an error.
/// Returns the status and the `jti` of the token the API saw.
async fn get<S>(
    api: &S,
    server: &TestServer,
    sent: &mut u32,
) -> Result<(StatusCode, String), BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResponseBody<Incoming>>, Error = BoxError>
        + Clone,
{
    *sent += 1;
    let url = format!("{}/departures/{sent}", server.api_url());
    let request = Request::get(url).body(Full::default())?;
    let response = api.clone().oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        return Err(format!("request {sent} answered {status}").into());
    }
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    Ok((status, json["jti"].as_str().unwrap_or("?").to_owned()))
}

fn current(source: &TokenSource) -> Result<Arc<AccessToken>, BoxError> {
    source
        .current()
        .ok_or_else(|| "no usable token right after a successful request".into())
}
