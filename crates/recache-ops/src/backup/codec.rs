//! The files of a set: gzip-compressed text, one record per line, so that
//! `zcat` is all a person needs to read them. Metadata rows are JSON lines;
//! index pointers and the artifact list are tab-separated.
//!
//! Large exports are split into parts of at most [`PART_ROWS`] records, each
//! compressed on a blocking thread while the next is read.

use std::io::{BufRead, Read, Write};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use recache_core::key::CacheKey;
use recache_storage::roles::{ArtifactId, IndexEntry};

/// Records per part file.
pub const PART_ROWS: usize = 100_000;

/// A compressed file ready to upload.
pub struct Packed {
    pub bytes: Bytes,
    pub sha256: String,
    pub rows: u64,
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Compresses `text` (already newline-terminated records).
pub(crate) fn pack(text: Vec<u8>, rows: u64) -> Packed {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(text.len() / 4), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(&text);
    let out = enc.finish().unwrap_or_default();
    Packed {
        sha256: sha256_hex(&out),
        bytes: Bytes::from(out),
        rows,
    }
}

pub(crate) fn unpack(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(bytes.len() * 4);
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| format!("not a readable gzip file: {e}"))?;
    Ok(out)
}

/// JSON lines of serialisable records.
pub(crate) fn json_lines<T: serde::Serialize>(items: &[T], out: &mut Vec<u8>) {
    for it in items {
        if serde_json::to_writer(&mut *out, it).is_ok() {
            out.push(b'\n');
        }
    }
}

/// Parses JSON lines; a bad line is an error naming its number.
pub(crate) fn parse_json_lines<T: serde::de::DeserializeOwned>(text: &[u8]) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if line.is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    Ok(out)
}

/// One exported vector point (a JSON line of `vectors/points-*.jsonl.gz`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PointLine {
    pub collection: String,
    pub dimension: usize,
    pub key: String,
    pub scope: String,
    pub tenant: String,
    pub text: String,
    pub expires_at_ms: i64,
    pub vector: Vec<f32>,
}

/// `key \t artifact \t size \t created_at_ms \t expires_at_ms`
pub(crate) fn pointer_lines(items: &[(CacheKey, IndexEntry)], out: &mut Vec<u8>) {
    for (k, e) in items {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}",
            k.hex(),
            e.artifact.hex(),
            e.size,
            e.created_at_ms,
            e.expires_at_ms
        );
    }
}

pub(crate) fn parse_pointer_lines(text: &[u8]) -> Result<Vec<(CacheKey, IndexEntry)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        let bad = || format!("line {}: not a pointer record", i + 1);
        if f.len() != 5 {
            return Err(bad());
        }
        let key = CacheKey::from_hex(f[0]).ok_or_else(bad)?;
        let artifact = ArtifactId::from_hex(f[1]).ok_or_else(bad)?;
        let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
        out.push((
            key,
            IndexEntry {
                artifact,
                size: num(f[2])? as u64,
                created_at_ms: num(f[3])?,
                expires_at_ms: num(f[4])?,
            },
        ));
    }
    Ok(out)
}

/// `sha256 \t size`
pub(crate) fn artifact_lines(items: &[(ArtifactId, u64)], out: &mut Vec<u8>) {
    for (id, size) in items {
        let _ = writeln!(out, "{}\t{size}", id.hex());
    }
}

pub(crate) fn parse_artifact_lines(text: &[u8]) -> Result<Vec<(ArtifactId, u64)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if line.is_empty() {
            continue;
        }
        let bad = || format!("line {}: not an artifact record", i + 1);
        let (id, size) = line.split_once('\t').ok_or_else(bad)?;
        out.push((
            ArtifactId::from_hex(id).ok_or_else(bad)?,
            size.parse().map_err(|_| bad())?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_and_artifacts_round_trip_through_gzip() {
        let p = vec![(
            CacheKey([7; 32]),
            IndexEntry {
                artifact: ArtifactId([9; 32]),
                size: 12,
                created_at_ms: 1,
                expires_at_ms: 2,
            },
        )];
        let mut text = Vec::new();
        pointer_lines(&p, &mut text);
        let packed = pack(text, 1);
        assert_eq!(packed.sha256, sha256_hex(&packed.bytes));
        assert_eq!(parse_pointer_lines(&unpack(&packed.bytes).unwrap()).unwrap(), p);
        let a = vec![(ArtifactId([1; 32]), 5u64)];
        let mut text = Vec::new();
        artifact_lines(&a, &mut text);
        assert_eq!(parse_artifact_lines(&text).unwrap(), a);
        assert!(parse_pointer_lines(b"zz\t1\n").is_err());
        assert!(unpack(b"not gzip").is_err());
    }
}
