//! DR drills (`recache drill`): inject a failure under a bounded load,
//! measure RTO, RPO, integrity and cost, and write the runbook's report.
//!
//! - `scenario`: the ten scenarios and what each predicts;
//! - `subject`: the gateway under test (managed, or remote over its admin API);
//! - `relay`, `fault`: outages made for real, undone on every exit path;
//! - `loss`: data destroyed on purpose (only where `allow_destructive`);
//! - `workload`, `monitor`, `measure`: traffic, observation, figures;
//! - `report`, `history`: Markdown/JSON/SVG, and past drills with the calendar;
//! - `run`: the phases of one drill.

pub use recache_core::config::drill as config;
// The scenarios and the drill history are read by `status` and the dashboard too.
pub use recache_ops::drills::{self as history, scenario};
pub mod drive;
pub mod fault;
pub mod loss;
pub mod measure;
pub mod monitor;
pub mod relay;
pub mod report;
pub mod run;
pub mod subject;
pub mod verdict;
pub mod workload;
