//! The watchdog: notices a refresher that cannot run.
//!
//! A refresher is a task on the tokio runtime its source was built on. Its own timers retire
//! tokens and bound its fetches, so while that runtime runs, nothing else is needed. A
//! runtime can also stop running it without ending it: a current-thread runtime that nobody
//! drives any more, or one whose workers are all blocked. Then no timer of that runtime fires:
//! the cached token would be sent after its usable time, and callers waiting for a fetch would
//! wait forever.
//!
//! So one thread per process (started on first use, sleeping until its next deadline) looks at
//! refreshers at the moments that matter: shortly before the current token's usable time ends,
//! and while callers wait with no token. A look is passive first: a running refresher leaves
//! evidence on its own clock (it marks the token's watch point, `stall_timeout` before the
//! usable time ends, with a timer of its own; it beats whenever it runs, which it does at once
//! when a caller wakes it). Only without that evidence does the thread wake the refresher (a
//! ping) and expect an answer within half of `stall_timeout`; a refresher that does not answer
//! is declared stopped: its token is parked (no longer sent), and the next caller takes the
//! refreshing over on its own runtime (see `Shared::take_over`).
//!
//! The thread reads only real time, and decides nothing a running refresher decides on its
//! own (possibly paused) clock. Looking first keeps it from waking a running refresher at
//! all in the common case: a wake-up from another thread is the one thing that can disturb a
//! test runtime on tokio's paused clock (it can make the runtime skip ahead past a timer).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::registry::{self, SourceKey};
use crate::source::token::TokenId;

/// What a probe is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    /// The token `TokenId` is about to reach the end of its usable time.
    Token(TokenId),
    /// Callers are waiting with no token.
    Waiters,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Look for evidence that the refresher runs, without waking it: for a token, that it
    /// reached the token's watch point; for waiting callers, that it ran since `pulse`.
    Look { pulse: u64 },
    /// No evidence: wake the refresher and remember its pulse.
    Ping,
    /// Did the pulse move since the ping?
    Check { pulse: u64, generation: u64 },
}

#[derive(Debug, PartialEq, Eq)]
struct Job {
    at: Instant,
    seq: u64,
    key: SourceKey,
    probe: Probe,
    phase: Phase,
}

impl Ord for Job {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Default)]
struct Jobs {
    heap: BinaryHeap<Reverse<Job>>,
    seq: u64,
}

struct Watchdog {
    jobs: Mutex<Jobs>,
    changed: Condvar,
}

fn watchdog() -> Option<&'static Watchdog> {
    static WATCHDOG: OnceLock<Option<&'static Watchdog>> = OnceLock::new();
    *WATCHDOG.get_or_init(|| {
        let watchdog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            jobs: Mutex::new(Jobs::default()),
            changed: Condvar::new(),
        }));
        match std::thread::Builder::new()
            .name("entur-auth-watchdog".into())
            .spawn(move || run(watchdog))
        {
            Ok(_) => Some(watchdog),
            Err(error) => {
                tracing::error!(%error, "could not start the entur-auth watchdog thread; refreshers whose runtime stops running will not be noticed");
                None
            }
        }
    })
}

/// Looks at the refresher of `key` about `probe` at `at`; `pulse` is its pulse now.
pub(super) fn schedule(key: SourceKey, probe: Probe, at: Instant, pulse: u64) {
    push(key, probe, Phase::Look { pulse }, at);
}

fn push(key: SourceKey, probe: Probe, phase: Phase, at: Instant) {
    let Some(watchdog) = watchdog() else { return };
    let mut jobs = lock(watchdog);
    jobs.seq += 1;
    let seq = jobs.seq;
    let earliest = jobs.heap.peek().is_none_or(|Reverse(first)| at < first.at);
    jobs.heap.push(Reverse(Job {
        at,
        seq,
        key,
        probe,
        phase,
    }));
    drop(jobs);
    if earliest {
        watchdog.changed.notify_one();
    }
}

fn lock(watchdog: &Watchdog) -> std::sync::MutexGuard<'_, Jobs> {
    watchdog
        .jobs
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn run(watchdog: &'static Watchdog) {
    let mut jobs = lock(watchdog);
    loop {
        let now = Instant::now();
        match jobs.heap.peek() {
            None => {
                jobs = watchdog
                    .changed
                    .wait(jobs)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            Some(Reverse(first)) if first.at > now => {
                let wait = first.at - now;
                jobs = watchdog
                    .changed
                    .wait_timeout(jobs, wait)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
            Some(_) => {
                let Some(Reverse(job)) = jobs.heap.pop() else {
                    continue;
                };
                drop(jobs);
                // A bug here must not end supervision for every source in the process.
                if std::panic::catch_unwind(|| handle(job)).is_err() {
                    tracing::error!("the entur-auth watchdog panicked on one probe (a bug: please report it); it carries on");
                }
                jobs = lock(watchdog);
            }
        }
    }
}

fn handle(job: Job) {
    let Some(shared) = registry::lookup(job.key) else {
        return;
    };
    let grace = shared.settings.stall_timeout;
    if !shared.probe_needed(job.probe) {
        shared.probe_done(job.probe);
        return;
    }
    let half = grace / 2;
    match job.phase {
        Phase::Look { pulse } => {
            let (now, _) = shared.pulse();
            let alive = match job.probe {
                Probe::Token(id) => shared.reached_watch_point(id),
                Probe::Waiters => now != pulse,
            };
            match (alive, job.probe) {
                // Callers still wait: look again later.
                (true, Probe::Waiters) => {
                    push(
                        job.key,
                        job.probe,
                        Phase::Look { pulse: now },
                        Instant::now() + half,
                    );
                }
                (true, Probe::Token(_)) => {}
                (false, _) => push(job.key, job.probe, Phase::Ping, Instant::now()),
            }
        }
        Phase::Ping => {
            let (pulse, generation) = shared.pulse();
            shared.ping();
            let check = Phase::Check { pulse, generation };
            push(job.key, job.probe, check, Instant::now() + half);
        }
        Phase::Check { pulse, generation } => {
            if shared.pulse() == (pulse, generation) {
                shared.stalled(generation, job.probe);
            } else if job.probe == Probe::Waiters {
                // Answered; callers still wait: look again later.
                let pulse = shared.pulse().0;
                push(
                    job.key,
                    job.probe,
                    Phase::Look { pulse },
                    Instant::now() + half,
                );
            }
        }
    }
}

/// The real-time instant `grace` before the tokio instant `at`.
pub(super) fn real_time_before(at: tokio::time::Instant, grace: Duration) -> Instant {
    let left = at.saturating_duration_since(tokio::time::Instant::now());
    let now = Instant::now();
    now.checked_add(left.saturating_sub(grace)).unwrap_or(now)
}
