//! A tonic client built `with_interceptor`, authenticated by `EnturAuthInterceptor`: tonic's
//! usual pattern, with the client's type `HealthClient<InterceptedService<Channel, _>>`.
//!
//! ```text
//! cargo run --features tonic --example tonic_interceptor
//! ```
//!
//! It starts the embedded authorization server and, on 127.0.0.1, a tonic server serving the
//! standard gRPC health service that accepts only bearer tokens the authorization server
//! issued and has not revoked (the check of `examples/tonic_grpc.rs`). It shows a call made
//! before the first token (`UNAVAILABLE`, and the fetch starts), `ready()` at startup, a
//! `Check` succeeding, then every token revoked: the refused call is reported with
//! `observe`, which drops the token, and the next `Check` carries a new one. Unlike the
//! tower layer (`examples/tonic_grpc.rs`), the interceptor does not replay the refused call:
//! the caller sees the `UNAUTHENTICATED`. No network beyond loopback, no credentials; exits 0.

use std::process::ExitCode;
use std::time::Duration;

use entur_auth::tonic::EnturAuthInterceptor;
use entur_auth::{BoxError, ClientName, EnturAuthLayer, TokenSource};
use entur_auth_integration::grpc::BearerCheck;
use entur_auth_test::TestServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

type Client = HealthClient<InterceptedService<Channel, EnturAuthInterceptor>>;

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
    let auth_server = TestServer::start().await?;
    println!("embedded token endpoint {}", auth_server.token_url());

    // The gRPC server: the health service behind the bearer check.
    let check = BearerCheck::new(&auth_server).printing();
    let addr = check.serve_health().await?;
    println!("gRPC health server      http://{addr}\n");

    // The client: a plain channel and the interceptor. Keep a clone of the interceptor next
    // to the client to report its results.
    let source = TokenSource::builder(auth_server.endpoint(), auth_server.credentials())
        .allow_http_loopback(true) // plain http only because the server is on 127.0.0.1
        .build()?;
    let auth = EnturAuthInterceptor::from(
        EnturAuthLayer::new(source.clone()).client_name(ClientName::new("acme-grpc")?),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client: Client = HealthClient::with_interceptor(channel, auth.clone());

    println!("Check before the first token (an interceptor cannot wait for it):");
    match check_health(&mut client, &auth).await {
        Err(status) if status.code() == Code::Unavailable => {
            println!("  → {:?}: {}", status.code(), status.message());
        }
        other => return Err(format!("expected UNAVAILABLE, got {other:?}").into()),
    }
    // What to do at startup: wait for the token, for at most 30 s.
    source.ready(Duration::from_secs(30)).await?;
    println!(
        "  ready(): token fetched; token requests: {}\n",
        auth_server.token_requests()
    );

    println!("Check:");
    check_health(&mut client, &auth).await?;
    println!(
        "  → SERVING; token requests: {}\n",
        auth_server.token_requests()
    );

    let (tokens_before, calls_before) = (auth_server.token_requests(), check.calls());
    auth_server.revoke_all();
    println!("Authorization server revokes every token; Check again:");
    match check_health(&mut client, &auth).await {
        Err(status) if status.code() == Code::Unauthenticated => {
            println!("  → {:?}: {}", status.code(), status.message());
            println!("  (observe() saw it and dropped the token; a new one is being fetched)");
        }
        other => return Err(format!("expected UNAUTHENTICATED, got {other:?}").into()),
    }
    if source.current().is_some() {
        return Err("the refused token is still current".into());
    }
    // A caller that would rather wait than retry on UNAVAILABLE waits for the new token.
    source.ready(Duration::from_secs(5)).await?;

    println!("\nCheck with the new token:");
    check_health(&mut client, &auth).await?;
    let (tokens_after, calls_after) = (auth_server.token_requests(), check.calls());
    println!(
        "  → SERVING; token requests: {tokens_before} before the revocation, {tokens_after} after; calls the server saw since: {}",
        calls_after - calls_before
    );
    if tokens_after != tokens_before + 1 || calls_after - calls_before != 2 {
        return Err("expected one refused call, one re-authentication, one accepted call".into());
    }
    Ok(())
}

/// One `Check`, reported to the interceptor with `observe`: an `UNAUTHENTICATED` drops the
/// token the call carried; a success ends the backoff of forced refreshes.
async fn check_health(client: &mut Client, auth: &EnturAuthInterceptor) -> Result<(), Status> {
    auth.observe(client.check(HealthCheckRequest::default()).await)
        .map(drop)
}
