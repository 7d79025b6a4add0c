//! The index on highly available Redis, with real servers the tests start on
//! loopback: a three-master Redis Cluster (keys spread over every master, no
//! cross-slot operation), and a master + replica + Sentinel set failed over
//! (`SENTINEL FAILOVER`) under load with no client error.
//! Skipped unless the engine harness is running (scripts/with-engines.sh).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::servers::Server;
use common::{engines, Backends, Env, KEY_A};
use recache_stub_provider::StubConfig;

async fn conn(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn cmd<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> T {
    let mut c = conn(port).await;
    let mut command = redis::cmd(args[0]);
    for a in &args[1..] {
        command.arg(*a);
    }
    command.query_async(&mut c).await.unwrap()
}

async fn until(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Slots split in three, the nodes introduced to each other, and the
/// cluster waited for until every node says it is ok.
async fn form_cluster(nodes: &[Server]) {
    let per = 16384 / nodes.len();
    for (i, n) in nodes.iter().enumerate() {
        let start = i * per;
        let end = if i + 1 == nodes.len() { 16383 } else { start + per - 1 };
        let _: () = cmd(
            n.port,
            &["CLUSTER", "ADDSLOTSRANGE", &start.to_string(), &end.to_string()],
        )
        .await;
    }
    for n in &nodes[1..] {
        let _: () = cmd(nodes[0].port, &["CLUSTER", "MEET", "127.0.0.1", &n.port.to_string()]).await;
    }
    for n in nodes {
        until(Duration::from_secs(30), "the cluster to form", async || {
            let info: String = cmd(n.port, &["CLUSTER", "INFO"]).await;
            info.contains("cluster_state:ok") && info.contains(&format!("cluster_known_nodes:{}", nodes.len()))
        })
        .await;
    }
}

async fn ask(env: &Env, prompt: &str) -> (u16, String) {
    let r = env.chat(KEY_A, prompt).await;
    (r.status, r.cache().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_on_a_three_master_cluster() {
    let Some(nodes) = (0..3).map(|_| Server::redis_cluster_node()).collect::<Option<Vec<_>>>() else {
        eprintln!("skipping: no engine harness (scripts/with-engines.sh)");
        return;
    };
    form_cluster(&nodes).await;
    let seeds: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let b = Backends::SqliteRedis {
        redis: format!("redis+cluster://{}", seeds.join(",")),
        prefix: engines::unique("cl"),
    };
    let env = Env::on(b, StubConfig::default(), "").await;
    const N: usize = 60;
    for i in 0..N {
        assert_eq!(ask(&env, &format!("cluster {i}")).await, (200, "MISS".into()));
    }
    env.settle().await;
    for i in 0..N {
        assert_eq!(
            ask(&env, &format!("cluster {i}")).await,
            (200, "HIT".into()),
            "entry {i} from the cluster"
        );
    }
    // The pointers are spread over every master (batched writes split by slot).
    let mut sizes = Vec::new();
    for n in &nodes {
        let keys: u64 = cmd(n.port, &["DBSIZE"]).await;
        sizes.push(keys);
    }
    println!("pointers per master: {sizes:?}");
    assert!(sizes.iter().all(|&k| k > 0), "every master holds pointers: {sizes:?}");
    // Audits walk every master.
    let (code, audit) = env.cli_json(&["audit", "--check", "index"]);
    assert_eq!(code, 0, "{audit}");
    assert_eq!(audit["index_pointers"], N as u64, "every pointer found: {audit}");
    // The health check names the topology.
    let (code, health) = env.cli_json(&["health", "--backend", "redis"]);
    assert_eq!(code, 0, "{health}");
    assert_eq!(health["backends"][0]["status"], "up", "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load_loses_no_request() {
    let Some(master) = Server::redis() else {
        eprintln!("skipping: no engine harness (scripts/with-engines.sh)");
        return;
    };
    let replica = Server::redis_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]).unwrap();
    let sentinel = Server::redis_sentinel(master.port).unwrap();
    until(
        Duration::from_secs(30),
        "the replica to sync and the sentinel to see it",
        async || {
            let info: String = cmd(replica.port, &["INFO", "replication"]).await;
            let replicas: redis::Value = cmd(sentinel.port, &["SENTINEL", "REPLICAS", "mymaster"]).await;
            info.contains("master_link_status:up") && matches!(replicas, redis::Value::Array(ref v) if !v.is_empty())
        },
    )
    .await;
    let b = Backends::SqliteRedis {
        redis: format!("redis+sentinel://127.0.0.1:{}/mymaster", sentinel.port),
        prefix: engines::unique("sn"),
    };
    let env = Arc::new(Env::on(b, StubConfig::default(), "").await);
    for i in 0..20 {
        assert_eq!(ask(&env, &format!("warm {i}")).await, (200, "MISS".into()));
    }
    env.settle().await;
    assert_eq!(ask(&env, "warm 0").await, (200, "HIT".into()));
    // Load: hits on the warm entries and fresh misses, from 8 clients.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (env, stop, sent, failed) = (env.clone(), stop.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let prompt = if i % 2 == 0 {
                        format!("warm {}", i % 20)
                    } else {
                        format!("load {c} {i}")
                    };
                    let (status, _) = ask(&env, &prompt).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if status != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _: () = cmd(sentinel.port, &["SENTINEL", "FAILOVER", "mymaster"]).await;
    until(Duration::from_secs(30), "the replica to become the master", async || {
        let role: redis::Value = cmd(replica.port, &["ROLE"]).await;
        matches!(role, redis::Value::Array(ref v) if matches!(v.first(), Some(redis::Value::BulkString(b)) if b == b"master"))
    })
    .await;
    let failed_over_at = sent.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("{sent} requests, {failed} failed; failover after {failed_over_at}");
    assert_eq!(failed, 0, "no client error across the failover");
    assert!(sent > failed_over_at, "traffic went on after the failover");
    // Writes follow the new master: a fresh answer is stored there and hit.
    let mut stored = false;
    for k in 0..20 {
        let prompt = format!("after failover {k}");
        assert_eq!(ask(&env, &prompt).await.0, 200);
        env.settle().await;
        if ask(&env, &prompt).await == (200, "HIT".into()) {
            stored = true;
            break;
        }
    }
    assert!(stored, "an answer stored after the failover is a hit");
    let keys: u64 = cmd(replica.port, &["DBSIZE"]).await;
    assert!(keys > 20, "the new master holds the index: {keys} keys");
    drop((master, sentinel));
}
