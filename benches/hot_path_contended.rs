//! The hot path under contention: the four stacks of `benches/hot_path.rs` (`no_layer`,
//! `static_header`, `entur_auth`, `rwlock_format`, built the same way), each shared by two
//! OS threads that hammer clones of one layered service at the same time.
//!
//! Each sample starts two threads; after a barrier each times its own `iters` requests (built,
//! `poll_ready`, called and polled once with a no-op waker, as in `hot_path`). The sample is
//! the mean of the two threads' times, so the figure is the time one request takes while the
//! other thread sends too: directly comparable with `hot_path`.
//!
//! `cargo bench --bench hot_path_contended -- --warm-up-time 2 --measurement-time 5`

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::{pin, Pin};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use entur_auth::testing::TestServer;
use entur_auth::{BoxError, EnturAuthLayer, TokenSource};
use futures_util::task::noop_waker_ref;
use http::header::{ACCEPT, AUTHORIZATION, HOST};
use http::{HeaderValue, Request, Response, Uri};
use tokio::sync::RwLock;
use tower::layer::util::Identity;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::set_header::SetRequestHeaderLayer;

/// A ready service that answers at once with an empty response.
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
        black_box(&request);
        ready(Ok(Response::new(())))
    }
}

/// Answers with the request's `Authorization` header, to check a stack before measuring it.
#[derive(Clone, Copy, Debug)]
struct Echo;

impl Service<Request<()>> for Echo {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let mut response = Response::new(());
        if let Some(value) = request.headers().get(AUTHORIZATION) {
            response.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        ready(Ok(response))
    }
}

/// The same request for every stack and every iteration.
fn request() -> Request<()> {
    let mut request = Request::new(());
    *request.uri_mut() = Uri::from_static("http://api.example.com/journey-planner/v3/graphql");
    let headers = request.headers_mut();
    headers.insert(HOST, HeaderValue::from_static("api.example.com"));
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    request
}

/// One request through `svc`: `poll_ready`, `call`, one poll of the response future.
fn send<S>(svc: &mut S, cx: &mut Context<'_>, request: Request<()>) -> Response<()>
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: fmt::Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("the stack is not ready: {other:?}"),
    }
    match pin!(svc.call(request)).poll(cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(error)) => panic!("the stack failed: {error:?}"),
        Poll::Pending => panic!("the response future is pending"),
    }
}

/// The common hand-rolled bearer layer.
#[derive(Clone, Debug)]
struct RwLockAuthLayer {
    token: Arc<RwLock<String>>,
}

impl<S> Layer<S> for RwLockAuthLayer {
    type Service = RwLockAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RwLockAuth {
            inner,
            token: self.token.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct RwLockAuth<S> {
    inner: S,
    token: Arc<RwLock<String>>,
}

impl<S, B> Service<Request<B>> for RwLockAuth<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let token = self.token.clone();
        Box::pin(async move {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.read().await))?;
            value.set_sensitive(true);
            request.headers_mut().insert(AUTHORIZATION, value);
            inner.call(request).await.map_err(Into::into)
        })
    }
}

/// A token source with a fresh token cached, the same token as a string, and the runtime
/// and server they live on.
struct Fixture {
    source: TokenSource,
    token: String,
    _server: TestServer,
    _runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (server, source) = runtime.block_on(async {
            let server = TestServer::builder()
                .token_lifetime(Duration::from_secs(3600))
                .start()
                .await
                .expect("embedded server");
            let source = server.source_builder().build().expect("token source");
            source.prefetch().await.expect("token");
            (server, source)
        });
        let header = source.current().expect("a cached token");
        let token =
            header.header_value().to_str().expect("ASCII token")["Bearer ".len()..].to_owned();
        Self {
            source,
            token,
            _server: server,
            _runtime: runtime,
        }
    }

    fn static_header(&self) -> HeaderValue {
        let mut value =
            HeaderValue::from_str(&format!("Bearer {}", self.token)).expect("valid header value");
        value.set_sensitive(true);
        value
    }

    fn rwlock(&self) -> RwLockAuthLayer {
        RwLockAuthLayer {
            token: Arc::new(RwLock::new(self.token.clone())),
        }
    }
}

/// Threads sharing one service.
const THREADS: u32 = 2;

/// Checks that `layer` sends `expected` as `Authorization`, then measures clones of one
/// service around `Inner`, called from [`THREADS`] threads at once.
fn bench<L>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, layer: L, expected: Option<&str>)
where
    L: Layer<Inner> + Layer<Echo>,
    <L as Layer<Inner>>::Service: Service<Request<()>, Response = Response<()>> + Clone + Send,
    <L as Layer<Echo>>::Service: Service<Request<()>, Response = Response<()>>,
    <<L as Layer<Inner>>::Service as Service<Request<()>>>::Error: fmt::Debug,
    <<L as Layer<Echo>>::Service as Service<Request<()>>>::Error: fmt::Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut echo = ServiceBuilder::new().layer(&layer).service(Echo);
    let sent = send(&mut echo, &mut cx, request());
    let sent = sent.headers().get(AUTHORIZATION);
    assert_eq!(sent.map(|v| v.to_str().unwrap()), expected, "{name}");
    assert!(sent.map_or(true, HeaderValue::is_sensitive), "{name}");

    let svc = ServiceBuilder::new().layer(layer).service(Inner);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(THREADS as usize);
            let total: Duration = thread::scope(|scope| {
                let threads: Vec<_> = (0..THREADS)
                    .map(|_| {
                        let mut svc = svc.clone();
                        let barrier = &barrier;
                        scope.spawn(move || {
                            let mut cx = Context::from_waker(noop_waker_ref());
                            // The first request of a clone on a new thread may set up
                            // per-thread state; keep it out of the measurement.
                            send(&mut svc, &mut cx, request());
                            barrier.wait();
                            let start = Instant::now();
                            for _ in 0..iters {
                                black_box(send(&mut svc, &mut cx, black_box(request())));
                            }
                            start.elapsed()
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).sum()
            });
            total / THREADS
        })
    });
}

fn hot_path_contended(c: &mut Criterion) {
    let fixture = Fixture::new();
    let bearer = format!("Bearer {}", fixture.token);
    let expected = Some(bearer.as_str());
    let mut group = c.benchmark_group("hot_path_contended");
    bench(&mut group, "no_layer", Identity::new(), None);
    bench(
        &mut group,
        "static_header",
        SetRequestHeaderLayer::overriding(AUTHORIZATION, fixture.static_header()),
        expected,
    );
    bench(
        &mut group,
        "entur_auth",
        EnturAuthLayer::new(fixture.source.clone()),
        expected,
    );
    bench(&mut group, "rwlock_format", fixture.rwlock(), expected);
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = hot_path_contended
}
criterion_main!(benches);
