//! The backup harness: a gateway with a primary and a DR backup target
//! (local directories on the embedded engines, two more S3 servers beside
//! Redis + S3 + PostgreSQL on the real ones), and what the backup, purge and
//! erasure tests do with it: run the CLI, make entries, wipe every store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::servers::Server;
use super::{Backends, Env};
use recache_stub_provider::StubConfig;
use serde_json::Value;

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Embedded,
    Real,
}

/// A gateway with backup targets, and where the targets keep their files on disk.
pub struct Bk {
    pub env: Env,
    /// On-disk roots of the deployment folders (primary, DR).
    pub primary: PathBuf,
    pub dr: PathBuf,
    pub _targets: tempfile::TempDir,
    pub _servers: Vec<Server>,
    pub kind: Kind,
    /// Config overrides the CLI gets too.
    pub vars: Vec<(String, String)>,
}

pub fn extra(target: &str, dr: &str, more: &str) -> String {
    format!(
        "[backup]\ntarget = \"{target}\"\ndr_target = \"{dr}\"\nverify_level = \"restore\"\nprune_grace = \"0s\"\n{more}\n[warmer]\npoll_ms = 50\n"
    )
}

pub async fn setup(kind: Kind, more: &str) -> Option<Bk> {
    setup_with(kind, more, &[]).await
}

/// [`setup`] with `RECACHE_*` overrides (and secrets) for the gateway and the CLI.
pub async fn setup_with(kind: Kind, more: &str, overrides: &[(&str, &str)]) -> Option<Bk> {
    let targets = tempfile::tempdir().unwrap();
    match kind {
        Kind::Embedded => {
            let (t, d) = (targets.path().join("primary"), targets.path().join("dr"));
            let env = Env::on_with(
                Backends::Embedded,
                StubConfig::default(),
                &extra(&t.display().to_string(), &d.display().to_string(), more),
                overrides,
            )
            .await;
            Some(Bk {
                env,
                primary: t.join("default"),
                dr: d.join("default"),
                _targets: targets,
                _servers: Vec::new(),
                kind,
                vars: Vec::new(),
            })
        }
        Kind::Real => {
            // The test owns its Redis (it flushes it) and both target servers.
            let redis = Server::redis()?;
            let backends = Backends::real_with_redis(redis.url()).await?;
            let (s1, s2) = (Server::s3()?, Server::s3()?);
            let spec = |s: &Server| format!("s3://bucket/backups?endpoint={}", s.url());
            let env = Env::on_with(
                backends,
                StubConfig::default(),
                &extra(&spec(&s1), &spec(&s2), more),
                overrides,
            )
            .await;
            let (primary, dr) = (
                s1.data_dir().join("bucket/backups/default"),
                s2.data_dir().join("bucket/backups/default"),
            );
            Some(Bk {
                env,
                primary,
                dr,
                _targets: targets,
                _servers: vec![redis, s1, s2],
                kind,
                vars: Vec::new(),
            })
        }
    }
}

impl Bk {
    /// Runs the CLI off the runtime's threads (it may wait for the gateway's workers).
    pub async fn cli(&self, args: &[&str]) -> (i32, Value, String) {
        self.env.cli_async(args, &self.vars).await
    }

    pub async fn chats(&self, from: usize, to: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut keys = Vec::new();
        for i in from..to {
            let r = self.env.chat(super::KEY_A, &format!("backup question {i}")).await;
            assert_eq!(r.status, 200);
            out.push(r.cache().to_string());
            keys.push(r.header("x-recache-key").to_string());
        }
        self.settle(&keys).await;
        out
    }

    /// Waits until every key is registered in metadata (the store runs after the answer).
    pub async fn settle(&self, keys: &[String]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for k in keys {
            while self.env.admin_entry(k).await["indexed"] != Value::Bool(true) {
                assert!(std::time::Instant::now() < deadline, "entry {k} never registered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub async fn stop(&mut self) {
        if let Some(gw) = self.env.gw.take() {
            gw.shutdown().await;
        }
    }

    /// Destroys every store: the index, every artifact, every metadata table.
    pub async fn wipe(&mut self) {
        self.stop().await;
        match self.kind {
            Kind::Embedded => wipe_embedded(&self.env),
            Kind::Real => {
                let Backends::Real { redis, .. } = &self.env.backends else {
                    unreachable!()
                };
                let client = redis::Client::open(redis.as_str()).unwrap();
                let mut c = client.get_multiplexed_async_connection().await.unwrap();
                let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
                let store = self.env.raw_artifacts();
                for a in store.list().await.unwrap() {
                    store.delete(a.id).await.unwrap();
                }
                assert!(store.list().await.unwrap().is_empty());
                self.env.metadata_sql("DROP SCHEMA public CASCADE").await;
                self.env.metadata_sql("CREATE SCHEMA public").await;
            }
        }
    }

    pub fn set_files(&self, root: &Path, set: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&root.join("sets").join(set), &mut out);
        out.retain(|p| !p.to_string_lossy().contains("/verify/") && !p.to_string_lossy().contains("manifest"));
        out.sort();
        out
    }

    pub fn pool_files(&self, root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&root.join("pool"), &mut out);
        // s3s-fs keeps its metadata in hidden side files.
        out.retain(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 64 && !n.starts_with('.'))
        });
        out.sort();
        out
    }
}

/// Removes the embedded stores' files (the index, the artifacts, metadata
/// and the spool) of a stopped gateway.
pub fn wipe_embedded(env: &Env) {
    for p in [
        "index",
        "artifacts",
        "metadata.db",
        "metadata.db-wal",
        "metadata.db-shm",
        "spool.jsonl",
    ] {
        let p = env.path(p);
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
    }
}

/// Every file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Every file under `dir`, into `out`.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Runs a backup test on the embedded engines and on the real ones.
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() {
                super::$name($crate::common::backups::Kind::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn real_engines() {
                super::$name($crate::common::backups::Kind::Real).await
            }
        }
    };
}
