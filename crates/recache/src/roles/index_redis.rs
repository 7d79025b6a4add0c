//! The Redis index. Only pointers live in Redis, never payloads.
//!
//! Key layout: `<prefix>idx:<64 hex of the cache key>` → a 56-byte value
//! (artifact SHA-256 32 | size u64 LE | created ms i64 LE | expires ms i64 LE),
//! always written with `PX` so every key carries a TTL equal to the entry's
//! remaining life. Redis expires keys itself; `purge_expired` has nothing to do.
//!
//! The connection is made lazily and re-made by the connection manager, so a
//! gateway starts (and serves from the provider) while Redis is down.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use tokio::sync::Mutex;

use super::{now_ms, ArtifactId, BackendError, BoxFuture, CheckInfo, Index, IndexEntry, Result};
use crate::key::CacheKey;

const NAME: &str = "index";
const VALUE_LEN: usize = 56;

pub struct RedisIndex {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
    /// Keys live this long past their entry's expiry (for `stale-if-error`).
    retain: Duration,
}

fn map_err(e: redis::RedisError) -> BackendError {
    if e.code() == Some("OOM") {
        // Redis is alive but full: the write fails, reads go on (not a breaker failure).
        BackendError::Rejected {
            backend: NAME,
            detail: e.to_string(),
        }
    } else if e.is_timeout() {
        BackendError::Timeout {
            backend: NAME,
            after_ms: 0,
        }
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        BackendError::unavailable(NAME, e)
    } else {
        BackendError::Protocol {
            backend: NAME,
            detail: e.to_string(),
        }
    }
}

fn encode(e: &IndexEntry) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_LEN);
    v.extend_from_slice(&e.artifact.0);
    v.extend_from_slice(&e.size.to_le_bytes());
    v.extend_from_slice(&e.created_at_ms.to_le_bytes());
    v.extend_from_slice(&e.expires_at_ms.to_le_bytes());
    v
}

fn decode(v: &[u8]) -> Option<IndexEntry> {
    if v.len() != VALUE_LEN {
        return None;
    }
    let n = |r: std::ops::Range<usize>| i64::from_le_bytes(v[r].try_into().unwrap_or([0; 8]));
    Some(IndexEntry {
        artifact: ArtifactId(v[..32].try_into().ok()?),
        size: n(32..40) as u64,
        created_at_ms: n(40..48),
        expires_at_ms: n(48..56),
    })
}

impl RedisIndex {
    /// Parses the URL (`redis://`, `rediss://`, with user, password and db);
    /// does not connect.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|e| BackendError::Protocol {
            backend: NAME,
            detail: e.to_string(),
        })?;
        Ok(Self {
            client,
            conn: Mutex::new(None),
            prefix: prefix.to_string(),
            timeout,
            retain: Duration::ZERO,
        })
    }

    /// Keeps keys this long past expiry, so expired entries can still be served stale.
    pub fn retain_expired_for(mut self, retain: Duration) -> Self {
        self.retain = retain;
        self
    }

    fn key(&self, key: &CacheKey) -> String {
        format!("{}idx:{}", self.prefix, key.hex())
    }

    async fn conn(&self) -> Result<ConnectionManager> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(self.timeout.max(Duration::from_millis(200))))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let c = ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .map_err(map_err)?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// `INFO` as key/value pairs.
    async fn info(&self) -> Result<std::collections::HashMap<String, String>> {
        let mut c = self.conn().await?;
        let text: String = redis::cmd("INFO").query_async(&mut c).await.map_err(map_err)?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect())
    }
}

/// Advice from the operations guides, checked against a live server.
pub fn redis_warnings(info: &std::collections::HashMap<String, String>, save: Option<&str>) -> Vec<String> {
    let mut w = Vec::new();
    let num = |k: &str| info.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let aof = info.get("aof_enabled").map(|v| v == "1").unwrap_or(false);
    if !aof && save.is_some_and(|s| s.trim().is_empty()) {
        w.push("persistence is off (no RDB save points, AOF disabled): a restart empties the index (rebuilt from metadata, but hits drop meanwhile)".into());
    }
    let max = num("maxmemory");
    if max == 0.0 {
        w.push("maxmemory is unset: Redis can grow until the host runs out of memory".into());
    } else {
        let used = num("used_memory");
        if used / max > 0.8 {
            w.push(format!(
                "memory use is {:.0}% of maxmemory (over 80%)",
                used / max * 100.0
            ));
        }
    }
    match info.get("maxmemory_policy").map(String::as_str) {
        Some("noeviction") => {
            w.push("maxmemory-policy is noeviction: index writes fail once memory is full (use volatile-lru or allkeys-lru; every recache key has a TTL)".into())
        }
        Some(p) if p.starts_with("volatile-") => {}
        _ => {}
    }
    w
}

impl Index for RedisIndex {
    fn engine(&self) -> &'static str {
        "redis"
    }

    fn get(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<IndexEntry>>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let v: Option<Vec<u8>> = c.get(self.key(&key)).await.map_err(map_err)?;
            match v {
                None => Ok(None),
                Some(v) => decode(&v).map(Some).ok_or_else(|| BackendError::Corrupt {
                    backend: NAME,
                    detail: format!("bad value for {}", self.key(&key)),
                }),
            }
        })
    }

    fn put(&self, key: CacheKey, entry: IndexEntry) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let ttl = entry.expires_at_ms + self.retain.as_millis() as i64 - now_ms();
            if ttl <= 0 {
                return Ok(());
            }
            let mut c = self.conn().await?;
            let _: () = redis::cmd("SET")
                .arg(self.key(&key))
                .arg(encode(&entry))
                .arg("PX")
                .arg(ttl)
                .query_async(&mut c)
                .await
                .map_err(map_err)?;
            Ok(())
        })
    }

    fn delete(&self, key: CacheKey) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let n: i64 = c.del(self.key(&key)).await.map_err(map_err)?;
            Ok(n > 0)
        })
    }

    fn purge_expired(&self, _before_ms: i64) -> BoxFuture<'_, Result<u64>> {
        // Every key was written with PX: Redis expires them itself.
        Box::pin(async { Ok(0) })
    }

    fn count(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            // Keys in the database (recache's and anything else sharing it).
            let mut c = self.conn().await?;
            let n: u64 = redis::cmd("DBSIZE").query_async(&mut c).await.map_err(map_err)?;
            Ok(n)
        })
    }

    fn put_many(&self, entries: Vec<(CacheKey, IndexEntry)>, if_absent: bool) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let now = now_ms();
            let retain = self.retain.as_millis() as i64;
            let mut pipe = redis::pipe();
            let mut sent = 0;
            for (key, entry) in &entries {
                let ttl = entry.expires_at_ms + retain - now;
                if ttl <= 0 {
                    continue;
                }
                let cmd = pipe.cmd("SET").arg(self.key(key)).arg(encode(entry)).arg("PX").arg(ttl);
                if if_absent {
                    cmd.arg("NX");
                }
                sent += 1;
            }
            if sent == 0 {
                return Ok(0);
            }
            let mut c = self.conn().await?;
            let replies: Vec<Option<String>> = pipe.query_async(&mut c).await.map_err(map_err)?;
            Ok(replies.iter().filter(|r| r.is_some()).count() as u64)
        })
    }

    fn get_many(&self, keys: Vec<CacheKey>) -> BoxFuture<'_, Result<Vec<Option<IndexEntry>>>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut c = self.conn().await?;
            let names: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&names)
                .query_async(&mut c)
                .await
                .map_err(map_err)?;
            Ok(values.into_iter().map(|v| v.and_then(|v| decode(&v))).collect())
        })
    }

    fn scan(&self, cursor: u64, limit: usize) -> BoxFuture<'_, Result<super::ScanPage>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let pattern = format!("{}idx:*", self.prefix);
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(limit.max(1))
                .query_async(&mut c)
                .await
                .map_err(map_err)?;
            if keys.is_empty() {
                return Ok((Vec::new(), next));
            }
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut c)
                .await
                .map_err(map_err)?;
            let skip = pattern.len() - 1;
            let page = keys
                .iter()
                .zip(values)
                .filter_map(|(k, v)| {
                    let key = CacheKey::from_hex(k.get(skip..)?)?;
                    Some((key, decode(&v?)?))
                })
                .collect();
            Ok((page, next))
        })
    }

    /// Every key under the prefix (pointers and the generation marker), as a flush would.
    fn wipe(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let pattern = format!("{}*", self.prefix);
            let (mut cursor, mut n) = (0u64, 0u64);
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c)
                    .await
                    .map_err(map_err)?;
                if !keys.is_empty() {
                    let removed: u64 = redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async(&mut c)
                        .await
                        .map_err(map_err)?;
                    n += removed;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            Ok(n)
        })
    }

    fn generation(&self) -> BoxFuture<'_, Result<Option<String>>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            c.get(format!("{}generation", self.prefix)).await.map_err(map_err)
        })
    }

    /// The marker has no TTL: under `volatile-*` eviction it is never evicted,
    /// so its absence means the data went (a restart without persistence, a flush).
    fn set_generation(&self, generation: String) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            c.set(format!("{}generation", self.prefix), generation)
                .await
                .map_err(map_err)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(async move {
            let mut c = self.conn().await?;
            let pong: String = redis::cmd("PING").query_async(&mut c).await.map_err(map_err)?;
            if pong != "PONG" {
                return Err(BackendError::Protocol {
                    backend: NAME,
                    detail: format!("PING answered {pong}"),
                });
            }
            let info = self.info().await?;
            // CONFIG may be disabled on managed Redis; then the persistence check is skipped.
            let save: Option<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("save")
                .query_async::<Vec<String>>(&mut c)
                .await
                .ok()
                .and_then(|v| v.get(1).cloned());
            Ok(CheckInfo {
                version: info.get("redis_version").map(|v| format!("Redis {v}")),
                entries: self.count().await.ok(),
                warnings: redis_warnings(&info, save.as_deref()),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn guide_warnings() {
        let healthy = info(&[
            ("aof_enabled", "1"),
            ("maxmemory", "1000"),
            ("used_memory", "100"),
            ("maxmemory_policy", "volatile-lru"),
        ]);
        assert!(redis_warnings(&healthy, Some("3600 1")).is_empty());
        let w = redis_warnings(&info(&[("aof_enabled", "0"), ("maxmemory", "0")]), Some(""));
        assert!(
            w.iter().any(|w| w.contains("persistence is off")) && w.iter().any(|w| w.contains("maxmemory is unset")),
            "{w:?}"
        );
        let w = redis_warnings(
            &info(&[
                ("aof_enabled", "0"),
                ("maxmemory", "1000"),
                ("used_memory", "900"),
                ("maxmemory_policy", "noeviction"),
            ]),
            Some("3600 1"),
        );
        assert!(
            w.iter().any(|w| w.contains("over 80%")) && w.iter().any(|w| w.contains("noeviction")),
            "{w:?}"
        );
        assert_eq!(w.len(), 2, "RDB save points count as persistence: {w:?}");
        // CONFIG unavailable (managed Redis): no persistence verdict.
        assert!(redis_warnings(&info(&[("aof_enabled", "0"), ("maxmemory", "10")]), None).is_empty());
    }

    #[test]
    fn pointer_encoding_round_trips() {
        let e = IndexEntry {
            artifact: ArtifactId([7; 32]),
            size: 9,
            created_at_ms: -1,
            expires_at_ms: i64::MAX,
        };
        assert_eq!(decode(&encode(&e)), Some(e));
        assert_eq!(decode(&[0; 55]), None);
    }
}
