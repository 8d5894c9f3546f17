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
//!
//! Criterion measures the functions one after the other; on a shared 2-core machine the
//! speed of the whole machine drifts between them by more than the layers differ. Compare
//! several runs, not one.

use std::fmt;
use std::hint::black_box;
use std::sync::Barrier;
use std::task::Context;
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use entur_auth::EnturAuthLayer;
use futures_util::task::noop_waker_ref;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use tower::layer::util::Identity;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::set_header::SetRequestHeaderLayer;

#[path = "support/mod.rs"]
mod support;

use support::*;

/// Threads sharing one service.
const THREADS: u32 = 2;

/// Checks that `layer` sends `expected` as `Authorization`, then measures clones of one
/// service around `Inner`, called from [`THREADS`] threads at once.
fn bench<L>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, layer: L, expected: Option<&str>)
where
    L: Layer<Inner> + Layer<Echo>,
    <L as Layer<Inner>>::Service: Responds + Clone + Send,
    <L as Layer<Echo>>::Service: Responds,
    <<L as Layer<Inner>>::Service as Service<Request<()>>>::Error: fmt::Debug,
    <<L as Layer<Echo>>::Service as Service<Request<()>>>::Error: fmt::Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut echo = ServiceBuilder::new().layer(&layer).service(Echo);
    let sent = send(&mut echo, &mut cx, request());
    let sent = sent.headers().get(AUTHORIZATION);
    assert_eq!(sent.map(|v| v.to_str().unwrap()), expected, "{name}");
    assert!(sent.is_none_or(HeaderValue::is_sensitive), "{name}");

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
