//! Group commit: concurrent writers share one backend call.
//!
//! Each write is queued with a reply channel. One task takes the first write
//! waiting, gathers what else arrives within a short window (or until the
//! batch is full, whichever comes first), commits them all in one call (one
//! transaction, one pipeline), and replies to each writer. Writers still wait
//! for their own write to be committed, so nothing is acknowledged before it
//! is durable; batching only shares the round trips and the commit. Under low
//! load a batch holds one write and waits for nothing more than the window.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::key::CacheKey;
use bytes::Bytes;

use crate::roles::{
    ArtifactId, Artifacts, AuditEvent, BackendError, BoxFuture, EntryRecord, Index, IndexEntry, Metadata, Result,
};

/// The largest batch a writer queue commits in one call (defined by the
/// storage layer, which gives such batches the request path's timeout).
pub use crate::roles::MAX_BATCH;

/// Commits one batch: one result for the batch, and one value per write, in order.
pub type CommitFn<T, R> = Arc<dyn Fn(Vec<T>) -> BoxFuture<'static, Result<Vec<R>>> + Send + Sync>;

type Item<T, R> = (T, oneshot::Sender<Result<R>>);

/// A queue of writes committed in batches by a task of its own.
pub struct GroupCommit<T, R> {
    tx: mpsc::UnboundedSender<Item<T, R>>,
    name: &'static str,
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    /// Starts the committing task (within a Tokio runtime). It ends when the
    /// queue is dropped and every queued write is committed.
    pub fn spawn(name: &'static str, max: usize, window: Duration, commit: CommitFn<T, R>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, max.clamp(1, MAX_BATCH), window, commit));
        Self { tx, name }
    }

    /// Queues one write and waits until its batch is committed.
    pub async fn submit(&self, value: T) -> Result<R> {
        let (done, wait) = oneshot::channel();
        let gone = || BackendError::Protocol {
            backend: self.name,
            detail: "the write queue stopped".into(),
        };
        self.tx.send((value, done)).map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
    }
}

async fn run<T, R>(mut rx: mpsc::UnboundedReceiver<Item<T, R>>, max: usize, window: Duration, commit: CommitFn<T, R>) {
    let mut batch: Vec<Item<T, R>> = Vec::with_capacity(max);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < max {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if window.is_zero() {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(item)) => batch.push(item),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        let (values, replies): (Vec<T>, Vec<_>) = batch.drain(..).unzip();
        let n = values.len();
        match commit(values).await {
            Ok(results) if results.len() == n => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(r));
                }
            }
            Ok(results) => {
                let e = BackendError::Protocol {
                    backend: "batch",
                    detail: format!("a batch of {n} writes returned {} results", results.len()),
                };
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// A queue whose batches succeed or fail as a whole: each writer learns only
/// whether its batch was committed.
fn whole_batches<T: Send + 'static>(
    name: &'static str,
    b: Batching,
    commit: impl Fn(Vec<T>) -> BoxFuture<'static, Result<()>> + Send + Sync + 'static,
) -> GroupCommit<T, ()> {
    let commit: CommitFn<T, ()> = Arc::new(move |items: Vec<T>| {
        let n = items.len();
        let done = commit(items);
        Box::pin(async move { done.await.map(|()| vec![(); n]) })
    });
    GroupCommit::spawn(name, b.max, b.window, commit)
}

/// A metadata write of the store path.
pub enum MetaWrite {
    Entry(EntryRecord),
    Audit(AuditEvent),
}

/// How writes are grouped: `[cache] write_batch_max` and `write_batch_window_ms`;
/// `[artifacts] write_concurrency` bounds the writes to a remote object store.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    pub max: usize,
    pub window: Duration,
    pub artifact_writes: usize,
}

impl Batching {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            max: c.cache.write_batch_max,
            window: Duration::from_millis(c.cache.write_batch_window_ms),
            artifact_writes: c.artifacts.write_concurrency.max(1),
        }
    }
}

/// The store path's writers: entry registrations and audit events share
/// metadata transactions; index pointers share pipelines where the index
/// costs a round trip per call (the embedded index is written in place);
/// artifacts of the local store share one blocking task (an object store
/// over the network takes them one request each, concurrently).
pub struct Writers {
    meta: GroupCommit<MetaWrite, Option<ArtifactId>>,
    index: Option<GroupCommit<(CacheKey, IndexEntry), ()>>,
    direct_index: Arc<dyn Index>,
    artifacts: Option<GroupCommit<(ArtifactId, Bytes), ()>>,
    direct_artifacts: Arc<dyn Artifacts>,
    /// Remote artifact writes in flight at once: a burst of misses must not
    /// open a thousand PUTs that all time out together.
    artifact_slots: tokio::sync::Semaphore,
}

impl Writers {
    pub fn spawn(
        metadata: Arc<dyn Metadata>,
        index: Arc<dyn Index>,
        artifacts: Arc<dyn Artifacts>,
        b: Batching,
    ) -> Self {
        let meta_commit: CommitFn<MetaWrite, Option<ArtifactId>> = Arc::new(move |writes: Vec<MetaWrite>| {
            let metadata = metadata.clone();
            Box::pin(async move {
                let (mut entries, mut audit) = (Vec::new(), Vec::new());
                let is_entry: Vec<bool> = writes
                    .into_iter()
                    .map(|w| match w {
                        MetaWrite::Entry(e) => {
                            entries.push(e);
                            true
                        }
                        MetaWrite::Audit(a) => {
                            audit.push(a);
                            false
                        }
                    })
                    .collect();
                let mut replaced = metadata.write_batch(entries, audit).await?.into_iter();
                Ok(is_entry
                    .into_iter()
                    .map(|e| if e { replaced.next().flatten() } else { None })
                    .collect())
            })
        });
        let meta = GroupCommit::spawn("metadata", b.max, b.window, meta_commit);
        let batched_index = (index.engine() != "embedded").then(|| {
            let index = index.clone();
            whole_batches("index", b, move |pointers| {
                let index = index.clone();
                Box::pin(async move { index.put_many(pointers, false).await.map(|_| ()) })
            })
        });
        let batched_artifacts = (artifacts.engine() == "embedded").then(|| {
            let artifacts = artifacts.clone();
            whole_batches("artifacts", b, move |items| {
                let artifacts = artifacts.clone();
                Box::pin(async move { artifacts.put_many(items).await })
            })
        });
        Self {
            meta,
            index: batched_index,
            direct_index: index,
            artifacts: batched_artifacts,
            direct_artifacts: artifacts,
            artifact_slots: tokio::sync::Semaphore::new(b.artifact_writes),
        }
    }

    pub async fn artifact(&self, id: ArtifactId, bytes: Bytes) -> Result<()> {
        match &self.artifacts {
            Some(q) => q.submit((id, bytes)).await,
            None => {
                let _slot = self.artifact_slots.acquire().await;
                self.direct_artifacts.put(id, bytes).await
            }
        }
    }

    /// Registers an entry; returns the artifact it replaced.
    pub async fn register(&self, entry: EntryRecord) -> Result<Option<ArtifactId>> {
        self.meta.submit(MetaWrite::Entry(entry)).await
    }

    pub async fn audit(&self, event: AuditEvent) -> Result<()> {
        self.meta.submit(MetaWrite::Audit(event)).await.map(|_| ())
    }

    pub async fn index(&self, key: CacheKey, entry: IndexEntry) -> Result<()> {
        match &self.index {
            Some(q) => q.submit((key, entry)).await,
            None => self.direct_index.put(key, entry).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(calls: Arc<AtomicUsize>, fail: bool) -> CommitFn<u32, u32> {
        Arc::new(move |v: Vec<u32>| {
            calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if fail {
                    Err(BackendError::Protocol {
                        backend: "test",
                        detail: "refused".into(),
                    })
                } else {
                    Ok(v.into_iter().map(|x| x * 2).collect())
                }
            })
        })
    }

    #[tokio::test]
    async fn concurrent_writes_share_commits_and_each_gets_its_own_answer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let q = Arc::new(GroupCommit::spawn(
            "test",
            64,
            Duration::ZERO,
            counting(calls.clone(), false),
        ));
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let q = q.clone();
                tokio::spawn(async move { (i, q.submit(i).await.unwrap()) })
            })
            .collect();
        for t in tasks {
            let (i, r) = t.await.unwrap();
            assert_eq!(r, i * 2);
        }
        let n = calls.load(Ordering::SeqCst);
        assert!(n < 200, "200 writes took {n} commits");
        assert!(n >= 200 / 64, "no batch is over the bound: {n} commits");
    }

    #[tokio::test]
    async fn a_window_gathers_writes_that_arrive_apart() {
        let calls = Arc::new(AtomicUsize::new(0));
        let q = Arc::new(GroupCommit::spawn(
            "test",
            64,
            Duration::from_millis(200),
            counting(calls.clone(), false),
        ));
        let a = tokio::spawn({
            let q = q.clone();
            async move { q.submit(1).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(q.submit(2).await.unwrap(), 4);
        assert_eq!(a.await.unwrap().unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one commit for both");
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_write_in_it() {
        let calls = Arc::new(AtomicUsize::new(0));
        let q = GroupCommit::spawn("test", 8, Duration::ZERO, counting(calls, true));
        let e = q.submit(1).await.unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
    }
}
