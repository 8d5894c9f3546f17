//! A tonic client behind the auth stack, against tonic servers on 127.0.0.1: gRPC
//! `UNAUTHENTICATED` costs one re-authentication and one replay; `PERMISSION_DENIED` is not
//! retried.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use entur_auth::error_for_status::{ErrorForStatus, ErrorForStatusLayer, Refused};
use entur_auth::replay::Replay;
use entur_auth::replay::{CollectBody, CollectBodyLayer};
use entur_auth::{EnturAuthLayer, TokenSource};
use entur_auth_integration::grpc::BearerCheck;
use entur_auth_test::TestServer;
use http_body_util::Full;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::util::MapRequest;
use tower::{Layer, ServiceBuilder};

type ToTonic = fn(http::Request<Full<Bytes>>) -> http::Request<tonic::body::Body>;

/// buffer → auth with its replay → tonic body → channel.
type Stack = CollectBody<Replay<MapRequest<Channel, ToTonic>>>;

fn to_tonic(request: http::Request<Full<Bytes>>) -> http::Request<tonic::body::Body> {
    request.map(tonic::body::Body::new)
}

/// The stack over a channel to 127.0.0.1, the origin the channel adds below the layer.
fn stack(source: &TokenSource, channel: Channel) -> Stack {
    ServiceBuilder::new()
        .layer(CollectBodyLayer::new(64 * 1024))
        .layer(
            EnturAuthLayer::new(source.clone())
                .origin(http::Uri::from_static("http://127.0.0.1"))
                .with_replay(),
        )
        .map_request(to_tonic as ToTonic)
        .service(channel)
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the gRPC server on 127.0.0.1 accepts connections")
}

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn check_request() -> HealthCheckRequest {
    HealthCheckRequest::default()
}

/// The health service behind a bearer check that asks the embedded server's protected API
/// (issued, not revoked, not expired); the bearer of every call is recorded.
async fn serve_checked(server: &TestServer) -> (SocketAddr, BearerCheck) {
    let check = BearerCheck::new(server);
    let addr = check.serve_health().await.unwrap();
    (addr, check)
}

/// The health service behind a tonic interceptor that refuses every call with
/// `PERMISSION_DENIED`, counting calls.
async fn serve_denying() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let denying = tonic::service::interceptor::InterceptedService::new(
        health,
        move |_request: tonic::Request<()>| -> Result<tonic::Request<()>, Status> {
            counted.fetch_add(1, Ordering::SeqCst);
            Err(Status::permission_denied(
                "this client may not check health",
            ))
        },
    );
    let (listener, addr) = listener().await;
    tokio::spawn(
        Server::builder()
            .add_service(denying)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (addr, calls)
}

#[tokio::test]
async fn unauthenticated_once_costs_one_reauth_and_one_replay() {
    let server = common::server(Duration::from_secs(3600)).await;
    let source = common::source(&server);
    let (addr, check) = serve_checked(&server).await;
    source.prefetch().await.unwrap();
    let mut client = HealthClient::new(stack(&source, channel(addr).await));

    let response = client.check(check_request()).await.unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    assert_eq!(check.authorizations().len(), 1);
    assert_eq!(server.token_requests(), 1);

    server.revoke_all();
    let refused = source.current().unwrap();
    let response = client.check(check_request()).await.unwrap();
    assert_eq!(
        response.into_inner().status(),
        ServingStatus::Serving,
        "the caller sees the success"
    );
    assert_eq!(server.token_requests(), 2, "exactly one re-authentication");
    let seen = check.authorizations();
    assert_eq!(
        seen.len(),
        3,
        "the server saw exactly 2 calls for that Check"
    );
    assert_eq!(seen[1].as_ref(), Some(refused.header_value()), "refused");
    let renewed = source.current().unwrap();
    assert_ne!(renewed.id(), refused.id());
    assert_eq!(
        seen[2].as_ref(),
        Some(renewed.header_value()),
        "the replay carried the new token"
    );
    assert_eq!(server.api_rejections(), 1);

    let response = client.check(check_request()).await.unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    assert_eq!(
        (check.authorizations().len(), server.token_requests()),
        (4, 2)
    );
}

#[tokio::test]
async fn a_call_without_a_token_is_refused_by_the_check() {
    // Makes sure the server-side check used above refuses what it should.
    let server = common::server(Duration::from_secs(3600)).await;
    let (addr, check) = serve_checked(&server).await;
    let status = HealthClient::new(channel(addr).await)
        .check(check_request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(check.authorizations(), vec![None]);
}

#[tokio::test]
async fn permission_denied_is_not_retried() {
    let server = common::server(Duration::from_secs(3600)).await;
    let source = common::source(&server);
    source.prefetch().await.unwrap();
    let (addr, calls) = serve_denying().await;
    let mut client = HealthClient::new(stack(&source, channel(addr).await));

    let status = client.check(check_request()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "this client may not check health");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried");
    assert_eq!(server.token_requests(), 1, "no re-authentication");
}

#[tokio::test]
async fn error_for_status_outermost_turns_permission_denied_into_a_typed_error() {
    let server = common::server(Duration::from_secs(3600)).await;
    let source = common::source(&server);
    source.prefetch().await.unwrap();
    let (addr, calls) = serve_denying().await;
    let typed: ErrorForStatus<Stack> =
        ErrorForStatusLayer::new().layer(stack(&source, channel(addr).await));
    let mut client = HealthClient::new(typed);

    let status = client.check(check_request()).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried");
    assert_eq!(server.token_requests(), 1, "no re-authentication");
    // tonic turns a transport error it does not know into `Unknown`, keeping it as the source.
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    let error = std::error::Error::source(&status)
        .and_then(|e| e.downcast_ref::<Refused>())
        .expect("the typed error is the status's source");
    assert!(
        (error.kind() == entur_auth::error_for_status::RefusedKind::PermissionDenied)
            && error.is_grpc(),
        "{error:?}"
    );
}

#[tokio::test]
async fn unauthenticated_for_a_token_fetched_by_the_call_itself_costs_one_reauth() {
    // No token exists when the retry layer clones the request, so the policy has no hint of
    // which token will be sent; only the auth layer knows, and a gRPC refusal is a 200.
    let server = common::server(Duration::from_secs(3600)).await;
    let source = common::source(&server);
    let (addr, check) = serve_checked(&server).await;
    check.refuse_next();
    let mut client = HealthClient::new(stack(&source, channel(addr).await));

    let response = client.check(check_request()).await;
    let seen = check.authorizations();
    assert_eq!(seen.len(), 2, "one refused call and one replay");
    assert!(seen[0] != seen[1], "the replay carried a new token");
    assert_eq!(server.token_requests(), 2, "exactly one re-authentication");
    assert_eq!(
        response.unwrap().into_inner().status(),
        ServingStatus::Serving
    );
}

/// A real tonic client (`tonic::client::Grpc`, inside `HealthClient`) over a `Channel` whose
/// endpoint is plain `http://` on a remote host. tonic hands the stack relative URIs and the
/// channel adds its origin below the layer, so the layer judges them by the declared origin.
/// The channel's connector reaches the bearer-checking server on 127.0.0.1 whatever host it is
/// asked for, and counts the connections: a refusal must make none.
#[tokio::test]
async fn no_bearer_goes_over_a_plain_http_channel_to_a_remote_host() {
    use hyper_util::rt::TokioIo;

    let server = common::server(Duration::from_secs(3600)).await;
    let source = common::source(&server);
    source.prefetch().await.unwrap();
    let (addr, check) = serve_checked(&server).await;
    let endpoint = Endpoint::from_static("http://grpc.example.com:50051");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: http::Uri| {
        assert_eq!(
            uri.host(),
            Some("grpc.example.com"),
            "the channel's own origin"
        );
        counted.fetch_add(1, Ordering::SeqCst);
        async move { tokio::net::TcpStream::connect(addr).await.map(TokioIo::new) }
    }));
    let client = |layer: EnturAuthLayer| {
        HealthClient::new(
            ServiceBuilder::new()
                .layer(CollectBodyLayer::new(64 * 1024))
                .layer(layer.with_replay())
                .map_request(to_tonic as ToTonic)
                .service(channel.clone()),
        )
    };
    let refused = |status: Status, says: &str| {
        let cause = std::error::Error::source(&status)
            .and_then(|e| e.downcast_ref::<entur_auth::auth::CleartextRefused>())
            .unwrap_or_else(|| panic!("not refused by the layer: {status:?}"));
        assert!(cause.to_string().contains(says), "{cause}");
    };

    // No origin declared: the URI is relative, so where the call goes cannot be told.
    let status = client(EnturAuthLayer::new(source.clone()))
        .check(check_request())
        .await
        .unwrap_err();
    refused(status, "no scheme and host");

    // The channel's origin declared: plain http to a host that is not loopback.
    let status = client(EnturAuthLayer::new(source.clone()).origin(endpoint.uri().clone()))
        .check(check_request())
        .await
        .unwrap_err();
    refused(status, "over plain http:// to grpc.example.com");
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing was sent");
    assert_eq!(check.calls(), 0);

    // Allowed (a mesh with mTLS): the same stack carries the bearer through the channel.
    let mut allowed = client(
        EnturAuthLayer::new(source.clone())
            .origin(endpoint.uri().clone())
            .allow_plain_http(true),
    );
    let response = allowed.check(check_request()).await.unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(
        check.authorizations(),
        [Some(source.current().unwrap().header_value().clone())]
    );
}
