//! Quick start: authenticated requests through `EnturAuthLayer`, configured with
//! `entur_auth::Config`.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! With no credentials in the environment it starts the embedded authorization server and
//! API on 127.0.0.1 with 3-second tokens and sends a request every 125 ms for about 10
//! seconds: tokens fetched, sent and refreshed ahead of expiry, and, half-way, every token
//! revoked by the server: the one refused request is replayed with a new token and succeeds.
//!
//! With `ENTUR_CLIENT_ID` and `ENTUR_CLIENT_SECRET` (or `ENTUR_CLIENT_SECRET_FILE`) set, it
//! authenticates against Entur and calls the partner API URL given as the first argument.
//! `ENTUR_ENVIRONMENT` (dev, staging or production) and `ET_CLIENT_NAME`
//! (`<company>-<application>`) default to `dev` and `entur_auth-quickstart` here; a program of
//! your own calls `Config::from_env()`, which asks for them. The other variables
//! (`ENTUR_AUDIENCE`, `ENTUR_TOKEN_URL`, `ENTUR_TOKEN_BODY`) are read as `Config` documents.
//!
//! With a private key, Maskinporten or a client certificate instead of a secret, build the
//! source with `TokenSource::builder(endpoint, Credentials::private_key_jwt(..))` (or
//! `jwt_bearer`, `tls_client_auth`) as the README's "Credentials" section shows; the layer
//! and everything after it stay as they are.
//!
//! ```text
//! ENTUR_CLIENT_ID=… ENTUR_CLIENT_SECRET=… ENTUR_ENVIRONMENT=dev ET_CLIENT_NAME=acme-ticketing \
//!   cargo run --example quickstart -- https://api.dev.entur.io/<some partner API path>
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use entur_auth::{BoxError, Config, Environment, TokenId};
use entur_auth_test::TestServer;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> ExitCode {
    let result = if std::env::var_os("ENTUR_CLIENT_ID").is_some() {
        against_entur().await
    } else {
        demo().await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The embedded authorization server and API, short-lived tokens, ~10 s of traffic.
async fn demo() -> Result<(), BoxError> {
    let lifetime = Duration::from_secs(3);
    let server = TestServer::builder()
        .token_lifetime(lifetime)
        .start()
        .await?;
    println!("No ENTUR_CLIENT_ID set: using the embedded authorization server and API.");
    println!("  token endpoint  {}", server.token_url());
    println!("  protected API   {}", server.api_url());
    println!(
        "  token lifetime  {} s (Entur's are 24 h)",
        lifetime.as_secs()
    );
    println!();

    // The same configuration call as against Entur; only the variables differ. The token URL
    // is plain http, which Config accepts for loopback hosts only.
    let config = Config::from_lookup(|name| match name {
        "ENTUR_CLIENT_ID" => Some(server.client_id().to_owned()),
        "ENTUR_CLIENT_SECRET" => Some(server.client_secret().to_owned()),
        "ENTUR_TOKEN_URL" => Some(server.token_url()),
        "ENTUR_AUDIENCE" => Some(server.audience().to_owned()),
        "ET_CLIENT_NAME" => Some("acme-quickstart".to_owned()),
        _ => None,
    })?;
    let (source, layer) = config.build()?;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    // with_replay(): a request the API refuses (401) is sent once more with a new token.
    let mut api = ServiceBuilder::new()
        .layer(layer.with_replay())
        .service(http);
    println!("Printing every token change, every refusal and one request in 8.");

    let start = Instant::now();
    let (mut requests, mut ok) = (0u32, 0u32);
    let mut last_token: Option<TokenId> = None;
    let mut revoked = false;
    let mut rejections_seen = 0;
    while start.elapsed() < Duration::from_secs(10) {
        if !revoked && start.elapsed() >= Duration::from_secs(6) {
            // As an authorization server does when a client's access is withdrawn or its
            // secret rotated: the token in hand is refused from now on.
            server.revoke_all();
            revoked = true;
            println!(
                "[{:>5.2} s] the server revokes every token it has issued",
                start.elapsed().as_secs_f64()
            );
        }
        let url = format!(
            "{}/stop-places/NSR:StopPlace:{}",
            server.api_url(),
            58366 + requests
        );
        let request = http::Request::get(url).body(Full::default())?;
        let sent_with = source.current().map(|token| token.id());
        let response = api.ready().await?.call(request).await?;
        requests += 1;
        let status = response.status();
        if status.is_success() {
            ok += 1;
        }
        // The embedded API counts the tokens it refuses: a request that needed a replay.
        let refused = server.api_rejections() > rejections_seen;
        rejections_seen = server.api_rejections();
        let token = source.current();
        let token_id = token.as_ref().map(|t| t.id());
        if refused {
            println!(
                "[{:>5.2} s] GET …/stop-places → 401 for token {}: the layer dropped it, fetched token {} and replayed the request → {}",
                start.elapsed().as_secs_f64(),
                sent_with.map_or_else(|| "?".to_owned(), |id| id.to_string()),
                token_id.map_or_else(|| "?".to_owned(), |id| id.to_string()),
                status,
            );
        }
        if token_id != last_token {
            if let Some(token) = &token {
                let verb = match last_token {
                    None => "fetched",
                    Some(_) if refused => "fetched after the refusal",
                    Some(_) => "refreshed ahead of expiry",
                };
                println!(
                    "[{:>5.2} s] token {} {verb}: valid {:.1} s, next refresh in {:.1} s",
                    start.elapsed().as_secs_f64(),
                    token.id(),
                    (token.expires_at() - token.issued_at()).as_secs_f64(),
                    token
                        .refresh_at()
                        .saturating_duration_since(tokio::time::Instant::now())
                        .as_secs_f64(),
                );
            }
            last_token = token_id;
        }
        if requests % 8 == 1 && !refused {
            println!(
                "[{:>5.2} s] GET …/stop-places → {} (sent with Authorization: Bearer <token {}> and ET-Client-Name)",
                start.elapsed().as_secs_f64(),
                status,
                token_id.map_or_else(|| "?".to_owned(), |id| id.to_string()),
            );
        }
        tokio::time::sleep(Duration::from_millis(125)).await;
    }

    println!();
    println!(
        "{requests} requests, {ok} succeeded, {} token requests, {} rejected by the API.",
        server.token_requests(),
        server.api_rejections()
    );
    if ok != requests {
        return Err(format!("{} requests failed", requests - ok).into());
    }
    // Once, or not at all if a refresh ahead of expiry replaced the token in the instant
    // between the revocation and the next request.
    if server.api_rejections() > 1 {
        return Err(format!(
            "expected the revoked token to be refused once, it was refused {} times",
            server.api_rejections()
        )
        .into());
    }
    println!("Every request succeeded: tokens were refreshed in the background, and the one");
    println!("request sent with a revoked token was replayed with a new one.");
    Ok(())
}

/// Entur for real: the configuration from the environment, the API URL from the command line.
async fn against_entur() -> Result<(), BoxError> {
    // Config::from_env() with two defaults for this example: your program would not have them.
    let config = Config::from_lookup(|name| {
        std::env::var(name).ok().or_else(|| match name {
            "ENTUR_ENVIRONMENT" if std::env::var_os("ENTUR_TOKEN_URL").is_none() => {
                Some("dev".to_owned())
            }
            "ET_CLIENT_NAME" => Some("entur_auth-quickstart".to_owned()),
            _ => None,
        })
    })?;
    let Some(url) = std::env::args().nth(1) else {
        let audience = config
            .environment()
            .map_or("https://api.dev.entur.io", Environment::audience);
        return Err(format!(
            "give the partner API URL to call, e.g. `cargo run --example quickstart -- {audience}/…`"
        )
        .into());
    };
    // Another credential method (a private key, Maskinporten, a client certificate): see the README's "Credentials".
    let (source, layer) = config.build()?;
    match config.environment() {
        Some(environment) => println!(
            "Authenticating against Entur {environment} ({})…",
            config.endpoint().url()
        ),
        None => println!("Authenticating at {}…", config.endpoint().url()),
    }
    // Waits through transient failures for up to 30 s; fails at once on bad credentials.
    source.ready(Duration::from_secs(30)).await?;
    println!("Token fetched; calling {url}");

    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_only()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(https);
    let mut api = ServiceBuilder::new().layer(layer).service(client);
    let request = http::Request::get(url.as_str()).body(Full::default())?;
    let response = api.ready().await?.call(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("{status}");
    println!("{}", String::from_utf8_lossy(&body[..body.len().min(2000)]));
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the API answered {status}").into())
    }
}
