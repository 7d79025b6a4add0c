//! Loading the configuration: the file, the `RECACHE_<SECTION>__<KEY>`
//! overrides, and the validation that runs before any I/O.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::*;

impl Config {
    /// Reads `path`, applies environment overrides from `env`, and validates.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<(Config, Warnings), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
        Self::from_toml_str(&text, env)
    }

    pub fn from_toml_str(text: &str, env: &HashMap<String, String>) -> Result<(Config, Warnings), ConfigError> {
        let mut value: toml::Value =
            toml::from_str(text).map_err(|e| ConfigError(format!("invalid config: {}", one_line(&e.to_string()))))?;
        apply_env_overrides(&mut value, env)?;
        let mut config: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("invalid config: {}", one_line(&e.to_string()))))?;
        let warnings = config.validate(env)?;
        config.encryption.keys = config.master_keys(env).map_err(ConfigError)?;
        Ok((config, warnings))
    }

    fn validate_drill(&self) -> Result<(), ConfigError> {
        self.drill.validate().map_err(ConfigError)
    }

    fn validate_backup(&self) -> Result<(), ConfigError> {
        let b = &self.backup;
        if b.deployment.is_empty() || b.deployment.contains('/') {
            return err(format!(
                "backup.deployment: '{}' must be a non-empty name without '/'",
                b.deployment
            ));
        }
        if !matches!(b.verify_level.as_str(), "structure" | "read-data" | "restore") {
            return err(format!(
                "backup.verify_level: '{}' (expected structure, read-data or restore)",
                b.verify_level
            ));
        }
        for (name, v) in [
            ("schedule", &b.schedule),
            ("rpo", &b.rpo),
            ("prune_grace", &Some(b.prune_grace.clone())),
        ] {
            if let Some(v) = v {
                let d = crate::time::parse_duration(v).map_err(|e| ConfigError(format!("backup.{name}: {e}")))?;
                if name == "schedule" && d.as_secs() < 10 {
                    return err("backup.schedule must be at least 10s");
                }
            }
        }
        if b.schedule.is_some() && b.target.is_none() {
            return err("backup.schedule is set but backup.target is not");
        }
        if b.keep_last == 0 {
            return err("backup.keep_last must be at least 1");
        }
        if b.parallel == 0 {
            return err("backup.parallel must be at least 1");
        }
        Ok(())
    }

    fn validate_semantic(&self) -> Result<(), ConfigError> {
        let s = &self.semantic;
        let modes = |m: &str| matches!(m, "live" | "shadow");
        if !modes(&s.mode) {
            return err(format!("semantic.mode: '{}' (expected live or shadow)", s.mode));
        }
        if !matches!(s.guards.as_str(), "strict" | "lexical") {
            return err(format!("semantic.guards: '{}' (expected strict or lexical)", s.guards));
        }
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                err(format!("{name} must be between 0 and 1 (got {v})"))
            }
        };
        unit("semantic.threshold", s.threshold as f64)?;
        unit("semantic.max_threshold", s.max_threshold as f64)?;
        unit("semantic.verify_rate", s.verify_rate)?;
        unit("semantic.error_budget", s.error_budget)?;
        unit("semantic.answer_similarity", s.answer_similarity as f64)?;
        if s.top_k == 0 || s.max_chars == 0 || s.embed_timeout_ms == 0 {
            return err("semantic.top_k, max_chars and embed_timeout_ms must be above 0");
        }
        for (name, e) in &s.embedders {
            match e.kind.as_str() {
                "local" if e.path.is_none() => return err(format!("semantic.embedders.{name}: kind local needs path")),
                "provider" => {
                    let up = e.upstream.as_deref().unwrap_or("");
                    if !self.upstreams.iter().any(|u| u.name == up) {
                        return err(format!(
                            "semantic.embedders.{name}: upstream '{up}' is not in [[upstreams]]"
                        ));
                    }
                    if e.model.is_none() || e.dimension.unwrap_or(0) == 0 {
                        return err(format!(
                            "semantic.embedders.{name}: kind provider needs model and dimension"
                        ));
                    }
                }
                "local" if !matches!(e.weights.as_str(), "f32" | "int8") => {
                    return err(format!(
                        "semantic.embedders.{name}.weights: '{}' (expected f32 or int8)",
                        e.weights
                    ))
                }
                "local" => {}
                other => {
                    return err(format!(
                        "semantic.embedders.{name}: unknown kind '{other}' (expected local or provider)"
                    ))
                }
            }
        }
        let uses_semantic = s.enabled || s.rules.iter().any(|r| r.enabled.unwrap_or(s.enabled));
        for (i, r) in s.rules.iter().enumerate() {
            if let Some(m) = &r.mode {
                if !modes(m) {
                    return err(format!("semantic.rules[{i}].mode: '{m}' (expected live or shadow)"));
                }
            }
            if let Some(t) = r.threshold {
                unit(&format!("semantic.rules[{i}].threshold"), t as f64)?;
            }
            if let Some(e) = &r.embedder {
                if !s.embedders.contains_key(e) {
                    return err(format!(
                        "semantic.rules[{i}].embedder: '{e}' is not in [semantic.embedders]"
                    ));
                }
            }
        }
        if !s.embedders.contains_key(&s.embedder) {
            return err(format!(
                "semantic.embedder: '{}' is not in [semantic.embedders]",
                s.embedder
            ));
        }
        if uses_semantic && self.vectors.engine == VectorsEngine::Disabled {
            return err("semantic matching is enabled but vectors.engine = \"disabled\"; set it to \"embedded\"");
        }
        Ok(())
    }

    /// Checks everything that can be checked without I/O, section by section.
    pub fn validate(&self, env: &HashMap<String, String>) -> Result<Warnings, ConfigError> {
        let mut warnings = Vec::new();
        self.validate_server(env)?;
        self.validate_stores()?;
        self.validate_backup()?;
        self.backup_signing_key(env)
            .map_err(|e| ConfigError(format!("backup.signing_key_env: {e}")))?;
        self.validate_drill()?;
        self.validate_vectors()?;
        self.validate_limits()?;
        self.validate_encryption(env)?;
        self.validate_semantic()?;
        self.validate_upstreams(env)?;
        self.validate_tenants(&mut warnings)?;
        if self.cache.default_ttl_seconds == 0 || self.cache.max_ttl_seconds == 0 {
            return err("cache.default_ttl_seconds and cache.max_ttl_seconds must be above 0");
        }
        for (model, p) in &self.prices {
            if !(p.input >= 0.0 && p.output >= 0.0) {
                return err(format!("prices.{model}: prices must be non-negative numbers"));
            }
        }
        Ok(warnings)
    }

    /// `[server]`.
    fn validate_server(&self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return err(format!(
                "server.listen: '{}' is not an address like 127.0.0.1:8080",
                self.server.listen
            ));
        }
        if self.server.max_body_bytes == 0 {
            return err("server.max_body_bytes must be above 0");
        }
        let srv = &self.server;
        if srv.header_timeout_ms == 0
            || srv.body_timeout_ms == 0
            || srv.idle_timeout_ms == 0
            || srv.max_concurrent_requests == 0
        {
            return err(
                "server.header_timeout_ms, body_timeout_ms, idle_timeout_ms and max_concurrent_requests must be above 0",
            );
        }
        if let Some(ops) = &srv.ops_listen {
            if ops.parse::<std::net::SocketAddr>().is_err() {
                return err(format!(
                    "server.ops_listen: '{ops}' is not an address like 127.0.0.1:9090"
                ));
            }
        }
        if let Some(var) = &srv.metrics_token_env {
            if env.get(var).is_none_or(|v| v.is_empty()) {
                return err(format!("server.metrics_token_env: {var} is not set"));
            }
        }
        Ok(())
    }

    /// `[index]`, `[artifacts]` and `[metadata]`: what each engine needs.
    fn validate_stores(&self) -> Result<(), ConfigError> {
        match self.index.engine {
            IndexEngine::Embedded => {}
            IndexEngine::Redis => {
                let url = self
                    .index
                    .url
                    .as_deref()
                    .ok_or_else(|| ConfigError("index.url is required for engine redis".into()))?;
                if url.starts_with("redis+sentinel://") || url.starts_with("redis+cluster://") {
                    // Host lists are not URLs: the topology parser checks them.
                    redis_url::RedisUrl::parse(url)
                        .map_err(|e| ConfigError(format!("index.url: '{}': {e}", redact(url))))?;
                } else {
                    check_url(
                        "index.url",
                        url,
                        &["redis", "rediss", "redis+sentinel", "redis+cluster"],
                    )?;
                }
            }
        }
        match self.artifacts.engine {
            ArtifactsEngine::Embedded => {
                let a = &self.artifacts;
                if !(1..=4096).contains(&a.segment_mb) {
                    return err("artifacts.segment_mb must be 1-4096");
                }
                if a.segment_max_item_kb > 1024 * 1024 {
                    return err("artifacts.segment_max_item_kb must be at most 1048576 (1 GiB)");
                }
                if !(a.segment_compact_ratio > 0.0 && a.segment_compact_ratio <= 1.0) {
                    return err("artifacts.segment_compact_ratio must be above 0 and at most 1");
                }
            }
            ArtifactsEngine::S3 => {
                if self.artifacts.bucket.as_deref().is_none_or(str::is_empty) {
                    return err("artifacts.bucket is required for engine s3");
                }
                if let Some(e) = &self.artifacts.endpoint {
                    check_url("artifacts.endpoint", e, &["http", "https"])?;
                }
            }
        }
        match self.metadata.engine {
            MetadataEngine::Embedded => {}
            MetadataEngine::Postgres => {
                let url = self
                    .metadata
                    .url
                    .as_deref()
                    .ok_or_else(|| ConfigError("metadata.url is required for engine postgres".into()))?;
                check_url("metadata.url", url, &["postgres", "postgresql"])?;
            }
        }
        let (answers, admin) = (
            self.metadata.audit_retention_days,
            self.metadata.admin_audit_retention_days,
        );
        // The operations record (purges, erasures, key changes) is never kept for less
        // time than the per-answer events: that is what an audit asks for first.
        if admin > 0 && (answers == 0 || admin < answers) {
            return Err(ConfigError(format!(
                "metadata.admin_audit_retention_days ({admin}) must be 0 (kept forever) or at least \
                 metadata.audit_retention_days ({}): admin events are never kept for less time than \
                 per-answer events",
                if answers == 0 {
                    "0, kept forever".to_string()
                } else {
                    answers.to_string()
                }
            )));
        }
        Ok(())
    }

    /// `[vectors]`.
    fn validate_vectors(&self) -> Result<(), ConfigError> {
        let prefix = &self.vectors.collection_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        {
            return err("vectors.collection_prefix must be 1-64 characters of a-z 0-9 - _ .");
        }
        if self.vectors.ivf_nprobe == 0 || self.vectors.ivf_min_points == 0 {
            return err("vectors.ivf_nprobe and vectors.ivf_min_points must be above 0");
        }
        match self.vectors.engine {
            VectorsEngine::Disabled | VectorsEngine::Embedded => {}
            VectorsEngine::Qdrant => {
                match self.vectors.url.as_deref() {
                    None | Some("") => return err(
                        "vectors.engine = \"qdrant\" needs vectors.url (its gRPC address, e.g. http://127.0.0.1:6334)",
                    ),
                    Some(u) => check_url("vectors.url", u, &["http", "https"])?,
                }
            }
        }
        Ok(())
    }

    /// Timeouts, `[breaker]` and `[warmer]`.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        for (name, t) in [
            ("index", self.index.timeout_ms),
            ("artifacts", self.artifacts.timeout_ms),
            ("metadata", self.metadata.timeout_ms),
        ] {
            if t == 0 {
                return err(format!("{name}.timeout_ms must be above 0"));
            }
        }
        if self.breaker.failure_threshold == 0 || self.breaker.close_after_successes == 0 {
            return err("breaker.failure_threshold and breaker.close_after_successes must be above 0");
        }
        for b in BREAKER_BACKENDS {
            let o = self.breaker.for_backend(b);
            if o.failure_threshold == 0 || o.close_after_successes == 0 {
                return err(format!(
                    "breaker.{b}.failure_threshold and breaker.{b}.close_after_successes must be above 0"
                ));
            }
        }
        let w = &self.warmer;
        if w.concurrency == 0 || w.heartbeat_ms == 0 || w.poll_ms == 0 || w.max_attempts == 0 || w.page_size == 0 {
            return err("warmer.concurrency, heartbeat_ms, poll_ms, max_attempts and page_size must be above 0");
        }
        if w.max_spend_usd_per_hour.is_nan() || w.max_spend_usd_per_hour < 0.0 {
            return err("warmer.max_spend_usd_per_hour must be a non-negative number");
        }
        Ok(())
    }

    /// `[[upstreams]]`.
    fn validate_upstreams(&self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        if self.upstreams.is_empty() {
            return err("no [[upstreams]] configured: recache needs at least one provider to forward to");
        }
        let mut names = std::collections::HashSet::new();
        for u in &self.upstreams {
            if !names.insert(u.name.as_str()) {
                return err(format!("upstreams: duplicate name '{}'", u.name));
            }
            let url = url::Url::parse(&u.base_url).map_err(|e| {
                ConfigError(format!(
                    "upstreams.{}.base_url: '{}' is not a URL: {e}",
                    u.name, u.base_url
                ))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return err(format!("upstreams.{}.base_url: scheme must be http or https", u.name));
            }
            if let Some(var) = &u.api_key_env {
                match env.get(var) {
                    Some(v) if !v.is_empty() => {}
                    _ => return err(format!("upstreams.{}: API key env var {var} is not set", u.name)),
                }
            }
            if u.models.is_empty() {
                return err(format!("upstreams.{}.models is empty", u.name));
            }
            if u.timeout_ms == 0 {
                return err(format!("upstreams.{}.timeout_ms must be above 0", u.name));
            }
            if u.connection_retries > 5 {
                return err(format!("upstreams.{}.connection_retries must be 0-5", u.name));
            }
            if u.max_response_bytes < 1024 {
                return err(format!("upstreams.{}.max_response_bytes must be at least 1024", u.name));
            }
        }
        Ok(())
    }

    /// `[[tenants]]`: names, ids and keys unique; plain keys are warned about.
    fn validate_tenants(&self, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        if self.tenants.is_empty() {
            warnings.push("no [[tenants]] configured: every request will be refused with 401".into());
        }
        let mut seen_keys = HashMap::new();
        let mut tenant_names = std::collections::HashSet::new();
        let mut tenant_ids = std::collections::HashSet::new();
        for t in &self.tenants {
            if t.name.is_empty() || !tenant_names.insert(t.name.as_str()) {
                return err(format!("tenants: empty or duplicate tenant name '{}'", t.name));
            }
            let id = t.id();
            if id.is_empty() || !tenant_ids.insert(id) {
                return err(format!(
                    "tenants.{}: empty or duplicate tenant id '{id}' (ids default to the name)",
                    t.name
                ));
            }
            t.limits()
                .check()
                .map_err(|e| ConfigError(format!("tenants.{}: {e}", t.name)))?;
            for k in &t.keys {
                let hash = key_hash(k).map_err(|e| ConfigError(format!("tenants.{}: {e}", t.name)))?;
                if !k.starts_with("sha256:") {
                    warnings.push(format!(
                        "tenants.{}: a plain client key is in the config; store it as sha256:{hash} instead",
                        t.name
                    ));
                }
                if let Some(other) = seen_keys.insert(hash, t.name.clone()) {
                    return err(format!(
                        "tenants: the same client key is given to '{other}' and '{}'",
                        t.name
                    ));
                }
            }
            if t.default_ttl_seconds == Some(0) {
                return err(format!(
                    "tenants.{}.default_ttl_seconds must be above 0: every entry expires",
                    t.name
                ));
            }
        }
        Ok(())
    }

    /// The backup signing key, when `backup.signing_key_env` names one
    /// (`Err`: the variable is not set, or holds too short a key).
    pub fn backup_signing_key(&self, env: &HashMap<String, String>) -> Result<Option<Vec<u8>>, String> {
        let Some(var) = &self.backup.signing_key_env else {
            return Ok(None);
        };
        match env.get(var).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Err(format!("{var} is not set")),
            Some(v) if v.len() < 32 => Err(format!(
                "{var} holds {} bytes; a signing key needs at least 32 (e.g. `openssl rand -base64 32`)",
                v.len()
            )),
            Some(v) => Ok(Some(v.as_bytes().to_vec())),
        }
    }

    /// The token `/metrics` and detailed health need: `metrics_token_env`'s, else the admin token.
    pub fn metrics_token(&self, env: &HashMap<String, String>) -> Option<String> {
        match &self.server.metrics_token_env {
            Some(var) => env.get(var).filter(|v| !v.is_empty()).cloned(),
            None => self.admin_token(env),
        }
    }

    /// The admin token, if its env var is set.
    pub fn admin_token(&self, env: &HashMap<String, String>) -> Option<String> {
        env.get(&self.server.admin_token_env).filter(|v| !v.is_empty()).cloned()
    }
}

fn check_url(name: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let u = url::Url::parse(url).map_err(|e| ConfigError(format!("{name}: '{}' is not a URL: {e}", redact(url))))?;
    if !schemes.contains(&u.scheme()) {
        return err(format!("{name}: scheme must be one of {}", schemes.join(", ")));
    }
    Ok(())
}

/// A URL with its password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        // A host list (`redis+cluster://user:pass@h1,h2`): hide the userinfo.
        Err(_) => match url.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => {
                let hosts = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
                format!("{scheme}://***@{hosts}")
            }
            Some(_) => url.to_string(),
            None => "<unparseable URL>".into(),
        },
    }
}

/// Hex SHA-256 of a client key, from either `sha256:<hex>` or the plain key.
pub fn key_hash(k: &str) -> Result<String, String> {
    if let Some(hex) = k.strip_prefix("sha256:") {
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("'{k}' is not sha256: followed by 64 hex digits"));
        }
        Ok(hex.to_ascii_lowercase())
    } else if k.is_empty() {
        Err("empty client key".into())
    } else {
        Ok(hex::encode(Sha256::digest(k.as_bytes())))
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Applies `RECACHE_<SECTION>__<KEY>[__<KEY>...]` variables. Array indices are
/// numbers (`RECACHE_UPSTREAMS__0__BASE_URL`). Values are parsed as TOML
/// (numbers, booleans, arrays) and fall back to a string.
fn apply_env_overrides(root: &mut toml::Value, env: &HashMap<String, String>) -> Result<(), ConfigError> {
    let mut vars: Vec<(&String, &String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("RECACHE_") && k.contains("__"))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name["RECACHE_".len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(|p| p.is_empty()) {
            return err(format!("environment override {name}: empty path segment"));
        }
        let value = parse_env_value(raw);
        set_path(root, &path, value).map_err(|e| ConfigError(format!("environment override {name}: {e}")))?;
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_path(node: &mut toml::Value, path: &[String], value: toml::Value) -> Result<(), String> {
    let (head, rest) = path.split_first().ok_or("empty path")?;
    match node {
        toml::Value::Table(t) => {
            if rest.is_empty() {
                t.insert(head.clone(), value);
                return Ok(());
            }
            let child = t.entry(head.clone()).or_insert_with(|| {
                if rest[0].parse::<usize>().is_ok() {
                    toml::Value::Array(Vec::new())
                } else {
                    toml::Value::Table(Default::default())
                }
            });
            set_path(child, rest, value)
        }
        toml::Value::Array(a) => {
            let i: usize = head.parse().map_err(|_| format!("'{head}' is not an array index"))?;
            if i > a.len() {
                return Err(format!("array index {i} skips entries (array has {})", a.len()));
            }
            if i == a.len() {
                a.push(toml::Value::Table(Default::default()));
            }
            if rest.is_empty() {
                a[i] = value;
                return Ok(());
            }
            set_path(&mut a[i], rest, value)
        }
        _ => Err(format!("'{head}' is inside a value that is not a table")),
    }
}
