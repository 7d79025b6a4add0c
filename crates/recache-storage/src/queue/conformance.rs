//! The queue's conformance suite: plain async scenarios over `&dyn Queue`,
//! run against SQLite and PostgreSQL (`tests/queue.rs`). Each scenario uses
//! its own job kinds, so they can share one database.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Finish, JobState, NewJob, Queue, WorkerInfo};
use crate::roles::now_ms;

fn kind(label: &str) -> String {
    format!("conf-{label}-{:x}", super::random_u64() & 0xffff_ffff)
}

const LEASE: Duration = Duration::from_secs(30);

pub async fn queue_lifecycle(q: &dyn Queue) {
    let k = kind("life");
    let low = q.enqueue(NewJob::new(&k, json!({"n": 1}))).await.unwrap();
    let high = q.enqueue(NewJob::new(&k, json!({"n": 2})).priority(10)).await.unwrap();
    let other = kind("other");
    q.enqueue(NewJob::new(&other, json!({}))).await.unwrap();
    assert!(low.created && high.created);
    // Uniqueness: at most one live job per key.
    let u1 = q
        .enqueue(NewJob::new(&k, json!({"u": 1})).unique(format!("{k}-u")))
        .await
        .unwrap();
    let u2 = q
        .enqueue(NewJob::new(&k, json!({"u": 2})).unique(format!("{k}-u")))
        .await
        .unwrap();
    assert!(
        u1.created && !u2.created,
        "a second live job with the same key is not created"
    );
    assert_eq!(u1.id, u2.id, "the existing job's id comes back");
    // Priority first, then age; only the kinds asked for.
    let j = q.claim("w1", vec![k.clone()], LEASE).await.unwrap().expect("a job");
    assert_eq!((j.id, j.state, j.attempts), (high.id, JobState::Running, 1));
    assert_eq!(j.lease_owner.as_deref(), Some("w1"));
    let token = j.lease_token.clone().expect("a lease token");
    assert!(q.heartbeat(j.id, &token, LEASE).await.unwrap());
    assert!(q.checkpoint(j.id, &token, json!({"n": 2, "cursor": 7})).await.unwrap());
    assert_eq!(
        q.get(j.id).await.unwrap().unwrap().payload["cursor"],
        7,
        "checkpoint saved"
    );
    assert!(q
        .finish(j.id, &token, Finish::Succeeded(json!({"done": true})))
        .await
        .unwrap());
    let done = q.get(j.id).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.result),
        (JobState::Succeeded, Some(json!({"done": true})))
    );
    assert!(done.finished_at_ms.is_some());
    assert!(
        !q.finish(j.id, &token, Finish::Succeeded(json!(1))).await.unwrap(),
        "a finished job cannot finish twice"
    );
    // Once the unique job is finished, the key is free again.
    let next = q.claim("w1", vec![k.clone()], LEASE).await.unwrap().unwrap();
    assert_eq!(next.id, low.id);
    let t = next.lease_token.clone().unwrap();
    q.finish(next.id, &t, Finish::Succeeded(json!(null))).await.unwrap();
    let uj = q.claim("w1", vec![k.clone()], LEASE).await.unwrap().unwrap();
    assert_eq!(uj.id, u1.id);
    q.finish(
        uj.id,
        uj.lease_token.as_deref().unwrap(),
        Finish::Succeeded(json!(null)),
    )
    .await
    .unwrap();
    let u3 = q
        .enqueue(NewJob::new(&k, json!({"u": 3})).unique(format!("{k}-u")))
        .await
        .unwrap();
    assert!(u3.created && u3.id != u1.id, "a finished job does not block its key");
    assert!(q.claim("w1", vec![kind("none")], LEASE).await.unwrap().is_none());
    let counts = q.counts().await.unwrap();
    assert!(counts
        .iter()
        .any(|c| c.kind == k && c.state == JobState::Succeeded && c.count == 3));
}

/// Four workers claim 1,000 jobs concurrently: each runs exactly once.
pub async fn queue_concurrent_claims(q: Arc<dyn Queue>) {
    let k = kind("conc");
    for i in 0..1000 {
        q.enqueue(NewJob::new(&k, json!({"i": i})).priority(i % 3))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (q, k) = (q.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            let mut ran = Vec::new();
            while let Some(j) = q.claim(&format!("w{w}"), vec![k.clone()], LEASE).await.unwrap() {
                let t = j.lease_token.clone().unwrap();
                assert!(q.finish(j.id, &t, Finish::Succeeded(json!(w))).await.unwrap());
                ran.push(j.id);
            }
            ran
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(
        (all.len(), distinct.len()),
        (1000, 1000),
        "every job claimed exactly once"
    );
}

/// Failures back off, the last attempt makes a job dead (with its error),
/// a release does not use an attempt, and dead jobs can be retried.
pub async fn queue_retries_and_dead_letter(q: &dyn Queue) {
    let k = kind("retry");
    let id = q.enqueue(NewJob::new(&k, json!({})).max_attempts(3)).await.unwrap().id;
    let claim = || q.claim("w", vec![k.clone()], LEASE);
    let j = claim().await.unwrap().unwrap();
    let fail = |retry_ms: u64| Finish::Failed {
        error: "boom".into(),
        retry_in: Duration::from_millis(retry_ms),
    };
    assert!(q
        .finish(id, j.lease_token.as_deref().unwrap(), fail(60_000))
        .await
        .unwrap());
    let st = q.get(id).await.unwrap().unwrap();
    assert_eq!(st.state, JobState::Failed);
    assert!(st.run_after_ms > now_ms() + 50_000, "backed off");
    assert!(claim().await.unwrap().is_none(), "not claimable during its backoff");
    // A fresh failure with no wait is claimable at once; a release does not count.
    let id2 = q.enqueue(NewJob::new(&k, json!({})).max_attempts(2)).await.unwrap().id;
    let j = claim().await.unwrap().unwrap();
    assert_eq!(j.id, id2);
    let release = Finish::Release {
        reason: "index breaker open".into(),
        retry_in: Duration::ZERO,
    };
    assert!(q.finish(id2, j.lease_token.as_deref().unwrap(), release).await.unwrap());
    let st = q.get(id2).await.unwrap().unwrap();
    assert_eq!(
        (st.state, st.attempts),
        (JobState::Queued, 0),
        "release keeps the attempt"
    );
    for attempt in 1..=2 {
        let j = claim().await.unwrap().unwrap();
        assert_eq!((j.id, j.attempts), (id2, attempt));
        assert!(q.finish(id2, j.lease_token.as_deref().unwrap(), fail(0)).await.unwrap());
    }
    let dead = q.get(id2).await.unwrap().unwrap();
    assert_eq!(dead.state, JobState::Dead, "dead after the last attempt");
    assert_eq!(dead.last_error.as_deref(), Some("boom"), "keeps its last error");
    assert!(q
        .list(Some(JobState::Dead), 100)
        .await
        .unwrap()
        .iter()
        .any(|j| j.id == id2));
    assert!(q.retry_dead(Some(k.clone())).await.unwrap() >= 1);
    let again = q.get(id2).await.unwrap().unwrap();
    assert_eq!((again.state, again.attempts), (JobState::Queued, 0));
}

/// A worker that stops heartbeating loses its lease; the job goes to
/// another worker; the old worker's stale token can change nothing.
pub async fn queue_lease_expiry_and_zombies(q: &dyn Queue) {
    let k = kind("lease");
    let id = q.enqueue(NewJob::new(&k, json!({"cursor": 0}))).await.unwrap().id;
    let a = q
        .claim("a", vec![k.clone()], Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    let ta = a.lease_token.clone().unwrap();
    assert!(q.checkpoint(id, &ta, json!({"cursor": 5})).await.unwrap());
    assert!(q.claim("b", vec![k.clone()], LEASE).await.unwrap().is_none(), "leased");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(q.reap_expired().await.unwrap() >= 1);
    let st = q.get(id).await.unwrap().unwrap();
    assert_eq!(st.state, JobState::Failed);
    assert!(st.last_error.as_deref().unwrap_or("").contains("lease expired"));
    let b = q.claim("b", vec![k.clone()], LEASE).await.unwrap().expect("taken over");
    assert_eq!((b.id, b.attempts), (id, 2));
    assert_eq!(b.payload["cursor"], 5, "the new owner resumes from the checkpoint");
    let tb = b.lease_token.clone().unwrap();
    assert_ne!(ta, tb);
    assert!(q.checkpoint(id, &tb, json!({"cursor": 9})).await.unwrap());
    // The zombie wakes up: nothing it says is taken.
    assert!(!q.heartbeat(id, &ta, LEASE).await.unwrap());
    assert!(!q.checkpoint(id, &ta, json!({"cursor": 1})).await.unwrap());
    assert!(!q.finish(id, &ta, Finish::Succeeded(json!("zombie"))).await.unwrap());
    assert!(q.finish(id, &tb, Finish::Succeeded(json!("b"))).await.unwrap());
    let done = q.get(id).await.unwrap().unwrap();
    assert_eq!(done.result, Some(json!("b")));
    assert_eq!(done.payload["cursor"], 9);
    assert!(!q.finish(id, &ta, Finish::Dead("zombie".into())).await.unwrap());
    assert_eq!(q.get(id).await.unwrap().unwrap().state, JobState::Succeeded);
}

/// Namespace priority, pruning, workers and the shared spend ledger.
pub async fn queue_priority_prune_workers_spend(q: &dyn Queue) {
    let k = kind("prio");
    let a = q
        .enqueue(NewJob::new(&k, json!({})).namespace("repo-a"))
        .await
        .unwrap()
        .id;
    let b = q
        .enqueue(NewJob::new(&k, json!({})).namespace("repo-b"))
        .await
        .unwrap()
        .id;
    assert_eq!(q.prioritize(vec!["repo-b".into()], 1000).await.unwrap(), 1);
    let first = q.claim("w", vec![k.clone()], LEASE).await.unwrap().unwrap();
    assert_eq!(first.id, b, "the prioritised namespace goes first");
    q.finish(b, first.lease_token.as_deref().unwrap(), Finish::Succeeded(json!(null)))
        .await
        .unwrap();
    let second = q.claim("w", vec![k.clone()], LEASE).await.unwrap().unwrap();
    assert_eq!(second.id, a);
    q.finish(
        a,
        second.lease_token.as_deref().unwrap(),
        Finish::Succeeded(json!(null)),
    )
    .await
    .unwrap();
    assert!(q.prune(now_ms() + 1, 0).await.unwrap() >= 2, "finished jobs are pruned");
    assert!(q.get(a).await.unwrap().is_none());
    let now = now_ms();
    q.register_worker(WorkerInfo {
        owner: format!("{k}-w"),
        host: "h".into(),
        pid: 1,
        started_at_ms: now,
        seen_at_ms: now,
        paused: json!({"rebuild-index": ["index"]}),
    })
    .await
    .unwrap();
    let ws = q.workers(now - 1000).await.unwrap();
    let w = ws.iter().find(|w| w.owner == format!("{k}-w")).expect("worker listed");
    assert_eq!(w.paused["rebuild-index"][0], "index");
    let before = q.spend_since(now - 1).await.unwrap();
    q.record_spend(1, 0.25).await.unwrap();
    q.record_spend(1, 0.5).await.unwrap();
    let after = q.spend_since(now - 1).await.unwrap();
    assert!((after - before - 0.75).abs() < 1e-9, "{before} -> {after}");
    assert!(q.succeeded_since(now - 60_000).await.is_ok());
}
