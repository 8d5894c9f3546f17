//! With a token cached, the layer adds no heap allocation per request: the same requests
//! through the same stack allocate exactly as much with `EnturAuthLayer` as without it.
//!
//! A counting global allocator counts the allocations made by this test's thread while
//! counting is switched on. The calls are driven synchronously (`poll_ready`, `call`, one
//! poll with a no-op waker) on a current-thread runtime, so nothing else runs meanwhile.

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::allocations_in;
use entur_auth::{ClientName, EnturAuthLayer};
use entur_auth_test::TestServer;
use futures_util::task::noop_waker_ref;
use http::header::{ACCEPT, AUTHORIZATION, HOST};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use tower::{Service, ServiceBuilder};

/// A ready service that answers at once: `200` when the request carries `Authorization`,
/// `401` when it does not.
#[derive(Clone, Copy, Debug)]
struct Inner;

impl Service<Request<()>> for Inner {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let mut response = Response::new(());
        if !request.headers().contains_key(AUTHORIZATION) {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        ready(Ok(response))
    }
}

/// The same request for both stacks, with headers so that the map has capacity.
fn request() -> Request<()> {
    let mut request = Request::new(());
    *request.uri_mut() = Uri::from_static("https://api.example.com/journey-planner/v3/graphql");
    let headers = request.headers_mut();
    headers.insert(HOST, HeaderValue::from_static("api.example.com"));
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    request
}

/// Any HTTP service taking `Request<()>`, whatever its response body type.
trait Responds: Service<Request<()>, Response = Response<<Self as Responds>::Body>> {
    type Body;
}

impl<S, B> Responds for S
where
    S: Service<Request<()>, Response = Response<B>>,
{
    type Body = B;
}

/// One request, synchronously: `poll_ready`, `call`, one poll of the response future.
fn send<S>(svc: &mut S) -> StatusCode
where
    S: Responds,
    S::Error: fmt::Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("the stack is not ready: {other:?}"),
    }
    match pin!(svc.call(request())).poll(&mut cx) {
        Poll::Ready(Ok(response)) => response.status(),
        Poll::Ready(Err(error)) => panic!("the stack failed: {error:?}"),
        Poll::Pending => panic!("the response future is pending with a token cached"),
    }
}

/// Sends `n` requests; returns how many were authorized.
fn send_n<S>(svc: &mut S, n: usize) -> usize
where
    S: Responds,
    S::Error: fmt::Debug,
{
    (0..n).filter(|_| send(svc) == StatusCode::OK).count()
}

const N: usize = 10_000;

#[test]
fn the_layer_adds_no_allocation_per_request() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = TestServer::builder()
            .token_lifetime(Duration::from_secs(3600))
            .start()
            .await
            .unwrap();
        let source = server.source_builder().build().unwrap();
        source.prefetch().await.unwrap();

        let mut bare = ServiceBuilder::new().service(Inner);
        let mut layered = ServiceBuilder::new()
            .layer(EnturAuthLayer::new(source.clone()))
            .service(Inner);
        let name = ClientName::new("acme-ticketing").unwrap();
        let mut named = ServiceBuilder::new()
            .layer(EnturAuthLayer::new(source.clone()).client_name(name))
            .service(Inner);

        // Warm up: first loads, lazily initialised per-thread state.
        assert_eq!(send_n(&mut bare, 100), 0);
        assert_eq!(send_n(&mut layered, 100), 100);
        assert_eq!(send_n(&mut named, 100), 100);

        let mut authorized = [0; 3];
        let bare_allocations = allocations_in(|| authorized[0] = send_n(&mut bare, N));
        let layered_allocations = allocations_in(|| authorized[1] = send_n(&mut layered, N));
        let named_allocations = allocations_in(|| authorized[2] = send_n(&mut named, N));

        // The stacks did what they are compared for, and the counter counts.
        assert_eq!(authorized, [0, N, N]);
        assert!(
            bare_allocations >= N,
            "building a request with headers allocates; counted {bare_allocations} for {N}"
        );
        assert_eq!(
            layered_allocations,
            bare_allocations,
            "EnturAuthLayer allocated {} times in {N} requests",
            layered_allocations as isize - bare_allocations as isize
        );
        assert_eq!(
            named_allocations,
            bare_allocations,
            "EnturAuthLayer with ET-Client-Name allocated {} times in {N} requests",
            named_allocations as isize - bare_allocations as isize
        );
        assert_eq!(server.token_requests(), 1, "the source fetched again");
    });
}
