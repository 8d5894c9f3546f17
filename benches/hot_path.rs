//! The per-request cost of setting `Authorization`, side by side in one group:
//!
//! - `no_layer`: the inner service alone, the floor;
//! - `static_header`: tower-http's `SetRequestHeader::overriding` with a constant, sensitive
//!   `HeaderValue` built once from a token string, the cheapest possible way to send a header;
//! - `entur_auth`: [`EnturAuthLayer`] with a fresh, prefetched token;
//! - `rwlock_format`: the usual hand-rolled layer: an `Arc<tokio::sync::RwLock<String>>` read
//!   with `.read().await` in a boxed `async move` block, `format!("Bearer {}")` and
//!   `HeaderValue::from_str` on every request.
//!
//! Every iteration builds the same request (`host` and `accept` already set, so the header
//! map has capacity), calls `poll_ready`, calls the service and polls the response future
//! once with a no-op waker: no executor in the measurement. The inner service answers with a
//! `std::future::Ready`, so the stacks differ only in the header work.
//!
//! `cargo bench --bench hot_path -- --warm-up-time 2 --measurement-time 5`
//!
//! Criterion measures the functions one after the other; on a shared 2-core machine the
//! speed of the whole machine drifts between them by more than the layers differ. Compare
//! several runs, not one.

use std::fmt;
use std::hint::black_box;
use std::task::Context;
use std::time::Duration;

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

/// Checks that `layer` sends `expected` as `Authorization`, then measures it around `Inner`.
fn bench<L>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, layer: L, expected: Option<&str>)
where
    L: Layer<Inner> + Layer<Echo>,
    <L as Layer<Inner>>::Service: Responds,
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

    let mut svc = ServiceBuilder::new().layer(layer).service(Inner);
    group.bench_function(name, |b| {
        b.iter(|| send(&mut svc, &mut cx, black_box(request())))
    });
}

fn hot_path(c: &mut Criterion) {
    let fixture = Fixture::new();
    let bearer = format!("Bearer {}", fixture.token);
    let expected = Some(bearer.as_str());
    let mut group = c.benchmark_group("hot_path");
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
    // With the `redis` feature: the same layer over a source that shares its token through a
    // store, to show the store stays off the per-request path.
    #[cfg(feature = "redis")]
    {
        let shared = fixture.shared_store_source();
        let bearer = shared.current().expect("a cached token");
        let bearer = bearer.header_value().to_str().expect("ASCII").to_owned();
        bench(
            &mut group,
            "entur_auth_shared_store",
            EnturAuthLayer::new(shared),
            Some(bearer.as_str()),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = hot_path
}
criterion_main!(benches);
