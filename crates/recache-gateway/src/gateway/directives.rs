//! Per-request cache directives: `Cache-Control` (`no-cache`, `no-store`,
//! `max-age=N`, `stale-if-error=N`, `only-if-cached`), `x-recache-ttl` (seconds to keep the answer) and
//! `x-recache-namespace` (a partition inside the tenant), and for semantic
//! matching `x-recache-semantic: off` and `x-recache-semantic-threshold`
//! (a stricter threshold for this request; it can only raise the configured one).

use axum::http::{header, HeaderMap};

use recache_engine::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
pub struct Directives {
    /// Skip the lookup and refresh the entry.
    pub no_cache: bool,
    /// Do not store the answer.
    pub no_store: bool,
    /// Answer from the cache or not at all (504): never call the provider.
    pub only_if_cached: bool,
    /// Accept only entries at most this many seconds old.
    pub max_age: Option<u64>,
    /// Serve an entry expired at most this long ago if the provider fails.
    pub stale_if_error: Option<u64>,
    /// Keep the answer this many seconds (capped by `cache.max_ttl_seconds`).
    pub ttl: Option<u64>,
    pub namespace: String,
    /// `x-recache-semantic: off`: exact matching only for this request.
    pub semantic_off: bool,
    /// `x-recache-semantic-threshold`: a stricter similarity threshold.
    pub semantic_threshold: Option<f32>,
}

fn bad(msg: String) -> ApiError {
    ApiError::InvalidRequest(msg)
}

pub fn parse(headers: &HeaderMap, max_ttl: u64) -> Result<Directives, ApiError> {
    let mut d = Directives {
        no_cache: false,
        no_store: false,
        only_if_cached: false,
        max_age: None,
        stale_if_error: None,
        ttl: None,
        namespace: "default".into(),
        semantic_off: false,
        semantic_threshold: None,
    };
    for value in headers.get_all(header::CACHE_CONTROL) {
        let text = value.to_str().map_err(|_| bad("Cache-Control is not ASCII".into()))?;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, arg) = match part.split_once('=') {
                Some((n, a)) => (n.trim().to_ascii_lowercase(), Some(a.trim().trim_matches('"'))),
                None => (part.to_ascii_lowercase(), None),
            };
            match (name.as_str(), arg) {
                ("no-cache", _) => d.no_cache = true,
                ("no-store", _) => d.no_store = true,
                ("only-if-cached", _) => d.only_if_cached = true,
                ("max-age", Some(a)) => {
                    d.max_age =
                        Some(a.parse().map_err(|_| {
                            bad(format!("Cache-Control max-age '{a}' is not a whole number of seconds"))
                        })?)
                }
                ("max-age", None) => return Err(bad("Cache-Control max-age needs a value".into())),
                ("stale-if-error", Some(a)) => {
                    d.stale_if_error = Some(a.parse().map_err(|_| {
                        bad(format!(
                            "Cache-Control stale-if-error '{a}' is not a whole number of seconds"
                        ))
                    })?)
                }
                ("stale-if-error", None) => return Err(bad("Cache-Control stale-if-error needs a value".into())),
                // Other directives (private, no-transform, ...) do not apply to a gateway cache.
                _ => {}
            }
        }
    }
    if let Some(v) = headers.get("x-recache-ttl") {
        let t: u64 = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|t| *t > 0)
            .ok_or_else(|| bad("x-recache-ttl must be a whole number of seconds above 0".into()))?;
        if t > max_ttl {
            return Err(bad(format!(
                "x-recache-ttl {t} is over the maximum of {max_ttl} seconds"
            )));
        }
        d.ttl = Some(t);
    }
    if let Some(v) = headers.get("x-recache-namespace") {
        let ns = v.to_str().unwrap_or("");
        if !valid_namespace(ns) {
            return Err(bad(NAMESPACE_RULE.into()));
        }
        d.namespace = ns.to_string();
    }
    if let Some(v) = headers.get("x-recache-semantic") {
        d.semantic_off = match v.to_str().unwrap_or("").trim().to_ascii_lowercase().as_str() {
            "off" => true,
            "on" => false,
            _ => return Err(bad("x-recache-semantic must be 'on' or 'off'".into())),
        };
    }
    if let Some(v) = headers.get("x-recache-semantic-threshold") {
        let t: f32 = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|t: &f32| (0.0..=1.0).contains(t))
            .ok_or_else(|| bad("x-recache-semantic-threshold must be a number between 0 and 1".into()))?;
        d.semantic_threshold = Some(t);
    }
    Ok(d)
}

/// What a namespace may be (a repository name such as `org/repo` is one).
pub const NAMESPACE_RULE: &str = "x-recache-namespace must be 1-128 characters of A-Z a-z 0-9 - _ . /";

pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 128
        && ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn parses_directives() {
        let d = parse(
            &h(&[("cache-control", "No-Cache, max-age=30"), ("cache-control", "no-store")]),
            100,
        )
        .unwrap();
        assert!(d.no_cache && d.no_store);
        assert_eq!(d.max_age, Some(30));
        assert!(parse(&h(&[("cache-control", "max-age=abc")]), 100).is_err());
        assert!(parse(&h(&[("x-recache-ttl", "101")]), 100).is_err());
        assert!(parse(&h(&[("x-recache-ttl", "0")]), 100).is_err());
        assert_eq!(parse(&h(&[("x-recache-ttl", "5")]), 100).unwrap().ttl, Some(5));
        assert!(parse(&h(&[("x-recache-namespace", "a b")]), 100).is_err());
        assert!(parse(&h(&[("x-recache-semantic", "OFF")]), 100).unwrap().semantic_off);
        assert!(parse(&h(&[("x-recache-semantic", "maybe")]), 100).is_err());
        assert_eq!(
            parse(&h(&[("x-recache-semantic-threshold", "0.97")]), 100)
                .unwrap()
                .semantic_threshold,
            Some(0.97)
        );
        assert!(parse(&h(&[("x-recache-semantic-threshold", "1.5")]), 100).is_err());
    }
}
