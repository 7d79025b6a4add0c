//! The request path and the admin API: the handlers and the state they share.
//! The routers are composed in `crate::routes`.

use std::sync::Arc;
use std::time::Instant;

use recache_core::config::Config;
use recache_engine::cache::Cache;
use recache_engine::upstream::Upstreams;

pub mod admin_entries;
pub mod admin_keys;
pub mod auth;
pub mod directives;
pub mod flight;
pub mod limits;
pub mod ops;
pub mod proxy;
pub mod semantic;
pub mod tape;

pub use recache_core::endpoint::{cost_usd, Endpoint};

/// Everything a request handler needs.
pub struct AppState {
    pub config: Arc<Config>,
    pub cache: Arc<Cache>,
    pub upstreams: Arc<Upstreams>,
    pub tenants: auth::Tenants,
    /// Tenant and key limits (requests, tokens, concurrency, budgets).
    pub limiter: Arc<limits::Limiter>,
    pub coalescer: Arc<flight::Coalescer>,
    pub admin_token: Option<String>,
    /// What `/metrics` and detailed health need (`None`: open).
    pub metrics_token: Option<String>,
    /// The last engine health round (`/health/ready`, the dashboard).
    pub health: ops::HealthRound,
    pub started: Instant,
    /// The warmer's queue and job kinds (admin API, metrics).
    pub recovery: Arc<recache_ops::recovery::Recovery>,
    /// Semantic matching, when some tenant has it on.
    pub semantic: Option<Arc<recache_engine::semantic::Semantic>>,
    /// The dashboard's history ring and backup/drill status.
    pub dashboard: Arc<crate::dashboard::Dashboard>,
}

impl AppState {
    /// USD cost of a call, from the price table (exact model, else the longest prefix).
    pub fn price(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        cost_usd(&self.config.prices, model, prompt_tokens, completion_tokens)
    }
}
