//! The Redis index. Only pointers live in Redis, never payloads.
//!
//! Key layout: `<prefix>idx:<64 hex of the cache key>` → a 56-byte value
//! (artifact SHA-256 32 | size u64 LE | created ms i64 LE | expires ms i64 LE),
//! always written with `PX` so every key carries a TTL equal to the entry's
//! remaining life. Redis expires keys itself; `purge_expired` has nothing to do.
//!
//! The connection is made lazily and re-made by the connection manager, so a
//! gateway starts (and serves from the provider) while Redis is down.
//!
//! One server, a Sentinel-managed master or a Cluster: see
//! [`super::redis_topology`]. In a cluster every key hashes on its own (no
//! hash tags), so pointers spread over every master; nothing needs two keys
//! in one slot: batches become concurrent single-key commands, and scans walk
//! each master in turn.

use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::sync::Mutex;

use super::redis_topology::{Conn, Topology};

use super::{now_ms, ArtifactId, BackendError, BoxFuture, CheckInfo, Index, IndexEntry, Result};
use crate::key::CacheKey;

const NAME: &str = "index";
const VALUE_LEN: usize = 56;

pub struct RedisIndex {
    topology: Topology,
    conn: Mutex<Option<Conn>>,
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

/// A reply of a command routed by hand (one node of a cluster), typed.
fn parse<T: redis::FromRedisValue>(v: redis::Value) -> Result<T> {
    redis::from_redis_value(v).map_err(|e| BackendError::Protocol {
        backend: NAME,
        detail: e.to_string(),
    })
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
    /// Parses the URL (`redis://`, `rediss://`, `redis+sentinel://`,
    /// `redis+cluster://`, with user, password and db); does not connect.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self> {
        let topology = Topology::parse(url).map_err(|e| BackendError::Protocol {
            backend: NAME,
            detail: e.to_string(),
        })?;
        Ok(Self {
            topology,
            conn: Mutex::new(None),
            prefix: prefix.to_string(),
            timeout,
            retain: Duration::ZERO,
        })
    }

    /// Keeps keys this long past expiry, so expired entries can still be served stale.
    pub(crate) fn retain_expired_for(mut self, retain: Duration) -> Self {
        self.retain = retain;
        self
    }

    /// The counters' commands onto `pipe`; their Redis names.
    fn push_counters(&self, pipe: &mut redis::Pipeline, ops: &[super::counters::CounterOp]) -> Vec<String> {
        use super::counters::CounterKind;
        let names: Vec<String> = ops.iter().map(|op| format!("{}lim:{}", self.prefix, op.name)).collect();
        for (op, name) in ops.iter().zip(&names) {
            match op.kind {
                CounterKind::Add { by, .. } => {
                    pipe.cmd("INCRBY").arg(name).arg(by);
                }
                CounterKind::AddRenew { by, ttl_ms } => {
                    pipe.cmd("INCRBY").arg(name).arg(by);
                    pipe.cmd("PEXPIRE").arg(name).arg(ttl_ms.max(1)).ignore();
                }
                CounterKind::Read => {
                    pipe.cmd("GET").arg(name);
                }
            }
        }
        names
    }

    /// The counters' values from their replies; a window's life set on the
    /// counters this call created (a second round trip, once per window).
    async fn counter_values(
        &self,
        c: &mut Conn,
        ops: &[super::counters::CounterOp],
        names: &[String],
        replies: Vec<redis::Value>,
    ) -> Result<Vec<i64>> {
        use super::counters::CounterKind;
        let mut out = Vec::with_capacity(ops.len());
        let mut expire = redis::pipe();
        let mut fresh = 0;
        for ((op, name), v) in ops.iter().zip(names).zip(replies) {
            let n = match v {
                redis::Value::Nil => 0,
                v => redis::from_redis_value::<i64>(v).map_err(|e| BackendError::Protocol {
                    backend: NAME,
                    detail: format!("a limit counter: {e}"),
                })?,
            };
            if let CounterKind::Add { by, ttl_ms } = op.kind {
                if n == by {
                    // This call created the counter: its window's life.
                    expire.cmd("PEXPIRE").arg(name).arg(ttl_ms.max(1)).ignore();
                    fresh += 1;
                }
            }
            out.push(n);
        }
        if out.len() != ops.len() {
            return Err(BackendError::Protocol {
                backend: NAME,
                detail: format!("{} replies for {} limit counters", out.len(), ops.len()),
            });
        }
        if fresh > 0 {
            let () = expire.query_async(c).await.map_err(map_err)?;
        }
        Ok(out)
    }

    fn key(&self, key: &CacheKey) -> String {
        format!("{}idx:{}", self.prefix, key.hex())
    }

    /// The shared connection. With Sentinel, one that an error marked stale
    /// (a demoted or lost master) is replaced by one to the master the
    /// sentinels name now.
    async fn conn(&self) -> Result<Conn> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.is_stale()) {
            return Ok(c.clone());
        }
        if guard.take().is_some() {
            tracing::info!(
                topology = self.topology.kind(),
                "redis: connecting again (the server was lost or is no longer the master)"
            );
        }
        let c = self.topology.connect(self.timeout).await.map_err(map_err)?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// `INFO` as key/value pairs, of one node (`None`: the server or the master).
    async fn info(
        &self,
        c: &mut Conn,
        node: Option<&(String, u16)>,
    ) -> Result<std::collections::HashMap<String, String>> {
        let v = match node {
            Some((host, port)) => c.on_node(redis::cmd("INFO"), host, *port).await,
            None => redis::cmd("INFO").query_async(c).await,
        }
        .map_err(map_err)?;
        let text: String = parse(v)?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect())
    }

    /// One page of keys matching `pattern`. In a cluster the cursor names the
    /// master (top 8 bits) and the cursor on it; masters are walked in turn.
    async fn scan_keys(&self, c: &mut Conn, pattern: &str, cursor: u64, count: usize) -> Result<(u64, Vec<String>)> {
        let scan = |cur: u64| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cur).arg("MATCH").arg(pattern).arg("COUNT").arg(count.max(1));
            cmd
        };
        if !c.is_cluster() {
            return scan(cursor).query_async(c).await.map_err(map_err);
        }
        const NODE_SHIFT: u32 = 56;
        let masters = c.primaries().await.map_err(map_err)?;
        let node = (cursor >> NODE_SHIFT) as usize;
        let Some((host, port)) = masters.get(node) else {
            return Ok((0, Vec::new()));
        };
        let v = c
            .on_node(scan(cursor & ((1 << NODE_SHIFT) - 1)), host, *port)
            .await
            .map_err(map_err)?;
        let (next, keys): (u64, Vec<String>) = parse(v)?;
        let next = if next != 0 {
            ((node as u64) << NODE_SHIFT) | next
        } else if node + 1 < masters.len() {
            ((node + 1) as u64) << NODE_SHIFT
        } else {
            0
        };
        Ok((next, keys))
    }
}

/// Advice from the operations guides, checked against a live server.
pub(crate) fn redis_warnings(info: &std::collections::HashMap<String, String>, save: Option<&str>) -> Vec<String> {
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

    /// One pipelined round trip, one command per counter: `INCRBY` (and,
    /// when it created the counter, a `PEXPIRE` in a second round trip:
    /// once per window), `INCRBY` + `PEXPIRE` for a renewed counter, `GET`
    /// for a read. Works on any Redis from 2.6.12
    /// and needs no scripts. The caller names a call's counters with one
    /// hash tag, so a cluster sends the pipeline to one node.
    fn counters_add(&self, ops: Vec<super::counters::CounterOp>) -> BoxFuture<'_, Result<Vec<i64>>> {
        Box::pin(async move {
            if ops.is_empty() {
                return Ok(Vec::new());
            }
            let mut pipe = redis::pipe();
            let names = self.push_counters(&mut pipe, &ops);
            let mut c = self.conn().await?;
            let replies: Vec<redis::Value> = pipe.query_async(&mut c).await.map_err(map_err)?;
            self.counter_values(&mut c, &ops, &names, replies).await
        })
    }

    /// The lookup's `GET` first in the counters' pipeline: one round trip.
    /// In a cluster the pointer and the counters live on different nodes,
    /// so they go as two commands side by side.
    fn get_counting(&self, key: CacheKey, ops: Vec<super::counters::CounterOp>) -> BoxFuture<'_, super::Counted> {
        Box::pin(async move {
            let mut c = match self.conn().await {
                Ok(c) => c,
                Err(e) => return (Err(e.clone()), Err(e)),
            };
            if ops.is_empty() || c.is_cluster() {
                return tokio::join!(self.get(key), self.counters_add(ops));
            }
            let mut pipe = redis::pipe();
            let name = self.key(&key);
            pipe.cmd("GET").arg(&name);
            let names = self.push_counters(&mut pipe, &ops);
            let mut replies: Vec<redis::Value> = match pipe.query_async(&mut c).await {
                Ok(r) => r,
                Err(e) => {
                    let e = map_err(e);
                    return (Err(e.clone()), Err(e));
                }
            };
            if replies.is_empty() {
                let e = BackendError::Protocol {
                    backend: NAME,
                    detail: "an empty reply to a pipeline".into(),
                };
                return (Err(e.clone()), Err(e));
            }
            let got = match replies.remove(0) {
                redis::Value::Nil => Ok(None),
                v => match parse::<Vec<u8>>(v) {
                    Ok(v) => decode(&v).map(Some).ok_or_else(|| BackendError::Corrupt {
                        backend: NAME,
                        detail: format!("bad value for {name}"),
                    }),
                    Err(e) => Err(e),
                },
            };
            let counted = self.counter_values(&mut c, &ops, &names, replies).await;
            (got, counted)
        })
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

    /// One pipelined round trip of `DEL`s (side by side in a cluster).
    fn delete_many(&self, keys: Vec<CacheKey>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(0);
            }
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("DEL").arg(self.key(k));
            }
            let mut c = self.conn().await?;
            let replies: Vec<i64> = if c.is_cluster() {
                futures_util::stream::iter(pipe.cmd_iter().cloned())
                    .map(|cmd| {
                        let mut c = c.clone();
                        async move { cmd.query_async::<i64>(&mut c).await }
                    })
                    .buffer_unordered(64)
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<std::result::Result<_, _>>()
                    .map_err(map_err)?
            } else {
                pipe.query_async(&mut c).await.map_err(map_err)?
            };
            Ok(replies.iter().sum::<i64>() as u64)
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
            if c.is_cluster() {
                // A pipeline is one slot in a cluster: send the commands on their own, together.
                let replies: Vec<Option<String>> = futures_util::stream::iter(pipe.cmd_iter().cloned())
                    .map(|cmd| {
                        let mut c = c.clone();
                        async move { cmd.query_async::<Option<String>>(&mut c).await }
                    })
                    .buffer_unordered(64)
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .collect::<std::result::Result<_, _>>()
                    .map_err(map_err)?;
                return Ok(replies.iter().filter(|r| r.is_some()).count() as u64);
            }
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
            let (next, keys) = self.scan_keys(&mut c, &pattern, cursor, limit).await?;
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
                let (next, keys) = self.scan_keys(&mut c, &pattern, cursor, 1000).await?;
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
            // Every master of a cluster is checked against the guides' advice; else the server.
            let masters = c.primaries().await.map_err(map_err)?;
            let nodes: Vec<Option<&(String, u16)>> = if masters.is_empty() {
                vec![None]
            } else {
                masters.iter().map(Some).collect()
            };
            let (mut version, mut warnings) = (None, Vec::new());
            for node in nodes {
                let info = self.info(&mut c, node).await?;
                // CONFIG may be disabled on managed Redis; then the persistence check is skipped.
                let mut config = redis::cmd("CONFIG");
                config.arg("GET").arg("save");
                let save: Option<String> = match node {
                    Some((host, port)) => c.on_node(config, host, *port).await,
                    None => config.query_async(&mut c).await,
                }
                .ok()
                .and_then(|v| parse::<Vec<String>>(v).ok())
                .and_then(|v| v.get(1).cloned());
                version = version.or_else(|| info.get("redis_version").map(|v| format!("Redis {v}")));
                for w in redis_warnings(&info, save.as_deref()) {
                    let w = match node {
                        Some((host, port)) => format!("{host}:{port}: {w}"),
                        None => w,
                    };
                    if !warnings.contains(&w) {
                        warnings.push(w);
                    }
                }
            }
            let version = match (self.topology.kind(), version) {
                ("cluster", Some(v)) => Some(format!("{v} (cluster of {} masters)", masters.len())),
                ("sentinel", Some(v)) => Some(format!("{v} (master named by Sentinel)")),
                (_, v) => v,
            };
            Ok(CheckInfo {
                version,
                entries: self.count().await.ok(),
                warnings,
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
