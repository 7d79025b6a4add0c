//! `[[tenants]]`, their limits, the keys kept in metadata (`[keys]`) and how
//! limits are enforced (`[limits]`); see "Tenant controls" in `docs/operations.md`.

use serde::{Deserialize, Serialize};

use super::ToolCallAnswers;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// The tenant's stable identity in cache keys and stored entries
    /// (default: the name). Set it before renaming a tenant, to the old name,
    /// so the renamed tenant keeps its entries; never give a retired tenant's
    /// id to a new one, which would inherit its entries.
    #[serde(default)]
    pub id: Option<String>,
    /// Client keys: `sha256:<hex>` (preferred) or a plain key (accepted with a
    /// warning). May be empty when the tenant's keys are created with `recache keys create`.
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub default_ttl_seconds: Option<u64>,
    /// Serve an expired entry up to this many seconds past expiry when the
    /// provider fails (requests can ask with `Cache-Control: stale-if-error=N`).
    #[serde(default)]
    pub stale_if_error_seconds: Option<u64>,
    /// Overrides `[cache] tool_call_answers` for this tenant.
    #[serde(default)]
    pub tool_call_answers: Option<ToolCallAnswers>,
    /// Requests per minute (hits included).
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Provider tokens per minute (hits never count).
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Requests in progress at once.
    #[serde(default)]
    pub max_concurrent: Option<u64>,
    /// Provider spend per UTC day, in USD (hits never count).
    #[serde(default)]
    pub budget_usd_day: Option<f64>,
    /// Provider spend per UTC calendar month, in USD.
    #[serde(default)]
    pub budget_usd_month: Option<f64>,
    /// The models the tenant may ask for (exact names or `prefix*`; none: any).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// The upstreams (by name) its requests may go to (none: any).
    #[serde(default)]
    pub upstreams: Option<Vec<String>>,
}

impl TenantConfig {
    /// The stable id: `id`, else the name.
    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.name)
    }

    /// The tenant's own limits.
    pub fn limits(&self) -> Limits {
        Limits {
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
            budget_usd_day: self.budget_usd_day,
            budget_usd_month: self.budget_usd_month,
            models: self.models.clone(),
            upstreams: self.upstreams.clone(),
        }
    }
}

/// Limits of a tenant or of one key. A request must be within both its
/// tenant's and its key's: the stricter wins.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd_day: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd_month: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstreams: Option<Vec<String>>,
}

impl Limits {
    /// No limit of any kind.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Whether `model` is on the allow-list (exact or `prefix*`; no list: yes).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|l| l.iter().any(|p| pattern_matches(p, model)))
    }

    /// Whether the upstream named `name` is on the allow-list (no list: yes).
    pub fn allows_upstream(&self, name: &str) -> bool {
        self.upstreams.as_ref().is_none_or(|l| l.iter().any(|u| u == name))
    }

    /// What is wrong with these limits, if anything.
    pub fn check(&self) -> Result<(), String> {
        for (what, v) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("max_concurrent", self.max_concurrent),
        ] {
            if v == Some(0) {
                return Err(format!("{what} must be above 0 (leave it out for no limit)"));
            }
        }
        for (what, v) in [
            ("budget_usd_day", self.budget_usd_day),
            ("budget_usd_month", self.budget_usd_month),
        ] {
            if v.is_some_and(|x| !x.is_finite() || x < 0.0) {
                return Err(format!("{what} must be a number of USD, 0 or more"));
            }
        }
        if self.models.as_ref().is_some_and(|l| l.iter().any(|m| m.is_empty())) {
            return Err("models: an empty model pattern".into());
        }
        Ok(())
    }
}

/// An exact model name, or `prefix*`.
pub fn pattern_matches(pattern: &str, model: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix),
        None => pattern == model,
    }
}

/// `[keys]`: client keys kept in metadata (`recache keys create`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// How long a replica trusts what it read of a key (a revocation reaches
    /// every replica within this; the replica that revoked it at once).
    pub cache_seconds: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self { cache_seconds: 30 }
    }
}

/// What a replica does while the shared limit counters cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CounterLoss {
    /// Each replica enforces its share of each limit (limit ÷ live replicas).
    #[default]
    LocalShare,
    /// Requests that a limit applies to are refused (503) until the counters return.
    FailClosed,
    /// Limits are not enforced until the counters return.
    FailOpen,
}

impl CounterLoss {
    pub fn as_str(self) -> &'static str {
        match self {
            CounterLoss::LocalShare => "local-share",
            CounterLoss::FailClosed => "fail-closed",
            CounterLoss::FailOpen => "fail-open",
        }
    }
}

/// `[limits]`: how tenant and key limits are enforced.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A tenant over its spend budget is still answered from the cache.
    pub serve_hits_over_budget: bool,
    pub on_counter_loss: CounterLoss,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            serve_hits_over_budget: true,
            on_counter_loss: CounterLoss::LocalShare,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_and_checks() {
        let l = Limits {
            models: Some(vec!["gpt-4o-mini".into(), "claude-*".into()]),
            upstreams: Some(vec!["stub".into()]),
            ..Limits::default()
        };
        assert!(l.allows_model("gpt-4o-mini") && l.allows_model("claude-sonnet-4-5"));
        assert!(!l.allows_model("gpt-4o") && !l.allows_model("gemini-2.5-flash"));
        assert!(l.allows_upstream("stub") && !l.allows_upstream("other"));
        assert!(Limits::default().allows_model("anything") && Limits::default().is_empty());
        assert!(Limits {
            rpm: Some(0),
            ..Limits::default()
        }
        .check()
        .is_err());
        assert!(Limits {
            budget_usd_day: Some(-1.0),
            ..Limits::default()
        }
        .check()
        .is_err());
        assert!(l.check().is_ok());
        let json = serde_json::to_string(&Limits {
            rpm: Some(5),
            ..Limits::default()
        })
        .unwrap();
        assert_eq!(json, r#"{"rpm":5}"#);
    }
}
