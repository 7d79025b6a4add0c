//! recache-storage: the four storage roles (index, artifacts, vectors,
//! metadata) as small traits, every engine behind them (embedded, Redis,
//! S3-compatible, Qdrant, SQLite, PostgreSQL), the guards that put a timeout
//! and a breaker around each, the role factories, and the job queue whose
//! tables live beside the metadata. Depends on `recache-core` only
//! (`ARCHITECTURE.md`, "Crates").

// The core types, under the paths this code has always used.
pub use recache_core::{artifact, breaker, config, error, key, time};

pub mod queue;
pub mod roles;
