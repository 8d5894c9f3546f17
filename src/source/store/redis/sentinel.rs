//! The store behind Redis Sentinel: the master the Sentinels name, asked again after a
//! failover.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use redis::aio::MultiplexedConnection;
use redis::sentinel::SentinelServerType::Master as MASTER;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelNodeConnectionInfo};
use redis::{AsyncConnectionConfig, FromRedisValue, IntoConnectionInfo, RedisResult};
use redis::{TlsCertificates, TlsMode};

use super::FAILOVER_TIMEOUT as TIMEOUT;
use crate::error::BoxError;

/// A client for the master that the Sentinels at `urls` name `name`; with `tls`, both
/// the Sentinels and the master are reached over TLS, trusting `certs` if given. redis-rs
/// takes the master's certificates only through its builder, which asks every Sentinel
/// with one user and password: the first URL's.
pub(super) fn client(
    urls: &[&str],
    name: &str,
    tls: bool,
    certs: Option<TlsCertificates>,
) -> RedisResult<SentinelClient> {
    let Some(certs) = certs else {
        let node = tls.then_some(SentinelNodeConnectionInfo {
            tls_mode: Some(TlsMode::Secure),
            redis_connection_info: None,
        });
        return SentinelClient::build(urls.to_vec(), name.to_owned(), node, MASTER);
    };
    let infos = urls
        .iter()
        .map(|url| url.into_connection_info())
        .collect::<RedisResult<Vec<_>>>()?;
    let auth = infos[0].redis.clone();
    let addrs = infos.into_iter().map(|info| info.addr);
    let mut builder = SentinelClientBuilder::new(addrs, name.to_owned(), MASTER)?
        .set_client_to_sentinel_certificates(certs.clone())
        .set_client_to_redis_tls_mode(TlsMode::Secure)
        .set_client_to_redis_certificates(certs);
    if let Some(username) = auth.username {
        builder = builder.set_client_to_sentinel_username(username);
    }
    if let Some(password) = auth.password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    builder.build()
}

/// The master that Sentinel names, and a connection to it that is dropped (and the
/// master asked for again) whenever a call on it fails or is abandoned.
pub(super) struct Master {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the master as last named, with its generation.
    connection: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
    pub(super) sentinels: Vec<String>,
    pub(super) name: String,
}

/// Drops the connection of `generation` unless disarmed: a call that failed, or whose
/// future was dropped before it answered (the token source's timeout), may have been on
/// a master that is gone or paused.
struct Forget<'a> {
    master: &'a Master,
    generation: u64,
    armed: bool,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.master.forget(self.generation);
        }
    }
}

impl Master {
    pub(super) fn new(client: SentinelClient, sentinels: Vec<String>, name: String) -> Self {
        Self {
            client: tokio::sync::Mutex::new(client),
            connection: Mutex::new(None),
            generation: AtomicU64::new(0),
            sentinels,
            name,
        }
    }

    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn forget(&self, generation: u64) {
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if connection.as_ref().is_some_and(|(g, _)| *g == generation) {
            *connection = None;
        }
    }

    /// A connection to the master, asking the Sentinels for it if there is none.
    async fn connect(&self) -> Result<(u64, MultiplexedConnection), BoxError> {
        if let Some(cached) = self.cached() {
            return Ok(cached);
        }
        let mut client = self.client.lock().await;
        // Another call may have connected while this one waited for the client.
        if let Some(cached) = self.cached() {
            return Ok(cached);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT);
        // The Sentinels' answer, and the master's own ROLE check, within a limit: a
        // paused master accepts connections and then answers nothing.
        let connection = tokio::time::timeout(
            TIMEOUT * 2,
            client.get_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| "the Redis Sentinels or the master they named did not answer in time")??;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self
            .connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some((generation, connection.clone()));
        Ok((generation, connection))
    }

    /// Runs `cmd` on the master. When the connection turns out to be dead or to lead to
    /// a former master (`READONLY`), asks the Sentinels once more at once: after a
    /// failover they already name the new master, and the call succeeds on it.
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BoxError> {
        let mut retried = false;
        loop {
            let (generation, mut connection) = self.connect().await?;
            let mut forget = Forget {
                master: self,
                generation,
                armed: true,
            };
            match cmd.query_async(&mut connection).await {
                Ok(value) => {
                    forget.armed = false;
                    return Ok(value);
                }
                Err(error) if !retried && gone(&error) => {
                    drop(forget);
                    retried = true;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// The master behind the connection is gone, or is no longer the master. Not a timeout:
/// a master that hangs may still be named by the Sentinels, and asking them again would
/// only hang on it once more; the next call asks them.
fn gone(error: &redis::RedisError) -> bool {
    (error.is_io_error() && !error.is_timeout())
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.kind() == redis::ErrorKind::ReadOnly
}
