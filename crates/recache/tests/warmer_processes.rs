//! Standalone `recache warmer run` processes sharing one queue, on SQLite
//! and on PostgreSQL: a worker killed with `kill -9` mid-job loses its lease
//! within two heartbeats plus one poll, another worker takes the job over
//! and resumes from its cursor, and nothing is bought twice beyond the one
//! chunk in flight; a worker paused with SIGSTOP past its lease and then
//! continued cannot overwrite what the job's new owner wrote.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{engines, until, Backends, Env};
use recache_stub_provider::StubConfig;
use serde_json::Value;

const HEARTBEAT_MS: u64 = 300;
const POLL_MS: u64 = 100;
const REQUESTS: usize = 400;

fn settings() -> String {
    format!("[warmer]\nenabled = false\nheartbeat_ms = {HEARTBEAT_MS}\npoll_ms = {POLL_MS}\nmax_spend_usd_per_hour = 1000.0\n")
}

async fn setup(b: Backends) -> Env {
    let stub = StubConfig {
        latency_ms: 25,
        ..Default::default()
    };
    let env = Env::on(b, stub, &settings()).await;
    let lines: String = (0..REQUESTS)
        .map(|i| {
            format!("{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"warm {i}\"}}]}}\n")
        })
        .collect();
    let file = env.path("warm.jsonl");
    std::fs::write(&file, lines).unwrap();
    let (code, out, err) = env.cli(&[
        "warmer",
        "enqueue",
        "--file",
        file.to_str().unwrap(),
        "--tenant",
        "team-a",
        "--namespace",
        "org/repo",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    env
}

/// A worker process, killed (and resumed first, if paused) when the test ends,
/// passing or failing: a leaked worker would load the tests after it.
struct Worker(Child);

impl std::ops::Deref for Worker {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.id().to_string()]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn worker(env: &Env, name: &str) -> Worker {
    let log = std::fs::File::create(env.path(&format!("{name}.log"))).unwrap();
    Worker(
        Command::new(env!("CARGO_BIN_EXE_recache"))
            .args(["warmer", "run", "--concurrency", "1", "--config"])
            .arg(env.config_file())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("worker starts"),
    )
}

async fn warm_job(env: &Env) -> Value {
    let v = env.admin_json("/admin/jobs?limit=10").await;
    v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "warm")
        .cloned()
        .expect("the warm job")
}

fn owned_by(job: &Value, child: &Child) -> bool {
    job["lease_owner"]
        .as_str()
        .is_some_and(|o| o.contains(&format!("-{}-", child.id())))
}

fn signal(child: &Child, sig: &str) {
    Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
}

async fn kill_nine(b: Backends) {
    let env = setup(b).await;
    let mut a = worker(&env, "a");
    until(Duration::from_secs(30), "worker A to be mid-job", async || {
        let j = warm_job(&env).await;
        owned_by(&j, &a) && j["payload"]["cursor"].as_u64().unwrap_or(0) >= 40
    })
    .await;
    if matches!(env.backends, Backends::SqliteRedis { .. }) {
        // The gateway owns the embedded artifact store: the worker shares it,
        // and leaves the jobs that delete answers to the gateway.
        let log = std::fs::read_to_string(env.path("a.log")).unwrap();
        assert!(log.contains("this worker shares it"), "{log}");
    }
    let mut b = worker(&env, "b");
    tokio::time::sleep(Duration::from_millis(500)).await; // B is up and polling
    let before = warm_job(&env).await;
    assert!(owned_by(&before, &a), "B does not steal a live lease");
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let cursor_at_kill = warm_job(&env).await["payload"]["cursor"].as_u64().unwrap();
    let takeover = until(Duration::from_secs(10), "worker B to take the job over", async || {
        owned_by(&warm_job(&env).await, &b)
    })
    .await;
    let bound = Duration::from_millis(2 * HEARTBEAT_MS + POLL_MS);
    println!(
        "kill -9 at cursor {cursor_at_kill}/{REQUESTS}: taken over after {:.0} ms (bound: 2 x heartbeat {HEARTBEAT_MS} ms + poll {POLL_MS} ms = {} ms)",
        takeover.as_secs_f64() * 1000.0,
        bound.as_millis()
    );
    assert!(
        takeover <= bound + Duration::from_millis(400),
        "takeover took {takeover:?}"
    );
    until(Duration::from_secs(60), "the job to succeed", async || {
        warm_job(&env).await["state"] == "succeeded"
    })
    .await;
    let job = warm_job(&env).await;
    let r = &job["result"];
    let resumed = r["resumed_from"].as_u64().expect("resumed from a checkpoint");
    assert!(
        resumed >= cursor_at_kill,
        "resumed at {resumed}, cursor was {cursor_at_kill}: {r}"
    );
    // Two attempts when the lease expired; one if A had released the job
    // (a backend error under load) just before it was killed.
    let attempts = job["attempts"].as_u64().unwrap();
    assert!((1..=2).contains(&attempts), "attempts {attempts}");
    assert!(owned_by(&job, &b), "B finished it");
    let calls = env.stub.calls() as usize;
    println!("provider calls: {calls} for {REQUESTS} requests; attempts {attempts}; result {r}");
    assert!(
        (REQUESTS..=REQUESTS + 4).contains(&calls),
        "at most the chunk in flight is bought twice: {calls}"
    );
    let (code, audit) = env.cli_json(&["audit", "--check", "metadata"]);
    assert_eq!(
        audit["entries_scanned"], REQUESTS,
        "one entry per request, no duplicates: {audit}"
    );
    assert_eq!(code, 0);
    b.kill().unwrap();
    let _ = b.wait();
}

async fn zombie(b: Backends) {
    let env = setup(b).await;
    let a = worker(&env, "a");
    until(Duration::from_secs(30), "worker A to be mid-job", async || {
        let j = warm_job(&env).await;
        owned_by(&j, &a) && j["payload"]["cursor"].as_u64().unwrap_or(0) >= 40
    })
    .await;
    let b = worker(&env, "b");
    signal(&a, "-STOP");
    until(Duration::from_secs(60), "B to take over and finish", async || {
        let j = warm_job(&env).await;
        j["state"] == "succeeded" && owned_by(&j, &b)
    })
    .await;
    let finished = warm_job(&env).await;
    signal(&a, "-CONT");
    // A notices at its next heartbeat or checkpoint, once its connections
    // (stalled while it was stopped) answer again.
    let noticed = |log: &str| log.contains("lease lost") || log.contains("taken over");
    until(Duration::from_secs(20), "A to notice it lost the job", async || {
        noticed(&std::fs::read_to_string(env.path("a.log")).unwrap_or_default())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(4 * HEARTBEAT_MS)).await;
    let after = warm_job(&env).await;
    assert_eq!(after["state"], "succeeded");
    assert!(owned_by(&after, &b), "the zombie did not take the job back: {after}");
    assert_eq!(after["result"], finished["result"], "the zombie overwrote nothing");
    assert_eq!(after["payload"], finished["payload"], "nor the checkpoint");
    let log = std::fs::read_to_string(env.path("a.log")).unwrap_or_default();
    println!(
        "zombie A after SIGCONT: {}",
        log.lines()
            .filter(|l| l.contains("lease") || l.contains("taken over"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert!(noticed(&log), "A noticed: {log}");
    for mut c in [a, b] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

async fn sqlite_redis() -> Option<Backends> {
    Some(Backends::SqliteRedis {
        redis: engines::redis_url()?,
        prefix: engines::unique("wp"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_is_taken_over_and_resumes_sqlite() {
    let Some(b) = sqlite_redis().await else { return };
    kill_nine(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_is_taken_over_and_resumes_postgres() {
    let Some(b) = Backends::real().await else { return };
    kill_nine(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_zombie_cannot_overwrite_sqlite() {
    let Some(b) = sqlite_redis().await else { return };
    zombie(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_zombie_cannot_overwrite_postgres() {
    let Some(b) = Backends::real().await else { return };
    zombie(b).await;
}
