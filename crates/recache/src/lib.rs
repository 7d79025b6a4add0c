//! recache: a resilient cache gateway for LLM and API traffic.
//!
//! This crate is the `recache` binary and a facade over the layered crates
//! (ARCHITECTURE.md, "Crates"): it re-exports their modules under one name so
//! the integration tests and embedders read `recache::cache`, `recache::backup`
//! and so on, whichever crate holds them.

pub use recache_cli::{cli, doctor, drill};
pub use recache_core::{artifact, breaker, config, endpoint, key, seal, time};
pub use recache_engine::{batch, cache, error, metrics, semantic, spool, sse, upstream, usage};
pub use recache_gateway::{dashboard, gateway, http, server};
pub use recache_ops::{backup, keys, recovery, status};
pub use recache_storage::{queue, roles};
