//! The artifact envelope. An artifact holds everything needed to serve an
//! entry and to rebuild its metadata: a small JSON header, the canonical
//! request, and the response body.
//!
//! Layout: `RCA1` | u32 LE header length | header JSON | u32 LE request
//! length | canonical request JSON | response body. The hit path parses only
//! the small header and slices the body without copying.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 4] = b"RCA1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArtifactMeta {
    pub key: String,
    pub tenant: String,
    pub namespace: String,
    pub endpoint: String,
    pub model: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub content_type: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

pub fn encode(meta: &ArtifactMeta, request: &[u8], body: &[u8]) -> Bytes {
    let header = serde_json::to_vec(meta).unwrap_or_default();
    let mut out = BytesMut::with_capacity(12 + header.len() + request.len() + body.len());
    out.put_slice(MAGIC);
    out.put_u32_le(header.len() as u32);
    out.put_slice(&header);
    out.put_u32_le(request.len() as u32);
    out.put_slice(request);
    out.put_slice(body);
    out.freeze()
}

/// A decoded artifact; `request` and `body` share the original buffer.
pub struct Decoded {
    pub meta: ArtifactMeta,
    pub request: Bytes,
    pub body: Bytes,
}

pub fn decode(bytes: &Bytes) -> Result<Decoded, String> {
    let take_u32 = |at: usize| -> Result<usize, String> {
        let b: [u8; 4] = bytes
            .get(at..at + 4)
            .ok_or("artifact truncated")?
            .try_into()
            .map_err(|_| "artifact truncated")?;
        Ok(u32::from_le_bytes(b) as usize)
    };
    if bytes.get(..4) != Some(MAGIC.as_slice()) {
        return Err("not a recache artifact (bad magic)".into());
    }
    let hlen = take_u32(4)?;
    let h_end = 8usize
        .checked_add(hlen)
        .filter(|e| *e <= bytes.len())
        .ok_or("artifact header truncated")?;
    let meta: ArtifactMeta = serde_json::from_slice(&bytes[8..h_end]).map_err(|e| format!("artifact header: {e}"))?;
    let rlen = take_u32(h_end)?;
    let r_start = h_end + 4;
    let r_end = r_start
        .checked_add(rlen)
        .filter(|e| *e <= bytes.len())
        .ok_or("artifact request truncated")?;
    Ok(Decoded {
        meta,
        request: bytes.slice(r_start..r_end),
        body: bytes.slice(r_end..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let meta = ArtifactMeta {
            key: "k".into(),
            tenant: "t".into(),
            namespace: "default".into(),
            endpoint: "chat".into(),
            model: "m".into(),
            created_at_ms: 1,
            expires_at_ms: 2,
            content_type: "application/json".into(),
            prompt_tokens: 3,
            completion_tokens: 4,
            cost_usd: 0.5,
        };
        let a = encode(&meta, b"{\"model\":\"m\"}", b"{\"answer\":1}");
        let d = decode(&a).unwrap();
        assert_eq!(d.meta, meta);
        assert_eq!(&d.request[..], b"{\"model\":\"m\"}");
        assert_eq!(&d.body[..], b"{\"answer\":1}");
        for cut in [0, 3, 7, 20] {
            assert!(decode(&a.slice(..cut)).is_err(), "cut at {cut}");
        }
    }
}
