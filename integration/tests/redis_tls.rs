//! `rediss://` for real: `redis-server` speaking TLS only (its plain port off), with a
//! certificate from a private CA made in the test, on 127.0.0.1 — a single server, a Redis
//! Cluster (TLS on the cluster bus too) and Sentinels (TLS to the Sentinels and to the master
//! they name). Two token sources on one store share one token: the second reads the first's
//! from Redis, over TLS, and sends no token request of its own.
//!
//! Without `redis-server` (and `redis-cli`, for the Cluster and Sentinel) on the PATH these
//! tests are reported as ignored, with the command that installs them; `.ci/run` installs
//! them.
#![cfg(feature = "redis")]

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "support/pki.rs"]
mod pki;
#[path = "../../tests/common/procs.rs"]
mod procs;

use std::time::Duration;

use common::*;
use entur_auth::store::{RedisStore, TokenStore};
use entur_auth::{ErrorKind, StoreState, TokenOrigin, TokenSource};
use entur_auth_test::TestServer;
use pki::{private_ca, Pki};
use procs::{Node, TempDir, Tls};

/// The password the servers ask for: no message may repeat it.
const PASSWORD: &str = "hunter2-tls";

/// Writes `pki`'s CA, certificate and key to `dir` as the PEM files redis-server reads.
fn tls_files(pki: &Pki, dir: &TempDir) -> Tls {
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Tls {
        ca: write("ca.pem", &pki.ca_pem),
        cert: write("server.pem", &pki.leaf_pem),
        key: write("server.key", &pki.key_pem),
    }
}

/// `url` with the password in it: `rediss://:<password>@127.0.0.1:<port>/`.
fn with_password(url: &str) -> String {
    url.replacen("://", &format!("://:{PASSWORD}@"), 1)
}

/// Two sources on two stores of `store`: the first fetches, the second adopts its token from
/// Redis. Asserts it, on the token endpoint's count.
async fn assert_shared(server: &TestServer, store: impl Fn() -> RedisStore) {
    let source = |seed| -> TokenSource {
        server
            .source_builder()
            .shared_store(store())
            .jitter_seed(seed)
            .build()
            .unwrap()
    };
    let (first, second) = (source(1), source(2));
    let fetched = first.token().await.unwrap();
    assert_eq!(server.token_requests(), 1);
    let adopted = second.token().await.unwrap();
    assert_eq!(
        server.token_requests(),
        1,
        "the second source read the first's token from Redis over TLS"
    );
    assert_eq!(adopted.header_value(), fetched.header_value());
    let status = second.status();
    assert_eq!(status.origin, Some(TokenOrigin::SharedStore), "{status}");
    assert_eq!(status.store, Some(StoreState::Sharing), "{status}");
}

#[tokio::test]
#[cfg_attr(
    not(has_redis_server),
    ignore = "redis-server not found: install it (apt-get install redis-server) to run this test"
)]
async fn a_rediss_store_shares_one_token_between_two_sources() {
    let pki = private_ca();
    let dir = TempDir::new("redis-tls");
    let tls = tls_files(&pki, &dir);
    let redis = Node::server_with(dir.path(), &["--requirepass", PASSWORD], Some(&tls));
    let url = with_password(&redis.url());
    assert!(url.starts_with("rediss://"), "{url}");
    let server = server(Duration::from_secs(600)).await;
    assert_shared(&server, || {
        RedisStore::new(&url)
            .unwrap()
            .root_certificate(&pki.ca_pem)
            .unwrap()
    })
    .await;
}

#[cfg(feature = "redis-cluster")]
#[tokio::test]
#[cfg_attr(
    not(all(has_redis_server, has_redis_cli)),
    ignore = "redis-server or redis-cli not found: install them (apt-get install redis-server redis-tools) to run this test"
)]
async fn a_rediss_cluster_store_shares_one_token_between_two_sources() {
    let pki = private_ca();
    let dir = TempDir::new("redis-cluster-tls");
    let tls = tls_files(&pki, &dir);
    let cluster = procs::Cluster::start_with(3, 0, Some(&tls));
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    assert!(urls.iter().all(|url| url.starts_with("rediss://")));
    let server = server(Duration::from_secs(600)).await;
    assert_shared(&server, || {
        RedisStore::cluster(&urls)
            .unwrap()
            .root_certificate(&pki.ca_pem)
            .unwrap()
    })
    .await;

    // A store that trusts another CA is refused by every node, and says so.
    let other = private_ca();
    let store = RedisStore::cluster(&urls)
        .unwrap()
        .root_certificate(&other.ca_pem)
        .unwrap();
    assert_refused(&store).await;
}

#[cfg(feature = "redis-sentinel")]
#[tokio::test]
#[cfg_attr(
    not(all(has_redis_server, has_redis_cli)),
    ignore = "redis-server or redis-cli not found: install them (apt-get install redis-server redis-tools) to run this test"
)]
async fn a_rediss_sentinel_store_shares_one_token_between_two_sources() {
    let pki = private_ca();
    let dir = TempDir::new("redis-sentinel-tls");
    let tls = tls_files(&pki, &dir);
    let setup = procs::Sentinels::start_with(Some(&tls));
    let urls = setup.sentinel_urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    assert!(urls.iter().all(|url| url.starts_with("rediss://")));
    let server = server(Duration::from_secs(600)).await;
    assert_shared(&server, || {
        RedisStore::sentinel(&urls, procs::MASTER_NAME)
            .unwrap()
            .root_certificate(&pki.ca_pem)
            .unwrap()
    })
    .await;
    // The token is on the master the Sentinels name (reached over TLS too).
    let keys = setup.master.cli(&["keys", "entur-auth:*:token"]).unwrap();
    assert!(!keys.trim().is_empty(), "the master holds the token");

    let other = private_ca();
    let store = RedisStore::sentinel(&urls, procs::MASTER_NAME)
        .unwrap()
        .root_certificate(&other.ca_pem)
        .unwrap();
    assert_refused(&store).await;
}

/// A call on `store` fails, saying the server's certificate was refused and what to do,
/// without the password.
async fn assert_refused(store: &RedisStore) {
    let error = tokio::time::timeout(Duration::from_secs(10), store.get("k"))
        .await
        .expect("an answer in time")
        .expect_err("an untrusted certificate is refused");
    let message = error.to_string();
    println!("untrusted certificate: {message}");
    assert!(
        message.contains("TLS certificate was refused")
            && message.contains("RedisStore::root_certificate"),
        "{message}"
    );
    assert!(!message.contains(PASSWORD), "{message}");
    let error = error.downcast_ref::<entur_auth::Error>().unwrap();
    assert!(error.kind() == ErrorKind::Config, "{error:?}");
}

/// The server's certificate comes from a CA the store does not trust (neither the webpki
/// roots nor another private CA): each call fails with an error that says so and what to do,
/// and never holds the password; a source on that store still gets its token, fetching for
/// itself.
#[tokio::test]
#[cfg_attr(
    not(has_redis_server),
    ignore = "redis-server not found: install it (apt-get install redis-server) to run this test"
)]
async fn an_untrusted_server_certificate_is_a_clear_error_without_the_password() {
    let pki = private_ca();
    let dir = TempDir::new("redis-untrusted");
    let tls = tls_files(&pki, &dir);
    let redis = Node::server_with(dir.path(), &["--requirepass", PASSWORD], Some(&tls));
    let url = with_password(&redis.url());

    let webpki_roots = RedisStore::new(&url).unwrap();
    assert_refused(&webpki_roots).await;
    let another_ca = RedisStore::new(&url)
        .unwrap()
        .root_certificate(private_ca().ca_pem)
        .unwrap();
    assert_refused(&another_ca).await;
    assert!(!format!("{another_ca:?}").contains(PASSWORD));

    let server = server(Duration::from_secs(600)).await;
    let source = server
        .source_builder()
        .shared_store(webpki_roots)
        .build()
        .unwrap();
    source.token().await.expect("the source fetches for itself");
    assert_eq!(source.status().store, Some(StoreState::Bypassed));

    // The same store trusting the right CA works.
    let trusted = RedisStore::new(&url)
        .unwrap()
        .root_certificate(&pki.ca_pem)
        .unwrap();
    assert_eq!(trusted.get("k").await.unwrap(), None);
}

/// A root certificate that is not one, or given to a store that is not on TLS, is a
/// configuration error that says what to do, never with the password.
#[test]
fn a_bad_root_certificate_or_a_plain_url_is_a_configuration_error() {
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:6380/0");
    for (pem, expected) in [
        ("not a certificate", "no CERTIFICATE block"),
        (
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
            "invalid PEM",
        ),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "holding no X.509 certificate",
        ),
    ] {
        let error = RedisStore::new(&url)
            .unwrap()
            .root_certificate(pem)
            .unwrap_err();
        let message = error.report().to_string();
        assert!(error.kind() == ErrorKind::Config, "{message}");
        assert!(message.contains(expected), "{message}");
        assert!(!message.contains(PASSWORD), "{message}");
    }

    let ca = private_ca().ca_pem;
    let plain = format!("redis://:{PASSWORD}@127.0.0.1:6379/0");
    let error = RedisStore::new(&plain)
        .unwrap()
        .root_certificate(&ca)
        .unwrap_err();
    let message = error.report().to_string();
    assert!(message.contains("rediss://"), "{message}");
    assert!(!message.contains(PASSWORD), "{message}");

    // The redis-rs error for a rediss:// URL it cannot read does not hold the password.
    let error = RedisStore::new(&format!("rediss://:{PASSWORD}@[::1")).unwrap_err();
    assert!(!error.report().to_string().contains(PASSWORD), "{error}");

    #[cfg(feature = "redis-cluster")]
    {
        let error = RedisStore::cluster(&[&url, &plain]).unwrap_err();
        let message = error.report().to_string();
        assert!(message.contains("TLS"), "{message}");
        assert!(!message.contains(PASSWORD), "{message}");
    }
    #[cfg(feature = "redis-sentinel")]
    {
        let error = RedisStore::sentinel(&[&plain], "m")
            .unwrap()
            .root_certificate(&ca)
            .unwrap_err();
        assert!(error.report().to_string().contains("rediss://"), "{error}");
    }
}
