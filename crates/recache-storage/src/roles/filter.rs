//! Which entries a purge or an erasure takes: one tenant, optionally
//! narrowed by namespace, model, creation time and cache-key prefix. The
//! metadata engines turn it into a `WHERE` clause; [`EntryFilter::matches`]
//! is the same test in memory (spooled entries, conformance).

use serde::{Deserialize, Serialize};

use super::EntryRecord;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryFilter {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Entries created before this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_ms: Option<i64>,
    /// A prefix of the cache key, in lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

impl EntryFilter {
    pub fn tenant(tenant: impl Into<String>) -> Self {
        EntryFilter {
            tenant: tenant.into(),
            ..Default::default()
        }
    }

    /// Checks what the engines cannot: a tenant, and a key prefix of hex digits.
    pub fn validate(&self) -> Result<(), String> {
        if self.tenant.is_empty() {
            return Err("a purge needs a tenant".into());
        }
        if let Some(p) = &self.key_prefix {
            if p.is_empty() || p.len() > 64 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("key prefix '{p}' must be 1 to 64 hex digits"));
            }
        }
        Ok(())
    }

    /// The key range `[low, high)` the prefix spans (all keys without one).
    /// `g` sorts after every lowercase hex digit.
    pub fn key_range(&self) -> (String, String) {
        match &self.key_prefix {
            Some(p) => {
                let p = p.to_ascii_lowercase();
                (p.clone(), format!("{p}g"))
            }
            None => (String::new(), "g".into()),
        }
    }

    pub fn matches(&self, e: &EntryRecord) -> bool {
        let (low, high) = self.key_range();
        let key = e.key.hex();
        e.tenant == self.tenant
            && self.namespace.as_ref().is_none_or(|n| *n == e.namespace)
            && self.model.as_ref().is_none_or(|m| *m == e.model)
            && self.before_ms.is_none_or(|t| e.created_at_ms < t)
            && key >= low
            && key < high
    }
}
