//! recache: a resilient cache gateway for LLM and API traffic.
//!
//! See ARCHITECTURE.md for the request path and the failure matrix.

pub mod artifact;
pub mod backup;
pub mod batch;
pub mod breaker;
pub mod cache;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod doctor;
pub mod drill;
pub mod error;
pub mod gateway;
pub mod http;
pub mod key;
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
