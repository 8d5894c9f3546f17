//! Finds a token source from a small key.
//!
//! The response future and body of every request, and the watchdog, need to reach the source
//! only when something goes wrong (the API refused the token, a refresher stopped answering).
//! Holding an `Arc` for that would cost two atomic operations per request on a counter that
//! every thread shares; a key costs nothing, and the lookup happens only on those cold paths.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};

use super::Shared;

/// Identifies a [`TokenSource`](super::TokenSource) within the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SourceKey(NonZeroU64);

impl SourceKey {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed).max(1);
        Self(NonZeroU64::new(n).unwrap_or(NonZeroU64::MIN))
    }
}

type Sources = RwLock<HashMap<SourceKey, Weak<Shared>>>;

fn sources() -> &'static Sources {
    static SOURCES: OnceLock<Sources> = OnceLock::new();
    SOURCES.get_or_init(Sources::default)
}

pub(super) fn register(shared: &Arc<Shared>) {
    let mut map = sources()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    map.insert(shared.key, Arc::downgrade(shared));
}

pub(super) fn deregister(key: SourceKey) {
    let mut map = sources()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    map.remove(&key);
}

/// The source with this key, if it still exists.
pub(crate) fn lookup(key: SourceKey) -> Option<Arc<Shared>> {
    let map = sources()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    map.get(&key)?.upgrade()
}
