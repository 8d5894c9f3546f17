//! A tonic gRPC client authenticated by `EnturAuthLayer`, re-authenticating once when the
//! server answers `UNAUTHENTICATED`.
//!
//! ```text
//! cargo run --example tonic_grpc
//! ```
//!
//! It starts the embedded authorization server and, on 127.0.0.1, a tonic server serving the
//! standard gRPC health service (`tonic-health`, no protoc needed) that accepts only bearer
//! tokens the authorization server issued and has not revoked. The client is a tonic
//! `Channel` wrapped in the stack below. It shows a `Check` succeeding, a call without a token
//! refused, then every token revoked mid-run and the next `Check` succeeding through exactly
//! one re-authentication: the server's trailers-only answer carries `grpc-status: 16` in its
//! headers, which the auth layer reads. No network beyond loopback, no credentials; exits 0.

use std::process::ExitCode;

use bytes::Bytes;
use entur_auth::replay::CollectBodyLayer;
use entur_auth::{BoxError, ClientName, EnturAuthLayer, TokenSource};
use entur_auth_integration::grpc::BearerCheck;
use entur_auth_test::TestServer;
use http_body_util::Full;
use tonic::transport::Endpoint;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;

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
    let auth = TestServer::start().await?;
    println!("embedded token endpoint {}", auth.token_url());

    // The gRPC server: the health service behind the bearer check.
    let check = BearerCheck::new(&auth).printing();
    let addr = check.serve_health().await?;
    println!("gRPC health server      http://{addr}\n");

    // The client: the channel in the auth stack. tonic sends streaming bodies; the buffer
    // layer turns them into `Full<Bytes>` so that a refused call can be replayed, and the
    // last step turns them back into tonic's body type for the channel.
    let source = TokenSource::builder(auth.endpoint(), auth.credentials())
        .allow_http_loopback(true) // plain http only because the server is on 127.0.0.1
        .build()?;
    source.prefetch().await?;
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?;
    let channel = endpoint.connect().await?;
    let stack = ServiceBuilder::new()
        .layer(CollectBodyLayer::new(64 * 1024))
        .layer(
            EnturAuthLayer::new(source.clone())
                .client_name(ClientName::new("acme-grpc")?)
                // tonic sends the channel relative URIs: the layer judges them by the
                // endpoint's origin (plain http, allowed for 127.0.0.1 only).
                .origin(endpoint.uri().clone())
                .with_replay(),
        )
        .map_request(|r: http::Request<Full<Bytes>>| r.map(tonic::body::Body::new))
        .service(channel.clone());
    let mut client = HealthClient::new(stack);

    println!("Check (authenticated client):");
    let status = health_check(&mut client).await?;
    println!(
        "  → {status:?}; token requests: {}\n",
        auth.token_requests()
    );

    println!("Check without a token (the bare channel):");
    match HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
    {
        Err(status) if status.code() == Code::Unauthenticated => {
            println!("  → {:?}: {}\n", status.code(), status.message());
        }
        other => return Err(format!("a call without a token must be refused: {other:?}").into()),
    }

    let (tokens_before, calls_before) = (auth.token_requests(), check.calls());
    auth.revoke_all();
    println!("Authorization server revokes every token; Check again:");
    let status = health_check(&mut client).await?;
    let (tokens_after, calls_after) = (auth.token_requests(), check.calls());
    println!("  → {status:?}");
    println!(
        "  (the refusal: HTTP 200 with `grpc-status: 16` in its headers, read by the auth layer, which dropped the token; the replay layer sent the call again)"
    );
    println!(
        "  token requests: {tokens_before} before, {tokens_after} after; calls the gRPC server saw for this Check: {}",
        calls_after - calls_before
    );
    if tokens_after != tokens_before + 1 || calls_after - calls_before != 2 {
        return Err("expected one refused call, one re-authentication and one replay".into());
    }

    println!("\nCheck once more (no re-authentication needed):");
    let status = health_check(&mut client).await?;
    println!("  → {status:?}; token requests: {}", auth.token_requests());
    if auth.token_requests() != tokens_after {
        return Err("an accepted token was fetched again".into());
    }
    Ok(())
}

async fn health_check<S>(client: &mut HealthClient<S>) -> Result<ServingStatus, BoxError>
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<BoxError>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    let response = client.check(HealthCheckRequest::default()).await?;
    let status = response.into_inner().status();
    if status != ServingStatus::Serving {
        return Err(format!("the server is {status:?}").into());
    }
    Ok(status)
}
