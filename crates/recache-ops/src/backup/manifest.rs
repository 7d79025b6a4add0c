//! The manifest of a backup set: what the set holds and how to check it.
//! Written last, twice (`manifest.json` and `manifest.copy.json`), each as
//! `{"sha256": "<hex>", "manifest": {...}}` where the hash covers the exact
//! bytes of the `manifest` value, so a damaged manifest is detected, never
//! trusted. With a signing key (`[backup] signing_key_env`) the file also
//! holds `"hmac_sha256"`, an HMAC-SHA256 of the same bytes under a key kept
//! outside the target: the manifest names every file's hash, so a valid
//! signature vouches for the whole set (pooled artifacts are named by their
//! own hash). The format is documented in `docs/backup.md`.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// HMAC-SHA256 of `body` under `key`, ready to finalize or verify.
fn mac(key: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    mac
}

/// What a manifest's signature says, checked against the configured key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signature {
    /// Signed with the configured key.
    Valid,
    /// No signature, though a key is configured.
    Unsigned,
    /// Signed, but not with the configured key (or altered after signing).
    Wrong,
    /// No key configured: nothing to check with.
    NotChecked,
}

impl Signature {
    /// Why a set with this signature must not be trusted, if it must not.
    pub fn problem(self, id: &str) -> Option<String> {
        match self {
            Signature::Valid | Signature::NotChecked => None,
            Signature::Unsigned => Some(format!(
                "set {id} is not signed, and backup.signing_key_env is set: it may have been planted in the target"
            )),
            Signature::Wrong => Some(format!(
                "set {id}'s manifest signature does not match the signing key: it was altered, planted, or signed with another key"
            )),
        }
    }
}

pub const FORMAT: &str = "recache-backup";
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const MANIFEST_COPY: &str = "manifest.copy.json";

/// One file of a set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Relative to the set's folder.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// Records (lines) inside, once decompressed.
    pub rows: u64,
}

/// A time window, ms since the epoch (oldest and newest record covered).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Window {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl Window {
    pub fn add(&mut self, t: i64) {
        self.from_ms = Some(self.from_ms.map_or(t, |f| f.min(t)));
        self.to_ms = Some(self.to_ms.map_or(t, |f| f.max(t)));
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MetadataPart {
    pub engine: String,
    pub entries: u64,
    /// Entries still live (not expired) when the snapshot was taken.
    pub live_entries: u64,
    pub audit_events: u64,
    pub jobs: u64,
    /// Client keys of metadata (`recache keys create`): digests only.
    #[serde(default)]
    pub keys: u64,
    /// Tenants' data keys (`[encryption]`) in the target's key file when the
    /// set was made (`keys/data-keys.jsonl`, beside the sets; see `keyfile`).
    #[serde(default)]
    pub data_keys: u64,
    /// Hourly usage rows (`usage_hourly`).
    #[serde(default)]
    pub usage_rows: u64,
    /// Creation times of the entries.
    pub window: Window,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IndexPart {
    pub engine: String,
    pub pointers: u64,
    pub window: Window,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ArtifactsPart {
    pub engine: String,
    /// Distinct artifacts the entries refer to (all in the pool, except `missing`).
    pub referenced: u64,
    pub bytes: u64,
    /// Copied into the pool by this backup (the rest were already there).
    /// `copied` and `reused` leave out the canary, which is new in every set.
    pub copied: u64,
    pub copied_bytes: u64,
    pub reused: u64,
    /// Referenced but absent or damaged at the source: not in the set.
    pub missing: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_artifacts: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VectorsPart {
    pub engine: String,
    /// `exported` (every point, in `vectors/points-*.jsonl.gz`) or `disabled`
    /// (nothing to restore; a restore into a store with vectors on rebuilds
    /// them from the stored requests, at no provider cost with a local embedder).
    pub state: String,
    pub points: u64,
    #[serde(default)]
    pub collections: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Roles {
    pub metadata: MetadataPart,
    pub index: IndexPart,
    pub artifacts: ArtifactsPart,
    pub vectors: VectorsPart,
}

/// The synthetic entry written through every store at backup time.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Canary {
    pub key: String,
    pub artifact: String,
    /// The artifact's exact bytes, base64.
    pub bytes_b64: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub deployment: String,
    /// `full` (every artifact copied) or `incremental` (only what the pool lacked).
    pub kind: String,
    /// `manual` (kept until deleted) or `scheduled` (pruned by the retention rules).
    pub trigger: String,
    pub parent: Option<String>,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub recache_version: String,
    /// SHA-256 of the configuration the backup ran with.
    pub config_fingerprint: String,
    pub roles: Roles,
    pub canary: Canary,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Bytes of all files of the set (not counting the pool).
    pub fn set_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// The manifest file: the body, and the hash of the body's exact bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_signed(None)
    }

    /// [`Manifest::encode`], signed with `key` when there is one.
    pub fn encode_signed(&self, key: Option<&[u8]>) -> Vec<u8> {
        let body = serde_json::to_string_pretty(self).unwrap_or_default();
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        let sig = key.map_or(String::new(), |k| {
            let sig = mac(k, body.as_bytes()).finalize().into_bytes();
            format!("\"hmac_sha256\": \"{}\",\n", hex::encode(sig))
        });
        format!("{{\"sha256\": \"{hash}\",\n{sig}\"manifest\": {body}\n}}\n").into_bytes()
    }

    /// Whether a manifest file is signed with `key` (`None`: no key to check with).
    pub fn signature(bytes: &[u8], key: Option<&[u8]>) -> Signature {
        #[derive(Deserialize)]
        struct Outer<'a> {
            hmac_sha256: Option<String>,
            #[serde(borrow)]
            manifest: &'a serde_json::value::RawValue,
        }
        let Some(key) = key else { return Signature::NotChecked };
        let Ok(outer) = serde_json::from_slice::<Outer>(bytes) else {
            return Signature::Wrong;
        };
        let Some(claimed) = outer.hmac_sha256.and_then(|h| hex::decode(h).ok()) else {
            return Signature::Unsigned;
        };
        // Constant time: the comparison says nothing of how much matched.
        match mac(key, outer.manifest.get().as_bytes()).verify_slice(&claimed) {
            Ok(()) => Signature::Valid,
            Err(_) => Signature::Wrong,
        }
    }

    /// Parses a manifest file, checking its own hash and its format version.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        #[derive(Deserialize)]
        struct Outer<'a> {
            sha256: String,
            #[serde(borrow)]
            manifest: &'a serde_json::value::RawValue,
        }
        let outer: Outer = serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
        let body = outer.manifest.get();
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        if hash != outer.sha256 {
            return Err(format!(
                "the manifest is damaged: its SHA-256 is {hash}, it says {}",
                outer.sha256
            ));
        }
        let m: Manifest = serde_json::from_str(body).map_err(|e| format!("unreadable manifest: {e}"))?;
        if m.format != FORMAT || m.version > VERSION {
            return Err(format!(
                "manifest format {} v{} is not one this recache reads ({FORMAT} v1..v{VERSION})",
                m.format, m.version
            ));
        }
        Ok(m)
    }
}

/// The result of one verification, stored beside the manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verification {
    pub set: String,
    pub at_ms: i64,
    /// `structure`, `read-data` or `restore`.
    pub level: String,
    /// `N/T` when only a slice of the artifacts was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// `primary` or `dr`.
    pub target: String,
    pub ok: bool,
    pub files_checked: u64,
    pub artifacts_checked: u64,
    pub restored_entries: u64,
    /// Entries of erased tenants (sealed with a destroyed key): left out of
    /// the test restore, as a restore leaves them out; not a problem.
    #[serde(default)]
    pub unreadable_entries: u64,
    pub canary: Option<bool>,
    pub problems: Vec<String>,
    pub seconds: f64,
}

impl Verification {
    /// An empty result to collect a stage's findings in.
    pub fn scratch() -> Verification {
        Verification {
            set: String::new(),
            at_ms: 0,
            level: String::new(),
            subset: None,
            target: String::new(),
            ok: false,
            files_checked: 0,
            artifacts_checked: 0,
            restored_entries: 0,
            unreadable_entries: 0,
            canary: None,
            problems: Vec::new(),
            seconds: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            id: "20261124T090000000Z".into(),
            deployment: "default".into(),
            kind: "full".into(),
            trigger: "manual".into(),
            parent: None,
            started_at_ms: 1,
            finished_at_ms: 2,
            recache_version: "0".into(),
            config_fingerprint: "f".into(),
            roles: Roles::default(),
            canary: Canary::default(),
            files: vec![FileEntry {
                path: "metadata/entries-00000.jsonl.gz".into(),
                sha256: "00".into(),
                size: 3,
                rows: 1,
            }],
        }
    }

    #[test]
    fn round_trip_and_damage_is_detected() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        // One changed byte inside the body: refused, not trusted.
        let text = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"size\": 3", "\"size\": 4");
        assert!(Manifest::decode(text.as_bytes()).unwrap_err().contains("damaged"));
        // Truncated: refused.
        assert!(Manifest::decode(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn signatures_are_checked_against_the_key() {
        let m = sample();
        let key = b"a key kept outside the target, 32+ bytes";
        let signed = m.encode_signed(Some(key));
        assert_eq!(
            Manifest::decode(&signed).unwrap(),
            m,
            "a signed manifest reads as before"
        );
        assert_eq!(Manifest::signature(&signed, Some(key)), Signature::Valid);
        assert_eq!(Manifest::signature(&signed, Some(b"another key")), Signature::Wrong);
        assert_eq!(Manifest::signature(&m.encode(), Some(key)), Signature::Unsigned);
        assert_eq!(Manifest::signature(&m.encode(), None), Signature::NotChecked);
        // Re-hashed after an edit (the plain SHA-256 is no defence): the HMAC no longer matches.
        let text = String::from_utf8(signed).unwrap().replace("\"size\": 3", "\"size\": 4");
        let body_start = text.find("\"manifest\": ").unwrap() + "\"manifest\": ".len();
        let body = &text[body_start..text.rfind('}').unwrap()].trim_end();
        let rehashed = text.replacen(&text[12..76], &hex::encode(Sha256::digest(body.as_bytes())), 1);
        assert!(
            Manifest::decode(rehashed.as_bytes()).is_ok(),
            "the forger fixed the hash"
        );
        assert_eq!(Manifest::signature(rehashed.as_bytes(), Some(key)), Signature::Wrong);
    }

    #[test]
    fn newer_format_is_refused() {
        let mut m = sample();
        m.version = VERSION + 1;
        assert!(Manifest::decode(&m.encode())
            .unwrap_err()
            .contains("not one this recache reads"));
    }
}
