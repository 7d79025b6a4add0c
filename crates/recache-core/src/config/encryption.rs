//! `[encryption]`: answers and stored requests sealed at rest with per-tenant
//! data keys wrapped by a master key ("Data protection" in `docs/operations.md`).

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{err, Config, ConfigError};
use crate::seal::Key32;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// The env var holding the master key: 256 bits, base64 (`openssl rand -base64 32`).
    pub master_key_env: Option<String>,
    /// Or a file holding it (one line of base64).
    pub master_key_file: Option<PathBuf>,
    /// While `recache encryption rotate-master` re-wraps the data keys: the
    /// env var of the master key being replaced, still accepted for unwrapping.
    pub previous_master_key_env: Option<String>,
    /// The master keys as loaded (never written out): the current first.
    #[serde(skip)]
    pub keys: Vec<Key32>,
}

impl EncryptionConfig {
    /// Whether a master key is configured (then new answers are sealed).
    pub fn enabled(&self) -> bool {
        self.master_key_env.is_some() || self.master_key_file.is_some()
    }
}

impl Config {
    pub(super) fn validate_encryption(&self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let e = &self.encryption;
        if e.master_key_env.is_some() && e.master_key_file.is_some() {
            return err("encryption: set master_key_env or master_key_file, not both");
        }
        if e.previous_master_key_env.is_some() && !e.enabled() {
            return err(
                "encryption.previous_master_key_env needs a current master key (master_key_env or master_key_file)",
            );
        }
        self.master_keys(env).map(|_| ()).map_err(ConfigError)
    }

    /// The master keys, the current one first, then the one being replaced
    /// (during a rotation). Empty: encryption is off.
    pub fn master_keys(&self, env: &HashMap<String, String>) -> Result<Vec<Key32>, String> {
        let e = &self.encryption;
        let from_env = |var: &str, what: &str| -> Result<Key32, String> {
            let v = env
                .get(var)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("encryption.{what}: {var} is not set; the master key is needed to read and write sealed answers"))?;
            Key32::from_base64(v).map_err(|e| format!("encryption.{what}: {var}: {e} (a master key is 32 random bytes, base64: `openssl rand -base64 32`)"))
        };
        let mut keys = Vec::new();
        if let Some(var) = &e.master_key_env {
            keys.push(from_env(var, "master_key_env")?);
        }
        if let Some(path) = &e.master_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|err| format!("encryption.master_key_file: cannot read {}: {err}", path.display()))?;
            keys.push(Key32::from_base64(&text).map_err(|err| {
                format!(
                    "encryption.master_key_file: {}: {err} (32 random bytes, base64)",
                    path.display()
                )
            })?);
        }
        if let Some(var) = &e.previous_master_key_env {
            keys.push(from_env(var, "previous_master_key_env")?);
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> Config {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn master_keys_from_env_or_file() {
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let env: HashMap<String, String> = [("MK".to_string(), key.to_string())].into();
        let c = config("[encryption]\nmaster_key_env = \"MK\"\n");
        assert!(c.encryption.enabled());
        assert_eq!(c.master_keys(&env).unwrap()[0].as_bytes()[31], 31);
        let missing = c.validate_encryption(&HashMap::new()).unwrap_err().0;
        assert!(missing.contains("MK is not set"), "{missing}");
        let short: HashMap<String, String> = [("MK".to_string(), "c2hvcnQ=".to_string())].into();
        assert!(c.master_keys(&short).unwrap_err().contains("32 bytes"));
        let dir = tempfile_dir();
        let path = dir.join("master.key");
        std::fs::write(&path, format!("{key}\n")).unwrap();
        let c = config(&format!("[encryption]\nmaster_key_file = \"{}\"\n", path.display()));
        assert_eq!(c.master_keys(&HashMap::new()).unwrap().len(), 1);
        let both = config(&format!(
            "[encryption]\nmaster_key_env = \"MK\"\nmaster_key_file = \"{}\"\n",
            path.display()
        ));
        assert!(both.validate_encryption(&env).is_err());
        assert!(config("").master_keys(&env).unwrap().is_empty(), "off by default");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("recache-enc-{}-{}", std::process::id(), crate::time::now_ms()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
