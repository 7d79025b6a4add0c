//! Running a job's work inline, from the CLI (`repair`, `audit`): no queue,
//! no lease; progress goes to a bar on a terminal (nothing otherwise, so
//! `--format json` output stays clean).

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use recache_storage::queue::worker::{JobCtx, JobError};
use recache_storage::roles::BoxFuture;

pub struct LocalCtx {
    bar: Option<ProgressBar>,
}

impl LocalCtx {
    /// A bar with `label` when stderr is a terminal and `show` is true.
    pub fn new(label: &str, show: bool) -> Arc<Self> {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = (show && tty).then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_message(label.to_string());
            b
        });
        Arc::new(Self { bar })
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl JobCtx for LocalCtx {
    fn checkpoint(&self, _payload: Value) -> BoxFuture<'_, Result<(), JobError>> {
        Box::pin(async { Ok(()) })
    }
    fn progress(&self, done: u64, total: Option<u64>) {
        if let Some(b) = &self.bar {
            if let Some(t) = total {
                b.set_length(t);
            }
            b.set_position(done);
        }
    }
    fn job_id(&self) -> i64 {
        0
    }
}
