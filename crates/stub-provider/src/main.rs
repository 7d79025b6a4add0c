//! `recache-stub`: runs the FAKE OpenAI-compatible provider on its own.
use std::net::SocketAddr;

use recache_stub_provider::{spawn, spawn_floor, spawn_proxy_floor, StubConfig, StubState};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:9911".to_string();
    let mut cfg = StubConfig::default();
    let mut floor = false;
    let mut proxy: Option<String> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--floor" => floor = true,
            "--proxy-floor" => proxy = args.next(),
            "--latency-ms" => cfg.latency_ms = args.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--help" | "-h" => {
                println!("recache-stub: a FAKE OpenAI-compatible provider for tests and benchmarks\n\nUsage: recache-stub [--listen ADDR] [--latency-ms N] [--floor | --proxy-floor UPSTREAM]\n\n--floor: the hits' floor instead: a bare server returning one fixed completion (no parsing, no counting)\n--proxy-floor UPSTREAM: the misses' floor instead: a bare proxy forwarding each chat completion to UPSTREAM (a base URL ending in /v1) and returning its answer\n\nRuntime control: GET/POST /__stub/config, GET /__stub/stats");
                return;
            }
            other => {
                eprintln!("recache-stub: unknown argument {other} (see --help)");
                std::process::exit(2);
            }
        }
    }
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("recache-stub: bad --listen {listen}: {e}");
            std::process::exit(2);
        }
    };
    let started = if let Some(upstream) = &proxy {
        spawn_proxy_floor(addr, upstream).await
    } else if floor {
        spawn_floor(addr).await
    } else {
        spawn(addr, StubState::new(cfg)).await
    };
    match started {
        Ok(local) if proxy.is_some() => println!(
            "recache-stub --proxy-floor (bare proxy to {}) listening on http://{local}/v1",
            proxy.as_deref().unwrap_or_default()
        ),
        Ok(local) if floor => println!("recache-stub --floor (fixed answer) listening on http://{local}/v1"),
        Ok(local) => println!("recache-stub (FAKE provider) listening on http://{local}/v1"),
        Err(e) => {
            eprintln!("recache-stub: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
