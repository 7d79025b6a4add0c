//! Semantic matching (DESIGN.md §2 step 5): near-duplicate questions in the
//! same context answered from the cache, safe by construction.
//!
//! - [`scope`]: what may be compared (only the final user message varies).
//! - [`guard`]: literal and near-miss guards a candidate must pass.

pub mod guard;
pub mod scope;
