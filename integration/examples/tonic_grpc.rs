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

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use entur_auth::buffer::BufferRequestLayer;
use entur_auth::testing::{ApiService, TestServer};
use entur_auth::{BoxError, ClientName, EnturAuthLayer, TokenSource};
use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

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
    let (_reporter, health) = tonic_health::server::health_reporter();
    let check = CheckBearerLayer::new(&auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(
        Server::builder()
            .layer(check.clone())
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    println!("gRPC health server      http://{addr}\n");

    // The client: the channel in the auth stack. tonic sends streaming bodies; the buffer
    // layer turns them into `Full<Bytes>` so that a refused call can be replayed, and the
    // last step turns them back into tonic's body type for the channel.
    let source = TokenSource::builder(auth.endpoint(), auth.credentials())
        .allow_http_loopback(true) // plain http only because the server is on 127.0.0.1
        .build()?;
    source.prefetch().await?;
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let stack = ServiceBuilder::new()
        .layer(BufferRequestLayer::new(64 * 1024))
        .layer(
            EnturAuthLayer::new(source.clone())
                .client_name(ClientName::new("acme-grpc")?)
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
    serving.abort();
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

// Server side: the bearer check.
//
// Why not a tonic `Interceptor`: interceptors are synchronous, while whether a token is valid
// (issued by the authorization server, not revoked, not expired) is known only to the
// authorization server's side, and asking it is asynchronous. A synchronous interceptor would
// need a copy of the accepted tokens filled from somewhere; filling it from the client's
// token source would make the server trust the client's own view of its token and test
// nothing. So the check is a small async tower middleware around the tonic server
// (`Server::builder().layer(..)`, tonic's way to do async work per call). It asks the
// embedded server's protected API in-process, with the call's own `Authorization` header,
// and answers a trailers-only `UNAUTHENTICATED` when that API refuses it. Revocation is
// then real: `TestServer::revoke_all()`.

/// Checks the bearer token of every call with the embedded authorization server.
#[derive(Clone)]
struct CheckBearerLayer {
    api: ApiService,
    api_url: Arc<str>,
    calls: Arc<AtomicUsize>,
}

impl CheckBearerLayer {
    fn new(server: &TestServer) -> Self {
        Self {
            api: server.api_service(),
            api_url: server.api_url().into(),
            calls: Arc::default(),
        }
    }

    /// Calls that reached the server.
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The `jti` of the call's token if the authorization server accepts it, or why not.
    async fn verdict(&self, headers: &HeaderMap) -> Result<String, String> {
        let mut ask = http::Request::get(format!("{}/grpc-check", self.api_url))
            .body(Empty::<Bytes>::new())
            .expect("a valid URL");
        if let Some(value) = headers.get(AUTHORIZATION) {
            ask.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        let answer = match self.api.clone().oneshot(ask).await {
            Ok(answer) => answer,
            Err(never) => match never {},
        };
        let accepted = answer.status() == StatusCode::OK;
        let body = answer.into_body().collect().await.map(|b| b.to_bytes());
        let json: serde_json::Value =
            serde_json::from_slice(&body.unwrap_or_default()).unwrap_or_default();
        let field = |name: &str| json[name].as_str().unwrap_or("?").to_owned();
        if accepted {
            Ok(field("jti"))
        } else {
            Err(field("error_description"))
        }
    }
}

impl<S> Layer<S> for CheckBearerLayer {
    type Service = CheckBearer<S>;
    fn layer(&self, inner: S) -> CheckBearer<S> {
        CheckBearer {
            inner,
            check: self.clone(),
        }
    }
}

#[derive(Clone)]
struct CheckBearer<S> {
    inner: S,
    check: CheckBearerLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResB> Service<http::Request<B>> for CheckBearer<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResB: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The ready service goes into the future; this one keeps a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let check = self.check.clone();
        Box::pin(async move {
            let call = check.calls.fetch_add(1, Ordering::SeqCst) + 1;
            match check.verdict(request.headers()).await {
                Ok(jti) => {
                    println!("  gRPC server: call {call}, token jti {jti}: accepted");
                    inner.call(request).await
                }
                Err(reason) => {
                    println!("  gRPC server: call {call}: UNAUTHENTICATED ({reason})");
                    Ok(Status::unauthenticated(reason).into_http())
                }
            }
        })
    }
}
