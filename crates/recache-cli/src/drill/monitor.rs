//! What the drill watches besides its own requests: the breakers (every
//! 250 ms), and whether the gateway is ready with no recovery job left (every second).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::subject::Subject;

#[derive(Clone, Debug)]
pub struct BreakerSample {
    pub t: f64,
    pub states: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct HealthSample {
    pub t: f64,
    pub ready: bool,
    pub live_jobs: Option<u64>,
    pub breakers_closed: bool,
}

#[derive(Default)]
pub struct Observed {
    pub breakers: Vec<BreakerSample>,
    pub health: Vec<HealthSample>,
}

impl Observed {
    /// The first breaker sample at or after `from` that `pred` accepts.
    fn first(&self, from: f64, pred: impl Fn(&BTreeMap<String, String>) -> bool) -> Option<f64> {
        self.breakers
            .iter()
            .find(|s| s.t >= from && pred(&s.states))
            .map(|s| s.t)
    }

    /// When one of `backends` was first seen not closed at or after `from`.
    pub fn first_open(&self, backends: &[&str], from: f64) -> Option<f64> {
        self.first(from, |st| {
            backends.iter().any(|b| st.get(*b).is_some_and(|s| !passes(s)))
        })
    }

    /// When all of `backends` were first seen closed (or disabled) at or after `from`.
    pub(crate) fn first_closed(&self, backends: &[&str], from: f64) -> Option<f64> {
        self.first(from, |st| all_pass(st, backends))
    }

    /// When the gateway was first fully healthy at or after `from`: ready,
    /// every breaker closed, no recovery job queued or running.
    pub(crate) fn healthy_at(&self, from: f64) -> Option<f64> {
        self.health
            .iter()
            .filter(|h| h.t >= from)
            .find(|h| h.ready && h.breakers_closed && h.live_jobs == Some(0))
            .map(|h| h.t)
    }

    /// Every change of a breaker's state: (t, backend, from, to).
    pub fn transitions(&self) -> Vec<(f64, String, String, String)> {
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        let mut out = Vec::new();
        for s in &self.breakers {
            for (b, st) in &s.states {
                match last.get(b) {
                    Some(prev) if prev != st => out.push((s.t, b.clone(), prev.clone(), st.clone())),
                    _ => {}
                }
                last.insert(b.clone(), st.clone());
            }
        }
        out
    }
}

/// A breaker state that lets calls through.
fn passes(state: &str) -> bool {
    state == "closed" || state == "disabled"
}

/// Every breaker of `backends` lets calls through (a backend without a breaker does).
pub(crate) fn all_pass(states: &BTreeMap<String, String>, backends: &[&str]) -> bool {
    backends.iter().all(|b| states.get(*b).is_none_or(|s| passes(s)))
}

/// Samples until `stop` turns true.
pub async fn run(subject: Arc<Subject>, clock: Instant, out: Arc<Mutex<Observed>>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        let t = clock.elapsed().as_secs_f64();
        let states = subject.breakers().await.unwrap_or_default();
        let closed = !states.is_empty() && states.values().all(|s| passes(s));
        if !states.is_empty() {
            out.lock()
                .unwrap_or_else(|e| e.into_inner())
                .breakers
                .push(BreakerSample { t, states });
        }
        if n.is_multiple_of(4) {
            let (ready, live_jobs) = tokio::join!(subject.ready(), subject.live_jobs());
            out.lock().unwrap_or_else(|e| e.into_inner()).health.push(HealthSample {
                t,
                ready,
                live_jobs: live_jobs.ok(),
                breakers_closed: closed,
            });
        }
        n += 1;
    }
}
