//! A replica that waits for another replica's fleet lock never loses its own token meanwhile:
//! when the lock holder publishes nothing (it lost the store in a failover, or died), the
//! waiting replica fetches alone while its current token is still being sent.
#![cfg(feature = "shared-store")]

mod common;

use std::time::Duration;

use common::*;
use entur_auth::store::{MemoryStore, TokenStore};
use entur_auth::BoxError;
use futures_util::future::BoxFuture;

/// A `MemoryStore` whose lock is always held by another replica that never publishes.
#[derive(Clone, Default)]
struct LockedByAnother(MemoryStore);

impl TokenStore for LockedByAnother {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        self.0.get(key)
    }
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.0.set(key, value, ttl)
    }
    fn try_lock<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        Box::pin(async { Ok(false) })
    }
    fn unlock<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_lock_holder_that_never_publishes_costs_no_token() {
    // 60 s tokens: refresh at ~42-45 s, retired at 54 s. The lock lives fetch timeout + 2 s =
    // 12 s, and a replica without a token waits for its holder up to twice that.
    let server = server(Duration::from_secs(60)).await;
    let source = server
        .source_builder()
        .shared_store(LockedByAnother::default())
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    source.prefetch().await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(24), "waited first");
    assert_eq!(source.status().store_fallbacks, 1);

    // Through the refresh: waiting 24 s again would outlive the token (retired 54 s after
    // issue, refresh at ~43 s). The replica waits half of what is left, then fetches alone.
    let mut sampled = 0;
    while started.elapsed() < Duration::from_secs(24 + 80) {
        assert!(
            source.current().is_some(),
            "the token was retired while waiting for the lock at {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        sampled += 1;
    }
    assert!(sampled > 700);
    let status = source.status();
    assert_eq!(status.store_fallbacks, 2, "{status}");
    assert_eq!(server.token_requests(), 2);
}
