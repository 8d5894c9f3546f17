//! A fleet that shares its token through a store never re-adopts a token the API refused:
//! the replica that saw the refusal fetches and publishes a new token, and the others, when
//! the API refuses the old token to them, adopt the new one without a fetch of their own.
//! (The same against a real redis-server is in `tests/redis.rs`.)
#![cfg(feature = "shared-store")]

mod common;

use std::time::Duration;

use common::*;
use entur_auth::store::MemoryStore;
use entur_auth::{EnturAuthLayer, TokenSource};
use entur_auth_test::TestServer;
use http::StatusCode;
use tower::Layer;

fn replica(server: &TestServer, store: &MemoryStore, seed: u64) -> TokenSource {
    server
        .source_builder()
        .shared_store(store.clone())
        .jitter_seed(seed)
        .build()
        .unwrap()
}

/// Item 3: with a shared store, re-authentication used to re-adopt the refused token from
/// the store: 401 forever, one token request.
#[tokio::test(start_paused = true)]
async fn a_refused_token_is_never_adopted_again_and_the_fleet_shares_its_replacement() {
    let server = server(Duration::from_secs(3600)).await;
    let store = MemoryStore::default();
    let replicas: Vec<_> = (0..3).map(|i| replica(&server, &store, i)).collect();
    for replica in &replicas {
        replica.prefetch().await.unwrap();
    }
    assert_eq!(
        server.token_requests(),
        1,
        "the fleet shares the first token"
    );
    let old = replicas[0].current().unwrap();
    assert!(replicas
        .iter()
        .all(|r| r.current().unwrap().header_value() == old.header_value()));

    server.revoke_all();
    let mut apis: Vec<_> = replicas
        .iter()
        .map(|r| {
            EnturAuthLayer::new(r.clone())
                .with_replay()
                .layer(server.api_service())
        })
        .collect();
    // The first replica sees the refusal: it fetches and publishes a new token.
    let response = call(&mut apis[0], api_request(&server, "/a"))
        .await
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "replayed with a new token"
    );
    assert_eq!(server.token_requests(), 2, "one new token");
    let new = replicas[0].current().unwrap();
    assert_ne!(new.header_value(), old.header_value());

    // The others see the refusal with the old token and adopt the new one: no fetch.
    for api in &mut apis[1..] {
        let status = send(api, api_request(&server, "/b")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        server.token_requests(),
        2,
        "the fleet adopted the replacement"
    );
    assert!(replicas
        .iter()
        .all(|r| r.current().unwrap().header_value() == new.header_value()));
    assert_eq!(
        server.api_rejections(),
        3,
        "each replica sent the refused token once, and never again"
    );

    // Much later, a replica whose token is due still never takes the refused one back.
    tokio::time::sleep(Duration::from_secs(3000)).await;
    for api in &mut apis {
        assert_eq!(
            send(api, api_request(&server, "/c")).await.unwrap(),
            StatusCode::OK
        );
    }
    assert_eq!(server.api_rejections(), 3);
}

/// A store that never answers.
struct Silent;

impl entur_auth::store::TokenStore for Silent {
    fn get<'a>(
        &'a self,
        _key: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<Vec<u8>>, entur_auth::BoxError>> {
        Box::pin(std::future::pending())
    }
    fn set<'a>(
        &'a self,
        _key: &'a str,
        _value: Vec<u8>,
        _ttl: Duration,
    ) -> futures_util::future::BoxFuture<'a, Result<(), entur_auth::BoxError>> {
        Box::pin(std::future::pending())
    }
    fn try_lock<'a>(
        &'a self,
        _key: &'a str,
        _holder: &'a str,
        _ttl: Duration,
    ) -> futures_util::future::BoxFuture<'a, Result<bool, entur_auth::BoxError>> {
        Box::pin(std::future::pending())
    }
    fn unlock<'a>(
        &'a self,
        _key: &'a str,
        _holder: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(), entur_auth::BoxError>> {
        Box::pin(std::future::pending())
    }
}

/// Item 8: `store_timeout` called before `shared_store` used to be ignored silently.
#[tokio::test(start_paused = true)]
async fn store_timeout_applies_in_either_builder_order() {
    let server = server(Duration::from_secs(3600)).await;
    let limit = Duration::from_millis(40);
    let sources = [
        server
            .source_builder()
            .store_timeout(limit)
            .shared_store(Silent)
            .build()
            .unwrap(),
        server
            .source_builder()
            .shared_store(Silent)
            .store_timeout(limit)
            .build()
            .unwrap(),
    ];
    for (order, source) in sources.iter().enumerate() {
        let start = tokio::time::Instant::now();
        source.prefetch().await.unwrap();
        // A silent store costs one timeout on the look, and one on the publish after the
        // fetch: 2 × 40 ms, where the default (500 ms) would cost a second.
        let took = start.elapsed();
        assert_eq!(took, 2 * limit, "order {order}: {took:?}");
    }
}
