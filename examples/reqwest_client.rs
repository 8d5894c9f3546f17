//! A reqwest client with `EnturAuthMiddleware`, calling the embedded protected API over TCP on
//! 127.0.0.1.
//!
//! ```text
//! cargo run --features reqwest --example reqwest_client
//! ```
//!
//! It needs no network beyond loopback and no credentials, runs for about two seconds with
//! 2-second tokens and shows, in order:
//!
//! 1. requests succeeding, each carrying `Authorization: Bearer <token>` and `ET-Client-Name`;
//! 2. the token refreshed in the background ahead of its expiry, with no request refused;
//! 3. every token revoked by the server mid-run (`TestServer::revoke_all`), and the next
//!    request (a POST with a body) still succeeding through exactly one re-authentication and
//!    one replay;
//! 4. a request to `http://` on a remote host refused before anything is sent, as a typed
//!    error.
//!
//! It exits 0 when all of that happened, non-zero otherwise.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use entur_auth::reqwest::EnturAuthMiddleware;
use entur_auth::{AccessToken, BoxError, ClientName, EnturAuthLayer, TokenSource, ET_CLIENT_NAME};
use entur_auth_test::TestServer;
use reqwest::StatusCode;
use reqwest_middleware::ClientWithMiddleware;

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
    // Plain reqwest, no TLS needed on loopback; `no_proxy` so that an HTTP_PROXY in the
    // environment does not take 127.0.0.1 elsewhere.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let api = reqwest_middleware::ClientBuilder::new(http)
        .with(EnturAuthMiddleware::from(
            EnturAuthLayer::new(source.clone()).client_name(ClientName::new("acme-reqwestclient")?),
        ))
        .build();

    let start = Instant::now();
    let at = || format!("[{:>4.2} s]", start.elapsed().as_secs_f64());
    let mut sent = 0u32;

    // (1) and (2): requests every 100 ms until the background refresh has replaced the first
    // token, which must happen before that token expires.
    println!("\n(1) requests succeed");
    let jti = get(&api, &server, &mut sent).await?;
    let first = current(&source)?;
    println!(
        "{} GET /api/departures/{sent} → 200, the API saw token jti {jti}",
        at()
    );
    let header = server
        .last_api_request()
        .and_then(|r| r.headers.get(ET_CLIENT_NAME).cloned());
    println!("         ET-Client-Name seen by the API: {header:?}");
    if header.as_ref().map(|h| h.as_bytes()) != Some(b"acme-reqwestclient") {
        return Err("the API did not receive ET-Client-Name".into());
    }
    let refreshed = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let jti = get(&api, &server, &mut sent).await?;
        let now = current(&source)?;
        if now.id() != first.id() {
            let left = first
                .expires_at()
                .saturating_duration_since(tokio::time::Instant::now());
            println!("\n(2) token refreshed ahead of expiry");
            println!(
                "{} token {} replaced by {} in the background, {:.2} s before {} would expire",
                at(),
                first.id(),
                now.id(),
                left.as_secs_f64(),
                first.id(),
            );
            println!(
                "{} GET /api/departures/{sent} → 200, the API saw token jti {jti}",
                at()
            );
            if left.is_zero() {
                return Err("the token was replaced only after it expired".into());
            }
            break now;
        }
        if sent % 4 == 1 {
            println!(
                "{} GET /api/departures/{sent} → 200, the API saw token jti {jti}",
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

    // (3): the server revokes every token; the next request is refused once, the middleware
    // drops that token, the source fetches one new token, and the replay succeeds.
    println!("\n(3) revocation mid-run");
    let before = server.token_requests();
    server.revoke_all();
    println!(
        "{} server revoked every token (token requests so far: {before})",
        at()
    );
    sent += 1;
    let order = r#"{"from":"NSR:StopPlace:58366","to":"NSR:StopPlace:59872"}"#;
    let response = api
        .post(format!("{}/orders/{sent}", server.api_url()))
        .body(order)
        .send()
        .await?;
    let status = response.status();
    let replayed_body = server.last_api_request().map(|r| r.body);
    let after = server.token_requests();
    let renewed = current(&source)?;
    println!(
        "{} POST /api/orders/{sent} → {}, replayed with token {} and the same body",
        at(),
        status.as_u16(),
        renewed.id()
    );
    println!(
        "         token requests: {before} before, {after} after; API refusals: {}",
        server.api_rejections()
    );
    if status != StatusCode::OK
        || after != before + 1
        || server.api_rejections() != 1
        || renewed.id() == refreshed.id()
        || replayed_body.as_deref() != Some(order.as_bytes())
    {
        return Err(
            "expected exactly one refusal, one re-authentication and a replay answered 200".into(),
        );
    }
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let jti = get(&api, &server, &mut sent).await?;
        println!(
            "{} GET /api/departures/{sent} → 200, the API saw token jti {jti}",
            at()
        );
    }

    // (4): a bearer token never goes over plain http to a remote host.
    println!("\n(4) plain http to a remote host");
    let requests = server.api_requests();
    match api
        .get("http://api.entur.io/journey-planner/v3/graphql")
        .send()
        .await
    {
        Err(reqwest_middleware::Error::Middleware(error)) => {
            match error.downcast_ref::<entur_auth::auth::CleartextRefused>() {
                Some(refused) => println!("{} refused before sending: {refused}", at()),
                None => return Err(format!("expected CleartextRefused, got {error}").into()),
            }
        }
        other => return Err(format!("expected CleartextRefused, got {other:?}").into()),
    }
    if server.api_requests() != requests {
        return Err("a refused request reached the server".into());
    }

    println!(
        "\n{sent} requests, all succeeded; {} token requests; {} refused by the API and recovered.",
        server.token_requests(),
        server.api_rejections()
    );
    Ok(())
}

/// One GET through the client; any failure (an error, or a status other than 200) is an
/// error. Returns the `jti` of the token the API saw.
async fn get(
    api: &ClientWithMiddleware,
    server: &TestServer,
    sent: &mut u32,
) -> Result<String, BoxError> {
    *sent += 1;
    let url = format!("{}/departures/{sent}", server.api_url());
    let response = api.get(url).send().await?;
    let status = response.status();
    if status != StatusCode::OK {
        return Err(format!("request {sent} answered {status}").into());
    }
    let json: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
    Ok(json["jti"].as_str().unwrap_or("?").to_owned())
}

fn current(source: &TokenSource) -> Result<Arc<AccessToken>, BoxError> {
    source
        .current()
        .ok_or_else(|| "no usable token right after a successful request".into())
}
