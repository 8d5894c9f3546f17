//! [`TokenStore`] on Redis: `SET … PX` entries that expire with the token, a `SET … NX PX`
//! lock that frees itself if its holder dies, and a compare-and-delete unlock. On one Redis, a
//! Redis Cluster (feature `redis-cluster`) or the master that Redis Sentinel names (feature
//! `redis-sentinel`).
//!
//! Every command names one key, and the token and its lock share a hash tag, so on a cluster
//! both live in one slot and no command ever spans two.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, FromRedisValue, IntoConnectionInfo, TlsCertificates};
use rustls::crypto::CryptoProvider;
use tokio::sync::OnceCell;

use super::TokenStore;
use crate::error::{BoxError, Error};

/// Deletes the lock only if this holder still holds it.
const UNLOCK: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;

/// How long connecting and each answer may take on one Redis. The token source puts its own
/// limit (`store_timeout`, 500 ms by default) around each call as well.
const TIMEOUT: Duration = Duration::from_millis(500);

/// The same on a Cluster or behind Sentinel: half the token source's default limit, so that
/// the client sees a node that does not answer itself (and reconnects, or looks for the new
/// primary) instead of being cancelled from outside first.
#[cfg(any(feature = "redis-cluster", feature = "redis-sentinel"))]
const FAILOVER_TIMEOUT: Duration = Duration::from_millis(250);

/// A [`TokenStore`] on Redis, for sharing one token across a fleet.
///
/// - [`RedisStore::new`]: one Redis (or a proxy in front of several). Connects lazily and
///   reconnects by itself (redis-rs' `ConnectionManager`).
/// - [`RedisStore::cluster`] (feature `redis-cluster`): a Redis Cluster, through redis-rs'
///   cluster client, which follows `MOVED` and `ASK` redirects and learns the new slot map
///   after a failover or a slot move.
/// - [`RedisStore::sentinel`] (feature `redis-sentinel`): the master that Redis Sentinel
///   names, asked of the Sentinels again whenever a call to the master fails, so a failover
///   is followed.
///
/// Whichever it is, a Redis that is down at startup, goes away, fails over or moves a slot
/// only means that each replica fetches for itself meanwhile: no request fails for it.
///
/// # TLS
///
/// `rediss://` URLs connect over TLS (rustls with ring) and check the server's certificate
/// against the webpki roots, or against only the CA certificates given to
/// [`root_certificate`](Self::root_certificate) (a managed Redis with a private CA). A
/// certificate refused at connection time is a store error that says so (the replicas fetch
/// for themselves meanwhile), naming neither the URL nor its password.
///
/// redis-rs builds its rustls configuration with rustls' process-wide `CryptoProvider`, which
/// rustls cannot choose by itself when a program builds more than one (ring and aws-lc-rs): a
/// store opened on a `rediss://` URL installs ring as that default if no provider is installed
/// yet, and never panics for it. To use another provider, install it before building the
/// store (stores built on a client of your own install nothing).
pub struct RedisStore {
    backend: Backend,
    /// The URLs the store was opened on, to open it again with a root certificate (they may
    /// hold a password: never shown); empty for a client of the user's own.
    urls: Vec<String>,
}

enum Backend {
    Single {
        client: redis::Client,
        connection: OnceCell<ConnectionManager>,
    },
    #[cfg(feature = "redis-cluster")]
    Cluster {
        client: redis::cluster::ClusterClient,
        nodes: Vec<String>,
        connection: OnceCell<redis::cluster_async::ClusterConnection>,
    },
    #[cfg(feature = "redis-sentinel")]
    Sentinel(sentinel::Master),
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedisStore");
        match &self.backend {
            Backend::Single { client, .. } => {
                d.field("addr", &client.get_connection_info().addr.to_string())
            }
            #[cfg(feature = "redis-cluster")]
            Backend::Cluster { nodes, .. } => d.field("cluster", nodes),
            #[cfg(feature = "redis-sentinel")]
            Backend::Sentinel(master) => d
                .field("sentinels", &master.sentinels)
                .field("master", &master.name),
        };
        d.finish_non_exhaustive()
    }
}

/// Whether `url` is a `rediss://` URL (false for one that is not a Redis URL at all).
fn is_tls(url: &str) -> bool {
    url.into_connection_info()
        .is_ok_and(|info| matches!(info.addr, ConnectionAddr::TcpTls { .. }))
}

/// The CA certificates in `pem` for redis-rs, or an error saying what is wrong with them.
fn root_certificates(pem: &[u8]) -> Result<TlsCertificates, Error> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let problem = match CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>() {
        Err(e) => format!("invalid PEM ({e})"),
        Ok(certs) if certs.is_empty() => "no CERTIFICATE block in the PEM text".to_owned(),
        Ok(certs) => match rustls::RootCertStore::empty().add_parsable_certificates(certs) {
            (_, 0) => {
                let root_cert = Some(pem.to_vec());
                return Ok(TlsCertificates {
                    client_tls: None,
                    root_cert,
                });
            }
            (_, bad) => format!("{bad} CERTIFICATE block(s) holding no X.509 certificate"),
        },
    };
    Err(Error::config(format!(
        "Redis root certificate: {problem}: give the CA certificate that signed the server's, in PEM"
    )))
}

/// Says what to do when TLS refused the server's certificate (rustls' words for any
/// certificate it refuses; redis-rs passes some of its errors on as text only).
fn advise(error: BoxError) -> BoxError {
    if !error.to_string().contains("invalid peer certificate") {
        return error;
    }
    Error::config(format!(
        "the Redis server's TLS certificate was refused ({error}): trust the CA that signed it with RedisStore::root_certificate, and put a host name (or IP) in the URL that the certificate names"
    ))
    .into()
}

/// The address of a Redis URL (host and port, never a password), or `None` for a URL that is
/// not one.
#[cfg(any(feature = "redis-cluster", feature = "redis-sentinel"))]
fn address(url: &str) -> Option<String> {
    use redis::IntoConnectionInfo;
    url.into_connection_info()
        .ok()
        .map(|info| info.addr.to_string())
}

/// The addresses of `urls`, or an error naming the first URL that is not a Redis URL by its
/// position (a URL may hold a password, so it is never repeated).
#[cfg(any(feature = "redis-cluster", feature = "redis-sentinel"))]
fn addresses(urls: &[&str], what: &str) -> Result<Vec<String>, Error> {
    if urls.is_empty() {
        return Err(Error::config(format!(
            "no {what} given: name at least one (redis://host:port)"
        )));
    }
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            address(url).ok_or_else(|| {
                Error::config(format!(
                    "{what} URL #{} is not a Redis URL: use redis://host:port (rediss:// for TLS)",
                    i + 1
                ))
            })
        })
        .collect()
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`, `rediss://` for TLS). Nothing is
    /// connected until the first use.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `url` is not a Redis URL.
    pub fn new(url: &str) -> Result<Self, Error> {
        Self::open_single(url, None)
    }

    fn open_single(url: &str, certs: Option<TlsCertificates>) -> Result<Self, Error> {
        let client = match certs {
            None => redis::Client::open(url),
            Some(certs) => redis::Client::build_with_tls(url, certs),
        };
        let client = client.map_err(|e| {
            Error::config(format!(
                "Redis URL is invalid ({e}): use redis://host:port/db (rediss:// for TLS)"
            ))
        })?;
        let connection = OnceCell::new();
        Ok(Self::opened(Backend::Single { client, connection }, &[url]))
    }

    /// A store on `backend`, opened on `urls`. With a `rediss://` one among them, installs
    /// ring as rustls' process-wide provider unless one is (see the type's docs).
    fn opened(backend: Backend, urls: &[&str]) -> Self {
        if urls.iter().any(|url| is_tls(url)) && CryptoProvider::get_default().is_none() {
            // Another thread may install one first: then that one stays, and ring is dropped.
            #[allow(deprecated)] // ring on purpose: see the `rustls` feature in Cargo.toml
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let urls = urls.iter().map(|url| url.to_string()).collect();
        Self { backend, urls }
    }

    /// Trusts the CA certificates in `pem` (one or more PEM `CERTIFICATE` blocks), and only
    /// them, for this store's `rediss://` connections instead of the webpki roots: for a
    /// managed Redis whose certificate a private CA signed. On a Cluster they are trusted for
    /// every node; behind Sentinel, for the Sentinels and for the master (redis-rs then asks
    /// every Sentinel with the first URL's user and password).
    ///
    /// ```no_run
    /// # #[cfg(feature = "redis")]
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use entur_auth::store::RedisStore;
    ///
    /// let store = RedisStore::new("rediss://:password@redis.internal:6380/0")?
    ///     .root_certificate(std::fs::read("/etc/redis-ca/ca.pem")?)?;
    /// # let _ = store; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `pem` holds no certificate or is
    /// not PEM, or when the store is not on `rediss://` URLs (a store on a client of your own
    /// included: give that client the certificates).
    pub fn root_certificate(self, pem: impl AsRef<[u8]>) -> Result<Self, Error> {
        let certs = root_certificates(pem.as_ref())?;
        let Self { backend, urls } = self;
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        if urls.is_empty() || !urls.iter().all(|url| is_tls(url)) {
            return Err(Error::config(
                "a root certificate is for a store opened on rediss:// URLs (TLS): use rediss://host:port (a client of your own takes the certificates when you build it)",
            ));
        }
        match backend {
            Backend::Single { .. } => Self::open_single(urls[0], Some(certs)),
            #[cfg(feature = "redis-cluster")]
            Backend::Cluster { .. } => Self::open_cluster(&urls, Some(certs)),
            #[cfg(feature = "redis-sentinel")]
            Backend::Sentinel(master) => Self::open_sentinel(&urls, &master.name, Some(certs)),
        }
    }

    /// A store on the Redis Cluster that `nodes` belong to (`redis://host:port`, any
    /// reachable subset of its primaries and replicas: the rest is learnt from them). With
    /// `rediss://` URLs every node is reached over TLS, by the address the cluster gives for
    /// it (an IP unless it announces host names): its certificate must name that address.
    /// Nothing is connected until the first use.
    ///
    /// The token and its lock share a hash tag, so they live in one slot: one shard serves a
    /// fleet. A failover or a slot move costs at most one token request per replica (while
    /// the slot has no primary); redirects are followed and the slot map refreshed by
    /// redis-rs' cluster client.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when no node is given or one is not a Redis URL.
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub fn cluster(nodes: &[&str]) -> Result<Self, Error> {
        Self::open_cluster(nodes, None)
    }

    #[cfg(feature = "redis-cluster")]
    fn open_cluster(nodes: &[&str], certs: Option<TlsCertificates>) -> Result<Self, Error> {
        let addresses = addresses(nodes, "Redis Cluster node")?;
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(FAILOVER_TIMEOUT)
            .response_timeout(FAILOVER_TIMEOUT)
            .retries(2);
        if let Some(certs) = certs {
            builder = builder.certs(certs);
        }
        let client = builder.build().map_err(|e| {
            Error::config(format!(
                "Redis Cluster configuration is invalid ({e}): use redis://host:port for each node (rediss:// for TLS, on every node)"
            ))
        })?;
        Ok(Self::opened(
            Self::from_cluster_client(client, addresses).backend,
            nodes,
        ))
    }

    /// A store on a Redis Cluster through a client you configured yourself (passwords, TLS,
    /// timeouts); `nodes` only names it in `Debug`.
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub fn from_cluster_client(client: redis::cluster::ClusterClient, nodes: Vec<String>) -> Self {
        let connection = OnceCell::new();
        let backend = Backend::Cluster {
            client,
            nodes,
            connection,
        };
        Self {
            backend,
            urls: Vec::new(),
        }
    }

    /// A store on the master that the Sentinels at `sentinels` (`redis://host:port`) name
    /// `master_name`, with database 0 and no password on the master (for others, build the
    /// [`SentinelClient`](redis::sentinel::SentinelClient) yourself and use
    /// [`from_sentinel_client`](Self::from_sentinel_client)). Nothing is connected until the
    /// first use.
    ///
    /// With `rediss://` URLs the Sentinels and the master are both reached over TLS (as
    /// Sentinel itself reaches the master with `tls-replication yes`); the master's
    /// certificate must name the address the Sentinels give for it (an IP unless they
    /// announce host names). For TLS to only one of them, build the client yourself
    /// (`SentinelClientBuilder`).
    ///
    /// The master is asked of the Sentinels at the first use and again whenever a call to it
    /// fails or does not answer in time: after a failover, the next call reaches the new
    /// master. Meanwhile each replica fetches for itself.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when no Sentinel is given, one is not a Redis URL, or `master_name`
    /// is empty.
    #[cfg(feature = "redis-sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-sentinel")))]
    pub fn sentinel(sentinels: &[&str], master_name: &str) -> Result<Self, Error> {
        Self::open_sentinel(sentinels, master_name, None)
    }

    #[cfg(feature = "redis-sentinel")]
    fn open_sentinel(
        sentinels: &[&str],
        master_name: &str,
        certs: Option<TlsCertificates>,
    ) -> Result<Self, Error> {
        let addresses = addresses(sentinels, "Redis Sentinel")?;
        if master_name.is_empty() {
            return Err(Error::config(
                "the Redis Sentinel master name is empty: give the name the Sentinels monitor (`sentinel monitor <name> …`)",
            ));
        }
        let tls = sentinels.iter().any(|url| is_tls(url));
        let client = sentinel::client(sentinels, master_name, tls, certs).map_err(|e| {
            Error::config(format!(
                "Redis Sentinel configuration is invalid ({e}): use redis://host:port for each Sentinel (rediss:// for TLS, on every Sentinel)"
            ))
        })?;
        let master = sentinel::Master::new(client, addresses, master_name.to_owned());
        Ok(Self::opened(Backend::Sentinel(master), sentinels))
    }

    /// A store on the master that a [`SentinelClient`](redis::sentinel::SentinelClient) you
    /// built yourself finds (passwords, TLS, another database); it must be built for
    /// `SentinelServerType::Master`. `master_name` only names it in `Debug`.
    #[cfg(feature = "redis-sentinel")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-sentinel")))]
    pub fn from_sentinel_client(
        client: redis::sentinel::SentinelClient,
        master_name: &str,
    ) -> Self {
        let master = sentinel::Master::new(client, Vec::new(), master_name.to_owned());
        let backend = Backend::Sentinel(master);
        Self {
            backend,
            urls: Vec::new(),
        }
    }

    /// Runs `cmd` on whichever Redis this store is on.
    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BoxError> {
        self.query_on_backend(cmd).await.map_err(advise)
    }

    async fn query_on_backend<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BoxError> {
        match &self.backend {
            Backend::Single { client, connection } => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(TIMEOUT)
                    .set_response_timeout(TIMEOUT)
                    .set_number_of_retries(1);
                let mut connection = connection
                    .get_or_try_init(|| ConnectionManager::new_with_config(client.clone(), config))
                    .await?
                    .clone();
                Ok(cmd.query_async(&mut connection).await?)
            }
            #[cfg(feature = "redis-cluster")]
            Backend::Cluster {
                client, connection, ..
            } => {
                let mut connection = connection
                    .get_or_try_init(|| client.get_async_connection())
                    .await?
                    .clone();
                Ok(cmd.query_async(&mut connection).await?)
            }
            #[cfg(feature = "redis-sentinel")]
            Backend::Sentinel(master) => master.query(cmd).await,
        }
    }
}

impl TokenStore for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, BoxError>> {
        Box::pin(async move { self.query(redis::cmd("GET").arg(key)).await })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            self.query::<()>(&cmd).await
        })
    }

    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BoxError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key)
                .arg(holder)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            let taken: Option<String> = self.query(&cmd).await?;
            Ok(taken.is_some())
        })
    }

    fn unlock<'a>(&'a self, key: &'a str, holder: &'a str) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            // EVAL rather than EVALSHA: the script is tiny and sent once per token lifetime,
            // and EVAL needs no script cache, which a failed-over or new node lacks.
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(UNLOCK).arg(1).arg(key).arg(holder);
            self.query::<i64>(&cmd).await.map(drop)
        })
    }
}

#[cfg(feature = "redis-sentinel")]
mod sentinel;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_is_a_configuration_error_that_never_repeats_the_url() {
        let error = RedisStore::new("http://user:hunter2@example.org").unwrap_err();
        assert!(error.kind() == crate::ErrorKind::Config, "{error:?}");
        assert!(!error.report().to_string().contains("hunter2"), "{error}");
        let store = RedisStore::new("redis://:hunter2@127.0.0.1:6379/0").unwrap();
        assert!(!format!("{store:?}").contains("hunter2"), "{store:?}");
    }

    #[cfg(feature = "redis-cluster")]
    #[test]
    fn cluster_nodes_are_checked_and_never_repeated() {
        let error = RedisStore::cluster(&[]).unwrap_err();
        assert!(
            error.report().to_string().contains("no Redis Cluster node"),
            "{error}"
        );
        let error =
            RedisStore::cluster(&["redis://127.0.0.1:7000", "nonsense://:hunter2@x"]).unwrap_err();
        assert!(error.kind() == crate::ErrorKind::Config, "{error:?}");
        assert!(error.report().to_string().contains("#2"), "{error}");
        assert!(!error.report().to_string().contains("hunter2"), "{error}");
        let store = RedisStore::cluster(&["redis://:hunter2@127.0.0.1:7000"]).unwrap();
        let debug = format!("{store:?}");
        assert!(debug.contains("127.0.0.1:7000"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[cfg(feature = "redis-sentinel")]
    #[test]
    fn sentinels_and_the_master_name_are_checked() {
        let error = RedisStore::sentinel(&[], "mymaster").unwrap_err();
        assert!(
            error.report().to_string().contains("no Redis Sentinel"),
            "{error}"
        );
        let error = RedisStore::sentinel(&["redis://127.0.0.1:26379"], "").unwrap_err();
        assert!(
            error.report().to_string().contains("master name is empty"),
            "{error}"
        );
        let error = RedisStore::sentinel(&["nonsense://:hunter2@x"], "m").unwrap_err();
        assert!(!error.report().to_string().contains("hunter2"), "{error}");
        let store = RedisStore::sentinel(&["redis://:hunter2@127.0.0.1:26379"], "m").unwrap();
        let debug = format!("{store:?}");
        assert!(
            debug.contains("127.0.0.1:26379") && debug.contains("\"m\""),
            "{debug}"
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    /// Nothing listens on the port: a call fails (the token source then fetches alone), it
    /// never hangs or panics.
    #[cfg(feature = "redis-sentinel")]
    #[tokio::test]
    async fn no_sentinel_answering_is_an_error_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = RedisStore::sentinel(&[&format!("redis://127.0.0.1:{port}")], "m").unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), store.get("k")).await;
        assert!(matches!(result, Ok(Err(_))), "an error in time");
    }
}
