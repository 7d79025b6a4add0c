//! The semantic engine: policies, embedding, search, guards, and the
//! false-hit accounting of shadow mode and verification sampling.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use super::budget::{Budget, Counts, Event, ScopeStats};
pub use super::counters::{Lookup, SemanticMetrics};
use super::counters::{INELIGIBLE, LOOKUPS, REFUSALS};
use super::embedder::{collection_for, Embedder, LocalEmbedder, ProviderEmbedder};
use super::guard::Refusal;
use super::guard_lexical::Guards;
use super::judge;
use super::recent::RecentVectors;
use super::scope::{self, Ineligible};
use crate::breaker::{Breaker, BreakerStatus};
use crate::cache::{event_id, Cache};
use crate::config::{Config, SemanticConfig};
use crate::key::CacheKey;
use crate::roles::{now_ms, AuditEvent, CollectionInfo, VectorPoint, Vectors};
use crate::upstream::Upstreams;

/// The semantic settings in force for one tenant and namespace.
#[derive(Clone, Debug, Serialize)]
pub struct Policy {
    /// `true`: serve semantic hits; `false`: shadow mode.
    pub live: bool,
    pub threshold: f32,
    pub embedder: String,
    pub verify_rate: f64,
    pub error_budget: f64,
}

impl Policy {
    pub fn mode(&self) -> &'static str {
        if self.live {
            "live"
        } else {
            "shadow"
        }
    }
}

/// A request ready for semantic lookup and storage: its scope and embedded text.
pub struct Prepared {
    pub tenant: String,
    pub namespace: String,
    pub scope: String,
    pub text: String,
    pub vector: Vec<f32>,
    pub collection: String,
    pub policy: Policy,
    /// `[semantic] store_text`: whether the point keeps `text`.
    pub keep_text: bool,
}

/// Why a request gets no embedding.
#[derive(Debug)]
pub enum Skip {
    Ineligible(Ineligible),
    /// The embedder failed, timed out, or its breaker is open.
    Embedder(String),
}

impl Prepared {
    /// The point that stores this request's vector for the entry `key`.
    pub fn point(&self, key: CacheKey, expires_at_ms: i64) -> VectorPoint {
        VectorPoint {
            key,
            scope: self.scope.clone(),
            tenant: self.tenant.clone(),
            text: if self.keep_text {
                self.text.clone()
            } else {
                String::new()
            },
            expires_at_ms,
            vector: self.vector.clone(),
        }
    }
}

/// The stored request a new one may be answered with.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub key: CacheKey,
    pub score: f32,
    pub text: String,
}

/// What a search found: the candidates that passed, best first.
pub struct Found {
    pub candidates: Vec<Candidate>,
    /// Some candidate above the threshold was refused by the guards.
    pub refused: bool,
    /// The vector store failed or was skipped by its breaker.
    pub unavailable: bool,
}

/// One embedder as the report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct EmbedderInfo {
    pub name: String,
    pub fingerprint: String,
    pub collection: String,
    pub dimension: usize,
}

/// Per tenant and namespace: what `recache semantic report` prints.
#[derive(Clone, Debug, Serialize)]
pub struct TenantReport {
    pub tenant: String,
    pub namespace: String,
    pub mode: String,
    pub embedder: String,
    pub scopes: usize,
    #[serde(flatten)]
    pub counts: Counts,
    /// Disagreements / checks, over all checks.
    pub false_hit_rate: Option<f64>,
    /// Its 95 % Wilson interval.
    pub false_hit_rate_ci95: Option<(f64, f64)>,
    pub error_budget: f64,
    /// The configured threshold.
    pub base_threshold: f32,
    /// The highest threshold in force among its scopes (raised by the budget).
    pub threshold: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub embedders: Vec<EmbedderInfo>,
    pub embedder_breaker: BreakerStatus,
    pub vectors_engine: String,
    pub collections: Vec<CollectionInfo>,
    pub lookups: BTreeMap<String, u64>,
    pub tenants: Vec<TenantReport>,
    pub scopes: Vec<ScopeStats>,
}

pub struct Semantic {
    cfg: SemanticConfig,
    embedders: BTreeMap<String, Loaded>,
    vectors: Arc<dyn Vectors>,
    breaker: Arc<Breaker>,
    budget: Budget,
    pub metrics: SemanticMetrics,
    cache: Arc<Cache>,
    /// Collections known to exist.
    ready: Mutex<HashSet<String>>,
    /// Recent embeddings by (fingerprint, text) digest.
    recent: RecentVectors,
    guards: Guards,
}

/// An embedder with what is derived from it once, at load: fingerprint and collection.
struct Loaded {
    embedder: Arc<dyn Embedder>,
    info: EmbedderInfo,
}

/// The settings in force for a tenant and namespace, or `None` when semantic
/// matching is off there. Rules apply from least to most specific (the
/// defaults, the tenant's, the namespace's); a field a rule leaves out, `enabled`
/// included, keeps the value from before.
fn resolve(c: &SemanticConfig, tenant: &str, namespace: &str) -> Option<Policy> {
    let mut enabled = c.enabled;
    let mut p = Policy {
        live: c.mode == "live",
        threshold: c.threshold,
        embedder: c.embedder.clone(),
        verify_rate: c.verify_rate,
        error_budget: c.error_budget,
    };
    let tenant_rules = c.rules.iter().filter(|r| r.tenant == tenant && r.namespace.is_none());
    let ns_rules = c
        .rules
        .iter()
        .filter(|r| r.tenant == tenant && r.namespace.as_deref() == Some(namespace));
    for r in tenant_rules.chain(ns_rules) {
        if let Some(e) = r.enabled {
            enabled = e;
        }
        if let Some(m) = &r.mode {
            p.live = m == "live";
        }
        if let Some(t) = r.threshold {
            p.threshold = t;
        }
        if let Some(e) = &r.embedder {
            p.embedder = e.clone();
        }
        if let Some(v) = r.verify_rate {
            p.verify_rate = v;
        }
        if let Some(b) = r.error_budget {
            p.error_budget = b;
        }
    }
    enabled.then_some(p)
}

/// The embedder names a configuration uses: those of every tenant and
/// namespace a rule names (and the default's, when it is on), as [`resolve`] sees them.
fn used_embedders(cfg: &SemanticConfig) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let defaults = cfg.enabled.then(|| cfg.embedder.clone());
    let ruled = cfg
        .rules
        .iter()
        .filter_map(|r| resolve(cfg, &r.tenant, r.namespace.as_deref().unwrap_or("default")).map(|p| p.embedder));
    for n in defaults.into_iter().chain(ruled) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

impl Semantic {
    /// `None` when no tenant has semantic matching on.
    pub async fn open(config: &Config, cache: Arc<Cache>, upstreams: &Upstreams) -> anyhow::Result<Option<Arc<Self>>> {
        let cfg = config.semantic.clone();
        let names = used_embedders(&cfg);
        if names.is_empty() {
            return Ok(None);
        }
        let mut embedders: BTreeMap<String, Loaded> = BTreeMap::new();
        for name in names {
            let e = &cfg.embedders[&name];
            let embedder: Arc<dyn Embedder> = match e.kind.as_str() {
                "local" => {
                    let e = e.clone();
                    let path = e.path.clone().unwrap_or_default();
                    let loaded = tokio::task::spawn_blocking(move || LocalEmbedder::load(&e))
                        .await?
                        .map_err(|err| {
                            anyhow::anyhow!(
                                "semantic.embedders.{name}: cannot load the model at {} ({err:#}); \
                                 `bash scripts/fetch-model.sh` fetches all-MiniLM-L6-v2 into models/",
                                path.display()
                            )
                        })?;
                    // One inference at start-up, so the first request does not pay the warm-up.
                    let _ = loaded.embed("warm up".into()).await;
                    Arc::new(loaded)
                }
                _ => Arc::new(ProviderEmbedder::new(e, upstreams)?),
            };
            let fingerprint = embedder.fingerprint();
            let info = EmbedderInfo {
                name: name.clone(),
                collection: collection_for(&config.vectors.collection_prefix, &fingerprint),
                fingerprint,
                dimension: embedder.dimension(),
            };
            tracing::info!(
                embedder = %name,
                fingerprint = %info.fingerprint,
                collection = %info.collection,
                "semantic matching: embedder ready"
            );
            embedders.insert(name, Loaded { embedder, info });
        }
        let me = Arc::new(Self {
            breaker: Breaker::new("embedder", &config.breaker),
            cfg,
            embedders,
            vectors: cache.roles.vectors.clone(),
            budget: Budget::default(),
            metrics: SemanticMetrics::default(),
            cache,
            ready: Mutex::new(HashSet::new()),
            recent: RecentVectors::new(4096),
            guards: Guards::open(&config.semantic).await,
        });
        for (collection, dimension) in me.active_collections() {
            // Best effort: a vector store that is down now gets its collection on first write.
            let _ = me.ensure(&collection, dimension).await;
        }
        Ok(Some(me))
    }

    /// The collections of the loaded embedders, with their dimensions.
    pub fn active_collections(&self) -> Vec<(String, usize)> {
        self.embedders
            .values()
            .map(|e| (e.info.collection.clone(), e.info.dimension))
            .collect()
    }

    /// Creates a collection unless it is known to exist; `false` when the store refused.
    pub async fn ensure(&self, collection: &str, dimension: usize) -> bool {
        if self
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(collection)
        {
            return true;
        }
        match self.vectors.ensure_collection(collection, dimension).await {
            Ok(()) => {
                self.ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(collection.to_string());
                true
            }
            Err(e) => {
                tracing::warn!(collection, error = %e, "cannot create the vector collection; semantic matching waits for it");
                false
            }
        }
    }

    /// The policy for a tenant and namespace; `None` when semantic matching is off there.
    pub fn policy(&self, tenant: &str, namespace: &str) -> Option<Policy> {
        resolve(&self.cfg, tenant, namespace).filter(|p| self.embedders.contains_key(&p.embedder))
    }

    /// Counts why a request got no embedding (the gateway's side of [`Semantic::prepare`]).
    pub fn skipped(&self, why: Skip) {
        match why {
            Skip::Ineligible(why) => {
                if let Some(i) = INELIGIBLE.iter().position(|x| *x == why) {
                    self.metrics.ineligible[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            Skip::Embedder(e) => {
                tracing::debug!(error = %e, "semantic matching skipped: embedding failed");
                self.metrics.lookup(Lookup::Unavailable);
            }
        }
    }

    /// Splits out the final user text, checks eligibility, and embeds it. The
    /// gateway counts a [`Skip`] ([`Semantic::skipped`]); the rebuild job retries
    /// on an embedder failure and passes over an ineligible request.
    pub async fn prepare(&self, policy: Policy, asked: &scope::Asked<'_>) -> Result<Prepared, Skip> {
        let (tenant, endpoint) = (asked.tenant, asked.endpoint);
        let split = scope::split(
            endpoint.name(),
            asked.body,
            self.cfg.max_temperature,
            self.cfg.max_chars,
        )
        .map_err(Skip::Ineligible)?;
        let loaded = self
            .embedders
            .get(&policy.embedder)
            .ok_or_else(|| Skip::Embedder(format!("embedder '{}' is not loaded", policy.embedder)))?;
        let extra = crate::keying::scope_extra(endpoint, asked.model, asked.forward);
        let parts = scope::ScopeParts {
            tenant,
            namespace: asked.namespace,
            endpoint: endpoint.name(),
            upstream: asked.upstream,
            fingerprint: &loaded.info.fingerprint,
            extra: &extra,
        };
        let scope = scope::scope_hash(&parts, &split.rest);
        let vector = self
            .embed(tenant, loaded, split.text.clone())
            .await
            .map_err(Skip::Embedder)?;
        Ok(Prepared {
            tenant: tenant.to_string(),
            namespace: asked.namespace.to_string(),
            scope,
            text: split.text,
            vector,
            collection: loaded.info.collection.clone(),
            policy,
            keep_text: self.cfg.store_text,
        })
    }

    /// One embedding behind the embedder's breaker and time limit; the same
    /// text again from the same tenant (a repeated paraphrase, an answer
    /// judged twice) comes from a small cache. The tenant is part of the key:
    /// another tenant's hit would tell, by its latency or the hit counter,
    /// that someone sent that text lately.
    async fn embed(&self, tenant: &str, loaded: &Loaded, text: String) -> Result<Vec<f32>, String> {
        let cache_key = super::embedder::embed_cache_key(tenant, &loaded.info.fingerprint, &text);
        if let Some(v) = self.recent.get(cache_key) {
            self.metrics.embed_cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(v);
        }
        let v = self.embed_uncached(loaded.embedder.as_ref(), text).await?;
        self.recent.put(cache_key, v.clone());
        Ok(v)
    }

    async fn embed_uncached(&self, embedder: &dyn Embedder, text: String) -> Result<Vec<f32>, String> {
        let Some(permit) = self.breaker.admit() else {
            self.metrics.embed_errors.fetch_add(1, Ordering::Relaxed);
            return Err("the embedder's breaker is open".into());
        };
        let started = Instant::now();
        let limit = Duration::from_millis(self.cfg.embed_timeout_ms);
        match tokio::time::timeout(limit, embedder.embed(text)).await {
            Ok(Ok(v)) => {
                permit.success();
                self.metrics.embed_seconds.observe(started.elapsed().as_secs_f64());
                Ok(v)
            }
            Ok(Err(e)) => {
                permit.failure();
                self.metrics.embed_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            Err(_) => {
                permit.failure();
                self.metrics.embed_errors.fetch_add(1, Ordering::Relaxed);
                Err(format!("embedding took over {} ms", limit.as_millis()))
            }
        }
    }

    fn stats_init(p: &Prepared) -> impl FnOnce() -> ScopeStats + '_ {
        move || ScopeStats {
            tenant: p.tenant.clone(),
            namespace: p.namespace.clone(),
            scope: p.scope.clone(),
            mode: p.policy.mode().into(),
            threshold: p.policy.threshold,
            ..Default::default()
        }
    }

    /// The threshold in force for a prepared request: the policy's, raised by
    /// the error budget, raised again by the request's own header.
    pub fn threshold(&self, p: &Prepared, requested: Option<f32>) -> f32 {
        self.budget
            .threshold(&p.scope, p.policy.threshold)
            .max(requested.unwrap_or(0.0))
    }

    /// The stored requests of the same scope that are similar enough and pass
    /// the guards, best first. The caller serves the first whose entry is still
    /// there and reports how it went with [`Semantic::outcome`].
    pub async fn find(&self, p: &Prepared, requested: Option<f32>) -> Found {
        let threshold = self.threshold(p, requested);
        let started = Instant::now();
        let found = self
            .vectors
            .search(&p.collection, &p.scope, p.vector.clone(), self.cfg.top_k)
            .await;
        self.metrics.search_seconds.observe(started.elapsed().as_secs_f64());
        let matches = match found {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "semantic lookup skipped: vector search failed");
                return Found {
                    candidates: Vec::new(),
                    refused: false,
                    unavailable: true,
                };
            }
        };
        let mut out = Found {
            candidates: Vec::new(),
            refused: false,
            unavailable: false,
        };
        let mut rescored = false;
        for mut m in matches {
            // Below the threshold, one candidate may be scored again on its
            // normalised text (`rescore`); the others end the search.
            let again = m.score < threshold;
            if again && (rescored || m.score < super::normalise::RESCORE_FLOOR || !self.guards.normalises()) {
                break;
            }
            // Without a stored text (`store_text = false`), the stored request's.
            let text = match m.text.is_empty() {
                true => match scope::stored_text(&self.cache, m.key).await {
                    Some(t) => t,
                    None => continue,
                },
                false => std::mem::take(&mut m.text),
            };
            if again {
                rescored = true;
                match self.rescore(p, &text).await {
                    Some(score) if score >= threshold => m.score = score,
                    _ => continue,
                }
            }
            match self.guards.check(&p.text, &text) {
                Ok(()) => out.candidates.push(Candidate {
                    key: m.key,
                    score: m.score,
                    text,
                }),
                Err(why) => {
                    out.refused = true;
                    if let Some(i) = REFUSALS.iter().position(|x| *x == why) {
                        self.metrics.refusals[i].fetch_add(1, Ordering::Relaxed);
                    }
                    self.budget.count(&p.scope, Self::stats_init(p), Event::Refused);
                    tracing::debug!(
                        score = m.score,
                        reason = why.as_str(),
                        "semantic candidate refused by the guards"
                    );
                }
            }
        }
        out
    }

    /// The similarity of a new question and a stored one, each normalised
    /// for the other (`normalise::changed`: an acronym and its words, a unit's
    /// abbreviation), when normalisation changes either: a small model scores
    /// `What is an ETF?` far from `What is an exchange-traded fund?`.
    async fn rescore(&self, p: &Prepared, stored: &str) -> Option<f32> {
        let (x, y) = super::normalise::changed(&p.text, stored)?;
        let loaded = self.embedders.get(&p.policy.embedder)?;
        let vx = self.embed(&p.tenant, loaded, x).await.ok()?;
        let vy = self.embed(&p.tenant, loaded, y).await.ok()?;
        self.metrics.rescored.fetch_add(1, Ordering::Relaxed);
        Some(recache_embed::cosine(&vx, &vy))
    }

    /// Counts how a lookup ended: `served` is the candidate answered with (or,
    /// in shadow mode, recorded), if any.
    pub fn outcome(&self, p: &Prepared, found: &Found, served: bool) {
        let l = match (served, p.policy.live) {
            (true, true) => Lookup::Hit,
            (true, false) => Lookup::ShadowHit,
            (false, _) if found.unavailable => Lookup::Unavailable,
            (false, _) if found.refused && found.candidates.is_empty() => Lookup::Refused,
            (false, _) => Lookup::Miss,
        };
        self.metrics.lookup(l);
        match l {
            Lookup::Hit => self.budget.count(&p.scope, Self::stats_init(p), Event::Hit),
            Lookup::ShadowHit => self.budget.count(&p.scope, Self::stats_init(p), Event::ShadowCandidate),
            _ => {}
        }
    }

    /// A candidate that could not be served: when the index says its entry is
    /// gone (deleted, lost), its vector goes too. Kept when the index cannot
    /// tell (down) or the entry is only too old for this request.
    /// Counts a candidate refused after the lookup (its answer calls a tool).
    pub fn refused(&self, why: Refusal) {
        if let Some(i) = REFUSALS.iter().position(|x| *x == why) {
            self.metrics.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn forget_if_gone(self: &Arc<Self>, key: CacheKey) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Ok(None) = me.cache.roles.index.get(key).await {
                let _ = me.vectors.delete(vec![key]).await;
            }
        });
    }

    /// Stores the vector of a freshly stored entry.
    pub async fn remember(&self, p: &Prepared, key: CacheKey, expires_at_ms: i64) {
        if !self.ensure(&p.collection, p.vector.len()).await {
            self.metrics.vector_store_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let point = p.point(key, expires_at_ms);
        match self.vectors.upsert(&p.collection, vec![point]).await {
            Ok(()) => {
                self.metrics.vectors_stored.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics.vector_store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(key = %key, error = %e, "vector not stored; the entry is still cached exactly");
            }
        }
    }

    /// Whether this live semantic hit is also checked against the provider.
    pub fn sample_verification(&self, p: &Prepared) -> bool {
        p.policy.verify_rate > 0.0 && crate::queue::random_unit() < p.policy.verify_rate
    }

    /// Compares a semantic candidate's answer with the provider's fresh answer
    /// once that arrives, and feeds the error budget (in the background).
    pub fn judge_later(
        self: &Arc<Self>,
        p: Arc<Prepared>,
        candidate: Candidate,
        candidate_body: Bytes,
        fresh: tokio::sync::oneshot::Receiver<Bytes>,
        shadow: bool,
    ) {
        let me = self.clone();
        tokio::spawn(async move {
            // Dropped without a body: the provider's call did not complete; nothing to judge.
            let Ok(body) = fresh.await else { return };
            let Some(agreed) = me.agree(&p.tenant, &p.policy.embedder, &candidate_body, &body).await else {
                return;
            };
            me.record_check(&p, &candidate, shadow, agreed).await;
        });
    }

    /// Are two answers the same? (see [`judge`]). `None` when it cannot be told.
    pub async fn agree(&self, tenant: &str, embedder: &str, a: &[u8], b: &[u8]) -> Option<bool> {
        let (ta, tb) = (judge::answer_text(a)?, judge::answer_text(b)?);
        if judge::normalise(&ta) == judge::normalise(&tb) {
            return Some(true);
        }
        let e = self.embedders.get(embedder)?;
        let va = self.embed(tenant, e, ta).await.ok()?;
        let vb = self.embed(tenant, e, tb).await.ok()?;
        let cos: f32 = va.iter().zip(&vb).map(|(x, y)| x * y).sum();
        Some(cos >= self.cfg.answer_similarity)
    }

    async fn record_check(&self, p: &Prepared, c: &Candidate, shadow: bool, agreed: bool) {
        let i = (!shadow as usize) * 2 + (!agreed as usize);
        self.metrics.checks[i].fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            tenant = %p.tenant,
            namespace = %p.namespace,
            kind = if shadow { "shadow" } else { "verification" },
            agreed,
            similarity = c.score,
            "semantic answer compared with the provider's"
        );
        let raised = self.budget.check(
            &p.scope,
            Self::stats_init(p),
            shadow,
            agreed,
            p.policy.error_budget,
            self.cfg.min_samples,
            self.cfg.threshold_step,
            self.cfg.max_threshold,
        );
        let Some(r) = raised else { return };
        self.metrics.threshold_raises.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            tenant = %p.tenant,
            namespace = %p.namespace,
            scope = %p.scope,
            from = r.from,
            to = r.to,
            false_hit_rate = r.rate,
            checks = r.checks,
            error_budget = p.policy.error_budget,
            "semantic false-hit rate over budget: threshold raised"
        );
        self.cache
            .audit(AuditEvent {
                id: event_id(),
                at_ms: now_ms(),
                tenant: Some(p.tenant.clone()),
                actor: "semantic".into(),
                action: "semantic.threshold_raised".into(),
                cache_key: None,
                detail: json!({"namespace": p.namespace, "scope": p.scope, "from": r.from, "to": r.to,
                               "false_hit_rate": r.rate, "checks": r.checks, "error_budget": p.policy.error_budget}),
            })
            .await;
    }

    /// Everything `recache semantic report` shows.
    /// The embedder's breaker (dashboard, doctor).
    pub fn embedder_breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    pub async fn report(&self) -> Report {
        let scopes = self.budget.snapshot();
        let mut tenants: BTreeMap<(String, String), TenantReport> = BTreeMap::new();
        // Configured tenants appear even before their first request.
        for r in &self.cfg.rules {
            let ns = r.namespace.clone().unwrap_or_else(|| "*".into());
            if let Some(p) = self.policy(&r.tenant, r.namespace.as_deref().unwrap_or("default")) {
                tenants
                    .entry((r.tenant.clone(), ns.clone()))
                    .or_insert_with(|| empty_report(&r.tenant, &ns, &p));
            }
        }
        for s in &scopes {
            let Some(p) = self.policy(&s.tenant, &s.namespace) else {
                continue;
            };
            let t = tenants
                .entry((s.tenant.clone(), s.namespace.clone()))
                .or_insert_with(|| empty_report(&s.tenant, &s.namespace, &p));
            t.scopes += 1;
            t.counts.add(&s.counts);
            t.threshold = t.threshold.max(s.threshold);
        }
        // A tenant-wide rule's placeholder row ("*") gives way once its namespaces have rows.
        let with_traffic: HashSet<String> = scopes.iter().map(|s| s.tenant.clone()).collect();
        tenants.retain(|(tenant, ns), _| ns != "*" || !with_traffic.contains(tenant));
        for t in tenants.values_mut() {
            if let Some((rate, ci)) = t.counts.false_hit_rate() {
                t.false_hit_rate = Some(rate);
                t.false_hit_rate_ci95 = Some(ci);
            }
        }
        Report {
            embedders: self.embedders.values().map(|e| e.info.clone()).collect(),
            embedder_breaker: self.breaker.status(),
            vectors_engine: self.vectors.engine().to_string(),
            collections: self.vectors.collections().await.unwrap_or_default(),
            lookups: LOOKUPS
                .iter()
                .map(|l| (l.as_str().to_string(), self.metrics.lookups(*l)))
                .collect(),
            tenants: tenants.into_values().collect(),
            scopes,
        }
    }

    pub fn render_metrics(&self, out: &mut String) {
        self.metrics.render(out, &self.budget.snapshot());
    }
}

fn empty_report(tenant: &str, namespace: &str, p: &Policy) -> TenantReport {
    TenantReport {
        tenant: tenant.to_string(),
        namespace: namespace.to_string(),
        mode: p.mode().into(),
        embedder: p.embedder.clone(),
        scopes: 0,
        counts: Counts::default(),
        false_hit_rate: None,
        false_hit_rate_ci95: None,
        error_budget: p.error_budget,
        base_threshold: p.threshold,
        threshold: p.threshold,
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::SemanticRule;

    fn rule(tenant: &str, namespace: Option<&str>, enabled: Option<bool>, embedder: Option<&str>) -> SemanticRule {
        SemanticRule {
            tenant: tenant.into(),
            namespace: namespace.map(str::to_string),
            enabled,
            mode: None,
            threshold: None,
            embedder: embedder.map(str::to_string),
            verify_rate: None,
            error_budget: None,
        }
    }

    #[test]
    fn rules_inherit_what_they_leave_out() {
        let mut c = SemanticConfig {
            rules: vec![
                rule("a", None, Some(true), None),
                rule("a", Some("ns"), None, Some("other")),
                rule("b", None, None, Some("other")),
                rule("c", None, Some(false), None),
                rule("c", Some("on"), Some(true), None),
            ],
            ..Default::default()
        };
        assert!(resolve(&c, "a", "default").is_some());
        assert_eq!(
            resolve(&c, "a", "ns").unwrap().embedder,
            "other",
            "inherits enabled from the tenant rule"
        );
        assert!(resolve(&c, "b", "default").is_none(), "no `enabled`: the default (off)");
        assert!(resolve(&c, "c", "x").is_none());
        assert!(resolve(&c, "c", "on").is_some());
        assert!(resolve(&c, "z", "default").is_none());
        // Only the embedders of tenants that are on get loaded.
        assert_eq!(used_embedders(&c), vec!["local".to_string(), "other".to_string()]);
        c.enabled = true;
        assert!(resolve(&c, "b", "default").is_some(), "no `enabled`: the default (on)");
    }
}
