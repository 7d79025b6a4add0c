//! recache-ops: the work that keeps the cache whole (ARCHITECTURE.md,
//! "Recovery" and "Backups"): the warmer's job kinds, audit and repair,
//! backups, the operational status and the drill history.
//!
//! Above `recache-engine`; below the gateway and the command line.

pub mod backup;
pub mod drills;
pub mod keys;
pub mod recovery;
pub mod status;

/// Every job kind a recache process runs: recovery's own, then those the
/// backups register (`backup::run::with_backup_jobs`).
pub fn job_kinds() -> Vec<&'static str> {
    recovery::jobs::BUILTIN
        .iter()
        .copied()
        .chain(backup::run::JOB_KINDS.iter().map(|k| k.kind))
        .collect()
}
