//! The drill's traffic: a seeded set of prompts, then an open-loop load at a
//! fixed rate of which a configured share repeats a seeded prompt (evenly
//! spaced, so the steady-state hit rate is what the share says, without
//! sampling noise), and a probe that asks for each seeded prompt with
//! `Cache-Control: only-if-cached` to see what the cache still holds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

use super::subject::Subject;
use recache_core::config::Price;

/// How a request ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    SemanticHit,
    Stale,
    Miss,
    Bypass,
    /// The provider failed and nothing could stand in for it (502/504 `upstream_error`).
    ProviderError,
    /// Any other non-2xx answer, or no answer at all.
    Error,
}

impl Outcome {
    pub(crate) fn served_from_cache(self) -> bool {
        matches!(self, Outcome::Hit | Outcome::SemanticHit | Outcome::Stale)
    }
    pub(crate) fn is_error(self) -> bool {
        matches!(self, Outcome::ProviderError | Outcome::Error)
    }
}

/// One request of the load.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Seconds since the drill's clock started, when the request was sent.
    pub t: f64,
    pub latency_ms: f64,
    pub outcome: Outcome,
    /// USD the provider was paid for it (misses), from the answer's usage and the price table.
    pub cost_usd: f64,
    /// The seeded prompt it repeated, if any.
    pub seeded: Option<usize>,
    pub status: u16,
    pub detail: Option<String>,
}

/// The requests a drill sends.
pub struct Workload {
    /// Seeded requests: the body of each.
    pub seeded: Vec<Value>,
    /// When each seeded request was stored (ms since the epoch), once seeded.
    pub stored_at_ms: Vec<Option<i64>>,
    /// The seeded requests traffic may repeat (the rest are held out for the probe).
    pub traffic: usize,
    pub repeat_share: f64,
    pub run_id: String,
    pub model: String,
    /// The price table (`[prices]`), for the spend of each miss.
    pub prices: BTreeMap<String, Price>,
}

impl Workload {
    /// `entries` generated chat prompts, or the requests of a JSONL file.
    pub fn new(
        entries: usize,
        file: Option<&str>,
        model: &str,
        run_id: &str,
        repeat_share: f64,
        holdout_share: f64,
        prices: BTreeMap<String, Price>,
    ) -> Result<Workload, String> {
        let seeded: Vec<Value> = match file {
            Some(text) => {
                let mut out = Vec::new();
                for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    let v: Value =
                        serde_json::from_str(line).map_err(|e| format!("workload line {}: not JSON: {e}", i + 1))?;
                    if v.get("messages").and_then(Value::as_array).is_none() {
                        return Err(format!("workload line {}: a chat request needs 'messages'", i + 1));
                    }
                    out.push(v);
                }
                if out.is_empty() {
                    return Err("the workload file holds no request".into());
                }
                out
            }
            None => (0..entries)
                .map(|i| {
                    json!({"model": model, "messages": [{"role": "user",
                        "content": format!("drill {run_id}: question {i} about topic {} in detail", i % 97)}]})
                })
                .collect(),
        };
        let n = seeded.len();
        let traffic = ((n as f64) * (1.0 - holdout_share)).round().clamp(1.0, n as f64) as usize;
        Ok(Workload {
            stored_at_ms: vec![None; n],
            seeded,
            traffic,
            repeat_share,
            run_id: run_id.to_string(),
            model: model.to_string(),
            prices,
        })
    }

    /// Request `i` of the load: a repeat of a seeded request, or a new one.
    pub fn request(&self, i: u64) -> (Value, Option<usize>) {
        // In millionths, so 1 - 0.8 is exactly one in five.
        let per_million = ((1.0 - self.repeat_share) * 1e6).round() as u64;
        let is_new = (i + 1) * per_million / 1_000_000 > i * per_million / 1_000_000;
        if is_new {
            let base = (i as usize) % self.seeded.len();
            let mut v = self.seeded[base].clone();
            let suffix = format!(" (drill {} request {i})", self.run_id);
            if let Some(last) = v
                .get_mut("messages")
                .and_then(Value::as_array_mut)
                .and_then(|m| m.last_mut())
            {
                let content = last["content"].as_str().unwrap_or_default().to_string();
                last["content"] = json!(content + &suffix);
            }
            return (v, None);
        }
        // A spread-out walk over the traffic share of the seeded set.
        let k = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as usize % self.traffic;
        (self.seeded[k].clone(), Some(k))
    }

    fn cost(&self, request: &Value, answer: &Value) -> f64 {
        let model = request["model"].as_str().unwrap_or(&self.model);
        let u = |k: &str| {
            answer
                .pointer(&format!("/usage/{k}"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        recache_core::endpoint::cost_usd(&self.prices, model, u("prompt_tokens"), u("completion_tokens"))
    }
}

/// Sends one request and classifies the answer.
pub async fn send(
    subject: &Subject,
    w: &Workload,
    body: &Value,
    only_if_cached: bool,
) -> (Outcome, u16, f64, Option<String>) {
    let mut req = subject
        .http
        .post(format!("{}/v1/chat/completions", subject.base))
        .bearer_auth(&subject.key)
        .timeout(Duration::from_secs(60))
        .json(body);
    if only_if_cached {
        req = req.header("cache-control", "only-if-cached");
    }
    let r = match req.send().await {
        Ok(r) => r,
        Err(e) => return (Outcome::Error, 0, 0.0, Some(format!("no answer: {e}"))),
    };
    let status = r.status().as_u16();
    let cache = r
        .headers()
        .get("x-recache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        let kind = v.pointer("/error/type").and_then(Value::as_str).unwrap_or("");
        let msg = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let outcome = if kind == "upstream_error" || (cache == "MISS" && status >= 500) {
            Outcome::ProviderError
        } else {
            Outcome::Error
        };
        return (outcome, status, 0.0, Some(format!("{status} {kind}: {msg}")));
    }
    let outcome = match cache.as_str() {
        "HIT" => Outcome::Hit,
        "SEMANTIC_HIT" => Outcome::SemanticHit,
        "STALE" => Outcome::Stale,
        "BYPASS" => Outcome::Bypass,
        _ => Outcome::Miss,
    };
    let cost = if outcome == Outcome::Miss {
        w.cost(body, &v)
    } else {
        0.0
    };
    (outcome, status, cost, None)
}

/// Stores every seeded request (16 at a time). Returns how many failed.
pub async fn seed(subject: &Subject, w: &mut Workload, progress: Option<&indicatif::ProgressBar>) -> usize {
    let results: Vec<(usize, Outcome, i64)> = futures_util::stream::iter(0..w.seeded.len())
        .map(|i| {
            let body = w.seeded[i].clone();
            let w = &*w;
            async move {
                let (o, _, _, _) = send(subject, w, &body, false).await;
                if let Some(p) = progress {
                    p.inc(1);
                }
                (i, o, recache_storage::roles::now_ms())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut failed = 0;
    for (i, o, at) in results {
        if o.is_error() {
            failed += 1;
        } else {
            w.stored_at_ms[i] = Some(at);
        }
    }
    failed
}

/// The open-loop load: one request every `1/rps` seconds until `stop` turns
/// true, whatever the answers' latency (at most 512 in flight).
pub async fn load(
    subject: Arc<Subject>,
    w: Arc<Workload>,
    rps: f64,
    clock: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    mut stop: watch::Receiver<bool>,
) {
    let gap = Duration::from_secs_f64(1.0 / rps.max(0.1));
    let slots = Arc::new(Semaphore::new(512));
    let mut tick = tokio::time::interval(gap);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut i = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (body, seeded) = w.request(i);
        i += 1;
        let (subject, w, samples) = (subject.clone(), w.clone(), samples.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            let t = sent.duration_since(clock).as_secs_f64();
            let (outcome, status, cost_usd, detail) = send(&subject, &w, &body, false).await;
            let s = Sample {
                t,
                latency_ms: sent.elapsed().as_secs_f64() * 1000.0,
                outcome,
                cost_usd,
                seeded,
                status,
                detail,
            };
            samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
        });
        while tasks.try_join_next().is_some() {}
    }
    // Requests in flight finish (bounded by their own timeout).
    while tasks.join_next().await.is_some() {}
}

/// Asks for each seeded request (up to `max`, held-out ones first) with
/// `only-if-cached`. Returns the indexes the cache no longer serves.
pub async fn probe(subject: &Subject, w: &Workload, max: usize) -> (usize, Vec<usize>) {
    let mut order: Vec<usize> = (w.traffic..w.seeded.len()).chain(0..w.traffic).collect();
    order.retain(|i| w.stored_at_ms[*i].is_some());
    order.truncate(max);
    let probed = order.len();
    let lost: Vec<usize> = futures_util::stream::iter(order)
        .map(|i| async move {
            let (o, _, _, _) = send(subject, w, &w.seeded[i], true).await;
            (i, o.served_from_cache())
        })
        .buffer_unordered(16)
        .filter_map(|(i, served)| async move { (!served).then_some(i) })
        .collect()
        .await;
    (probed, lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_evenly_spaced_and_held_out_prompts_never_asked() {
        let w = Workload::new(100, None, "gpt-4o-mini", "t", 0.8, 0.2, BTreeMap::new()).unwrap();
        assert_eq!(w.traffic, 80);
        let picks: Vec<Option<usize>> = (0..1000).map(|i| w.request(i).1).collect();
        let new = picks.iter().filter(|p| p.is_none()).count();
        assert_eq!(new, 200, "exactly the configured share is new");
        for window in picks.chunks(10) {
            assert_eq!(window.iter().filter(|p| p.is_none()).count(), 2, "evenly spaced");
        }
        assert!(
            picks.iter().flatten().all(|k| *k < 80),
            "held-out prompts are never asked"
        );
        let distinct: std::collections::HashSet<_> = picks.iter().flatten().collect();
        assert!(
            distinct.len() > 60,
            "the walk covers the traffic set: {}",
            distinct.len()
        );
        let (a, _) = w.request(4);
        let (b, _) = w.request(9);
        assert_ne!(a, b, "new requests differ from each other");
        assert!(Workload::new(1, Some("{\"model\":\"m\"}"), "m", "t", 0.8, 0.2, BTreeMap::new()).is_err());
        // A request file: its lines are the seeded set; new requests vary the last message.
        let file = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"q1\"}]}\n\n\
                    {\"model\":\"m\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"q2\"}]}\n";
        let w = Workload::new(999, Some(file), "ignored", "run7", 0.8, 0.5, BTreeMap::new()).unwrap();
        assert_eq!((w.seeded.len(), w.traffic), (2, 1));
        let (new, seeded) = w.request(4);
        assert_eq!(seeded, None);
        assert_eq!(new["messages"][0]["content"], "s", "earlier turns kept");
        assert!(new["messages"][1]["content"]
            .as_str()
            .unwrap()
            .starts_with("q1 (drill run7"));
        assert_eq!(w.request(0), (w.seeded[0].clone(), Some(0)));
    }
}
