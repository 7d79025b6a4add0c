//! Backups: one command family (`recache backup create | list | verify |
//! restore | prune`) over the four role traits, so it runs the same on the
//! embedded stores and on Redis, S3, PostgreSQL and Qdrant.
//!
//! A backup set is a folder in an object-store target holding the metadata
//! snapshot, the index pointers, the artifact list and (when enabled) the
//! vectors, described by a manifest written last. Artifacts go into a
//! content-addressed pool beside the sets, so each backup copies only the
//! artifacts the pool lacks — checked against the target's own listing, never
//! a local list. `docs/backup.md` documents the format and how to restore by
//! hand.

use std::collections::HashMap;
use std::sync::Arc;

use recache_core::config::Config;
use recache_storage::roles::BackendError;

pub mod canary;
pub mod codec;
pub mod create;
pub mod erase;
pub mod keyfile;
pub mod list;
pub mod manifest;
pub mod prune;
pub mod restore;
pub mod run;
pub mod schedule;
pub mod target;
pub mod verify;

pub use manifest::{Manifest, Verification};
pub use target::Target;

/// Why a backup command failed. Mapped to exit codes in the CLI.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Target(#[from] target::TargetError),
    #[error("{0}")]
    Backend(#[from] BackendError),
    /// The set is damaged or incomplete, or not what it claims to be.
    #[error("{0}")]
    Invalid(String),
    /// Refused for safety (a non-empty destination, a set that failed verification).
    #[error("{0}")]
    Refused(String),
    /// Bad configuration or arguments.
    #[error("{0}")]
    Config(String),
}

pub type BResult<T> = Result<T, BackupError>;

/// Which target a command works on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Primary,
    Dr,
}

impl Which {
    pub fn name(self) -> &'static str {
        match self {
            Which::Primary => "primary",
            Which::Dr => "dr",
        }
    }
}

/// The configured targets.
#[derive(Clone)]
pub struct Targets {
    pub primary: Target,
    pub dr: Option<Target>,
    pub config: Arc<Config>,
}

impl Targets {
    pub fn open(config: Arc<Config>, env: &HashMap<String, String>) -> BResult<Targets> {
        let b = &config.backup;
        let spec = b.target.as_deref().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
            BackupError::Config("no backup target: set [backup] target (a directory or s3://bucket/prefix)".into())
        })?;
        let key: Option<Arc<[u8]>> = config
            .backup_signing_key(env)
            .map_err(|e| BackupError::Config(format!("backup.signing_key_env: {e}")))?
            .map(Into::into);
        let open = |spec: &str| {
            Target::open(spec, &b.deployment, env)
                .map(|mut t| {
                    t.signing_key = key.clone();
                    t
                })
                .map_err(BackupError::Config)
        };
        let primary = open(spec)?;
        let dr = match b.dr_target.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(spec) => Some(open(spec)?),
            None => None,
        };
        Ok(Targets { primary, dr, config })
    }

    pub fn get(&self, which: Which) -> BResult<&Target> {
        match which {
            Which::Primary => Ok(&self.primary),
            Which::Dr => self
                .dr
                .as_ref()
                .ok_or_else(|| BackupError::Config("no DR target: set [backup] dr_target".into())),
        }
    }
}

/// Writes one backup event to the audit log. Best effort: a backup's result
/// never depends on it (the audit log is itself in the store being saved).
pub async fn audit(metadata: &dyn recache_storage::roles::Metadata, action: &str, detail: serde_json::Value) {
    let _ = metadata
        .append_audit(vec![recache_storage::roles::AuditEvent {
            id: recache_engine::cache::event_id(),
            at_ms: recache_storage::roles::now_ms(),
            tenant: None,
            actor: "backup".into(),
            action: action.into(),
            cache_key: None,
            detail,
        }])
        .await;
}

/// A set's folder, relative to the deployment folder.
pub fn set_dir(id: &str) -> String {
    format!("sets/{id}")
}

/// Whether `id` has the form [`format_id`] gives (`YYYYMMDDTHHMMSSmmmZ`).
/// A set id is trusted only in this form: it names a folder, and a manifest's
/// `id` that is anything else (`../..`, a slash) is refused, never acted on.
pub(crate) fn valid_set_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 19 && b[8] == b'T' && b[18] == b'Z' && b[..8].iter().chain(&b[9..18]).all(u8::is_ascii_digit)
}

pub use recache_core::time::{day_of, format_id, format_time};

/// SHA-256 of the configuration with its secrets left out: client keys
/// (plain or digests) and passwords inside URLs. The manifest sits in the
/// target, readable by whoever can read backups; an unsalted hash of a text
/// holding a password would let them test guesses of it.
pub(crate) fn config_fingerprint(config: &Config) -> String {
    let mut v = serde_json::to_value(config).unwrap_or_default();
    strip_secrets(&mut v);
    let text = serde_json::to_string(&v).unwrap_or_default();
    codec::sha256_hex(text.as_bytes())
}

fn strip_secrets(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            map.remove("keys");
            map.values_mut().for_each(strip_secrets);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_secrets),
        // Passwords in URLs and host lists, hidden the way messages hide them.
        Value::String(s) if s.contains("://") && s.contains('@') => *s = recache_core::config::redact(s),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_fingerprint_holds_no_secret() {
        let text = "[[upstreams]]\nname = \"p\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[[tenants]]\nname = \"a\"\nkeys = [\"sk-a\"]\n";
        let (mut a, _) = Config::from_toml_str(text, &HashMap::new()).unwrap();
        a.tenants[0].keys = vec!["sk-plain-secret".into()];
        a.metadata.url = Some("postgres://u:hunter2@db:5432/recache".into());
        let mut b = a.clone();
        b.tenants[0].keys = vec!["sk-another-secret".into()];
        b.metadata.url = Some("postgres://u:swordfish@db:5432/recache".into());
        // Changing only secrets does not change the fingerprint: no guess of them can be tested against it.
        assert_eq!(config_fingerprint(&a), config_fingerprint(&b));
        // Anything else does.
        b.metadata.url = Some("postgres://u:swordfish@other:5432/recache".into());
        assert_ne!(config_fingerprint(&a), config_fingerprint(&b));
        let mut v = serde_json::json!({"u": "redis+sentinel://:pw@h1:1,h2:2/svc", "keys": ["k"]});
        strip_secrets(&mut v);
        assert_eq!(v, serde_json::json!({"u": "redis+sentinel://***@h1:1,h2:2/svc"}));
    }

    #[test]
    fn only_formatted_ids_are_set_ids() {
        assert!(valid_set_id(&format_id(1_795_509_369_123)));
        for bad in [
            "../../../victim",
            "20261124T083609123Z/..",
            "2026112XT083609123Z",
            "20261124T083609123",
            "",
            "..",
            "20261124t083609123Z",
        ] {
            assert!(!valid_set_id(bad), "{bad}");
        }
    }
}
