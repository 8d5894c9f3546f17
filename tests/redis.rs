//! One token for a fleet, on a real `redis-server` started by the tests on 127.0.0.1.
//!
//! Without `redis-server` on the PATH these tests are ignored (install it with
//! `apt-get install redis-server`); `.ci/run` installs it so CI always runs them.
#![cfg(feature = "redis")]

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use entur_auth::store::RedisStore;
use entur_auth::{EnturAuthLayer, TokenSource};
use entur_auth_test::{Fault, TestServer};
use http::StatusCode;
use tower::Layer;

/// A redis-server of our own on a free loopback port; killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::start_on(port)
    }

    fn start_on(port: u16) -> Redis {
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Redis {
                    child: Some(child),
                    port,
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start on 127.0.0.1:{port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn replica(server: &TestServer, redis: &Redis, seed: u64) -> TokenSource {
    server
        .source_builder()
        .shared_store(RedisStore::new(&redis.url()).unwrap())
        .jitter_seed(seed)
        .build()
        .unwrap()
}

/// `replicas` sources send a request every `every` until `until`; returns (requests, failed).
async fn traffic(
    server: &TestServer,
    replicas: &[TokenSource],
    every: Duration,
    until: tokio::time::Instant,
) -> (usize, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, source) in replicas.iter().enumerate() {
        let mut svc = EnturAuthLayer::new(source.clone()).layer(server.api_service());
        let server = server.clone();
        tasks.spawn(async move {
            let (mut requests, mut failed) = (0, 0);
            while tokio::time::Instant::now() < until {
                match send(&mut svc, api_request(&server, &format!("/r{i}"))).await {
                    Ok(StatusCode::OK) => {}
                    _ => failed += 1,
                }
                requests += 1;
                tokio::time::sleep(every).await;
            }
            (requests, failed)
        });
    }
    let (mut requests, mut failed) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (r, f) = done.unwrap();
        requests += r;
        failed += f;
    }
    (requests, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "redis-server not found: install it (apt-get install redis-server) to run this test"
)]
async fn eight_replicas_share_one_token_over_five_lifetimes() {
    let redis = Redis::start();
    let server = server(Duration::from_secs(3)).await;
    let replicas: Vec<_> = (0..8).map(|i| replica(&server, &redis, i)).collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(16);
    let (requests, failed) = traffic(&server, &replicas, Duration::from_millis(100), until).await;
    assert!(requests > 1000, "{requests}");
    assert_eq!(failed, 0);
    assert_eq!(
        server.api_rejections(),
        0,
        "every request carried an unexpired token"
    );
    // One replica alone refreshes a 3 s token every ~2.1-2.25 s: about 8 fetches in 16 s.
    // Eight replicas without sharing would make about 64.
    let fetches = server.token_requests();
    println!("8 replicas, 16 s of 3 s tokens: {requests} requests, {fetches} token requests");
    assert!(
        (6..=11).contains(&fetches),
        "{fetches} token requests for 8 replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "redis-server not found: install it (apt-get install redis-server) to run this test"
)]
async fn when_the_lock_holder_dies_mid_fetch_another_replica_fetches() {
    let redis = Redis::start();
    let server = server(Duration::from_secs(60)).await;
    server.push_fault(Fault::Hang);
    let builder = || {
        server
            .source_builder()
            .shared_store(RedisStore::new(&redis.url()).unwrap())
            .fetch_timeout(Duration::from_secs(1))
    };
    // The first replica takes the fleet lock, and its fetch hangs; then it dies.
    let doomed = builder().build().unwrap();
    let attempt = tokio::spawn({
        let doomed = doomed.clone();
        async move { doomed.prefetch().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.token_requests(), 1);
    attempt.abort();
    drop(doomed);

    // The others wait for the lock to expire (fetch timeout + 2 s), then one fetches.
    let started = std::time::Instant::now();
    let survivors: Vec<_> = (0..3).map(|_| builder().build().unwrap()).collect();
    let mut tokens = Vec::new();
    for source in &survivors {
        tokens.push(
            source
                .token()
                .await
                .expect("no replica is left without a token"),
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        server.token_requests(),
        2,
        "one fetch after the lock expired"
    );
    assert!(tokens
        .iter()
        .all(|t| t.header_value() == tokens[0].header_value()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "redis-server not found: install it (apt-get install redis-server) to run this test"
)]
async fn redis_going_away_costs_no_request_and_sharing_resumes() {
    let mut redis = Redis::start();
    let server = server(Duration::from_secs(2)).await;
    let replicas: Vec<_> = (0..4).map(|i| replica(&server, &redis, 10 + i)).collect();
    let every = Duration::from_millis(50);
    let phase = |secs| tokio::time::Instant::now() + Duration::from_secs(secs);

    let (_, failed) = traffic(&server, &replicas, every, phase(4)).await;
    assert_eq!(failed, 0);
    let shared = server.token_requests();

    redis.stop();
    let (_, failed) = traffic(&server, &replicas, every, phase(5)).await;
    assert_eq!(failed, 0, "zero failed requests with Redis down");
    let alone = server.token_requests() - shared;
    assert!(
        alone >= 8,
        "each replica fetched for itself: {alone} fetches in 5 s"
    );

    let _redis = Redis::start_on(redis.port);
    let (_, failed) = traffic(&server, &replicas, every, phase(3)).await;
    assert_eq!(failed, 0);
    let settled = server.token_requests();
    let (_, failed) = traffic(&server, &replicas, every, phase(5)).await;
    assert_eq!(failed, 0);
    let resumed = server.token_requests() - settled;
    // 5 s of 2 s tokens: ~4 refreshes shared, ~14 if each of 4 replicas fetched alone.
    println!("4 replicas, 2 s tokens: shared {shared} in 4 s, Redis down {alone} in 5 s, resumed {resumed} in 5 s");
    assert!(resumed <= 6, "sharing resumed: {resumed} fetches in 5 s");
    assert_eq!(server.api_rejections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "redis-server not found: install it (apt-get install redis-server) to run this test"
)]
async fn altered_or_foreign_entries_are_never_sent_as_a_bearer() {
    let redis = Redis::start();
    let server = server(Duration::from_secs(600)).await;
    let first = replica(&server, &redis, 1);
    let published = first.token().await.unwrap();
    assert_eq!(server.token_requests(), 1);

    // Someone who can write to Redis flips one bit of the entry.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("entur-auth:v1:*:token")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let mut entry: Vec<u8> = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    let plain = published.header_value().to_str().unwrap()["Bearer ".len()..].to_owned();
    assert!(
        !String::from_utf8_lossy(&entry).contains(&plain),
        "the token is encrypted at rest"
    );
    let middle = entry.len() / 2;
    entry[middle] ^= 0x01;
    redis::cmd("SET")
        .arg(&keys[0])
        .arg(entry)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();

    // A new replica does not adopt it: it fetches a token of its own, which the API accepts.
    let second = replica(&server, &redis, 2);
    let mut svc = EnturAuthLayer::new(second.clone()).layer(server.api_service());
    assert_eq!(
        send(&mut svc, api_request(&server, "/a")).await.unwrap(),
        StatusCode::OK
    );
    assert_eq!(server.token_requests(), 2, "the altered entry was a miss");
    assert_ne!(
        second.current().unwrap().header_value(),
        published.header_value()
    );

    // A replica with other credentials (another key) never uses the fleet's token either.
    let foreign = TokenSource::builder(
        server.endpoint(),
        entur_auth::Credentials::new(server.client_id(), "not-the-secret"),
    )
    .allow_http_loopback(true)
    .transport(server.token_transport())
    .shared_store(RedisStore::new(&redis.url()).unwrap())
    .build()
    .unwrap();
    let error = foreign.token().await.unwrap_err();
    assert!(error.kind() == entur_auth::ErrorKind::Rejected, "{error}");
    assert!(foreign.current().is_none());
}

/// A replica that saw its token refused fetches a new one instead of re-adopting the refused
/// one from Redis (which still holds it); the other replicas adopt the replacement when the
/// API refuses the old token to them, without a fetch of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "redis-server not found: install it (apt-get install redis-server) to run this test"
)]
async fn a_refused_token_is_never_re_adopted_from_redis() {
    let redis = Redis::start();
    let server = server(Duration::from_secs(3600)).await;
    let replicas: Vec<_> = (0..4).map(|i| replica(&server, &redis, i)).collect();
    for replica in &replicas {
        replica.prefetch().await.unwrap();
    }
    assert_eq!(server.token_requests(), 1);
    server.revoke_all();
    for (i, replica) in replicas.iter().enumerate() {
        let mut api = EnturAuthLayer::new(replica.clone())
            .with_replay()
            .layer(server.api_service());
        let status = send(&mut api, api_request(&server, &format!("/r{i}")))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "replica {i} recovered");
    }
    assert_eq!(server.token_requests(), 2, "one replacement for the fleet");
    assert_eq!(
        server.api_rejections(),
        4,
        "each replica sent the refused token once, never again"
    );
}
