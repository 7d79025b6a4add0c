//! Sealing at rest ("Data protection" in `ARCHITECTURE.md`): envelope
//! encryption with AES-256-GCM. A master key (256 bits, from the operator)
//! wraps one random data key per tenant; data keys seal the tenant's
//! artifacts and stored requests. Keys live in [`Key32`], zeroed on drop.
//!
//! A sealed blob: `RCE1` | u8 key-id length | key id | 12-byte nonce |
//! ciphertext and 16-byte tag. The associated data binds it to its owner
//! (the tenant for an artifact, the tenant and key id for a wrapped key), so
//! a blob moved to another tenant does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const SEALED_MAGIC: &[u8; 4] = b"RCE1";
const NONCE_LEN: usize = 12;

/// Why a blob or a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not a sealed blob")]
    NotSealed,
    #[error("sealed blob truncated")]
    Truncated,
    #[error("sealed with key {0}, which is not available")]
    UnknownKey(String),
    /// Wrong key, wrong owner, or a changed byte: the tag does not verify.
    #[error("the seal does not verify (a changed byte, or another owner's blob)")]
    Forged,
    #[error("{0}")]
    BadKey(String),
}

/// 256 bits of key material, zeroed when dropped.
#[derive(Clone)]
pub struct Key32(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Key32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key32(…)")
    }
}

impl Key32 {
    /// A fresh random key.
    pub fn random() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        fill_random(&mut k[..]);
        Self(k)
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, SealError> {
        let arr: [u8; 32] = b
            .try_into()
            .map_err(|_| SealError::BadKey(format!("a key must be 32 bytes, not {}", b.len())))?;
        Ok(Self(Zeroizing::new(arr)))
    }

    /// A key written as base64 (standard alphabet, padding optional).
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let text = text.trim();
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
                .map_err(|e| SealError::BadKey(format!("not base64: {e}")))?,
        );
        Self::from_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A name for this key that reveals nothing of it: 16 hex digits of a
    /// domain-separated SHA-256.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"recache key fingerprint\0");
        h.update(&self.0[..]);
        hex::encode(&h.finalize()[..8])
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&self.0[..]).expect("a 32-byte key")
    }
}

fn fill_random(buf: &mut [u8]) {
    getrandom::getrandom(buf).expect("the operating system's random source");
}

/// Seals `plain` with `key` (named `key_id` in the blob), bound to `aad`.
pub fn seal(key: &Key32, key_id: &str, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    assert!(key_id.len() < 256, "a key id is short");
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce);
    let aad = bound(aad, key_id);
    let ct = key
        .cipher()
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: &aad })
        .expect("AES-GCM encrypts any length this process holds");
    let mut out = Vec::with_capacity(5 + key_id.len() + NONCE_LEN + ct.len());
    out.extend_from_slice(SEALED_MAGIC);
    out.push(key_id.len() as u8);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Whether `bytes` is a sealed blob (by its magic).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(SEALED_MAGIC)
}

/// The id of the key a sealed blob needs.
pub fn key_id_of(bytes: &[u8]) -> Result<&str, SealError> {
    if !is_sealed(bytes) {
        return Err(SealError::NotSealed);
    }
    let n = *bytes.get(4).ok_or(SealError::Truncated)? as usize;
    let id = bytes.get(5..5 + n).ok_or(SealError::Truncated)?;
    std::str::from_utf8(id).map_err(|_| SealError::Forged)
}

/// Opens a sealed blob with the key `find` gives for its key id.
pub fn open<'k>(bytes: &[u8], aad: &[u8], find: impl FnOnce(&str) -> Option<&'k Key32>) -> Result<Vec<u8>, SealError> {
    let id = key_id_of(bytes)?;
    let start = 5 + id.len();
    let nonce = bytes.get(start..start + NONCE_LEN).ok_or(SealError::Truncated)?;
    let ct = &bytes[start + NONCE_LEN..];
    if ct.len() < 16 {
        return Err(SealError::Truncated);
    }
    let key = find(id).ok_or_else(|| SealError::UnknownKey(id.to_string()))?;
    let aad = bound(aad, id);
    key.cipher()
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .map_err(|_| SealError::Forged)
}

/// The authenticated data: the caller's, and the key id the blob names (so
/// the id cannot be changed either).
fn bound(aad: &[u8], key_id: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(aad.len() + 1 + key_id.len());
    v.extend_from_slice(aad);
    v.push(0);
    v.extend_from_slice(key_id.as_bytes());
    v
}

/// The associated data of a wrapped data key: its tenant and its id.
fn wrap_aad(tenant: &str, key_id: &str) -> Vec<u8> {
    format!("recache data key\0{tenant}\0{key_id}").into_bytes()
}

/// A data key wrapped by `master` (named by its fingerprint), as base64 text.
pub fn wrap(master: &Key32, tenant: &str, key_id: &str, data: &Key32) -> String {
    let blob = seal(master, &master.fingerprint(), &wrap_aad(tenant, key_id), &data.0[..]);
    base64::engine::general_purpose::STANDARD.encode(blob)
}

/// The data key of `wrapped`, opened with whichever of `masters` wrapped it.
pub fn unwrap(masters: &[&Key32], tenant: &str, key_id: &str, wrapped: &str) -> Result<Key32, SealError> {
    let blob = base64::engine::general_purpose::STANDARD
        .decode(wrapped.trim())
        .map_err(|_| SealError::Truncated)?;
    let plain = Zeroizing::new(open(&blob, &wrap_aad(tenant, key_id), |id| {
        masters.iter().copied().find(|m| m.fingerprint() == id)
    })?);
    Key32::from_bytes(&plain)
}

/// The fingerprint of the master key that wrapped `wrapped`.
pub fn wrapped_by(wrapped: &str) -> Result<String, SealError> {
    let blob = base64::engine::general_purpose::STANDARD
        .decode(wrapped.trim())
        .map_err(|_| SealError::Truncated)?;
    key_id_of(&blob).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_what_it_should() {
        let k = Key32::random();
        let blob = seal(&k, "dk_1", b"team-a", b"the answer");
        assert!(is_sealed(&blob));
        assert_eq!(key_id_of(&blob).unwrap(), "dk_1");
        assert!(
            !blob.windows(10).any(|w| w == b"the answer"),
            "no plain text in the blob"
        );
        assert_eq!(open(&blob, b"team-a", |_| Some(&k)).unwrap(), b"the answer");
        assert_eq!(
            open(&blob, b"team-b", |_| Some(&k)),
            Err(SealError::Forged),
            "another owner"
        );
        let other = Key32::random();
        assert_eq!(open(&blob, b"team-a", |_| Some(&other)), Err(SealError::Forged));
        assert_eq!(
            open(&blob, b"team-a", |_| None),
            Err(SealError::UnknownKey("dk_1".into()))
        );
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(open(&bad, b"team-a", |_| Some(&k)).is_err(), "a flipped byte at {i}");
        }
        for cut in [0, 3, 5, 8, 20, blob.len() - 1] {
            assert!(open(&blob[..cut], b"team-a", |_| Some(&k)).is_err(), "cut at {cut}");
        }
        assert_ne!(
            seal(&k, "dk_1", b"a", b"x"),
            seal(&k, "dk_1", b"a", b"x"),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn wraps_under_either_master() {
        let (m1, m2) = (Key32::random(), Key32::random());
        let data = Key32::random();
        let w = wrap(&m1, "t", "dk_1", &data);
        assert_eq!(wrapped_by(&w).unwrap(), m1.fingerprint());
        assert_eq!(
            unwrap(&[&m2, &m1], "t", "dk_1", &w).unwrap().as_bytes(),
            data.as_bytes()
        );
        assert!(unwrap(&[&m2], "t", "dk_1", &w).is_err(), "only its master opens it");
        assert!(unwrap(&[&m1], "u", "dk_1", &w).is_err(), "bound to its tenant");
        assert!(unwrap(&[&m1], "t", "dk_2", &w).is_err(), "and to its id");
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(Key32::from_base64(&b64).unwrap().as_bytes(), &[7u8; 32]);
        assert!(Key32::from_base64("c2hvcnQ=").is_err(), "16 bytes is not a key");
        assert!(format!("{:?}", Key32::random()).contains('…'), "never printed");
    }
}
