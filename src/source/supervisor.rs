//! Who runs the refresher: spawning it, noticing when it stopped (its runtime shut down, or
//! does not run it), and taking it over on a caller's runtime.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::watchdog::{self, Probe};
use super::{refresher, FetchState, Shared};
use crate::error::Error;
use crate::source::token::AccessToken;

/// How a refresher is reached.
#[derive(Default)]
pub(crate) struct Signals {
    /// Demand: a caller needs a token now.
    pub(super) wake: Notify,
    /// The watchdog asks the refresher to show it is running.
    pub(super) ping: Notify,
}

/// Who runs the refresher, and what it left behind when it stopped.
pub(super) struct Supervisor {
    pub(super) task: Option<AbortHandle>,
    pub(super) generation: u64,
    /// Why the refresher is not running, when it is not.
    pub(super) stopped: Option<Stopped>,
    /// The token the stopped refresher could no longer retire on time; the next refresher
    /// takes it back if it is still usable.
    pub(super) parked: Option<Arc<AccessToken>>,
    pub(super) rng: fastrand::Rng,
}

/// Why a refresher stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// Its runtime was shut down.
    RuntimeGone,
    /// Its runtime did not run it within `stall_timeout` of a probe.
    Unresponsive,
}

impl Shared {
    pub(super) fn supervisor(&self) -> MutexGuard<'_, Supervisor> {
        self.supervisor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the watchdog to make sure a refresher answers these waiting callers.
    pub(super) fn probe_waiters(&self) {
        if !self.probing_waiters.swap(true, Ordering::AcqRel) {
            let at = std::time::Instant::now() + self.settings.stall_timeout / 2;
            watchdog::schedule(self.key, Probe::Waiters, at, self.pulse().0);
        }
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(task) = self.supervisor().task.take() {
            task.abort();
        }
    }

    pub(super) fn is_current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
            && !self.closed.load(Ordering::Acquire)
    }

    /// Starts a refresher on `runtime`, replacing any other. Takes the supervisor lock and
    /// spawns without it: a runtime that is shutting down drops the task (and its guard,
    /// which takes the lock) at once.
    pub(super) fn spawn_refresher(
        self: &Arc<Self>,
        mut supervisor: MutexGuard<'_, Supervisor>,
        runtime: &tokio::runtime::Handle,
    ) {
        supervisor.generation += 1;
        let generation = supervisor.generation;
        self.generation.store(generation, Ordering::Release);
        if let Some(old) = supervisor.task.take() {
            old.abort();
        }
        supervisor.stopped = None;
        let rng = supervisor.rng.fork();
        let signals = Arc::new(Signals::default());
        self.signals.store(signals.clone());
        drop(supervisor);
        let guard = refresher::Guard::new(self.clone(), generation);
        let task = runtime
            .spawn(refresher::run(guard, signals, rng))
            .abort_handle();
        let mut supervisor = self.supervisor();
        if supervisor.generation == generation && supervisor.stopped.is_none() {
            supervisor.task = Some(task);
        }
    }

    /// The refresher is not running: run it on this caller's runtime, with the token it left
    /// behind if that is still usable.
    pub(super) fn take_over(self: &Arc<Self>) -> Result<(), Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::refresher_stopped(
                "its tokio runtime was shut down or stopped running it, and this call is not made on a tokio runtime that could take it over: call from within a tokio runtime",
            )
        })?;
        check_timers()?;
        let mut supervisor = self.supervisor();
        let Some(why) = supervisor.stopped else {
            return Ok(()); // another caller took over first
        };
        // The new refresher watches this token from its start.
        if let Some(token) = supervisor.parked.take() {
            if Instant::now() < token.usable_until() {
                self.cell.store(Some(token));
            }
        }
        // Published before the spawn: if the new task dies at once, its guard's verdict
        // comes after this and stands.
        self.publish(|s| *s = FetchState::default());
        self.spawn_refresher(supervisor, &runtime);
        tracing::warn!(reason = ?why, "the token refresher was not running; this caller's runtime took it over");
        Ok(())
    }

    /// Called by a refresher's guard when its task ends. If it was the current refresher
    /// and the source is still in use, its runtime is gone: park the token it can no longer
    /// retire, and let the next caller take over.
    pub(super) fn refresher_ended(&self, generation: u64) {
        let mut supervisor = self.supervisor();
        if supervisor.generation != generation || self.closed.load(Ordering::Acquire) {
            return;
        }
        supervisor.task = None;
        self.stop(&mut supervisor, Stopped::RuntimeGone);
    }

    /// The watchdog's verdict: the refresher of `generation` did not answer a probe.
    pub(super) fn stalled(&self, generation: u64, probe: Probe) {
        let mut supervisor = self.supervisor();
        if supervisor.generation != generation
            || supervisor.stopped.is_some()
            || self.closed.load(Ordering::Acquire)
        {
            return;
        }
        tracing::warn!(
            ?probe,
            stall_timeout_ms = self.settings.stall_timeout.as_millis() as u64,
            "the token refresher did not run when asked: its tokio runtime is not being driven; the current token is no longer sent and the next caller takes the refreshing over"
        );
        if let Some(task) = supervisor.task.take() {
            task.abort();
        }
        self.stop(&mut supervisor, Stopped::Unresponsive);
    }

    pub(super) fn stop(&self, supervisor: &mut Supervisor, why: Stopped) {
        supervisor.stopped = Some(why);
        if let Some(token) = self.cell.swap(None) {
            supervisor.parked = Some(token);
        }
        self.publish(|s| {
            s.stopped = Some(why);
            s.fetching = false;
        });
    }

    /// The refresher's answer to the watchdog: it is running.
    pub(super) fn beat(&self) {
        self.pulse.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn pulse(&self) -> (u64, u64) {
        (
            self.pulse.load(Ordering::Acquire),
            self.generation.load(Ordering::Acquire),
        )
    }

    pub(super) fn ping(&self) {
        self.signals.load().ping.notify_one();
    }

    pub(super) fn probe_needed(&self, probe: Probe) -> bool {
        if self.closed.load(Ordering::Acquire) || self.state.borrow().stopped.is_some() {
            return false;
        }
        match probe {
            Probe::Token(id) => self.cell.load().as_ref().is_some_and(|t| t.id() == id),
            Probe::Waiters => self.cell.load().is_none() && self.state.receiver_count() > 0,
        }
    }

    /// When the refresher marks `token`'s watch point: `stall_timeout` before its usable time
    /// ends, on the refresher's own clock.
    pub(super) fn watch_point(&self, token: &AccessToken) -> Instant {
        let usable = token.usable_until();
        usable
            .checked_sub(self.settings.stall_timeout)
            .unwrap_or(usable)
    }

    /// The refresher marks that it reached `token`'s watch point.
    pub(super) fn mark_watch_point(&self, token: &AccessToken) {
        self.watched.store(token.id().get(), Ordering::Release);
    }

    pub(super) fn reached_watch_point(&self, token: crate::source::token::TokenId) -> bool {
        self.watched.load(Ordering::Acquire) == token.get()
    }

    pub(super) fn probe_done(&self, probe: Probe) {
        if probe == Probe::Waiters {
            self.probing_waiters.store(false, Ordering::Release);
            // A caller may have started waiting just before the flag was cleared.
            if self.probe_needed(probe) {
                self.probe_waiters();
            }
        }
    }

    /// Has the watchdog look at the refresher shortly before `token`'s usable time ends: half
    /// a `stall_timeout` before, so that an unanswered ping is decided by then. The refresher
    /// marks the token's watch point (a `stall_timeout` before) on its own clock.
    pub(super) fn watch_token(&self, token: &AccessToken) {
        let at = watchdog::real_time_before(token.usable_until(), self.settings.stall_timeout / 2);
        watchdog::schedule(self.key, Probe::Token(token.id()), at, self.pulse().0);
    }
}

/// Whether this runtime has timers: the refresher cannot work without them. Creating a
/// `Sleep` on a runtime without the time driver panics (tokio's message says to call
/// `enable_time`); that panic is caught here and becomes a configuration error.
pub(super) fn check_timers() -> Result<(), Error> {
    let probe = std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO)));
    probe.map_err(|_| {
        Error::config(
            "the tokio runtime has no timers, which the token refresher needs: build it with `enable_time()` or `enable_all()`",
        )
    })
}
