//! Semantic matching (ARCHITECTURE.md, "Request path", the semantic step): near-duplicate questions in the
//! same context answered from the cache, safe by construction.
//!
//! - [`scope`]: what may be compared (only the final user message varies).
//! - [`guard`]: literal and near-miss guards a candidate must pass.
//! - [`embedder`]: text to vectors (local model or a provider's endpoint).
//! - [`judge`]: whether two answers are the same (shadow mode, verification).
//! - [`engine`]: policies per tenant and namespace, lookup, storage, reports.
//! - [`budget`]: the measured false-hit rate per scope and the threshold it forces.

pub mod budget;
mod counters;
pub mod embedder;
pub mod engine;
pub mod eval;
pub mod guard;
pub mod guard_lexical;
pub mod judge;
pub mod lexicon;
pub mod normalise;
mod recent;
pub mod scope;

pub use engine::{Candidate, Policy, Prepared, Semantic};
pub use guard::Refusal;
pub use scope::Asked;
