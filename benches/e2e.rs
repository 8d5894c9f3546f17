//! A real HTTP/1.1 round trip over loopback, with and without [`EnturAuthLayer`]: what the
//! layer costs next to the request it authorizes.
//!
//! A hyper-util legacy client sends `GET /api` over a keep-alive connection to a tiny hyper
//! server on `127.0.0.1:0` that answers `200` to every request, so that `no_layer` and
//! `entur_auth` hit the same server and only the layer differs. Client and server share one
//! current-thread runtime, driven by criterion's `to_async`, so that a round trip involves one
//! thread and no cross-thread wake-up. The token source reaches the embedded `TestServer`
//! in-process and has a token cached before measuring.
//!
//! Loopback round trips on a shared 2-core machine drift by far more than the layer costs
//! between one criterion function and the next: compare several runs, not one.
//!
//! `cargo bench --bench e2e -- --warm-up-time 2 --measurement-time 5`

use std::convert::Infallible;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use entur_auth::EnturAuthLayer;
use entur_auth_test::TestServer;
use http::header::{ACCEPT, AUTHORIZATION};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{Service, ServiceBuilder, ServiceExt};

/// What the server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    requests: AtomicUsize,
    authorized: AtomicUsize,
}

/// Starts an HTTP/1.1 server on `127.0.0.1:0` that answers `200` with an empty body, on the
/// current runtime. It serves until the runtime is dropped.
async fn start_server() -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    let seen = Arc::new(Seen::default());
    let server_seen = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            stream.set_nodelay(true).expect("nodelay");
            server_seen.connections.fetch_add(1, Ordering::Relaxed);
            let seen = server_seen.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                seen.requests.fetch_add(1, Ordering::Relaxed);
                if request.headers().contains_key(AUTHORIZATION) {
                    seen.authorized.fetch_add(1, Ordering::Relaxed);
                }
                async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn request(uri: &Uri) -> Request<Empty<Bytes>> {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri.clone();
    request
        .headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("application/json"));
    request
}

/// One request: wait until ready, send, read the whole (empty) response body.
async fn round_trip<S, B>(svc: &mut S, uri: &Uri)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>>,
    S::Error: fmt::Debug,
    B: http_body::Body,
    B::Error: fmt::Debug,
{
    let response = svc
        .ready()
        .await
        .expect("ready")
        .call(request(uri))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.expect("body");
}

fn e2e(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (addr, seen, server, source) = runtime.block_on(async {
        let (addr, seen) = start_server().await;
        let server = TestServer::builder()
            .token_lifetime(Duration::from_secs(3600))
            .start()
            .await
            .expect("embedded server");
        let source = server.source_builder().build().expect("token source");
        source.prefetch().await.expect("token");
        (addr, seen, server, source)
    });
    let uri: Uri = format!("http://{addr}/api").parse().expect("uri");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let bare = client.clone();
    let layered = ServiceBuilder::new()
        .layer(EnturAuthLayer::new(source))
        .service(client);

    // Both stacks reuse one keep-alive connection, and only the layered one sends a token.
    runtime.block_on(async {
        for _ in 0..100 {
            round_trip(&mut bare.clone(), &uri).await;
        }
        for _ in 0..100 {
            round_trip(&mut layered.clone(), &uri).await;
        }
    });
    assert_eq!(seen.requests.load(Ordering::Relaxed), 200);
    assert_eq!(seen.authorized.load(Ordering::Relaxed), 100);
    assert_eq!(seen.connections.load(Ordering::Relaxed), 1, "keep-alive");

    let mut group = c.benchmark_group("e2e");
    group.bench_function("no_layer", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let (mut svc, uri) = (bare.clone(), uri.clone());
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    round_trip(&mut svc, &uri).await;
                }
                start.elapsed()
            }
        })
    });
    group.bench_function("entur_auth", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let (mut svc, uri) = (layered.clone(), uri.clone());
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    round_trip(&mut svc, &uri).await;
                }
                start.elapsed()
            }
        })
    });
    group.finish();

    assert_eq!(server.token_requests(), 1, "no refetch while measuring");
    assert_eq!(seen.connections.load(Ordering::Relaxed), 1, "keep-alive");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = e2e
}
criterion_main!(benches);
