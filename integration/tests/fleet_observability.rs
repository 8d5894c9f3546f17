//! What a fleet's replica tells about its store: `Status::origin` (the token came from a token
//! request or from the store), `Status::store` (sharing, or bypassed while the store fails),
//! `Status::store_fallbacks`, the status line, and the `entur_auth.store.bypassed` gauge.
#![cfg(all(feature = "shared-store", feature = "metrics"))]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use entur_auth::store::{MemoryStore, TokenStore};
use entur_auth::{BoxError, StoreState, TokenOrigin};
use futures_util::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusBuilder;

/// A `MemoryStore` that can be switched off: every call then fails, as a Redis that is down.
#[derive(Clone, Default)]
struct Switchable {
    inner: MemoryStore,
    down: Arc<AtomicBool>,
}

impl Switchable {
    fn check(&self) -> Result<(), BoxError> {
        if self.down.load(Ordering::Relaxed) {
            Err("connection refused".into())
        } else {
            Ok(())
        }
    }
}

impl TokenStore for Switchable {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        match self.check() {
            Ok(()) => self.inner.get(key),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        match self.check() {
            Ok(()) => self.inner.set(key, value, ttl),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        match self.check() {
            Ok(()) => self.inner.try_lock(key, holder, ttl),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
    fn unlock<'a>(&'a self, key: &'a str, holder: &'a str) -> BoxFuture<'a, Result<(), BoxError>> {
        match self.check() {
            Ok(()) => self.inner.unlock(key, holder),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }
}

/// The value of the gauge `entur_auth_store_bypassed` in a Prometheus scrape.
fn bypassed_gauge(scrape: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with("entur_auth_store_bypassed"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, value)| value.parse().ok())
}

#[tokio::test(start_paused = true)]
async fn status_and_metrics_tell_the_origin_and_a_bypassed_store() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let server = server(Duration::from_secs(60)).await;
    let store = Switchable::default();
    let replica = |seed| {
        server
            .source_builder()
            .shared_store(store.clone())
            .jitter_seed(seed)
            .build()
            .unwrap()
    };
    let (a, b) = (replica(1), replica(2));
    let without_store = source(&server);

    // A fetches, B adopts A's token.
    a.prefetch().await.unwrap();
    b.prefetch().await.unwrap();
    without_store.prefetch().await.unwrap();
    assert_eq!(server.token_requests(), 2);
    let (sa, sb) = (a.status(), b.status());
    assert_eq!(sa.origin, Some(TokenOrigin::TokenEndpoint));
    assert_eq!(sb.origin, Some(TokenOrigin::SharedStore));
    assert_eq!(sa.store, Some(StoreState::Sharing));
    assert_eq!((sa.store_fallbacks, sb.store_fallbacks), (0, 0));
    assert!(
        sb.to_string()
            .contains("shared store sharing, token adopted from it"),
        "{sb}"
    );
    let plain = without_store.status();
    assert_eq!(plain.store, None, "no store, no store state");
    assert_eq!(plain.origin, Some(TokenOrigin::TokenEndpoint));
    assert!(!plain.to_string().contains("store"), "{plain}");
    assert_eq!(bypassed_gauge(&handle.render()), Some(0.0));

    // The store goes down: at their refresh both fetch for themselves, and say so.
    store.down.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(50)).await;
    assert_eq!(server.token_requests(), 2 + 2 + 1);
    for replica in [&a, &b] {
        let status = replica.status();
        assert!(status.health.is_serving(), "{status}");
        assert_eq!(status.store, Some(StoreState::Bypassed), "{status}");
        assert_eq!(status.origin, Some(TokenOrigin::TokenEndpoint));
        assert_eq!(status.store_fallbacks, 1);
        assert!(
            status
                .to_string()
                .contains("shared store bypassed, 1 fetch without it"),
            "{status}"
        );
    }
    assert_eq!(bypassed_gauge(&handle.render()), Some(1.0));
    #[cfg(feature = "serde")]
    {
        let json = serde_json::to_value(a.status()).unwrap();
        assert_eq!(json["store"], "bypassed", "{json}");
        assert_eq!(json["origin"], "token_endpoint", "{json}");
        assert_eq!(json["store_fallbacks"], 1, "{json}");
    }

    // Back: at the next refresh one fetches and publishes, the other adopts it.
    store.down.store(false, Ordering::Relaxed);
    let before = server.token_requests();
    tokio::time::sleep(Duration::from_secs(45)).await;
    let (sa, sb) = (a.status(), b.status());
    assert_eq!(sa.store, Some(StoreState::Sharing), "{sa}");
    assert_eq!(sb.store, Some(StoreState::Sharing), "{sb}");
    let origins = [sa.origin, sb.origin];
    assert!(
        origins.contains(&Some(TokenOrigin::SharedStore)),
        "{origins:?}"
    );
    // The lone source refreshed too: one token for the pair, one for it.
    assert_eq!(server.token_requests() - before, 2);
    assert_eq!(bypassed_gauge(&handle.render()), Some(0.0));
    #[cfg(feature = "serde")]
    {
        let json = serde_json::to_value(&sb).unwrap();
        assert_eq!(json["store"], "sharing", "{json}");
    }
}
