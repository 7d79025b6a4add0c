//! Recovery: the warmer's job kinds, audits and repairs, and the watch that
//! notices a lost index. Everything here works over the role traits, so it
//! runs the same on the embedded stores and on Redis, S3 and PostgreSQL.
//!
//! What each loss costs, and what recovers it:
//!
//! | lost | recovered by | provider cost |
//! |---|---|---|
//! | index (Redis flushed or restarted empty) | automatic `rebuild-index` from metadata | none |
//! | metadata rows | `reconcile-metadata` from the artifact envelopes | none |
//! | artifacts | `refetch`, most valuable first, within a budget | one call per artifact |
//! | entries expired during an outage | automatic `refresh-stale`, most hit first | one call per entry |
//! | vectors (store lost, or a new embedder) | automatic `rebuild-vectors` from the stored requests | none (local embedder) |

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;

use recache_core::config::Config;
use recache_engine::cache::Cache;
use recache_engine::upstream::Upstreams;
use recache_storage::queue::worker::{JobCtx, JobError, JobRunner, Progress};
use recache_storage::queue::{Job, Queue};
use recache_storage::roles::BoxFuture;

pub mod audit;
pub mod fetch;
pub mod gaps;
pub mod jobs;
pub mod listing;
pub mod local;
pub mod purge;
pub mod repair;
pub mod reseal;
pub mod vectors;
pub mod warm;
pub mod watch;

pub use jobs::{REBUILD_INDEX, REBUILD_VECTORS, RECONCILE_METADATA, REFETCH, REFRESH_STALE, REPAIR_ORPHANS, WARM};

/// Everything recovery work needs: the roles (through the cache service, so
/// stores follow the same path as the gateway's), the queue, the providers.
pub struct Recovery {
    pub cache: Arc<Cache>,
    pub queue: Arc<dyn Queue>,
    pub config: Arc<Config>,
    pub upstreams: Arc<Upstreams>,
    pub progress: Arc<Progress>,
    /// Attempt outcomes by (kind, outcome), for `/metrics`.
    pub outcomes: Mutex<BTreeMap<(String, String), u64>>,
    /// Semantic matching (for `rebuild-vectors`), once it is opened.
    pub semantic: OnceLock<Arc<recache_engine::semantic::Semantic>>,
    /// The environment the process was started with (secrets named by the
    /// config, such as the backup signing key, are read from it).
    pub env: HashMap<String, String>,
    /// Job kinds added by the layers above (see `jobs::Registered`).
    registered: Vec<jobs::Registered>,
}

impl Recovery {
    pub fn new(cache: Arc<Cache>, queue: Arc<dyn Queue>, config: Arc<Config>, upstreams: Arc<Upstreams>) -> Self {
        Self {
            cache,
            queue,
            config,
            upstreams,
            progress: Arc::new(Progress::default()),
            outcomes: Mutex::new(BTreeMap::new()),
            semantic: OnceLock::new(),
            env: HashMap::new(),
            registered: Vec::new(),
        }
    }

    /// With the environment secrets are read from.
    pub fn with_env(mut self, env: &HashMap<String, String>) -> Self {
        self.env = env.clone();
        self
    }

    pub fn page_size(&self) -> u32 {
        self.config.warmer.page_size.max(1)
    }

    /// How long expired entries are kept (`cache.max_stale_seconds`), in ms.
    pub(crate) fn retain_ms(&self) -> i64 {
        self.cache.retain_stale.as_millis() as i64
    }

    pub fn outcome_counts(&self) -> Vec<((String, String), u64)> {
        self.outcomes
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }
}

impl JobRunner for Recovery {
    fn kinds(&self) -> Vec<String> {
        Recovery::kinds(self).iter().map(|k| k.to_string()).collect()
    }

    fn needs(&self, kind: &str) -> Vec<&'static str> {
        Recovery::needs(self, kind)
    }

    fn run<'a>(&'a self, job: &'a Job, ctx: &'a dyn JobCtx) -> BoxFuture<'a, Result<Value, JobError>> {
        Box::pin(self.run_job(job, ctx))
    }

    fn finished(&self, job: &Job, outcome: &str, _elapsed: Duration) {
        if let Ok(mut m) = self.outcomes.lock() {
            *m.entry((job.kind.clone(), outcome.to_string())).or_default() += 1;
        }
    }
}
