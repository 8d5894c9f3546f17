//! `entur_auth::tonic::EnturAuthInterceptor` in tonic clients built `with_interceptor`,
//! against a tonic health server on 127.0.0.1 that checks every bearer with the embedded
//! authorization server: the metadata it sets, a call before the first token, a failed fetch,
//! refusals reported with `refused` and `observe`, a stopped refresher, and the allocations
//! of a call (a counting allocator, as in tests/alloc.rs).

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{allocations_in, counted};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{ready, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use entur_auth::tonic::EnturAuthInterceptor;
use entur_auth::{ClientName, EnturAuthLayer, Health, Invalidation, TokenSource};
use entur_auth_integration::grpc::BearerCheck;
use entur_auth_test::{Fault, TestServer};
use futures_util::task::noop_waker_ref;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::Service;

type Client = HealthClient<InterceptedService<Channel, EnturAuthInterceptor>>;

const NO_TOKEN_YET: &str = "no access token yet: the first fetch has started; retry, or call TokenSource::ready() at startup";

// --- the tests ---

#[tokio::test]
async fn a_call_carries_the_bearer_and_the_client_name() {
    let server = common::server(Duration::from_secs(3600)).await;
    let (source, _fetches) = source(&server);
    source.prefetch().await.unwrap();
    let (addr, check) = serve_checked(&server).await;
    let auth = EnturAuthInterceptor::from(
        EnturAuthLayer::new(source.clone()).client_name(ClientName::new("acme-grpc").unwrap()),
    );
    let mut client = HealthClient::with_interceptor(channel(addr).await, auth);

    serving(&mut client).await;
    let token = source.current().unwrap();
    let seen = check.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization.as_ref(), Some(token.header_value()));
    assert_eq!(
        seen[0].client_name.as_ref().map(|v| v.as_bytes()),
        Some(&b"acme-grpc"[..])
    );
    assert_eq!(server.token_requests(), 1);

    // Without a client name, none is sent.
    let mut unnamed = HealthClient::with_interceptor(
        channel(addr).await,
        EnturAuthInterceptor::new(source.clone()),
    );
    serving(&mut unnamed).await;
    let seen = check.seen();
    assert_eq!(seen[1].authorization.as_ref(), Some(token.header_value()));
    assert_eq!(seen[1].client_name, None);
}

#[tokio::test]
async fn a_call_before_the_first_token_is_unavailable_and_starts_the_fetch() {
    let server = common::server(Duration::from_secs(3600)).await;
    let (source, mut fetches) = source(&server);
    let (addr, check) = serve_checked(&server).await;
    let mut client = client(&source, addr).await;
    assert_eq!(source.status().health, Health::Idle);

    let status = health(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), NO_TOKEN_YET);
    assert!(check.seen().is_empty(), "the call was not sent");

    // Nothing else asks for a token: the interceptor's call started the fetch.
    assert_eq!(fetches.next().await, Ok(()));
    assert_eq!(server.token_requests(), 1);
    serving(&mut client).await;
    let token = source.current().unwrap();
    assert_eq!(
        check.seen()[0].authorization.as_ref(),
        Some(token.header_value())
    );
    assert_eq!(server.token_requests(), 1);
}

#[tokio::test]
async fn a_failed_fetch_is_named_in_the_status() {
    let server = common::server(Duration::from_secs(3600)).await;
    server.push_fault(Fault::oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    ));
    let (source, mut fetches) = source(&server);
    let (addr, check) = serve_checked(&server).await;
    let mut client = client(&source, addr).await;

    assert_eq!(
        health(&mut client).await.unwrap_err().message(),
        NO_TOKEN_YET
    );
    assert!(fetches.next().await.is_err(), "the fetch failed");

    let status = health(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let message = status.message();
    assert!(
        message.starts_with("no access token: the last token fetch failed: "),
        "{message}"
    );
    assert!(message.contains("invalid_client"), "{message}");
    assert!(!message.contains(server.client_secret()), "{message}");
    let error = source.status().last_error.unwrap();
    assert!(error.is_credentials(), "{error:?}");
    assert!(message.ends_with(&error.report().to_string()), "{message}");
    assert!(check.seen().is_empty(), "no call was sent");
    assert_eq!(
        server.token_requests(),
        1,
        "no fetch of its own: the refresher retries on its schedule"
    );
}

#[tokio::test]
async fn a_refused_token_is_dropped_and_the_next_call_carries_a_new_one() {
    let server = common::server(Duration::from_secs(3600)).await;
    let (source, mut fetches) = source(&server);
    source.prefetch().await.unwrap();
    assert_eq!(fetches.next().await, Ok(()));
    let (addr, check) = serve_checked(&server).await;
    let auth = EnturAuthInterceptor::new(source.clone());
    let mut client = HealthClient::with_interceptor(channel(addr).await, auth.clone());
    serving(&mut client).await;
    let refused = source.current().unwrap();

    server.revoke_all();
    let status = health(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        auth.refused(&Status::permission_denied("not a token refusal")),
        None
    );
    assert_eq!(source.current().unwrap().id(), refused.id(), "kept");

    assert_eq!(auth.refused(&status), Some(Invalidation::Started));
    assert!(source.current().is_none(), "the refused token is dropped");
    // Until the new token is there, calls fail at once, and say so.
    let status = health(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "no access token at the moment: a new one is being fetched (the last was dropped); retry"
    );

    assert_eq!(fetches.next().await, Ok(()));
    assert_eq!(server.token_requests(), 2);
    serving(&mut client).await;
    let renewed = source.current().unwrap();
    assert_ne!(renewed.id(), refused.id());
    let seen = check.seen();
    assert_eq!(seen.len(), 3, "the call while fetching was not sent");
    assert_eq!(seen[1].authorization.as_ref(), Some(refused.header_value()));
    assert_eq!(seen[2].authorization.as_ref(), Some(renewed.header_value()));
}

#[tokio::test]
async fn many_calls_refused_with_the_same_token_cause_one_fetch() {
    let server = common::server(Duration::from_secs(3600)).await;
    let (source, mut fetches) = source(&server);
    source.prefetch().await.unwrap();
    assert_eq!(fetches.next().await, Ok(()));
    let (addr, check) = serve_checked(&server).await;
    let auth = EnturAuthInterceptor::new(source.clone());
    let client = HealthClient::with_interceptor(channel(addr).await, auth.clone());
    let stale = source.current().unwrap();

    server.revoke_all();
    let calls = (0..8).map(|_| {
        let mut client = client.clone();
        async move { client.check(HealthCheckRequest::default()).await }
    });
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(check.seen().len(), 8);
    assert!(check
        .seen()
        .iter()
        .all(|call| call.authorization.as_ref() == Some(stale.header_value())));

    let mut statuses: Vec<Status> = results.into_iter().map(Result::unwrap_err).collect();
    // One refusal is reported late, after a call with the new token: see below.
    let late = statuses.pop().unwrap();
    let reports: Vec<_> = statuses.iter().map(|s| auth.refused(s)).collect();
    assert_eq!(reports[0], Some(Invalidation::Started));
    assert!(
        reports[1..]
            .iter()
            .all(|r| *r == Some(Invalidation::AlreadyReplaced)),
        "{reports:?}"
    );
    assert_eq!(fetches.next().await, Ok(()));
    assert_eq!(server.token_requests(), 2, "one fetch for 7 reports");

    let mut client = client.clone();
    serving(&mut client).await;
    let renewed = source.current().unwrap();

    // The late report names the new token (the last one attached): the forced-refresh
    // backoff keeps it, and nothing is fetched.
    assert!(
        matches!(auth.refused(&late), Some(Invalidation::RateLimited { .. })),
        "the new token is kept"
    );
    assert_eq!(source.current().unwrap().id(), renewed.id());
    serving(&mut client).await;
    assert_eq!(server.token_requests(), 2);
}

#[tokio::test]
async fn observe_reports_refusals_and_ends_the_forced_refresh_backoff() {
    let server = common::server(Duration::from_secs(3600)).await;
    let (source, mut fetches) = source(&server);
    source.prefetch().await.unwrap();
    assert_eq!(fetches.next().await, Ok(()));
    let (addr, _check) = serve_checked(&server).await;
    let auth = EnturAuthInterceptor::new(source.clone());
    let mut client = HealthClient::with_interceptor(channel(addr).await, auth.clone());

    server.revoke_all();
    let refused = source.current().unwrap();
    let status = auth
        .observe(client.check(HealthCheckRequest::default()).await)
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(source.current().is_none(), "observe dropped the token");
    assert_eq!(fetches.next().await, Ok(()));
    assert_ne!(source.current().unwrap().id(), refused.id());
    assert_eq!(source.status().forced_refreshes_in_a_row, 1);

    // A success without `observe` says nothing to the source, nor do ten quiet minutes
    // alone.
    serving(&mut client).await;
    assert_eq!(source.status().forced_refreshes_in_a_row, 1);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(601)).await;
    assert_eq!(source.status().forced_refreshes_in_a_row, 1);
    // A streaming call's response comes before its trailers: it accepts nothing yet.
    let stream = auth
        .observe(client.watch(HealthCheckRequest::default()).await)
        .unwrap();
    assert_eq!(
        source.status().forced_refreshes_in_a_row,
        1,
        "a stream's headers are not an accepted token"
    );
    drop(stream);
    // A finished unary call is: the backoff ends.
    let response = auth
        .observe(client.check(HealthCheckRequest::default()).await)
        .unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    assert_eq!(source.status().forced_refreshes_in_a_row, 0);
    assert_eq!(server.token_requests(), 2);
}

/// The source's refresher went with the runtime it was built on; the interceptor's call on
/// another runtime takes it over, and sends the token it left behind, without a fetch.
#[test]
fn a_call_takes_a_stopped_refresher_over() {
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, addr, check) = servers.block_on(async {
        let server = common::server(Duration::from_secs(3600)).await;
        let (addr, check) = serve_checked(&server).await;
        (server, addr, check)
    });
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source = first.block_on(async {
        let source = common::source(&server);
        source.prefetch().await.unwrap();
        source
    });
    let token = source.current().unwrap();
    drop(first);
    assert_eq!(source.status().health, Health::Stopped);
    assert!(source.current().is_none());

    servers.block_on(async {
        let mut client = client(&source, addr).await;
        serving(&mut client).await;
        assert_eq!(
            check.seen()[0].authorization.as_ref(),
            Some(token.header_value())
        );
        assert_eq!(server.token_requests(), 1, "no fetch");
        assert_eq!(source.status().health, Health::Fresh);
    });
}

/// A call through tonic's `InterceptedService` allocates exactly as much with this
/// interceptor as with one that does nothing: nothing per call of its own, the two header
/// inserts included.
#[test]
fn a_call_allocates_nothing_of_its_own() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let server = runtime.block_on(common::server(Duration::from_secs(3600)));
    let source = common::source(&server);
    runtime.block_on(source.prefetch()).unwrap();
    let token = source.current().unwrap();
    let name = ClientName::new("acme-grpc").unwrap();
    let answer = Answer {
        expected: token.header_value().clone(),
        authorized: Arc::default(),
    };

    let nothing =
        |request: tonic::Request<()>| -> Result<tonic::Request<()>, Status> { Ok(request) };
    let auth = EnturAuthInterceptor::from(EnturAuthLayer::new(source.clone()).client_name(name));
    let mut with_nothing = HealthClient::with_interceptor(answer.clone(), nothing);
    let mut with_auth = HealthClient::with_interceptor(answer.clone(), auth.clone());

    // Warm up: first loads, the first clone of the token's bytes, per-thread state.
    assert_eq!(check_n(&mut with_nothing, 100), 100);
    assert_eq!(check_n(&mut with_auth, 100), 100);
    assert_eq!(answer.authorized.swap(0, Ordering::SeqCst), 100);

    let mut served = [0; 2];
    let mut authorized = [0; 2];
    let nothing_allocations = allocations_in(|| served[0] = check_n(&mut with_nothing, N));
    authorized[0] = answer.authorized.swap(0, Ordering::SeqCst);
    let auth_allocations = allocations_in(|| served[1] = check_n(&mut with_auth, N));
    authorized[1] = answer.authorized.swap(0, Ordering::SeqCst);
    // The clients did what they are compared for, and the counter counts.
    assert_eq!(served, [N, N]);
    assert_eq!(
        authorized,
        [0, N],
        "only the interceptor's calls had the bearer"
    );
    assert!(
        nothing_allocations >= N,
        "a tonic call allocates; counted {nothing_allocations} for {N}"
    );
    assert_eq!(
        auth_allocations,
        nothing_allocations,
        "EnturAuthInterceptor allocated {} times in {N} calls",
        auth_allocations as isize - nothing_allocations as isize
    );

    // Called directly: nothing when the metadata has room, as tonic's always has (its own
    // headers are in it). An empty map allocates its table on the first insert, whoever
    // inserts: that is http's `HeaderMap`, not this crate.
    let mut bare = auth.clone();
    let mut direct = 0;
    for _ in 0..N {
        let request =
            tonic::Request::from_parts(MetadataMap::with_capacity(8), Default::default(), ());
        let (request, allocations) = counted(|| bare.call(request).unwrap());
        assert!(request.metadata().contains_key("authorization"));
        direct += allocations;
    }
    assert_eq!(
        direct, 0,
        "EnturAuthInterceptor::call allocated {direct} times in {N} calls"
    );
    let empty = tonic::Request::new(());
    let (_, table) = counted(|| bare.call(empty).unwrap());
    println!("a call on empty metadata: {table} allocations (the header map's table)");
}

// --- helpers ---

/// A source on the embedded server, with a channel that receives the outcome of every
/// token request.
fn source(server: &TestServer) -> (TokenSource, Fetches) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let source = server
        .source_builder()
        .jitter_seed(7)
        .on_fetch(move |outcome| {
            let _ = sender.send(outcome.result.map(drop).map_err(ToString::to_string));
        })
        .build()
        .unwrap();
    (source, Fetches(receiver))
}

/// The outcomes of a source's token requests, in order.
struct Fetches(mpsc::UnboundedReceiver<Result<(), String>>);

impl Fetches {
    /// The next token request's outcome; fails the test if none comes within 10 s.
    async fn next(&mut self) -> Result<(), String> {
        tokio::time::timeout(Duration::from_secs(10), self.0.recv())
            .await
            .expect("a token request within 10 s")
            .expect("the source is alive")
    }
}

async fn client(source: &TokenSource, addr: SocketAddr) -> Client {
    HealthClient::with_interceptor(
        channel(addr).await,
        EnturAuthInterceptor::new(source.clone()),
    )
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("the gRPC server on 127.0.0.1 accepts connections")
}

async fn health(client: &mut Client) -> Result<ServingStatus, Status> {
    let response = client.check(HealthCheckRequest::default()).await?;
    Ok(response.into_inner().status())
}

/// A health check that must succeed.
async fn serving(client: &mut Client) {
    match health(client).await {
        Ok(ServingStatus::Serving) => {}
        other => panic!("the check must succeed: {other:?}"),
    }
}

/// The health service behind a bearer check that asks the embedded server's protected API
/// (issued, not revoked, not expired), recording the metadata of every call.
async fn serve_checked(server: &TestServer) -> (SocketAddr, BearerCheck) {
    let check = BearerCheck::new(server);
    let addr = check.serve_health().await.unwrap();
    (addr, check)
}

const N: usize = 1_000;

/// A gRPC server in a service, answering `SERVING` at once, and counting the calls that
/// carry the expected bearer.
#[derive(Clone)]
struct Answer {
    expected: HeaderValue,
    authorized: Arc<AtomicUsize>,
}

/// A response body of frames that are all there (`InterceptedService` wants `Default`).
#[derive(Default)]
struct Frames(VecDeque<Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

impl Service<http::Request<tonic::body::Body>> for Answer {
    type Response = http::Response<Frames>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.headers().get(AUTHORIZATION) == Some(&self.expected) {
            self.authorized.fetch_add(1, Ordering::Relaxed);
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        // A length-prefixed HealthCheckResponse { status: SERVING }.
        let message = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]);
        let frames = VecDeque::from([Frame::data(message), Frame::trailers(trailers)]);
        let mut response = http::Response::new(Frames(frames));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        ready(Ok(response))
    }
}

/// `n` health checks, each driven to its end in one poll; returns how many were `SERVING`.
fn check_n<S>(client: &mut HealthClient<S>, n: usize) -> usize
where
    S: tonic::client::GrpcService<tonic::body::Body>,
    S::Error: Into<entur_auth::BoxError>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<entur_auth::BoxError> + Send,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    (0..n)
        .filter(|_| {
            let call = pin!(client.check(HealthCheckRequest::default()));
            match call.poll(&mut cx) {
                Poll::Ready(Ok(response)) => {
                    let response: HealthCheckResponse = response.into_inner();
                    response.status() == ServingStatus::Serving
                }
                Poll::Ready(Err(_)) => false,
                Poll::Pending => panic!("the call is pending with a token cached"),
            }
        })
        .count()
}

/// A stream's messages accept nothing; its end (`Ok(None)`: trailers with `OK`) accepts the
/// token attached last, and its error is reported as a refusal.
#[tokio::test(start_paused = true)]
async fn observe_message_accepts_at_the_end_of_a_stream_only() {
    let server = common::server(Duration::from_secs(3600)).await;
    let (source, _fetches) = source(&server);
    source.prefetch().await.unwrap();
    let auth = EnturAuthInterceptor::new(source.clone());
    auth.clone().call(tonic::Request::new(())).unwrap();
    let refused = source.current().unwrap().id();

    // An error in the stream: the token attached last is dropped, a forced refresh starts.
    let status = auth
        .observe_message::<()>(Err(Status::unauthenticated("token revoked")))
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let renewed = source.token().await.unwrap();
    assert_ne!(renewed.id(), refused);
    assert_eq!(source.status().forced_refreshes_in_a_row, 1);
    auth.clone().call(tonic::Request::new(())).unwrap();

    // Ten quiet minutes; messages say nothing yet, the end of the stream accepts.
    tokio::time::advance(Duration::from_secs(601)).await;
    assert_eq!(auth.observe_message(Ok(Some(()))).unwrap(), Some(()));
    assert_eq!(source.status().forced_refreshes_in_a_row, 1, "a message");
    assert_eq!(auth.observe_message::<()>(Ok(None)).unwrap(), None);
    assert_eq!(source.status().forced_refreshes_in_a_row, 0, "the end");
    assert_eq!(server.token_requests(), 2);
}
