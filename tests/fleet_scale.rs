//! 64 replicas (each its own `TokenSource`, in one process) share one store under steady
//! traffic for several token lifetimes: together they make about the token requests that one
//! replica alone makes, and no request fails.
//!
//! On a `MemoryStore` with tokio's clock paused (always runs), and on a real `redis-server`
//! on 127.0.0.1 on the real clock (ignored without `redis-server`: `apt-get install
//! redis-server`). A lone replica runs beside the fleet, against its own embedded server, so
//! the two counts come from the same span of time.
#![cfg(feature = "shared-store")]

mod common;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/traffic.rs"]
mod traffic;

use std::time::Duration;

use common::*;
use entur_auth::store::{MemoryStore, TokenStore};
use entur_auth::{TokenOrigin, TokenSource};
use traffic::Traffic;

const REPLICAS: usize = 64;

/// What a fleet and a lone replica made over the same span.
struct Figures {
    fleet_token_requests: usize,
    alone_token_requests: usize,
    requests: u64,
    failed: u64,
    fallbacks: u64,
}

/// Runs `REPLICAS` replicas built by `fleet_store` and one lone replica for `span`, each
/// sending a request every `every`.
async fn run<T: TokenStore>(
    lifetime: Duration,
    span: Duration,
    every: Duration,
    store: impl Fn() -> T,
) -> Figures {
    let fleet_server = server(lifetime).await;
    let alone_server = server(lifetime).await;
    let replicas: Vec<TokenSource> = (0..REPLICAS)
        .map(|i| {
            fleet_server
                .source_builder()
                .shared_store(store())
                .jitter_seed(i as u64)
                .fetch_timeout(Duration::from_secs(2))
                .build()
                .unwrap()
        })
        .collect();
    let alone = vec![alone_server
        .source_builder()
        .jitter_seed(1)
        .build()
        .unwrap()];

    let fleet_traffic = Traffic::start(&fleet_server, &replicas, every);
    let alone_traffic = Traffic::start(&alone_server, &alone, every);
    // Every replica serves in each lifetime, not only at the end.
    let mut before = fleet_traffic.snapshot();
    let lifetimes = (span.as_secs_f64() / lifetime.as_secs_f64()).floor() as u32;
    for _ in 0..lifetimes {
        tokio::time::sleep(lifetime).await;
        let now = fleet_traffic.snapshot();
        let span = now.since(&before);
        assert!(
            span.silent_replicas().is_empty(),
            "replicas {:?} served nothing for a whole token lifetime",
            span.silent_replicas()
        );
        before = now;
    }
    tokio::time::sleep(span.saturating_sub(lifetime * lifetimes)).await;
    let fleet = fleet_traffic.stop().await;
    let lone = alone_traffic.stop().await;

    assert_eq!(fleet.failed(), 0, "failed requests in the fleet");
    assert_eq!(lone.failed(), 0, "failed requests of the lone replica");
    assert_eq!(
        fleet_server.api_rejections(),
        0,
        "every request carried an unexpired, untampered token"
    );
    let adopted = replicas
        .iter()
        .filter(|r| r.status().origin == Some(TokenOrigin::SharedStore))
        .count();
    assert!(
        adopted >= REPLICAS / 2,
        "most replicas hold a token adopted from the store: {adopted}"
    );
    Figures {
        fleet_token_requests: fleet_server.token_requests(),
        alone_token_requests: alone_server.token_requests(),
        requests: fleet.requests(),
        failed: fleet.failed(),
        fallbacks: traffic::fallbacks(&replicas),
    }
}

fn report(what: &str, figures: &Figures) {
    println!(
        "{what}: {REPLICAS} replicas made {} token requests, one replica alone {}; {} requests, {} failed, {} fallback fetches",
        figures.fleet_token_requests,
        figures.alone_token_requests,
        figures.requests,
        figures.failed,
        figures.fallbacks
    );
}

/// The bound: what one replica makes alone, and one more for the lifetime in which the
/// test's span ends mid-refresh.
fn assert_about_one_replica(figures: &Figures) {
    assert!(
        figures.fleet_token_requests <= figures.alone_token_requests + 1,
        "{REPLICAS} replicas made {} token requests, one alone {}",
        figures.fleet_token_requests,
        figures.alone_token_requests
    );
}

#[tokio::test(start_paused = true)]
async fn sixty_four_replicas_on_a_memory_store_make_what_one_makes() {
    let store = MemoryStore::default();
    // Ten lifetimes of 60 s tokens, a request per replica per second.
    let figures = run(
        Duration::from_secs(60),
        Duration::from_secs(600),
        Duration::from_secs(1),
        || store.clone(),
    )
    .await;
    report("MemoryStore, 10 lifetimes of 60 s tokens", &figures);
    assert_about_one_replica(&figures);
    assert_eq!(figures.fallbacks, 0, "the store never failed");
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "redis-server not found: install it (apt-get install redis-server) to run this test"
)]
async fn sixty_four_replicas_on_redis_make_what_one_makes() {
    use entur_auth::store::RedisStore;

    let dir = procs::TempDir::new("scale");
    let redis = procs::Node::server(dir.path(), &[]);
    // Six lifetimes of 3 s tokens, a request per replica every 100 ms: 640 requests a second.
    let figures = run(
        Duration::from_secs(3),
        Duration::from_secs(18),
        Duration::from_millis(100),
        || RedisStore::new(&redis.url()).unwrap(),
    )
    .await;
    report("redis-server, 6 lifetimes of 3 s tokens", &figures);
    assert_about_one_replica(&figures);
    assert_eq!(figures.fallbacks, 0, "Redis never failed");
}
