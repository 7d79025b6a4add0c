//! recache: a resilient cache gateway for LLM and API traffic.
//!
//! See ARCHITECTURE.md for the request path and the failure matrix.

// The shared types live in `recache-core` (ARCHITECTURE.md, "Crates"); their
// paths stay the same here.
pub use recache_core::{artifact, breaker, config, endpoint, key, time};
// The storage roles and the job queue live in `recache-storage`.
pub use recache_storage::{queue, roles};
// The cache service lives in `recache-engine`.
pub use recache_engine::{batch, cache, error, metrics, semantic, spool, sse, upstream, usage};

pub mod backup;
pub mod cli;
pub mod dashboard;
pub mod doctor;
pub mod drill;
pub mod gateway;
pub mod http;
pub mod recovery;
pub mod server;
pub mod status;
