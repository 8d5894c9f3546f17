//! A fleet on a real Redis Cluster (three primaries, each with a replica) that the tests start
//! on 127.0.0.1, with nodes killed, paused (SIGSTOP) and restarted and a slot moved while 16
//! replicas are under load: no request fails, every replica keeps serving, sharing resumes,
//! and no replica ever sends a token that was refused or tampered with.
//!
//! Without `redis-server` and `redis-cli` on the PATH these tests are reported as ignored,
//! with the command that installs them: `apt-get install redis-server redis-tools`.
//! `.ci/run` installs them. With them, they are still left out of the README's test command
//! (`cargo test --all-features`), for their minutes of real time: `.ci/run` runs them with
//! `-- --ignored`.
#![cfg(feature = "redis-cluster")]

mod common;
#[path = "common/procs.rs"]
mod procs;
#[path = "common/traffic.rs"]
mod traffic;

use std::time::Duration;

use common::*;
use entur_auth::store::RedisStore;
use entur_auth::TokenSource;
use entur_auth_test::TestServer;
use procs::Cluster;
use traffic::{
    blocking, bypassing, just_before_refresh, shared_bound, Traffic, EVERY, LIFETIME, REPLICAS,
};

struct Fleet {
    cluster: Cluster,
    server: TestServer,
    replicas: Vec<TokenSource>,
}

async fn fleet() -> Fleet {
    let cluster = blocking(|| Cluster::start(3, 1));
    let server = server(LIFETIME).await;
    let urls = cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let replicas = (0..REPLICAS)
        .map(|i| {
            server
                .source_builder()
                .shared_store(RedisStore::cluster(&urls).unwrap())
                .jitter_seed(i)
                .fetch_timeout(Duration::from_secs(1))
                .build()
                .unwrap()
        })
        .collect();
    Fleet {
        cluster,
        server,
        replicas,
    }
}

impl Fleet {
    /// The fleet's token key, and the slot it hashes to.
    fn token_key(&self) -> (String, u16) {
        let key = self
            .cluster
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .find_map(|n| {
                let keys = n.cli(&["keys", "entur-auth:*:token"])?;
                let key = keys.lines().find(|k| !k.trim().is_empty())?;
                Some(key.trim().to_owned())
            })
            .expect("the fleet published its token to the cluster");
        let slot = self.keyslot(&key);
        (key, slot)
    }

    fn keyslot(&self, key: &str) -> u16 {
        let node = self.cluster.nodes.iter().find(|n| n.is_running()).unwrap();
        node.cli(&["cluster", "keyslot", key])
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn assert_sharing(&self) {
        for (i, replica) in self.replicas.iter().enumerate() {
            let status = replica.status();
            assert!(status.health.is_serving(), "replica {i}: {status}");
        }
    }

    fn assert_never_refused(&self) {
        assert_eq!(
            self.server.api_rejections(),
            0,
            "no replica sent a refused, expired or tampered token"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_redis_server, has_redis_cli)),
    ignore = "redis-server or redis-cli not found: install them (apt-get install redis-server redis-tools) to run this test"
)]
#[cfg_attr(
    all(has_redis_server, has_redis_cli),
    ignore = "a chaos test (Redis processes killed and paused for real, about 90 s a file), left out of the README's test command: .ci/run runs it, as does `cargo test --all-features --test redis_cluster -- --ignored`"
)]
async fn the_token_and_its_lock_share_a_slot_and_the_fleet_one_token() {
    let _one_at_a_time = traffic::ONE_AT_A_TIME.lock().await;
    let fleet = fleet().await;
    let traffic = Traffic::start(&fleet.server, &fleet.replicas, EVERY);
    let length = Duration::from_secs(9);
    let steady = traffic.phase("cluster, steady", length).await;
    traffic.stop().await;
    assert!(
        steady.token_requests <= shared_bound(length),
        "{} token requests",
        steady.token_requests
    );
    assert_eq!(steady.fallbacks, 0);

    let (key, slot) = blocking(|| fleet.token_key());
    let lock = key.replace(":token", ":lock");
    assert!(key.contains('{') && key.contains('}'), "a hash tag: {key}");
    assert_eq!(blocking(|| fleet.keyslot(&lock)), slot, "one slot for both");
    fleet.assert_sharing();
    fleet.assert_never_refused();
}

/// The primary that serves the fleet's slot is killed just before a refresh: its replica
/// takes over after the cluster's node timeout (1 s); meanwhile the replicas fetch for
/// themselves. The killed node comes back as a replica. Then the whole shard (primary and
/// replica) is killed for 5 s: the store is bypassed, every replica fetches for itself and
/// serves on, and sharing resumes once the shard is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_redis_server, has_redis_cli)),
    ignore = "redis-server or redis-cli not found: install them (apt-get install redis-server redis-tools) to run this test"
)]
#[cfg_attr(
    all(has_redis_server, has_redis_cli),
    ignore = "a chaos test (Redis processes killed and paused for real, about 90 s a file), left out of the README's test command: .ci/run runs it, as does `cargo test --all-features --test redis_cluster -- --ignored`"
)]
async fn a_killed_primary_fails_over_a_killed_shard_is_bypassed_and_sharing_resumes() {
    let _one_at_a_time = traffic::ONE_AT_A_TIME.lock().await;
    let mut fleet = fleet().await;
    let traffic = Traffic::start(&fleet.server, &fleet.replicas, EVERY);
    let replicas = fleet.replicas.clone();
    traffic
        .phase("cluster kill: before", Duration::from_secs(4))
        .await;
    let (_, slot) = blocking(|| fleet.token_key());
    let primary = blocking(|| fleet.cluster.primary_of(slot));
    just_before_refresh(&replicas, Duration::from_millis(300)).await;
    fleet.cluster.nodes[primary].kill();
    let failover = traffic
        .phase(
            "cluster kill: primary killed, failover",
            Duration::from_secs(6),
        )
        .await;
    let promoted = blocking(|| fleet.cluster.primary_of(slot));
    assert_ne!(promoted, primary, "the replica took over the slot");
    blocking(|| {
        fleet.cluster.nodes[primary].restart();
        fleet.cluster.wait_ok();
    });
    traffic
        .phase("cluster kill: restarted, settling", Duration::from_secs(3))
        .await;

    // The whole shard goes: nothing serves the slot.
    just_before_refresh(&replicas, Duration::from_millis(300)).await;
    fleet.cluster.nodes[promoted].kill();
    fleet.cluster.nodes[primary].kill();
    let down = traffic
        .phase("cluster kill: whole shard down", Duration::from_secs(5))
        .await;
    let bypassed_while_down = bypassing(&replicas);
    blocking(|| {
        fleet.cluster.nodes[promoted].restart();
        fleet.cluster.nodes[primary].restart();
        fleet.cluster.wait_ok();
    });
    traffic
        .phase(
            "cluster kill: shard restarted, settling",
            Duration::from_secs(4),
        )
        .await;
    let length = Duration::from_secs(6);
    let resumed = traffic.phase("cluster kill: resumed", length).await;
    traffic.stop().await;
    assert!(
        failover.fallbacks <= 2 * REPLICAS,
        "at most a fallback or two per replica: {}",
        failover.fallbacks
    );
    assert!(
        down.fallbacks >= REPLICAS,
        "with the shard down each replica fetched for itself: {} fallbacks",
        down.fallbacks
    );
    assert_eq!(bypassed_while_down, REPLICAS as usize, "status() said so");
    assert!(
        resumed.token_requests <= shared_bound(length),
        "sharing resumed: {} token requests",
        resumed.token_requests
    );
    assert_eq!(resumed.fallbacks, 0, "the store answers again");
    assert_eq!(bypassing(&replicas), 0);
    fleet.assert_sharing();
    fleet.assert_never_refused();
}

/// The primary that serves the fleet's slot is paused (SIGSTOP: connections are accepted,
/// nothing is answered) for 5 s: calls to it time out, its replica takes over, and when it
/// is resumed it learns it was replaced and follows the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_redis_server, has_redis_cli)),
    ignore = "redis-server or redis-cli not found: install them (apt-get install redis-server redis-tools) to run this test"
)]
#[cfg_attr(
    all(has_redis_server, has_redis_cli),
    ignore = "a chaos test (Redis processes killed and paused for real, about 90 s a file), left out of the README's test command: .ci/run runs it, as does `cargo test --all-features --test redis_cluster -- --ignored`"
)]
async fn a_paused_primary_costs_fallbacks_never_a_request() {
    let _one_at_a_time = traffic::ONE_AT_A_TIME.lock().await;
    let fleet = fleet().await;
    let traffic = Traffic::start(&fleet.server, &fleet.replicas, EVERY);
    let replicas = fleet.replicas.clone();
    traffic
        .phase("cluster pause: before", Duration::from_secs(4))
        .await;
    let (_, slot) = blocking(|| fleet.token_key());
    let primary = blocking(|| fleet.cluster.primary_of(slot));
    just_before_refresh(&replicas, Duration::from_millis(300)).await;
    fleet.cluster.nodes[primary].pause();
    let paused = traffic
        .phase("cluster pause: primary paused", Duration::from_secs(5))
        .await;
    fleet.cluster.nodes[primary].resume();
    blocking(|| fleet.cluster.wait_ok());
    traffic
        .phase("cluster pause: resumed, settling", Duration::from_secs(3))
        .await;
    let length = Duration::from_secs(6);
    let resumed = traffic.phase("cluster pause: sharing again", length).await;
    traffic.stop().await;
    assert!(
        paused.fallbacks <= 2 * REPLICAS,
        "at most a fallback or two per replica: {}",
        paused.fallbacks
    );
    assert!(
        resumed.token_requests <= shared_bound(length),
        "sharing resumed: {} token requests",
        resumed.token_requests
    );
    fleet.assert_sharing();
    fleet.assert_never_refused();
}

/// The fleet's slot moves to another primary mid-run (IMPORTING / MIGRATING, MIGRATE, SETSLOT
/// NODE, as `redis-cli --cluster reshard` does); then someone who can write to the cluster
/// flips a bit of the entry. Neither costs a request, and the altered entry is never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_redis_server, has_redis_cli)),
    ignore = "redis-server or redis-cli not found: install them (apt-get install redis-server redis-tools) to run this test"
)]
#[cfg_attr(
    all(has_redis_server, has_redis_cli),
    ignore = "a chaos test (Redis processes killed and paused for real, about 90 s a file), left out of the README's test command: .ci/run runs it, as does `cargo test --all-features --test redis_cluster -- --ignored`"
)]
async fn a_slot_move_and_a_tampered_entry_cost_no_request() {
    let _one_at_a_time = traffic::ONE_AT_A_TIME.lock().await;
    let fleet = fleet().await;
    let traffic = Traffic::start(&fleet.server, &fleet.replicas, EVERY);
    let (server, replicas) = (fleet.server.clone(), fleet.replicas.clone());
    traffic
        .phase("cluster slot move: before", Duration::from_secs(4))
        .await;
    let (key, slot) = blocking(|| fleet.token_key());
    let from = blocking(|| fleet.cluster.primary_of(slot));
    let to = blocking(|| {
        (0..fleet.cluster.nodes.len())
            .find(|&i| i != from && is_primary(&fleet.cluster, i))
            .unwrap()
    });
    just_before_refresh(&replicas, Duration::from_millis(300)).await;
    blocking(|| fleet.cluster.move_slot(slot, from, to));
    let length = Duration::from_secs(6);
    let moved = traffic.phase("cluster slot move: moved", length).await;
    assert_eq!(
        blocking(|| fleet.cluster.primary_of(slot)),
        to,
        "the slot moved"
    );
    assert!(
        moved.token_requests <= shared_bound(length),
        "still shared: {} token requests",
        moved.token_requests
    );
    assert!(
        moved.fallbacks <= REPLICAS,
        "at most one fallback per replica: {}",
        moved.fallbacks
    );

    // Right after a refresh (so that none overwrites the entry meanwhile), flip one bit of
    // the stored entry on the primary that now holds it. A new replica, which would adopt any
    // usable entry, fetches a token of its own instead, and the API accepts it.
    just_before_refresh(&replicas, Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    blocking(|| {
        let node = &fleet.cluster.nodes[to];
        // `SETRANGE` over the middle byte with another value alters the ciphertext.
        let length: usize = node.cli(&["strlen", &key]).unwrap().trim().parse().unwrap();
        let middle = (length / 2).to_string();
        let current = node.cli(&["getrange", &key, &middle, &middle]).unwrap();
        let altered = if current.starts_with('A') { "B" } else { "A" };
        node.cli(&["setrange", &key, &middle, altered]).unwrap();
    });
    let before = server.token_requests();
    let urls = fleet.cluster.urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let newcomer = server
        .source_builder()
        .shared_store(RedisStore::cluster(&urls).unwrap())
        .build()
        .unwrap();
    let mut api = client(&server, &newcomer);
    assert_eq!(
        send(&mut api, api_request(&server, "/new")).await.unwrap(),
        http::StatusCode::OK
    );
    assert_eq!(
        server.token_requests(),
        before + 1,
        "the altered entry was a miss"
    );
    assert_ne!(
        newcomer.current().unwrap().header_value(),
        replicas[0].current().unwrap().header_value()
    );
    traffic
        .phase(
            "cluster: after the entry was tampered with",
            Duration::from_secs(3),
        )
        .await;
    traffic.stop().await;
    fleet.assert_sharing();
    fleet.assert_never_refused();
}

fn is_primary(cluster: &Cluster, i: usize) -> bool {
    cluster.nodes[i]
        .cli(&["role"])
        .is_some_and(|role| role.starts_with("master"))
}
