//! One token for a whole fleet: a shared [`TokenStore`] (Redis, with the `redis` feature)
//! that replicas consult before asking the authorization server.
//!
//! The in-process `ArcSwap` stays the hot path: the store is read only when the local token is
//! due for refresh or missing, never per request. When it is due, a replica
//!
//! 1. adopts a newer token another replica published, if there is one;
//! 2. otherwise takes a short-lived fleet-wide lock (set-if-not-exists with an expiry, so a
//!    holder that dies frees it), fetches, publishes the token, and releases the lock;
//! 3. or, when another replica holds the lock, waits for its token, then tries the lock again;
//! 4. and whenever the store is down, slow or answers garbage, fetches for itself: the store
//!    is never a single point of failure.
//!
//! Tokens at rest are encrypted with XChaCha20-Poly1305 under a key derived (HKDF-SHA256)
//! from the client secret, or from a store key of the fleet's own
//! ([`TokenSourceBuilder::store_key`](crate::TokenSourceBuilder::store_key)), with the store
//! key name as associated data: someone who can read the store but does not hold the secret
//! cannot use the tokens, and an entry written under another key or altered by a single byte
//! is a miss, never a bearer. Key names are derived from the token URL, client id, audience,
//! scope, parameters and assertion claims — never from the secret.
//!
//! # When to set a store key
//!
//! - **Credentials without a secret** (`private_key_jwt`, the JWT bearer grant, mutual TLS):
//!   there is nothing to derive the key from, so the source refuses to build without one.
//! - **Secret rotation.** A key derived from the secret differs between replicas on the old
//!   and on the new secret: during a rollout they cannot read each other's entries, and each
//!   side fetches and overwrites the other's. With a store key of their own (the same on
//!   every replica, from your secret store, rotated on its own schedule) they keep sharing
//!   through the secret's rotation.
//!
//! Give it at least 32 random bytes, e.g. `openssl rand -base64 32` decoded, and treat it
//! like the client secret: whoever holds it and can read the store can use the tokens.
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn run() -> Result<(), entur_auth::Error> {
//! use entur_auth::{Credentials, Environment, TokenEndpoint, TokenSource};
//! use entur_auth::store::RedisStore;
//!
//! let store = RedisStore::new("redis://127.0.0.1:6379/")?;
//! let source = TokenSource::builder(TokenEndpoint::entur(Environment::Dev), Credentials::from_env()?)
//!     .shared_store(store)
//!     .build()?;
//! # let _ = source; Ok(()) }
//! ```

mod memory;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
mod redis;

pub use self::memory::MemoryStore;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::error::{BoxError, Error};
use crate::oauth::{Credentials, TokenEndpoint};
use crate::source::token::{AccessToken, Lifecycle};
use crate::source::TokenOrigin;

/// Where a fleet of token sources shares its token: a key-value store with expiring entries
/// and a set-if-not-exists lock. Values are opaque (already encrypted) bytes.
///
/// Every method should answer quickly; the token source also puts its own timeout around each
/// call and treats an error or a timeout as "store unavailable", fetching for itself.
pub trait TokenStore: Send + Sync + 'static {
    /// The value under `key`, if any.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>>;

    /// Sets `key` to `value`, expiring after `ttl`.
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Takes the lock `key` for `holder` if nobody holds it, expiring after `ttl`. Returns
    /// whether it was taken.
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>>;

    /// Releases the lock `key` if `holder` still holds it.
    fn unlock<'a>(&'a self, key: &'a str, holder: &'a str) -> BoxFuture<'a, Result<(), BoxError>>;
}

/// Settings for sharing through a store, with defaults.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StoreSettings {
    /// Limit on each store call.
    pub(crate) op_timeout: Duration,
    /// How often a replica waiting for the lock holder looks for its token.
    pub(crate) poll: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            op_timeout: Duration::from_millis(500),
            poll: Duration::from_millis(100),
        }
    }
}

/// A token source's view of the shared store.
pub(crate) struct Fleet {
    store: Arc<dyn TokenStore>,
    token_key: String,
    lock_key: String,
    cipher: XChaCha20Poly1305,
    holder: String,
    settings: StoreSettings,
    lock_ttl: Duration,
    /// Whether the last call to the store answered ([`ANSWERED`]), failed or timed out
    /// ([`BYPASSED`]: this source fetches for itself until the store answers again), or no
    /// call was made yet (0).
    answers: AtomicU8,
    /// Token requests made without the fleet lock.
    fallbacks: AtomicU64,
    #[cfg(feature = "metrics")]
    labels: crate::metrics::SourceLabels,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("token_key", &self.token_key)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A token as stored: the plaintext inside the encrypted entry.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// The access token.
    t: String,
    /// Issued (request sent), milliseconds since the Unix epoch.
    i: u64,
    /// Expires, milliseconds since the Unix epoch.
    e: u64,
    /// Scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<String>,
}

const ENTRY_VERSION: u8 = 1;

/// [`Fleet::answers`]: the last store call answered.
const ANSWERED: u8 = 1;
/// [`Fleet::answers`]: the last store call failed or timed out.
const BYPASSED: u8 = 2;

/// The outcome of looking in the store.
enum Look {
    Adopted(AccessToken),
    Nothing,
    Unavailable,
}

impl Fleet {
    pub(crate) fn new(
        store: Arc<dyn TokenStore>,
        endpoint: &TokenEndpoint,
        credentials: &Credentials,
        settings: StoreSettings,
        fetch_timeout: Duration,
        store_key: Option<&[u8]>,
    ) -> Result<Self, Error> {
        // The encryption key's input: the store key, else the client secret.
        let (salt, input): (&[u8], &[u8]) = match (store_key, credentials.client_secret()) {
            (Some(key), _) => (b"entur-auth token store key v1", key),
            (None, Some(secret)) => (b"entur-auth token store v1", secret.expose().as_bytes()),
            (None, None) => {
                return Err(Error::config(
                    "a shared store encrypts the tokens with a key derived from the client secret, and these credentials (a private key or a client certificate) have none: give every replica the same key with TokenSourceBuilder::store_key",
                ))
            }
        };
        let mut id = Sha256::new();
        for part in [
            endpoint.url().to_string().as_str(),
            credentials.client_id(),
            endpoint.audience_value().unwrap_or_default(),
            endpoint.scope_value().unwrap_or_default(),
        ] {
            id.update((part.len() as u64).to_be_bytes());
            id.update(part.as_bytes());
        }
        for (name, value) in endpoint.params() {
            id.update((name.len() as u64).to_be_bytes());
            id.update(name.as_bytes());
            id.update((value.len() as u64).to_be_bytes());
            id.update(value.as_bytes());
        }
        // Claims that change the token (Maskinporten's scope and resource live in the
        // assertion, not in the parameters).
        for (name, value) in &endpoint.assertion_settings().claims {
            let value = value.to_string();
            id.update((name.len() as u64).to_be_bytes());
            id.update(name.as_bytes());
            id.update((value.len() as u64).to_be_bytes());
            id.update(value.as_bytes());
        }
        let id = hex(&id.finalize()[..16]);
        // The id is a hash tag (`{…}`): on a Redis Cluster the token and its lock live in one
        // slot, so one shard serves a fleet, and a shard that fails takes both or neither.
        let token_key = format!("entur-auth:v1:{{{id}}}:token");
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(Some(salt), input)
            .expand(token_key.as_bytes(), &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let holder = hex(&fastrand::u128(..).to_be_bytes());
        Ok(Self {
            store,
            lock_key: format!("entur-auth:v1:{{{id}}}:lock"),
            token_key,
            cipher: XChaCha20Poly1305::new((&key).into()),
            holder,
            settings,
            lock_ttl: fetch_timeout + Duration::from_secs(2),
            answers: AtomicU8::new(0),
            fallbacks: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            labels: crate::metrics::SourceLabels::new(endpoint.url(), credentials.client_id()),
        })
    }

    /// A token for this replica: adopted from the fleet, or fetched with `fetch` (under the
    /// fleet lock when the store answers) and published.
    ///
    /// `refused` says whether the API refused a token: such a token is never adopted, even
    /// when the store still holds it, so that the replica that saw the refusal fetches a new
    /// token (and publishes it for the others) instead of re-adopting the refused one.
    pub(crate) async fn obtain<F, Fut>(
        &self,
        current: Option<&AccessToken>,
        refused: &(dyn Fn(&AccessToken) -> bool + Sync),
        lifecycle: &Lifecycle,
        jitter: f64,
        fetch: F,
    ) -> Result<(AccessToken, TokenOrigin), Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<AccessToken, Error>>,
    {
        let now = Instant::now();
        let mut deadline = now + self.lock_ttl * 2;
        // While this replica still sends a token, wait for the lock holder for at most half
        // of that token's remaining usable time, then fetch alone: a holder that took the lock
        // and then lost the store (a failover, a slot move) never costs this replica its token.
        if let Some(current) = current {
            let half = current.usable_until().saturating_duration_since(now) / 2;
            deadline = deadline.min(now + half);
        }
        loop {
            match self.look(current, refused, lifecycle, jitter).await {
                Look::Adopted(token) => return Ok((token, TokenOrigin::SharedStore)),
                Look::Unavailable => return self.fetch_alone(&fetch, "unavailable").await,
                Look::Nothing => {}
            }
            let op = self
                .store
                .try_lock(&self.lock_key, &self.holder, self.lock_ttl);
            match self.call("lock", op).await {
                Some(true) => {
                    // Another replica may have published between our look and the lock.
                    if let Look::Adopted(token) =
                        self.look(current, refused, lifecycle, jitter).await
                    {
                        let op = self.store.unlock(&self.lock_key, &self.holder);
                        self.call("unlock", op).await;
                        return Ok((token, TokenOrigin::SharedStore));
                    }
                    return self.fetch_and_publish(&fetch, true).await;
                }
                Some(false) if Instant::now() < deadline => {
                    tokio::time::sleep(self.settings.poll).await;
                }
                // The holder never published: fetch for ourselves.
                Some(false) => return self.fetch_alone(&fetch, "lock_wait").await,
                // Store down: fetch for ourselves.
                None => return self.fetch_alone(&fetch, "unavailable").await,
            }
        }
    }

    /// Fetches without the fleet lock, because of `reason` (a label of the fallbacks metric).
    async fn fetch_alone<F, Fut>(
        &self,
        fetch: &F,
        reason: &'static str,
    ) -> Result<(AccessToken, TokenOrigin), Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<AccessToken, Error>>,
    {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        crate::metrics::store_fallback(&self.labels, reason);
        #[cfg(not(feature = "metrics"))]
        let _ = reason;
        self.fetch_and_publish(fetch, false).await
    }

    async fn fetch_and_publish<F, Fut>(
        &self,
        fetch: &F,
        locked: bool,
    ) -> Result<(AccessToken, TokenOrigin), Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<AccessToken, Error>>,
    {
        let result = fetch().await;
        if let Ok(token) = &result {
            self.publish(token).await;
        }
        if locked {
            let op = self.store.unlock(&self.lock_key, &self.holder);
            self.call("unlock", op).await;
        }
        result.map(|token| (token, TokenOrigin::TokenEndpoint))
    }

    /// A newer usable token in the store: when this replica has one, the stored one must be
    /// newer and not yet due for refresh; when it has none, any usable one will do.
    async fn look(
        &self,
        current: Option<&AccessToken>,
        refused: &(dyn Fn(&AccessToken) -> bool + Sync),
        lifecycle: &Lifecycle,
        jitter: f64,
    ) -> Look {
        let look = self.look_inner(current, refused, lifecycle, jitter).await;
        #[cfg(feature = "metrics")]
        crate::metrics::store_lookup(
            &self.labels,
            match look {
                Look::Adopted(_) => "hit",
                Look::Nothing => "miss",
                Look::Unavailable => "unavailable",
            },
        );
        look
    }

    async fn look_inner(
        &self,
        current: Option<&AccessToken>,
        refused: &(dyn Fn(&AccessToken) -> bool + Sync),
        lifecycle: &Lifecycle,
        jitter: f64,
    ) -> Look {
        let op = self.store.get(&self.token_key);
        let Some(entry) = self.call("get", op).await else {
            return Look::Unavailable;
        };
        let Some(stored) = entry.and_then(|bytes| self.open(&bytes)) else {
            return Look::Nothing;
        };
        let issued = UNIX_EPOCH + Duration::from_millis(stored.i);
        let expires = UNIX_EPOCH + Duration::from_millis(stored.e);
        if current.is_some_and(|c| issued <= c.issued_wall()) {
            return Look::Nothing;
        }
        let Some(token) =
            AccessToken::from_shared(&stored.t, issued, expires, stored.s, lifecycle, jitter)
        else {
            return Look::Nothing;
        };
        if current.is_some() && Instant::now() >= token.refresh_at() {
            return Look::Nothing;
        }
        if refused(&token) {
            tracing::debug!("the store holds a token the API refused; fetching a new one");
            return Look::Nothing;
        }
        Look::Adopted(token)
    }

    async fn publish(&self, token: &AccessToken) {
        let lifetime = token.expires_at() - token.issued_at();
        let issued = token.issued_wall();
        let expires = issued + lifetime;
        let Ok(ttl) = expires.duration_since(SystemTime::now()) else {
            return;
        };
        let Ok(token_text) = std::str::from_utf8(token.secret()) else {
            return;
        };
        let stored = Stored {
            t: token_text.to_owned(),
            i: millis(issued),
            e: millis(expires),
            s: token.scope().map(str::to_owned),
        };
        let Some(sealed) = self.seal(&stored) else {
            return;
        };
        let op = self.store.set(&self.token_key, sealed, ttl);
        if self.call("set", op).await.is_some() {
            tracing::debug!(token = %token.id(), "published the token to the fleet's store");
        }
    }

    /// Runs a store call (`operation`, a label of the errors metric) with the timeout; `None`
    /// (logged) when the store is unavailable.
    async fn call<T>(
        &self,
        operation: &'static str,
        op: BoxFuture<'_, Result<T, BoxError>>,
    ) -> Option<T> {
        let result = tokio::time::timeout(self.settings.op_timeout, op).await;
        let answered = matches!(result, Ok(Ok(_)));
        #[cfg(feature = "metrics")]
        if !answered {
            crate::metrics::store_error(&self.labels, operation, result.is_err());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = operation;
        let now = if answered { ANSWERED } else { BYPASSED };
        let before = self.answers.swap(now, Ordering::Relaxed);
        if before != now {
            #[cfg(feature = "metrics")]
            crate::metrics::store_bypassed(&self.labels, !answered);
            if before == BYPASSED {
                tracing::info!("token store answers again; sharing the fleet's token");
            }
        }
        match result {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                tracing::warn!(%error, "token store unavailable; fetching for this replica");
                None
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.settings.op_timeout.as_millis() as u64,
                    "token store did not answer in time; fetching for this replica"
                );
                None
            }
        }
    }

    /// Whether the last call to the store failed or timed out.
    pub(crate) fn bypassed(&self) -> bool {
        self.answers.load(Ordering::Relaxed) == BYPASSED
    }

    /// Token requests made without the fleet lock since the source was built.
    pub(crate) fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    fn seal(&self, stored: &Stored) -> Option<Vec<u8>> {
        let plain = serde_json::to_vec(stored).ok()?;
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: self.token_key.as_bytes(),
                },
            )
            .ok()?;
        let mut entry = Vec::with_capacity(1 + nonce.len() + sealed.len());
        entry.push(ENTRY_VERSION);
        entry.extend_from_slice(&nonce);
        entry.extend_from_slice(&sealed);
        Some(entry)
    }

    /// Decrypts an entry; `None` for a wrong key, a tampered entry or garbage.
    fn open(&self, entry: &[u8]) -> Option<Stored> {
        let (&version, rest) = entry.split_first()?;
        if version != ENTRY_VERSION || rest.len() < 24 {
            return None;
        }
        let (nonce, sealed) = rest.split_at(24);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: self.token_key.as_bytes(),
                },
            )
            .ok();
        if plain.is_none() {
            tracing::warn!(
                "token store entry failed authentication (another key, or altered); ignored"
            );
        }
        serde_json::from_slice(&plain?).ok()
    }

    #[cfg(test)]
    fn key(&self) -> &str {
        &self.token_key
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(store: Arc<MemoryStore>, secret: &str) -> Fleet {
        Fleet::new(
            store,
            &TokenEndpoint::entur(crate::Environment::Dev),
            &Credentials::new("client", secret),
            StoreSettings::default(),
            Duration::from_secs(1),
            None,
        )
        .expect("credentials with a secret")
    }

    fn stored() -> Stored {
        Stored {
            t: "abc.def.ghi".into(),
            i: 1,
            e: 2,
            s: None,
        }
    }

    #[test]
    fn keys_come_from_public_parts_never_the_secret() {
        let store = Arc::new(MemoryStore::default());
        let a = fleet(store.clone(), "secret-one");
        let b = fleet(store, "secret-two");
        assert_eq!(
            a.key(),
            b.key(),
            "same client, same key, whatever the secret"
        );
        assert!(a.key().starts_with("entur-auth:v1:"));
        assert!(!a.key().contains("secret"));
        // One hash tag for the token and its lock: one Redis Cluster slot for both.
        let tag = |key: &str| {
            let open = key.find('{').unwrap();
            let close = open + key[open..].find('}').unwrap();
            key[open + 1..close].to_owned()
        };
        assert_eq!(tag(&a.token_key), tag(&a.lock_key));
        assert_eq!(tag(&a.token_key).len(), 32, "the 128-bit id in hex");
    }

    #[test]
    fn sealed_entries_open_only_with_the_right_secret_and_unaltered() {
        let store = Arc::new(MemoryStore::default());
        let a = fleet(store.clone(), "secret-one");
        let entry = a.seal(&stored()).unwrap();
        assert_eq!(a.open(&entry).unwrap().t, "abc.def.ghi");
        assert!(
            !String::from_utf8_lossy(&entry).contains("abc.def.ghi"),
            "encrypted at rest"
        );
        assert!(
            fleet(store, "secret-two").open(&entry).is_none(),
            "another key"
        );
        for i in 0..entry.len() {
            let mut altered = entry.clone();
            altered[i] ^= 0x01;
            assert!(a.open(&altered).is_none(), "byte {i} altered");
        }
        assert!(a.open(&[]).is_none());
        assert!(a.open(&entry[..10]).is_none());
    }
}
