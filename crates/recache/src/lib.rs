//! recache: a resilient cache gateway for LLM and API traffic.
//!
//! See ARCHITECTURE.md for the request path and the failure matrix.

// The shared types live in `recache-core` (ARCHITECTURE.md, "Crates"); their
// paths stay the same here.
pub use recache_core::{artifact, breaker, config, endpoint, key, time};

pub mod backup;
pub mod batch;
pub mod cache;
pub mod cli;
pub mod dashboard;
pub mod doctor;
pub mod drill;
pub mod error;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod queue;
pub mod recovery;
pub mod roles;
pub mod semantic;
pub mod server;
pub mod spool;
pub mod sse;
pub mod status;
pub mod upstream;
pub mod usage;
