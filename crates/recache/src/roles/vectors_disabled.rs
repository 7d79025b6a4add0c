//! The vectors role when semantic matching is off: reports itself as disabled.

use super::{BackendError, BoxFuture, CheckInfo, Result, Vectors};

pub struct DisabledVectors;

impl Vectors for DisabledVectors {
    fn engine(&self) -> &'static str {
        "disabled"
    }
    fn enabled(&self) -> bool {
        false
    }
    fn check(&self) -> BoxFuture<'_, Result<CheckInfo>> {
        Box::pin(async {
            Err(BackendError::NotSupported {
                backend: "vectors",
                what: "semantic matching is disabled",
            })
        })
    }
}
