//! Health, metrics and the admin API.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use recache_core::key::CacheKey;
use recache_core::prom::{Family, Kind};
use recache_engine::error::ApiError;
use recache_engine::metrics::rss_bytes;
use recache_storage::roles::{now_ms, AuditEvent, RoleHealth};

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// How often the engines are probed for `/health/ready` and the dashboard,
/// whatever the request rate (an S3 probe is a PUT, a GET and a DELETE).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// The last health round: at most one probe of the engines per
/// [`HEALTH_INTERVAL`]; callers in between get the last result.
#[derive(Default)]
pub struct HealthRound {
    last: std::sync::Mutex<Option<(std::time::Instant, Arc<Vec<RoleHealth>>)>>,
    running: tokio::sync::Mutex<()>,
    /// Probes run (`cache_health_probes_total`).
    pub probes: std::sync::atomic::AtomicU64,
}

impl HealthRound {
    fn fresh(&self) -> Option<Arc<Vec<RoleHealth>>> {
        let g = self.last.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref()
            .filter(|(at, _)| at.elapsed() < HEALTH_INTERVAL)
            .map(|(_, h)| h.clone())
    }

    /// The roles' health from the last round, probing again when it is older than the interval.
    pub async fn get(&self, roles: &recache_storage::roles::Roles) -> Arc<Vec<RoleHealth>> {
        if let Some(h) = self.fresh() {
            return h;
        }
        // One probe at a time: the others wait for it and take its result.
        let _running = self.running.lock().await;
        if let Some(h) = self.fresh() {
            return h;
        }
        let h = Arc::new(roles.health(Duration::from_millis(500)).await);
        self.probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((std::time::Instant::now(), h.clone()));
        h
    }
}

/// Whether the request carries the token `/metrics` and detailed health need
/// (`server.metrics_token_env`, else the admin token). With neither
/// configured they are open, and the gateway says so at start.
fn metrics_authorized(s: &AppState, headers: &HeaderMap) -> bool {
    s.metrics_token.as_deref().is_none_or(|token| bearer_is(headers, token))
}

/// `/health/ready`. The gateway stays ready while any backend is down: it
/// still answers every request from the provider, so the status says
/// `degraded` and the code stays 200. Without the metrics token only the
/// status is shown (no engines, paths or bucket names).
pub async fn ready(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Json<serde_json::Value> {
    ready_body(&s, metrics_authorized(&s, &headers)).await
}

/// `/health/ready` on the ops listener: always in detail.
pub(crate) async fn ops_ready(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    ready_body(&s, true).await
}

async fn ready_body(s: &AppState, detail: bool) -> Json<serde_json::Value> {
    let roles = s.health.get(&s.cache.roles).await;
    let degraded = roles.iter().any(|r| r.status == "down");
    let status = if degraded { "degraded" } else { "ready" };
    if !detail {
        return Json(json!({ "status": status }));
    }
    // Breaker states are read now (the probe results may be a few seconds old).
    let roles: Vec<RoleHealth> = roles
        .iter()
        .map(|r| RoleHealth {
            breaker: s.cache.roles.breaker(r.role).map(|b| b.status()),
            ..r.clone()
        })
        .collect();
    Json(json!({
        "status": status,
        "uptime_seconds": s.started.elapsed().as_secs(),
        "roles": roles,
    }))
}

/// `/metrics`: needs the metrics token when one is configured.
pub async fn metrics(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !metrics_authorized(&s, &headers) {
        return ApiError::MetricsUnauthorized.into_response();
    }
    render_metrics(&s).await
}

/// `/metrics` on the ops listener.
pub(crate) async fn ops_metrics(State(s): State<Arc<AppState>>) -> Response {
    render_metrics(&s).await
}

async fn render_metrics(s: &AppState) -> Response {
    let entries = s.cache.roles.index.count().await.unwrap_or(0) as f64;
    let mut extra = vec![
        (
            "process_resident_memory_bytes",
            "Resident memory of the gateway process.",
            rss_bytes() as f64,
        ),
        ("cache_index_entries", "Entries in the index.", entries),
        (
            "cache_flights_in_progress",
            "Provider calls in flight (with the stores of answers already sent).",
            s.coalescer.in_flight() as f64,
        ),
        (
            "cache_stores_in_progress",
            "Answers sent to clients whose store is still running (answer first, store after).",
            s.coalescer.storing() as f64,
        ),
        (
            "process_uptime_seconds",
            "Seconds since the gateway started.",
            s.started.elapsed().as_secs_f64(),
        ),
    ];
    extra.extend(s.cache.roles.artifacts.gauges());
    let mut body = s.cache.metrics.render(&extra);
    {
        let mut f = Family::counter(
            &mut body,
            "upstream_connection_retries_total",
            "Provider calls sent again because their connection failed before any response (upstreams.connection_retries).",
        );
        for (name, n) in s.upstreams.retried_calls() {
            f.sample(&[("upstream", &name)], n);
        }
    }
    Family::counter(
        &mut body,
        "cache_health_probes_total",
        &format!(
            "Health rounds that probed the engines (at most one per {} s).",
            HEALTH_INTERVAL.as_secs()
        ),
    )
    .sample(&[], s.health.probes.load(std::sync::atomic::Ordering::Relaxed));
    let statuses: Vec<_> = s.cache.roles.breakers.iter().map(|b| b.status()).collect();
    type Value = fn(&recache_core::breaker::BreakerStatus) -> u64;
    let families: [(&str, Kind, &str, Value); 3] = [
        (
            "cache_breaker_state",
            Kind::Gauge,
            "Circuit breaker state: 0 closed, 1 open, 2 half_open, 3 forced_open, 4 disabled.",
            |b| b.state.code() as u64,
        ),
        (
            "cache_breaker_transitions_total",
            Kind::Counter,
            "Circuit breaker state changes.",
            |b| b.transitions,
        ),
        (
            "cache_breaker_rejections_total",
            Kind::Counter,
            "Calls skipped because the breaker was open.",
            |b| b.rejections,
        ),
    ];
    for (name, kind, help, value) in families {
        let mut f = Family::new(&mut body, name, kind, help);
        for b in &statuses {
            f.sample(&[("backend", b.backend)], value(b));
        }
    }
    if let Some(spool) = &s.cache.spool {
        let (entries, audit) = spool.dropped();
        Family::counter(
            &mut body,
            "metadata_spool_dropped_total",
            "Spool records dropped at metadata.spool_max_mb (entries are restored by reconcile-metadata).",
        )
        .sample(&[("record", "entry")], entries)
        .sample(&[("record", "audit")], audit);
        Family::gauge(
            &mut body,
            "metadata_spool_bytes",
            "Metadata writes waiting in the spool (metadata was unreachable).",
        )
        .sample(&[], spool.size_bytes());
    }
    render_ops_status(s, &mut body);
    render_limits(s, &mut body).await;
    render_warmer(s, &mut body).await;
    if let Some(sem) = &s.semantic {
        sem.render_metrics(&mut body);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Each tenant's and live key's use against each limit, refusals by limit,
/// and admissions while the shared counters were out.
async fn render_limits(s: &AppState, body: &mut String) {
    let (use_now, _) = limit_usage(s).await;
    let mut f = Family::gauge(
        body,
        "recache_limit_used",
        "Use of a tenant's or key's limit in its current window (requests or tokens this minute, requests in flight, USD this day or month).",
    );
    for u in &use_now {
        f.sample(&[("tenant", &u.tenant), ("key", &u.key), ("limit", u.limit)], u.used);
    }
    let mut f = Family::gauge(
        body,
        "recache_limit_max",
        "A tenant's or key's limit, in the unit of recache_limit_used.",
    );
    for u in &use_now {
        f.sample(&[("tenant", &u.tenant), ("key", &u.key), ("limit", u.limit)], u.max);
    }
    use std::sync::atomic::Ordering::Relaxed;
    let l = &s.limiter;
    let mut f = Family::counter(
        body,
        "recache_limit_refusals_total",
        "Requests refused by a tenant or key limit, by the limit's code.",
    );
    for (code, n) in super::limits::CODES.iter().zip(&l.refusals) {
        f.sample(&[("limit", code)], n.load(Relaxed));
    }
    Family::gauge(
        body,
        "recache_limit_replicas",
        "Live gateway replicas (heartbeat rows in metadata): each holds limit / replicas while the shared counters are out (local-share).",
    )
    .sample(&[], l.replicas.load(Relaxed));
    Family::counter(
        body,
        "recache_limit_fallback_admissions_total",
        "Requests admitted while the shared limit counters were unreachable ([limits] on_counter_loss).",
    )
    .sample(
        &[("mode", s.config.limits.on_counter_loss.as_str())],
        l.fallbacks.load(Relaxed),
    );
}

/// How long `/metrics` and the dashboard wait for the key list and the
/// counters: a hung backend must never hold a scrape (the last key list read
/// stands in for metadata; no limit rows while the index does not answer).
const LIMIT_READ: std::time::Duration = std::time::Duration::from_millis(200);

/// Use against each limit now, for every tenant and every live metadata key,
/// and the keys it was read for.
pub async fn limit_usage(
    s: &AppState,
) -> (
    Vec<super::limits::LimitUse>,
    Vec<recache_storage::roles::keys::KeyRecord>,
) {
    let keys = match tokio::time::timeout(LIMIT_READ, s.cache.roles.metadata.list_keys(None)).await {
        Ok(Ok(keys)) => {
            s.limiter.remember_keys(keys.clone());
            keys
        }
        _ => s.limiter.last_keys(),
    };
    let usage = tokio::time::timeout(LIMIT_READ, s.limiter.usage(&s.tenants.all(), &keys))
        .await
        .unwrap_or_default();
    (usage, keys)
}

/// Backup and drill gauges (for the alert rules), from the status the gateway
/// reads every minute; left out until it has been read once.
fn render_ops_status(s: &AppState, body: &mut String) {
    Family::gauge(body, "recache_build_info", "The running release.")
        .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1);
    let ops = s.dashboard.ops.get();
    let mut gauge = |name: &str, help: &str, v: Option<f64>| {
        if let Some(v) = v {
            Family::gauge(body, name, help).sample(&[], v);
        }
    };
    let secs = |ms: Option<i64>| ms.map(|m| m as f64 / 1000.0);
    if let Some(b) = &ops.backup {
        gauge(
            "recache_backup_last_timestamp_seconds",
            "Start time of the newest complete backup set (Unix seconds).",
            secs(b.newest_at_ms),
        );
        gauge(
            "recache_backup_last_verified_timestamp_seconds",
            "Start time of the newest backup set that passed verification (Unix seconds).",
            secs(b.newest_verified_at_ms),
        );
        gauge(
            "recache_backup_rpo_seconds",
            "The RPO target (backup.rpo).",
            b.rpo_seconds.map(|r| r as f64),
        );
    }
    if let Some(d) = &ops.drill {
        if d.error.is_none() {
            gauge(
                "recache_drill_last_pass_timestamp_seconds",
                "Time of the last DR drill that passed (Unix seconds); 0 when none has.",
                Some(secs(d.last_pass_at_ms).unwrap_or(0.0)),
            );
            gauge(
                "recache_drill_overdue_scenarios",
                "DR drill scenarios past their cadence (quarterly; full restore twice a year).",
                Some(d.overdue.len() as f64),
            );
        }
    }
}

/// Job gauges by kind and state, attempt outcomes, progress of running jobs.
async fn render_warmer(s: &AppState, body: &mut String) {
    let r = &s.recovery;
    let counts = tokio::time::timeout(Duration::from_millis(500), r.queue.counts()).await;
    let mut f = Family::gauge(body, "warmer_jobs", "Jobs in the queue by kind and state.");
    if let Ok(Ok(counts)) = counts {
        for kind in r.kinds() {
            for state in recache_storage::queue::JobState::ALL {
                let n: u64 = counts
                    .iter()
                    .filter(|c| c.kind == kind && c.state == state)
                    .map(|c| c.count)
                    .sum();
                f.sample(&[("kind", kind), ("state", state.as_str())], n);
            }
        }
    }
    let mut f = Family::counter(
        body,
        "warmer_job_attempts_total",
        "Job attempts by kind and how they ended.",
    );
    for ((kind, outcome), n) in r.outcome_counts() {
        f.sample(&[("kind", &kind), ("outcome", &outcome)], n);
    }
    let progress = r.progress.snapshot();
    let mut f = Family::gauge(
        body,
        "warmer_job_progress",
        "Items done by running jobs of this process (rebuild progress).",
    );
    for (kind, done, _) in &progress {
        f.sample(&[("kind", kind)], done);
    }
    let mut f = Family::gauge(
        body,
        "warmer_job_progress_ratio",
        "Done over total for running jobs that know their total.",
    );
    for (kind, done, total) in &progress {
        if let Some(t) = total.filter(|t| *t > 0) {
            f.sample(&[("kind", kind)], *done as f64 / t as f64);
        }
    }
}

#[derive(serde::Deserialize)]
pub struct JobsQuery {
    state: Option<String>,
    limit: Option<u32>,
}

/// `GET /admin/jobs`: jobs (running first), counts by kind and state, live workers.
pub(crate) async fn admin_jobs(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<JobsQuery>,
) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let state = match q.state.as_deref() {
            None | Some("") | Some("all") => None,
            Some(x) => Some(recache_storage::queue::JobState::parse(x).ok_or_else(|| {
                ApiError::InvalidRequest(format!(
                    "unknown state '{x}' (queued, running, succeeded, failed, dead)"
                ))
            })?),
        };
        let internal = |e: recache_engine::error::BackendError| ApiError::Internal(e.to_string());
        let q_ = &s.recovery.queue;
        let jobs = q_
            .list(state, q.limit.unwrap_or(100).min(10_000))
            .await
            .map_err(internal)?;
        let counts = q_.counts().await.map_err(internal)?;
        let mut workers = q_.workers(now_ms() - 30_000).await.map_err(internal)?;
        workers.retain(|w| !recache_storage::queue::worker::is_gateway(&w.owner));
        Ok(Json(json!({"jobs": jobs, "counts": counts, "workers": workers})).into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `GET /admin/jobs/{id}`: one job, with its state and result (what a
/// caller that enqueued it waits on).
pub(crate) async fn admin_job(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        match s.recovery.queue.get(id).await {
            Ok(Some(job)) => Ok(Json(json!({"job": job})).into_response()),
            Ok(None) => Err(ApiError::NotFound {
                method: "GET".into(),
                path: format!("/admin/jobs/{id}"),
            }),
            Err(e) => Err(ApiError::Internal(e.to_string())),
        }
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody {
    kind: String,
    #[serde(default)]
    payload: Option<serde_json::Value>,
    #[serde(default)]
    priority: Option<i64>,
}

/// `POST /admin/jobs`: enqueue a job (`{"kind": "rebuild-index"}`, or any kind with its payload).
pub(crate) async fn admin_enqueue(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let b: EnqueueBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::InvalidRequest(format!(
                "body must be {{\"kind\": ..., \"payload\"?: ..., \"priority\"?: n}}: {e}"
            ))
        })?;
        use recache_ops::recovery::jobs;
        let kinds = s.recovery.kinds();
        if !kinds.contains(&b.kind.as_str()) {
            return Err(ApiError::InvalidRequest(format!(
                "unknown job kind '{}' ({})",
                b.kind,
                kinds.join(", ")
            )));
        }
        let mut job = recache_storage::queue::NewJob::new(&b.kind, b.payload.unwrap_or_else(|| json!({})))
            .priority(b.priority.unwrap_or_else(|| jobs::default_priority(&b.kind)))
            .max_attempts(s.config.warmer.max_attempts);
        if b.kind != jobs::WARM {
            // One live job per kind from the admin API: pressing the button twice is harmless.
            job = job.unique(format!("{}:admin", b.kind));
        }
        let e = s
            .recovery
            .queue
            .enqueue(job)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Json(json!({"job": e.id, "created": e.created})).into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

pub(crate) fn check_admin(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match &s.admin_token {
        Some(token) if bearer_is(headers, token) => Ok(()),
        _ => Err(ApiError::AdminUnauthorized),
    }
}

/// Whether the request's `Authorization: Bearer` is `token` (compared in constant time).
pub(crate) fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
}

/// Compares secrets in time that does not depend on where they differ (`subtle`).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

fn parse_key(k: &str) -> Result<CacheKey, ApiError> {
    CacheKey::from_hex(k).ok_or_else(|| ApiError::InvalidRequest("cache key must be 64 hex digits".into()))
}

pub async fn admin_entry(State(s): State<Arc<AppState>>, headers: HeaderMap, Path(key): Path<String>) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let key = parse_key(&key)?;
        let entry = s
            .cache
            .roles
            .metadata
            .get_entry(key)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let indexed = s.cache.roles.index.get(key).await.ok().flatten().is_some();
        match entry {
            Some(e) => Ok(Json(json!({"entry": e, "indexed": indexed})).into_response()),
            None => Err(ApiError::NotFound {
                method: "GET".into(),
                path: format!("/admin/entries/{}", key.hex()),
            }),
        }
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

pub(crate) async fn admin_delete_entry(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let key = parse_key(&key)?;
        let internal = |e: recache_engine::error::BackendError| ApiError::Internal(e.to_string());
        let in_index = s.cache.roles.index.delete(key).await.map_err(internal)?;
        let entry = s.cache.roles.metadata.get_entry(key).await.map_err(internal)?;
        let in_meta = s.cache.roles.metadata.delete_entry(key).await.map_err(internal)?;
        if let Some(e) = &entry {
            let _ = s.cache.roles.artifacts.delete(e.artifact).await;
        }
        if s.cache.roles.vectors.enabled() {
            let _ = s.cache.roles.vectors.delete(vec![key]).await;
        }
        s.cache
            .audit(AuditEvent {
                id: format!("admin-{}-{}", now_ms(), key.hex()),
                at_ms: now_ms(),
                tenant: entry.as_ref().map(|e| e.tenant.clone()),
                actor: "admin".into(),
                action: "entry.delete".into(),
                cache_key: Some(key.hex()),
                detail: json!({"index": in_index, "metadata": in_meta}),
            })
            .await;
        Ok(Json(json!({"deleted": in_index || in_meta})).into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

#[derive(serde::Deserialize)]
pub struct AuditQuery {
    limit: Option<u32>,
}

pub(crate) async fn admin_audit(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let events = s
            .cache
            .roles
            .metadata
            .recent_audit(q.limit.unwrap_or(100).min(10_000))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Json(json!({"events": events})).into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}

/// `GET /admin/semantic`: the semantic report (what `recache semantic report` prints).
pub(crate) async fn admin_semantic(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_admin(&s, &headers) {
        return e.into_response();
    }
    match &s.semantic {
        Some(sem) => Json(json!({"enabled": true, "report": sem.report().await})).into_response(),
        None => Json(json!({"enabled": false, "vectors_engine": s.cache.roles.vectors.engine()})).into_response(),
    }
}

pub(crate) async fn admin_breakers(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(e) = check_admin(&s, &headers) {
        return e.into_response();
    }
    let statuses: Vec<_> = s.cache.roles.breakers.iter().map(|b| b.status()).collect();
    Json(json!({"breakers": statuses})).into_response()
}

/// `POST /admin/breakers/{backend}/{open|reset}`: force a breaker open (drills) or reset it.
#[derive(serde::Deserialize)]
pub struct BreakerQuery {
    /// `open` only: the breaker closes by itself after this many seconds.
    pub seconds: Option<u64>,
}

pub(crate) async fn admin_breaker_action(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((backend, action)): Path<(String, String)>,
    Query(q): Query<BreakerQuery>,
) -> Response {
    let run = async {
        check_admin(&s, &headers)?;
        let b = s.cache.roles.breaker(&backend).ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "unknown backend '{backend}' (index, artifacts, vectors, metadata)"
            ))
        })?;
        match action.as_str() {
            "open" => match q.seconds {
                Some(0) => return Err(ApiError::InvalidRequest("seconds must be at least 1".into())),
                Some(n) => b.force_open_for(std::time::Duration::from_secs(n)),
                None => b.force_open(),
            },
            "reset" => b.reset(),
            other => {
                return Err(ApiError::InvalidRequest(format!(
                    "unknown action '{other}' (open, reset)"
                )))
            }
        }
        s.cache
            .audit(AuditEvent {
                id: format!("admin-breaker-{}-{backend}-{action}-{}", now_ms(), std::process::id()),
                at_ms: now_ms(),
                tenant: None,
                actor: "admin".into(),
                action: format!("breaker.{action}"),
                cache_key: None,
                detail: json!({"backend": backend, "seconds": q.seconds}),
            })
            .await;
        Ok(Json(json!({"breaker": b.status()})).into_response())
    };
    run.await.unwrap_or_else(|e: ApiError| e.into_response())
}
