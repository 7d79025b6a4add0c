//! recache-cli: the `recache` command line (ARCHITECTURE.md, "Crates"):
//! every command, `doctor` and the DR drills.
//!
//! The top layer: it may use every crate below it; none uses it.

pub mod cli;
pub mod doctor;
pub mod drill;
