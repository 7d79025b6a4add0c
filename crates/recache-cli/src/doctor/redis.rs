//! Redis (the index): persistence, memory limit and use, eviction policy,
//! client headroom, replication.

use std::collections::HashMap;
use std::time::Duration;

use super::{pct, Finding};

const PERSIST: &str = "Redis prevention: AOF persistence with appendfsync everysec, plus RDB snapshots";
const MEMORY: &str = "Redis prevention: set maxmemory; alert on memory use over 80 %";
const EVICTION: &str = "Redis prevention: configure an eviction policy; every key has a TTL";
const CLIENTS: &str = "Redis prevention: alert on connections over 80 % of maxclients";
const HA: &str = "Redis prevention: Sentinel or Cluster for automatic failover";
const REACH: &str = "Redis recovery: verify connectivity first";

/// What was read from the server: `INFO` fields and `CONFIG GET` values
/// (`None` when CONFIG is disabled, as on some managed services).
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub info: HashMap<String, String>,
    pub config: Option<HashMap<String, String>>,
}

pub async fn read(url: &str) -> Result<Observed, String> {
    let client = redis::Client::open(url).map_err(|e| format!("bad index.url: {e}"))?;
    let work = async {
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let text: String = redis::cmd("INFO")
            .arg("everything")
            .query_async(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        let info = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        let mut config = HashMap::new();
        let mut allowed = true;
        for key in [
            "appendonly",
            "appendfsync",
            "save",
            "maxmemory",
            "maxmemory-policy",
            "maxclients",
        ] {
            match redis::cmd("CONFIG")
                .arg("GET")
                .arg(key)
                .query_async::<Vec<String>>(&mut c)
                .await
            {
                Ok(v) if v.len() >= 2 => {
                    config.insert(v[0].clone(), v[1].clone());
                }
                Ok(_) => {}
                Err(_) => {
                    allowed = false;
                    break;
                }
            }
        }
        Ok::<_, String>(Observed {
            info,
            config: allowed.then_some(config),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

/// The findings for what was read.
pub fn check(o: &Observed) -> Vec<Finding> {
    vec![
        Finding::ok(
            "redis.reachable",
            format!("Redis {} answers", o.info("redis_version").unwrap_or("?")),
            REACH,
        ),
        persistence(o),
        memory(o),
        eviction(o),
        clients(o),
        failover(o),
    ]
}

impl Observed {
    fn info(&self, k: &str) -> Option<&str> {
        self.info.get(k).map(String::as_str)
    }

    /// A CONFIG value (`None` where CONFIG is disabled).
    fn conf(&self, k: &str) -> Option<&str> {
        self.config.as_ref().and_then(|c| c.get(k)).map(String::as_str)
    }
}

fn num(v: Option<&str>) -> Option<f64> {
    v.and_then(|v| v.parse::<f64>().ok())
}

/// AOF with a real fsync policy, else RDB, else nothing.
fn persistence(o: &Observed) -> Finding {
    let aof = o.info("aof_enabled") == Some("1") || o.conf("appendonly") == Some("yes");
    let fsync = o.conf("appendfsync");
    let save = o.conf("save").map(str::trim);
    match (aof, fsync, save) {
        (true, Some("everysec") | Some("always"), _) => {
            Finding::ok("redis.persistence", format!("AOF on, appendfsync {}", fsync.unwrap_or("?")), PERSIST)
        }
        (true, Some(f), _) => Finding::warn(
            "redis.persistence",
            format!("AOF on, but appendfsync {f}: the OS decides when writes reach the disk"),
            "redis-cli CONFIG SET appendfsync everysec (and in redis.conf)",
            PERSIST,
        ),
        (true, None, _) => Finding::ok("redis.persistence", "AOF on (appendfsync unknown: CONFIG is disabled)", PERSIST),
        (false, _, Some(s)) if !s.is_empty() => Finding::warn(
            "redis.persistence",
            format!("RDB snapshots only (save {s}): a crash loses the writes since the last snapshot"),
            "redis-cli CONFIG SET appendonly yes; CONFIG SET appendfsync everysec",
            PERSIST,
        ),
        (false, _, Some(_)) => Finding::fail(
            "redis.persistence",
            "no persistence (AOF off, no RDB save points): a restart empties the index and every lookup misses until it is rebuilt",
            "redis-cli CONFIG SET appendonly yes; CONFIG SET appendfsync everysec (and in redis.conf)",
            PERSIST,
        ),
        (false, _, None) => Finding::warn(
            "redis.persistence",
            "AOF off; RDB save points unknown (CONFIG is disabled)",
            "enable AOF with appendfsync everysec in the service's settings",
            PERSIST,
        ),
    }
}

/// Memory used against maxmemory.
fn memory(o: &Observed) -> Finding {
    let max = num(o.info("maxmemory")).or(num(o.conf("maxmemory"))).unwrap_or(0.0);
    let used = num(o.info("used_memory")).unwrap_or(0.0);
    if max <= 0.0 {
        Finding::warn(
            "redis.memory",
            format!(
                "maxmemory is unset ({} MiB used): Redis grows until the host runs out of memory",
                (used / 1048576.0).round()
            ),
            "redis-cli CONFIG SET maxmemory <about 75 % of the host's memory>",
            MEMORY,
        )
    } else {
        let share = used / max;
        let detail = format!(
            "{} of maxmemory in use ({:.0} of {:.0} MiB)",
            pct(share),
            used / 1048576.0,
            max / 1048576.0
        );
        if share > 0.95 {
            Finding::fail(
                "redis.memory",
                detail,
                "raise maxmemory or shorten TTLs; evictions are imminent",
                MEMORY,
            )
        } else if share > 0.8 {
            Finding::warn(
                "redis.memory",
                detail,
                "raise maxmemory or shorten TTLs (over 80 %)",
                MEMORY,
            )
        } else {
            Finding::ok("redis.memory", detail, MEMORY)
        }
    }
}

/// The eviction policy: only volatile ones spare the generation marker.
fn eviction(o: &Observed) -> Finding {
    let policy = o.info("maxmemory_policy").or(o.conf("maxmemory-policy"));
    match policy {
        Some("noeviction") => Finding::fail(
            "redis.eviction",
            "maxmemory-policy is noeviction: once memory is full every index write is refused",
            "redis-cli CONFIG SET maxmemory-policy volatile-lru",
            EVICTION,
        ),
        Some(p) if p.starts_with("volatile-") => {
            Finding::ok("redis.eviction", format!("maxmemory-policy {p} (every cache pointer has a TTL)"), EVICTION)
        }
        Some(p) if p.starts_with("allkeys-") => Finding::warn(
            "redis.eviction",
            format!("maxmemory-policy {p} may evict the index's generation marker (no TTL), which reads as an index loss and starts a rebuild"),
            "redis-cli CONFIG SET maxmemory-policy volatile-lru",
            EVICTION,
        ),
        Some(p) => Finding::warn(
            "redis.eviction",
            format!("maxmemory-policy {p}"),
            "redis-cli CONFIG SET maxmemory-policy volatile-lru",
            EVICTION,
        ),
        None => Finding::warn(
            "redis.eviction",
            "eviction policy unknown",
            "check maxmemory-policy in the service's settings (volatile-lru)",
            EVICTION,
        ),
    }
}

/// Connected clients against maxclients.
fn clients(o: &Observed) -> Finding {
    let clients = num(o.info("connected_clients")).unwrap_or(0.0);
    match num(o.info("maxclients")).or(num(o.conf("maxclients"))) {
        Some(maxc) if maxc > 0.0 => {
            let share = clients / maxc;
            let detail = format!("{clients:.0} of {maxc:.0} clients ({})", pct(share));
            if share > 0.95 {
                Finding::fail(
                    "redis.clients",
                    detail,
                    "raise maxclients or shrink the pools; new connections are about to be refused",
                    CLIENTS,
                )
            } else if share > 0.8 {
                Finding::warn(
                    "redis.clients",
                    detail,
                    "raise maxclients (redis-cli CONFIG SET maxclients 10000) or shrink the pools",
                    CLIENTS,
                )
            } else {
                Finding::ok("redis.clients", detail, CLIENTS)
            }
        }
        _ => Finding::warn(
            "redis.clients",
            format!("{clients:.0} clients; maxclients unknown"),
            "check maxclients in the service's settings",
            CLIENTS,
        ),
    }
}

/// Replicas, Sentinel or Cluster: what keeps the index up when a server dies.
fn failover(o: &Observed) -> Finding {
    let role = o.info("role").unwrap_or("?");
    let replicas = num(o.info("connected_slaves")).unwrap_or(0.0);
    let cluster = o.info("cluster_enabled") == Some("1");
    if cluster {
        Finding::ok("redis.failover", "cluster mode", HA)
    } else if role == "master" && replicas >= 1.0 {
        Finding::ok("redis.failover", format!("primary with {replicas:.0} replica(s)"), HA)
    } else if role == "slave" {
        Finding::warn(
            "redis.failover",
            "index.url points at a replica: writes will fail",
            "point index.url at the primary (or through Sentinel)",
            HA,
        )
    } else {
        Finding::warn(
            "redis.failover",
            "standalone server without replicas: no automatic failover",
            "add a replica with Sentinel (or run a Cluster); recache rebuilds the index meanwhile",
            HA,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(info: &[(&str, &str)], conf: &[(&str, &str)]) -> Observed {
        let m = |p: &[(&str, &str)]| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Observed {
            info: m(info),
            config: Some(m(conf)),
        }
    }

    fn status(f: &[Finding], check: &str) -> super::super::Status {
        f.iter().find(|x| x.check == check).unwrap().status
    }

    #[test]
    fn bad_and_good_servers() {
        use super::super::Status::*;
        let bad = check(&obs(
            &[
                ("aof_enabled", "0"),
                ("maxmemory", "0"),
                ("maxmemory_policy", "noeviction"),
                ("connected_clients", "90"),
                ("maxclients", "100"),
                ("role", "master"),
            ],
            &[("save", ""), ("appendonly", "no")],
        ));
        assert_eq!(status(&bad, "redis.persistence"), Fail);
        assert_eq!(status(&bad, "redis.eviction"), Fail);
        assert_eq!(status(&bad, "redis.memory"), Warn);
        assert_eq!(status(&bad, "redis.clients"), Warn);
        assert_eq!(status(&bad, "redis.failover"), Warn);
        let good = check(&obs(
            &[
                ("aof_enabled", "1"),
                ("maxmemory", "1000"),
                ("used_memory", "100"),
                ("maxmemory_policy", "volatile-lru"),
                ("connected_clients", "3"),
                ("maxclients", "100"),
                ("role", "master"),
                ("connected_slaves", "1"),
            ],
            &[("appendfsync", "everysec"), ("save", "3600 1")],
        ));
        assert!(good.iter().all(|f| f.status == Ok), "{good:?}");
        let rdb = check(&obs(&[("aof_enabled", "0")], &[("save", "3600 1 300 100")]));
        assert_eq!(status(&rdb, "redis.persistence"), Warn);
        let full = check(&obs(&[("maxmemory", "100"), ("used_memory", "99")], &[]));
        assert_eq!(status(&full, "redis.memory"), Fail);
    }
}
