//! The keyring: each tenant's data key, unwrapped with the master key and
//! held in memory (zeroed when dropped), made on a tenant's first sealed
//! write ("Data protection" in `ARCHITECTURE.md`). Artifacts are sealed
//! before they are named, so an artifact's id is the SHA-256 of what is
//! stored and every integrity check (hits, audit, backups) works on the
//! sealed bytes; [`Keyring::open`] gives back the envelope.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use recache_core::seal::{self, Key32, SealError};

use super::data_keys::DataKeyRecord;
use super::{now_ms, Metadata};

/// How long a tenant's active key is used before metadata is asked again.
const ACTIVE_FOR: Duration = Duration::from_secs(60);

/// What a sealed artifact is bound to, beside its key.
const ARTIFACT_AAD: &[u8] = b"recache artifact v1";
/// What a sealed text of metadata is bound to, and how it starts.
const TEXT_AAD: &[u8] = b"recache stored request v1";
const TEXT_PREFIX: &str = "rce1:";

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("metadata: {0}")]
    Metadata(#[from] super::BackendError),
    #[error("{0}")]
    Seal(#[from] SealError),
    /// The tenant was erased: what its key sealed is unreadable.
    #[error("data key {0} was destroyed (the tenant was erased)")]
    Destroyed(String),
}

pub struct Keyring {
    /// The current master key first; then the one being replaced, if any.
    masters: Vec<Key32>,
    meta: Arc<dyn Metadata>,
    /// Unwrapped data keys by id.
    keys: RwLock<HashMap<String, Arc<Key32>>>,
    /// Each tenant's active data key id, and when it was read: re-read after
    /// [`ACTIVE_FOR`], so a rotation made elsewhere reaches every replica.
    active: RwLock<HashMap<String, (String, Instant)>>,
    /// One key made at a time (two first writes of a tenant make one key).
    making: tokio::sync::Mutex<()>,
}

impl Keyring {
    /// `None` without a master key (encryption off).
    pub fn new(masters: Vec<Key32>, meta: Arc<dyn Metadata>) -> Option<Arc<Self>> {
        if masters.is_empty() {
            return None;
        }
        Some(Arc::new(Self {
            masters,
            meta,
            keys: RwLock::default(),
            active: RwLock::default(),
            making: tokio::sync::Mutex::new(()),
        }))
    }

    /// The fingerprint of the current master key.
    pub fn master_id(&self) -> String {
        self.masters[0].fingerprint()
    }

    fn masters(&self) -> Vec<&Key32> {
        self.masters.iter().collect()
    }

    /// Remembers an unwrapped key (and, when active, as its tenant's).
    fn remember(&self, rec: &DataKeyRecord) -> Result<Arc<Key32>, KeyringError> {
        if rec.destroyed_at_ms.is_some() {
            return Err(KeyringError::Destroyed(rec.id.clone()));
        }
        let key = Arc::new(seal::unwrap(&self.masters(), &rec.tenant, &rec.id, &rec.wrapped)?);
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rec.id.clone(), key.clone());
        if rec.active() {
            self.active
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rec.tenant.clone(), (rec.id.clone(), Instant::now()));
        }
        Ok(key)
    }

    /// The tenant's active data key, read from metadata or made now.
    pub async fn active_key(&self, tenant: &str) -> Result<(String, Arc<Key32>), KeyringError> {
        if let Some(found) = self.cached_active(tenant) {
            return Ok(found);
        }
        let _one = self.making.lock().await;
        if let Some(found) = self.cached_active(tenant) {
            return Ok(found);
        }
        let recs = match self.meta.list_data_keys(Some(tenant.to_string())).await {
            Ok(recs) => recs,
            Err(e) => {
                // Metadata is out: the key in use stays in use (a rotation waits).
                let stale = self
                    .active
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(tenant)
                    .cloned();
                let key = stale.and_then(|(id, _)| {
                    Some((
                        id.clone(),
                        self.keys.read().unwrap_or_else(|e| e.into_inner()).get(&id)?.clone(),
                    ))
                });
                return key.ok_or(KeyringError::Metadata(e));
            }
        };
        if let Some(rec) = recs.iter().rev().find(|r| r.active()) {
            let key = self.remember(rec)?;
            return Ok((rec.id.clone(), key));
        }
        self.make_key(tenant, false).await
    }

    /// Forgets which key is each tenant's active one, so the next seal reads
    /// it from metadata (a reseal starts so, after a rotation made elsewhere).
    pub fn forget_active(&self) {
        self.active.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn cached_active(&self, tenant: &str) -> Option<(String, Arc<Key32>)> {
        let id = match self.active.read().unwrap_or_else(|e| e.into_inner()).get(tenant) {
            Some((id, at)) if at.elapsed() < ACTIVE_FOR => id.clone(),
            _ => return None,
        };
        let key = self.keys.read().unwrap_or_else(|e| e.into_inner()).get(&id)?.clone();
        Some((id, key))
    }

    /// Makes a new data key for the tenant, wrapped by the current master
    /// key; with `rotate`, the tenant's other keys are retired (they still open).
    pub async fn make_key(&self, tenant: &str, rotate: bool) -> Result<(String, Arc<Key32>), KeyringError> {
        let mut id_bytes = [0u8; 8];
        getrandom::getrandom(&mut id_bytes).expect("the operating system's random source");
        let id = format!("dk_{}", hex::encode(id_bytes));
        let data = Key32::random();
        let rec = DataKeyRecord {
            id: id.clone(),
            tenant: tenant.to_string(),
            wrapped: seal::wrap(&self.masters[0], tenant, &id, &data),
            master_id: self.master_id(),
            created_at_ms: now_ms(),
            retired_at_ms: None,
            destroyed_at_ms: None,
        };
        self.meta.create_data_key(rec.clone(), true).await?;
        tracing::info!(tenant, key = %id, rotate, "encryption: a new data key for the tenant");
        let key = self.remember(&rec)?;
        Ok((id, key))
    }

    /// A data key by id (any state but destroyed), from memory or metadata.
    pub async fn key(&self, id: &str) -> Result<Arc<Key32>, KeyringError> {
        if let Some(k) = self.keys.read().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(k.clone());
        }
        let recs = self.meta.list_data_keys(None).await?;
        let rec = recs
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| KeyringError::Seal(SealError::UnknownKey(id.to_string())))?;
        self.remember(rec)
    }

    /// Seals an artifact envelope with its tenant's active key.
    pub async fn seal(&self, tenant: &str, envelope: &[u8]) -> Result<Bytes, KeyringError> {
        let (id, key) = self.active_key(tenant).await?;
        Ok(Bytes::from(seal::seal(&key, &id, ARTIFACT_AAD, envelope)))
    }

    /// The envelope of a stored artifact: opened when sealed, as it is when not
    /// (written before encryption was turned on).
    pub async fn open(&self, stored: &Bytes) -> Result<Bytes, KeyringError> {
        if !seal::is_sealed(stored) {
            return Ok(stored.clone());
        }
        let key = self.key(seal::key_id_of(stored)?).await?;
        Ok(Bytes::from(seal::open(stored, ARTIFACT_AAD, |_| Some(key.as_ref()))?))
    }

    /// Seals a text kept in metadata (the stored canonical request):
    /// `rce1:` and the sealed blob in base64.
    pub async fn seal_text(&self, tenant: &str, text: &str) -> Result<String, KeyringError> {
        let (id, key) = self.active_key(tenant).await?;
        let blob = seal::seal(&key, &id, TEXT_AAD, text.as_bytes());
        Ok(format!(
            "{TEXT_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        ))
    }

    /// Re-wraps every data key not wrapped by the current master key (a
    /// master rotation: the previous master key opens them, the current one
    /// wraps them again). Answers (re-wrapped, already current).
    pub async fn rewrap_all(&self) -> Result<(u64, u64), KeyringError> {
        let current = self.master_id();
        let (mut done, mut already) = (0, 0);
        for rec in self.meta.list_data_keys(None).await? {
            if rec.destroyed_at_ms.is_some() {
                continue;
            }
            if rec.master_id == current {
                already += 1;
                continue;
            }
            let data = seal::unwrap(&self.masters(), &rec.tenant, &rec.id, &rec.wrapped)?;
            let wrapped = seal::wrap(&self.masters[0], &rec.tenant, &rec.id, &data);
            if self
                .meta
                .rewrap_data_key(rec.id.clone(), wrapped, current.clone())
                .await?
            {
                done += 1;
            }
        }
        Ok((done, already))
    }

    /// Destroys every data key of a tenant (erasure): what they sealed, in
    /// every store and every backup, can no longer be opened. Answers how
    /// many keys were destroyed.
    pub async fn destroy_tenant(&self, tenant: &str) -> Result<u64, KeyringError> {
        let ids: Vec<String> = self
            .meta
            .list_data_keys(Some(tenant.to_string()))
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        let n = self.meta.destroy_data_keys(tenant.to_string(), now_ms()).await?;
        self.active.write().unwrap_or_else(|e| e.into_inner()).remove(tenant);
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        for id in &ids {
            keys.remove(id);
        }
        Ok(n)
    }

    /// Loads every live data key into memory (a job that opens many artifacts).
    pub async fn preload(&self) -> Result<usize, KeyringError> {
        let mut n = 0;
        for rec in self.meta.list_data_keys(None).await? {
            if rec.destroyed_at_ms.is_none() {
                self.remember(&rec)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The envelope of a stored artifact for a process that may have no keyring:
/// a sealed artifact without one is an error that says what is missing.
pub async fn open_artifact(keyring: Option<&Keyring>, stored: &Bytes) -> Result<Bytes, KeyringError> {
    match keyring {
        Some(k) => k.open(stored).await,
        None if seal::is_sealed(stored) => Err(KeyringError::Seal(SealError::BadKey(
            "the artifact is sealed and no master key is configured ([encryption] master_key_env)".into(),
        ))),
        None => Ok(stored.clone()),
    }
}

/// The id of the key a text kept in metadata is sealed with (`None`: plain).
pub fn text_key_id(text: &str) -> Option<String> {
    let b64 = text.strip_prefix(TEXT_PREFIX)?;
    // The id sits in the first bytes: decoding a short head is enough.
    let head: String = b64.chars().take(64).collect();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(&head[..head.len() / 4 * 4])
        .ok()?;
    seal::key_id_of(&blob).ok().map(str::to_string)
}

/// A text kept in metadata as it was written: opened when sealed
/// ([`Keyring::seal_text`]), as it is when not.
pub async fn open_text(keyring: Option<&Keyring>, text: &str) -> Result<String, KeyringError> {
    let Some(b64) = text.strip_prefix(TEXT_PREFIX) else {
        return Ok(text.to_string());
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| KeyringError::Seal(SealError::Truncated))?;
    let Some(k) = keyring else {
        return Err(KeyringError::Seal(SealError::BadKey(
            "the stored request is sealed and no master key is configured ([encryption] master_key_env)".into(),
        )));
    };
    let key = k.key(seal::key_id_of(&blob)?).await?;
    let plain = seal::open(&blob, TEXT_AAD, |_| Some(key.as_ref()))?;
    String::from_utf8(plain).map_err(|_| KeyringError::Seal(SealError::Forged))
}
