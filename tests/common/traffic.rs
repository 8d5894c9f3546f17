//! Steady traffic from a fleet of replicas, counted per replica, for the fleet tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use entur_auth::{EnturAuthLayer, TokenSource};
use entur_auth_test::TestServer;
use http::StatusCode;
use tower::Layer;

use crate::common::{api_request, send};

/// The chaos tests' fleet: 16 replicas, 3-second tokens, a request every 50 ms each.
pub const REPLICAS: u64 = 16;
pub const LIFETIME: Duration = Duration::from_secs(3);
pub const EVERY: Duration = Duration::from_millis(50);

/// At most this many token requests in `length` of 3 s tokens when the fleet shares them:
/// one replica alone refreshes every ~2.1-2.25 s; one more for a phase that ends mid-refresh.
pub fn shared_bound(length: Duration) -> usize {
    (length.as_secs_f64() / 2.1).ceil() as usize + 1
}

/// The chaos tests of a file run one at a time. Each starts its own Redis processes and 16
/// replicas on real timeouts (250 ms store calls): several side by side on a 2-core machine
/// turn into timeouts that measure the machine, not the crate.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `f`, which blocks (a Redis process started or waited for), off the async workers.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    slowest_ms: AtomicU64,
}

/// Each replica sends a request every `every` (through its own `EnturAuth`, no replay: a
/// refused token is a failed request) until stopped.
pub struct Traffic {
    server: TestServer,
    replicas: Vec<TokenSource>,
    stop: Arc<AtomicBool>,
    counters: Arc<Vec<Counters>>,
    tasks: tokio::task::JoinSet<()>,
}

/// Counts at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Requests answered 200, per replica.
    pub ok: Vec<u64>,
    /// Requests that failed (an error or another status), per replica.
    pub failed: Vec<u64>,
    /// The slowest request so far, in milliseconds (reported, never asserted).
    pub slowest_ms: u64,
}

impl Snapshot {
    pub fn requests(&self) -> u64 {
        self.ok.iter().sum::<u64>() + self.failed()
    }

    pub fn failed(&self) -> u64 {
        self.failed.iter().sum()
    }

    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            ok: self
                .ok
                .iter()
                .zip(&earlier.ok)
                .map(|(a, b)| a - b)
                .collect(),
            failed: self
                .failed
                .iter()
                .zip(&earlier.failed)
                .map(|(a, b)| a - b)
                .collect(),
            slowest_ms: self.slowest_ms,
        }
    }

    /// Replicas that had no request answered in this span.
    pub fn silent_replicas(&self) -> Vec<usize> {
        (0..self.ok.len()).filter(|&i| self.ok[i] == 0).collect()
    }
}

impl Traffic {
    pub fn start(server: &TestServer, replicas: &[TokenSource], every: Duration) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let counters: Arc<Vec<Counters>> =
            Arc::new(replicas.iter().map(|_| Counters::default()).collect());
        let mut tasks = tokio::task::JoinSet::new();
        for (i, source) in replicas.iter().enumerate() {
            let mut svc = EnturAuthLayer::new(source.clone()).layer(server.api_service());
            let (server, stop, counters) = (server.clone(), stop.clone(), counters.clone());
            tasks.spawn(async move {
                // Spread the replicas' first requests over one period.
                tokio::time::sleep(every.mul_f64(i as f64 / counters.len() as f64)).await;
                while !stop.load(Ordering::Relaxed) {
                    let started = tokio::time::Instant::now();
                    let ok = matches!(
                        send(&mut svc, api_request(&server, &format!("/r{i}"))).await,
                        Ok(StatusCode::OK)
                    );
                    let counter = &counters[i];
                    if ok {
                        counter.ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counter.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    let took = started.elapsed().as_millis() as u64;
                    counter.slowest_ms.fetch_max(took, Ordering::Relaxed);
                    tokio::time::sleep(every).await;
                }
            });
        }
        Traffic {
            server: server.clone(),
            replicas: replicas.to_vec(),
            stop,
            counters,
            tasks,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            ok: self
                .counters
                .iter()
                .map(|c| c.ok.load(Ordering::Relaxed))
                .collect(),
            failed: self
                .counters
                .iter()
                .map(|c| c.failed.load(Ordering::Relaxed))
                .collect(),
            slowest_ms: self
                .counters
                .iter()
                .map(|c| c.slowest_ms.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0),
        }
    }

    /// Stops the traffic and waits for the last requests.
    pub async fn stop(mut self) -> Snapshot {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.tasks.join_next().await {
            done.expect("a traffic task panicked");
        }
        self.snapshot()
    }
}

/// Token requests made without the fleet lock, summed over `replicas` (`Status::store_fallbacks`).
pub fn fallbacks(replicas: &[TokenSource]) -> u64 {
    replicas.iter().map(|r| r.status().store_fallbacks).sum()
}

/// What one phase of a chaos test cost.
#[derive(Clone, Debug)]
pub struct Phase {
    pub name: &'static str,
    pub requests: u64,
    pub failed: u64,
    pub token_requests: usize,
    pub fallbacks: u64,
    pub slowest_ms: u64,
}

impl Traffic {
    /// Lets the traffic run for `length`, then checks that no request failed and every
    /// replica had requests answered meanwhile, and says what the phase cost (printed, and
    /// returned for bounds).
    pub async fn phase(&self, name: &'static str, length: Duration) -> Phase {
        let before = self.snapshot();
        let (tokens, fallbacks_before) = (self.server.token_requests(), fallbacks(&self.replicas));
        tokio::time::sleep(length).await;
        let span = self.snapshot().since(&before);
        let phase = Phase {
            name,
            requests: span.requests(),
            failed: span.failed(),
            token_requests: self.server.token_requests() - tokens,
            fallbacks: fallbacks(&self.replicas) - fallbacks_before,
            slowest_ms: span.slowest_ms,
        };
        println!(
            "{name}: {} requests, {} failed, {} token requests, {} fallback fetches (slowest request so far {} ms)",
            phase.requests, phase.failed, phase.token_requests, phase.fallbacks, phase.slowest_ms
        );
        assert_eq!(phase.failed, 0, "{name}: failed requests");
        assert!(
            span.silent_replicas().is_empty(),
            "{name}: replicas {:?} served nothing",
            span.silent_replicas()
        );
        phase
    }
}

/// How many of `replicas` bypass their store now (`Status::store`).
pub fn bypassing(replicas: &[TokenSource]) -> usize {
    replicas
        .iter()
        .filter(|r| r.status().store == Some(entur_auth::StoreState::Bypassed))
        .count()
}

/// Returns `lead` before the first replica's next refresh is due, so that an outage that
/// starts then overlaps the fleet's refresh.
pub async fn just_before_refresh(replicas: &[TokenSource], lead: Duration) {
    loop {
        let next = replicas
            .iter()
            .filter_map(|r| r.status().refresh_in)
            .filter(|d| !d.is_zero())
            .min();
        match next {
            Some(next) if next > lead => {
                tokio::time::sleep(next - lead).await;
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
