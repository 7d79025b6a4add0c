//! A circuit breaker per backend (ARCHITECTURE.md, "Failure behaviour").
//!
//! - It opens on the `failure_threshold`-th consecutive counted failure.
//! - While it is open, callers are refused at once.
//! - After `open_for`, the next caller takes the single probe slot. The move to half-open
//!   happens inside that admission call.
//! - At most one probe is in flight.
//! - `close_after` consecutive successful probes close the breaker.
//! - A failed probe reopens it for a fresh `open_for`.
//! - A probe permit dropped without a result counts as a failure, so the breaker can
//!   never wedge in half-open.
//! - Every state change starts a new generation. Results from an earlier generation are
//!   ignored.
//!
//! Time comes from `tokio::time`, so tests can run on a paused clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::{BreakerConfig, BreakerSettings};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
        }
    }
    /// Numeric value for the `cache_breaker_state` gauge.
    pub fn code(self) -> u8 {
        self as u8
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    generation: u64,
    failures: u32,
    open_until: Instant,
    probe_in_flight: bool,
    probe_successes: u32,
}

#[derive(Debug)]
pub struct Breaker {
    pub backend: &'static str,
    threshold: u32,
    open_for: Duration,
    close_after: u32,
    enabled: bool,
    inner: Mutex<Inner>,
    transitions: AtomicU64,
    rejections: AtomicU64,
    /// The last few state changes, oldest first (dashboard, doctor, admin API).
    recent: Mutex<std::collections::VecDeque<Transition>>,
}

/// How many state changes a breaker remembers.
const RECENT_TRANSITIONS: usize = 10;

/// One remembered state change.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub from: BreakerState,
    pub to: BreakerState,
    pub why: String,
}

/// What a caller holds while its call is in flight.
#[must_use = "report the call's result with success(), failure() or neutral()"]
pub struct Permit {
    breaker: Arc<Breaker>,
    generation: u64,
    probe: bool,
    done: bool,
}

/// A snapshot for health, metrics and the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerStatus {
    pub backend: &'static str,
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub probe_successes: u32,
    pub transitions: u64,
    pub rejections: u64,
    /// Seconds until an open breaker admits its probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_seconds: Option<f64>,
    /// The settings in force (`[breaker]` with `[breaker.<backend>]` over it).
    pub settings: BreakerSettings,
    /// The last state changes, newest last.
    pub recent_transitions: Vec<Transition>,
}

impl Breaker {
    /// A breaker for `backend` with its settings from `[breaker]` and
    /// `[breaker.<backend>]`; disabled there, it starts disabled.
    pub fn new(backend: &'static str, cfg: &BreakerConfig) -> Arc<Self> {
        let b = Self::with_settings(backend, cfg.for_backend(backend));
        if !b.enabled {
            b.disable();
        }
        b
    }

    fn with_settings(backend: &'static str, cfg: BreakerSettings) -> Arc<Self> {
        Arc::new(Self {
            backend,
            threshold: cfg.failure_threshold.max(1),
            open_for: Duration::from_secs(cfg.open_seconds),
            close_after: cfg.close_after_successes.max(1),
            enabled: cfg.enabled,
            recent: Mutex::new(std::collections::VecDeque::with_capacity(RECENT_TRANSITIONS)),
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                generation: 0,
                failures: 0,
                open_until: Instant::now(),
                probe_in_flight: false,
                probe_successes: 0,
            }),
            transitions: AtomicU64::new(0),
            rejections: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState, why: &str) {
        let from = inner.state;
        inner.state = to;
        inner.generation += 1;
        inner.failures = 0;
        inner.probe_in_flight = false;
        inner.probe_successes = 0;
        if to == BreakerState::Open {
            inner.open_until = Instant::now() + self.open_for;
        }
        self.transitions.fetch_add(1, Ordering::Relaxed);
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() == RECENT_TRANSITIONS {
                recent.pop_front();
            }
            recent.push_back(Transition {
                at_ms: crate::time::now_ms(),
                from,
                to,
                why: why.to_string(),
            });
        }
        match to {
            BreakerState::Open | BreakerState::ForcedOpen => tracing::warn!(
                backend = self.backend,
                from = from.as_str(),
                to = to.as_str(),
                why,
                "circuit breaker opened: calls to this backend are skipped, requests go to the provider"
            ),
            _ => tracing::info!(
                backend = self.backend,
                from = from.as_str(),
                to = to.as_str(),
                why,
                "circuit breaker transition"
            ),
        }
    }

    /// Asks to make a call. `None`: skip the backend now.
    pub fn admit(self: &Arc<Self>) -> Option<Permit> {
        let mut inner = self.lock();
        let probe = match inner.state {
            BreakerState::Closed | BreakerState::Disabled => false,
            BreakerState::ForcedOpen => {
                drop(inner);
                self.rejections.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            BreakerState::Open => {
                if Instant::now() < inner.open_until {
                    drop(inner);
                    self.rejections.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                self.transition(&mut inner, BreakerState::HalfOpen, "open period over; probing");
                inner.probe_in_flight = true;
                true
            }
            BreakerState::HalfOpen => {
                if inner.probe_in_flight {
                    drop(inner);
                    self.rejections.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                inner.probe_in_flight = true;
                true
            }
        };
        Some(Permit {
            breaker: self.clone(),
            generation: inner.generation,
            probe,
            done: false,
        })
    }

    fn record(&self, generation: u64, probe: bool, outcome: Option<bool>) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return; // a result from before the last state change
        }
        match (inner.state, probe, outcome) {
            (BreakerState::Closed, false, Some(true)) => inner.failures = 0,
            (BreakerState::Closed, false, Some(false)) => {
                inner.failures += 1;
                if inner.failures >= self.threshold {
                    let why = format!("{} consecutive failures", inner.failures);
                    self.transition(&mut inner, BreakerState::Open, &why);
                }
            }
            (BreakerState::HalfOpen, true, Some(true)) => {
                inner.probe_in_flight = false;
                inner.probe_successes += 1;
                if inner.probe_successes >= self.close_after {
                    let why = format!("{} successful probes", inner.probe_successes);
                    self.transition(&mut inner, BreakerState::Closed, &why);
                }
            }
            (BreakerState::HalfOpen, true, Some(false)) => {
                self.transition(&mut inner, BreakerState::Open, "probe failed");
            }
            (BreakerState::HalfOpen, true, None) => inner.probe_in_flight = false,
            _ => {}
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    pub fn status(&self) -> BreakerStatus {
        let inner = self.lock();
        BreakerStatus {
            backend: self.backend,
            state: inner.state,
            consecutive_failures: inner.failures,
            probe_successes: inner.probe_successes,
            transitions: self.transitions.load(Ordering::Relaxed),
            rejections: self.rejections.load(Ordering::Relaxed),
            retry_in_seconds: (inner.state == BreakerState::Open)
                .then(|| inner.open_until.saturating_duration_since(Instant::now()).as_secs_f64()),
            settings: self.settings(),
            recent_transitions: self
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }

    /// The settings this breaker runs with.
    pub fn settings(&self) -> BreakerSettings {
        BreakerSettings {
            enabled: self.enabled,
            failure_threshold: self.threshold,
            open_seconds: self.open_for.as_secs(),
            close_after_successes: self.close_after,
        }
    }

    /// Forces the breaker open (drills) until [`Breaker::reset`].
    pub fn force_open(&self) {
        let mut inner = self.lock();
        self.transition(&mut inner, BreakerState::ForcedOpen, "forced open by an operator");
    }

    /// Forces the breaker open for `d` at most (drills): a task resets it at the
    /// deadline unless its state changed meanwhile (an operator reset it, or forced it again).
    pub fn force_open_for(self: &Arc<Self>, d: Duration) {
        let generation = {
            let mut inner = self.lock();
            self.transition(
                &mut inner,
                BreakerState::ForcedOpen,
                "forced open by an operator (with a deadline)",
            );
            inner.generation
        };
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let mut inner = me.lock();
            if inner.state == BreakerState::ForcedOpen && inner.generation == generation {
                me.transition(&mut inner, BreakerState::Closed, "forced-open deadline reached");
            }
        });
    }

    /// Back to closed with clean counters.
    pub fn reset(&self) {
        let mut inner = self.lock();
        self.transition(&mut inner, BreakerState::Closed, "reset by an operator");
    }

    pub fn disable(&self) {
        let mut inner = self.lock();
        self.transition(&mut inner, BreakerState::Disabled, "disabled by configuration");
    }
}

impl Permit {
    pub fn success(mut self) {
        self.done = true;
        self.breaker.record(self.generation, self.probe, Some(true));
    }
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.record(self.generation, self.probe, Some(false));
    }
    /// The call told nothing about the backend's health (e.g. bad data it returned).
    pub fn neutral(mut self) {
        self.done = true;
        self.breaker.record(self.generation, self.probe, None);
    }
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // A caller that went away: not counted, unless it held the probe slot,
        // which must never be lost (that would wedge the breaker in half-open).
        if !self.done && self.probe {
            self.breaker.record(self.generation, true, Some(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Arc<Breaker> {
        Breaker::new(
            "index",
            &BreakerConfig {
                enabled: true,
                failure_threshold: 5,
                open_seconds: 30,
                close_after_successes: 3,
                ..Default::default()
            },
        )
    }

    fn fail(b: &Arc<Breaker>, n: usize) {
        for _ in 0..n {
            b.admit().expect("admitted").failure();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fifth_consecutive_failure_opens_not_the_sixth() {
        let b = breaker();
        fail(&b, 4);
        assert_eq!(b.state(), BreakerState::Closed, "4 failures stay closed");
        b.admit().unwrap().success();
        fail(&b, 4);
        assert_eq!(b.state(), BreakerState::Closed, "a success resets the count");
        fail(&b, 1);
        assert_eq!(b.state(), BreakerState::Open, "the 5th consecutive failure opens");
        assert!(b.admit().is_none(), "open: callers skip at once");
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_one_probe_among_a_thousand_callers() {
        let b = breaker();
        fail(&b, 5);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.admit().is_none(), "still open before 30 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut permits = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..1000 {
            let b = b.clone();
            handles.push(tokio::spawn(async move { b.admit() }));
        }
        for h in handles {
            if let Some(p) = h.await.unwrap() {
                permits.push(p);
            }
        }
        assert_eq!(permits.len(), 1, "exactly one probe admitted");
        assert!(permits[0].is_probe());
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen,
            "the transition happened inside admission"
        );
        permits.pop().unwrap().success();
    }

    #[tokio::test(start_paused = true)]
    async fn three_successful_probes_close() {
        let b = breaker();
        fail(&b, 5);
        tokio::time::advance(Duration::from_secs(30)).await;
        for i in 0..3 {
            let p = b.admit().expect("probe slot free");
            assert!(p.is_probe());
            assert!(b.admit().is_none(), "one probe at a time");
            p.success();
            let expected = if i < 2 {
                BreakerState::HalfOpen
            } else {
                BreakerState::Closed
            };
            assert_eq!(b.state(), expected, "after probe {}", i + 1);
        }
        assert!(!b.admit().unwrap().is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_for_a_fresh_period() {
        let b = breaker();
        fail(&b, 5);
        tokio::time::advance(Duration::from_secs(30)).await;
        b.admit().unwrap().success();
        b.admit().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.admit().is_none(), "a fresh 30 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.admit().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_permit_reopens() {
        let b = breaker();
        fail(&b, 5);
        tokio::time::advance(Duration::from_secs(30)).await;
        let p = b.admit().unwrap();
        drop(p); // cancelled future
        assert_eq!(b.state(), BreakerState::Open, "a lost probe counts as a failure");
        // A probe inside a task that panics is also released.
        tokio::time::advance(Duration::from_secs(30)).await;
        let b2 = b.clone();
        let r = tokio::spawn(async move {
            let _p = b2.admit().unwrap();
            panic!("probe caller panics");
        })
        .await;
        assert!(r.is_err());
        assert_eq!(b.state(), BreakerState::Open);
        // A dropped normal permit is not counted at all.
        b.reset();
        for _ in 0..10 {
            drop(b.admit().unwrap());
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn stale_generation_results_are_ignored() {
        let b = breaker();
        let early: Vec<Permit> = (0..5).map(|_| b.admit().unwrap()).collect();
        fail(&b, 5);
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(30)).await;
        let probe = b.admit().unwrap();
        for p in early {
            p.success(); // from the closed generation: must not count as probe successes
        }
        assert_eq!(b.status().probe_successes, 0);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        probe.success();
        assert_eq!(b.status().probe_successes, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn forced_open_and_reset() {
        let b = breaker();
        b.force_open();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(b.admit().is_none(), "forced open does not time out");
        assert_eq!(b.state(), BreakerState::ForcedOpen);
        b.reset();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_some());
        b.disable();
        fail(&b, 50);
        assert_eq!(b.state(), BreakerState::Disabled, "a disabled breaker never opens");
    }
}
