//! Servers a test owns: Redis, PostgreSQL and S3 (s3s-fs) on ephemeral
//! loopback ports, each in its own process group so the test can `kill -9`
//! it, pause it (`SIGSTOP`), resume it and start it again on the same port
//! with the same data. Binaries come from scripts/with-engines.sh.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub name: &'static str,
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    cmd: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bin(var: &str) -> Option<String> {
    super::engines::var_opt(var)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

impl Server {
    /// Starts `cmd` (its files in `dir`) and waits until `port` accepts connections.
    fn launch(name: &'static str, port: u16, dir: tempfile::TempDir, cmd: Vec<String>) -> Server {
        let mut s = Server {
            name,
            port,
            child: None,
            dir,
            cmd,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = self.dir.path().join(format!("{}.log", self.name));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).ok();
        let mut c = Command::new(&self.cmd[0]);
        c.args(&self.cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out.map(Stdio::from).unwrap_or_else(Stdio::null))
            .process_group(0);
        self.child = Some(c.spawn().unwrap_or_else(|e| panic!("start {}: {e}", self.name)));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() >= deadline {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                panic!(
                    "{} did not start on {}; its log ends:\n{}",
                    self.name,
                    self.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.name == "postgres" {
            // Accepting TCP is not yet accepting queries.
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([sig, "--", &format!("-{}", c.id())]).status();
        }
        // PostgreSQL backends call setsid(): signal the postmaster and each child by pid.
        for pid in self.postgres_pids() {
            let _ = Command::new("kill").args([sig, &pid]).status();
        }
    }

    fn postgres_pids(&self) -> Vec<String> {
        if self.name != "postgres" {
            return Vec::new();
        }
        let Ok(text) = std::fs::read_to_string(self.dir.path().join("pg/postmaster.pid")) else {
            return Vec::new();
        };
        let Some(pm) = text.lines().next().map(|l| l.trim().to_string()) else {
            return Vec::new();
        };
        let children = Command::new("pgrep")
            .args(["-P", &pm])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        let mut pids = vec![pm];
        pids.extend(
            String::from_utf8_lossy(&children)
                .split_whitespace()
                .map(str::to_string),
        );
        pids
    }

    pub fn redis() -> Option<Server> {
        Self::redis_with(&[])
    }

    /// A Redis with extra settings after the defaults (later ones win), e.g.
    /// `["--appendonly", "yes", "--maxmemory-policy", "noeviction"]`.
    pub fn redis_with(extra: &[&str]) -> Option<Server> {
        let redis = bin("RECACHE_TEST_REDIS_BIN")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cmd = vec![
            redis,
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.path().display().to_string(),
        ];
        let mut cmd = cmd;
        cmd.extend(extra.iter().map(|a| a.to_string()));
        Some(Server::launch("redis", port, dir, cmd))
    }

    /// A Redis Sentinel watching the master on `master_port` as `mymaster`
    /// (quorum 1, down after 1 s), on an ephemeral loopback port.
    pub fn redis_sentinel(master_port: u16) -> Option<Server> {
        let redis = bin("RECACHE_TEST_REDIS_BIN")?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 10000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let cmd = vec![redis, conf.display().to_string(), "--sentinel".into()];
        Some(Server::launch("redis", port, dir, cmd))
    }

    /// A Redis started in cluster mode (no slots yet: see `tests/redis_ha.rs`).
    pub fn redis_cluster_node() -> Option<Server> {
        Self::redis_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ])
    }

    pub fn s3() -> Option<Server> {
        let s3s = bin("RECACHE_TEST_S3S_BIN")?;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bucket")).unwrap();
        let port = free_port();
        let cmd = vec![
            s3s,
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--access-key".into(),
            "recache-test".into(),
            "--secret-key".into(),
            "recache-test-secret".into(),
            dir.path().display().to_string(),
        ];
        Some(Server::launch("s3", port, dir, cmd))
    }

    pub fn postgres() -> Option<Server> {
        let pg_bin = PathBuf::from(bin("RECACHE_TEST_PG_BIN")?);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("pg");
        std::fs::create_dir_all(&data).unwrap();
        let mut prefix: Vec<String> = Vec::new();
        if is_root() {
            let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
            let _ = Command::new("chown").arg("postgres").arg(&data).status();
            prefix = vec!["runuser".into(), "-u".into(), "postgres".into(), "--".into()];
        }
        let mut init = prefix.clone();
        init.extend([
            pg_bin.join("initdb").display().to_string(),
            "-D".into(),
            data.display().to_string(),
            "-U".into(),
            "postgres".into(),
            "-A".into(),
            "trust".into(),
            "--no-sync".into(),
        ]);
        let ok = Command::new(&init[0])
            .args(&init[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(ok.map(|s| s.success()).unwrap_or(false), "initdb failed");
        let port = free_port();
        let mut cmd = prefix;
        cmd.extend([
            pg_bin.join("postgres").display().to_string(),
            "-D".into(),
            data.display().to_string(),
            "-p".into(),
            port.to_string(),
            "-k".into(),
            data.display().to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "fsync=off".into(),
        ]);
        Some(Server::launch("postgres", port, dir, cmd))
    }

    /// Qdrant (the harness's binary) on two ephemeral ports; `port` is gRPC.
    pub fn qdrant() -> Option<Server> {
        let bin = std::env::var("RECACHE_TEST_QDRANT_BIN")
            .ok()
            .filter(|b| !b.is_empty())?;
        let dir = tempfile::tempdir().unwrap();
        let (http, grpc) = (free_port(), free_port());
        let d = dir.path().display();
        // Run from its own directory: Qdrant writes files relative to its working directory.
        let script = format!(
            "cd '{d}' && exec env QDRANT__SERVICE__HOST=127.0.0.1 QDRANT__SERVICE__HTTP_PORT={http} \
             QDRANT__SERVICE__GRPC_PORT={grpc} QDRANT__STORAGE__STORAGE_PATH='{d}/storage' \
             QDRANT__STORAGE__SNAPSHOTS_PATH='{d}/snapshots' QDRANT__TELEMETRY_DISABLED=true \
             QDRANT__SERVICE__ENABLE_STATIC_CONTENT=false '{bin}' --disable-telemetry"
        );
        Some(Server::launch(
            "qdrant",
            grpc,
            dir,
            vec!["sh".into(), "-c".into(), script],
        ))
    }

    /// Where the server keeps its data (s3s-fs: one folder per bucket).
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        match self.name {
            "redis" => format!("redis://127.0.0.1:{}", self.port),
            "postgres" => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
            _ => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// `kill -9` of the whole process group.
    pub fn kill9(&mut self) {
        self.signal("-KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        if self.name == "postgres" {
            // A backend forked while we killed may survive (each calls setsid());
            // it would hold the shared memory and stop the restart. Every
            // PostgreSQL process runs in the data directory: kill those until none is left.
            let data = self.dir.path().join("pg");
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let left = processes_in(&data);
                if left.is_empty() || Instant::now() > deadline {
                    break;
                }
                for pid in left {
                    let _ = Command::new("kill").args(["-KILL", &pid]).status();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `SIGSTOP`: the server hangs with its sockets open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Starts again on the same port with the same data.
    pub fn start(&mut self) {
        if self.name == "postgres" {
            // Stale lock files name the killed postmaster's pid; if that pid was
            // reused meanwhile, PostgreSQL would refuse to start.
            let pg = self.dir.path().join("pg");
            let _ = std::fs::remove_file(pg.join("postmaster.pid"));
            let _ = std::fs::remove_file(pg.join(format!(".s.PGSQL.{}.lock", self.port)));
        }
        self.spawn();
    }
}

/// Processes whose working directory is `dir`.
fn processes_in(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.parse::<u32>().ok()?;
            let cwd = std::fs::read_link(e.path().join("cwd")).ok()?;
            (cwd == dir).then_some(name)
        })
        .collect()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.resume();
        self.signal("-KILL");
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}
