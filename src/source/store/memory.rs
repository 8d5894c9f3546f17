//! [`TokenStore`] in this process's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::TokenStore;
use crate::error::BoxError;

/// A [`TokenStore`] in memory: for several token sources in one process (say, one per
/// tenant's client that happens to share credentials, or replicas simulated in a test), and
/// for your own tests of a fleet without a Redis. Entries and locks expire as they would in
/// Redis, on tokio's clock (so a paused test clock moves them too). Clones share the store.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    entries: Arc<Mutex<Entries>>,
}

/// Each key's value and when it expires.
type Entries = HashMap<String, (Vec<u8>, Instant)>;

impl MemoryStore {
    /// The entries not yet expired, with expired ones removed.
    fn entries(&self) -> MutexGuard<'_, Entries> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        entries.retain(|_, (_, expires)| *expires > now);
        entries
    }
}

fn expiry(ttl: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

impl TokenStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        let value = self.entries().get(key).map(|(value, _)| value.clone());
        Box::pin(async move { Ok(value) })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        self.entries().insert(key.to_owned(), (value, expiry(ttl)));
        Box::pin(async { Ok(()) })
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        let mut entries = self.entries();
        let taken = !entries.contains_key(key);
        if taken {
            entries.insert(key.to_owned(), (holder.as_bytes().to_vec(), expiry(ttl)));
        }
        Box::pin(async move { Ok(taken) })
    }

    fn unlock<'a>(&'a self, key: &'a str, holder: &'a str) -> BoxFuture<'a, Result<(), BoxError>> {
        let mut entries = self.entries();
        if entries.get(key).map(|(value, _)| value.as_slice()) == Some(holder.as_bytes()) {
            entries.remove(key);
        }
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_and_locks_expire_and_only_the_holder_unlocks() {
        let store = MemoryStore::default();
        store
            .set("k", b"v".to_vec(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(store.get("k").await.unwrap(), None, "expired");

        let ttl = Duration::from_secs(3);
        assert!(store.try_lock("l", "a", ttl).await.unwrap());
        assert!(!store.try_lock("l", "b", ttl).await.unwrap(), "held");
        store.unlock("l", "b").await.unwrap();
        assert!(
            !store.try_lock("l", "b", ttl).await.unwrap(),
            "b is not the holder"
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(
            store.try_lock("l", "b", ttl).await.unwrap(),
            "a's lock expired"
        );
        store.unlock("l", "b").await.unwrap();
        assert!(
            store.try_lock("l", "a", ttl).await.unwrap(),
            "b released it"
        );
    }
}
