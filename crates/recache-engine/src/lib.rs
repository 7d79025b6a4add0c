//! recache-engine: the cache service the gateway calls. Lookup and store over
//! the four roles (`cache.rs`), group commit (`batch.rs`), the metadata spool,
//! usage counters, the provider client (`upstream.rs`), server-sent events
//! (`sse.rs`), semantic matching (`semantic/`), the counters behind
//! `/metrics`, and the errors a client can be told (`error.rs`, the one place
//! they become responses). Depends on `recache-storage` and `recache-core`
//! (`ARCHITECTURE.md`, "Crates").

// The layers below, under the paths this code has always used.
pub use recache_core::{artifact, breaker, config, endpoint, key, time};
pub use recache_storage::{queue, roles};

pub mod anthropic;
pub mod batch;
pub mod cache;
pub mod error;
pub mod gemini;
pub mod keying;
pub mod metrics;
pub mod responses;
pub mod semantic;
pub mod spool;
pub mod sse;
pub mod upstream;
pub mod usage;
