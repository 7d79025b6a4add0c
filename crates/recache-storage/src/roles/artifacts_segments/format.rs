//! The on-disk format of artifact segments (docs/backends/segments.md).
//!
//! A segment is a file of records, each a 60-byte header and its payload:
//!
//! ```text
//!  0..4   magic "RCS1"
//!  4      kind: 1 = artifact, 2 = tombstone
//!  5..8   zero
//!  8..12  payload length (u32 LE; 0 for a tombstone)
//! 12..16  tombstone: the segment of the record it deletes (u32 LE)
//! 16..24  written, ms since the epoch (i64 LE; kept by compaction)
//! 24..56  artifact id (its SHA-256)
//! 56..60  CRC-32 of bytes 0..56
//! ```
//!
//! The header's CRC makes the structure self-checking (a torn tail or a
//! damaged header is told apart from a record); the payload is checked by
//! its SHA-256, by the callers, as for every artifact store.
//!
//! A sealed segment gets an index file (`.idx`): the segment's length, then
//! each record's offset and header, then a CRC-32 of all of it. Opening
//! reads the indexes of sealed segments and scans only the open one.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::super::ArtifactId;

pub const MAGIC: [u8; 4] = *b"RCS1";
pub const HEADER: usize = 60;
const IDX_MAGIC: [u8; 4] = *b"RCX1";
const IDX_ENTRY: usize = 8 + HEADER;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Artifact,
    Tombstone,
}

/// One record's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub len: u32,
    pub target: u32,
    pub written_ms: i64,
    pub id: ArtifactId,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = match self.kind {
            Kind::Artifact => 1,
            Kind::Tombstone => 2,
        };
        h[8..12].copy_from_slice(&self.len.to_le_bytes());
        h[12..16].copy_from_slice(&self.target.to_le_bytes());
        h[16..24].copy_from_slice(&self.written_ms.to_le_bytes());
        h[24..56].copy_from_slice(&self.id.0);
        let crc = crc32fast::hash(&h[..56]);
        h[56..60].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The header in `b`, if it is one (magic, kind and CRC all hold).
    pub fn decode(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER || b[0..4] != MAGIC || b[5..8] != [0, 0, 0] {
            return None;
        }
        let crc = u32::from_le_bytes(b[56..60].try_into().ok()?);
        if crc32fast::hash(&b[..56]) != crc {
            return None;
        }
        let kind = match b[4] {
            1 => Kind::Artifact,
            2 => Kind::Tombstone,
            _ => return None,
        };
        Some(Header {
            kind,
            len: u32::from_le_bytes(b[8..12].try_into().ok()?),
            target: u32::from_le_bytes(b[12..16].try_into().ok()?),
            written_ms: i64::from_le_bytes(b[16..24].try_into().ok()?),
            id: ArtifactId(b[24..56].try_into().ok()?),
        })
    }

    /// Header and payload together, in bytes.
    pub fn record_len(&self) -> u64 {
        HEADER as u64 + u64::from(self.len)
    }
}

/// A record found in a segment: where it starts, and its header.
pub type Found = (u64, Header);

pub fn seg_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:010}.seg"))
}

pub fn idx_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:010}.idx"))
}

/// The segment numbers in `dir`, in order.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".seg").and_then(|s| s.parse::<u32>().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// What a scan of a segment found.
#[derive(Debug, Default)]
pub struct Scan {
    pub records: Vec<Found>,
    /// Where the last whole record ends: appends go on from here.
    pub end: u64,
    /// Bytes skipped over damaged headers (the records there are lost to
    /// this process's view; their entries refetch).
    pub skipped: u64,
}

/// Reads the records of `file` from `from` to its end. A header that does
/// not check is skipped over to the next one that does (a damaged byte
/// loses one record, not the rest); an incomplete record at the end is
/// where the scan stops (a torn tail, or a write still in flight).
pub fn scan(file: &File, from: u64) -> std::io::Result<Scan> {
    let len = file.metadata()?.len();
    let mut buf = Vec::new();
    let mut pos = from;
    let mut out = Scan {
        end: from,
        ..Default::default()
    };
    // Reads the file in 4 MiB windows, headers only: payloads are skipped.
    let mut header = [0u8; HEADER];
    while pos + HEADER as u64 <= len {
        file.read_exact_at(&mut header, pos)?;
        match Header::decode(&header) {
            Some(h) if pos + h.record_len() <= len => {
                out.records.push((pos, h));
                pos += h.record_len();
                out.end = pos;
            }
            Some(_) => break, // a record longer than the file: the torn tail
            None => {
                // Look for the next header that checks, and whose record fits.
                match resync(file, pos + 1, len, &mut buf)? {
                    Some(next) => {
                        out.skipped += next - pos;
                        pos = next;
                    }
                    None => break,
                }
            }
        }
    }
    Ok(out)
}

fn resync(file: &File, from: u64, len: u64, buf: &mut Vec<u8>) -> std::io::Result<Option<u64>> {
    const WINDOW: u64 = 1 << 20;
    let mut start = from;
    while start + HEADER as u64 <= len {
        let n = (len - start).min(WINDOW + HEADER as u64) as usize;
        buf.resize(n, 0);
        file.read_exact_at(&mut buf[..n], start)?;
        let mut i = 0;
        while i + HEADER <= n {
            if buf[i..i + 4] == MAGIC {
                if let Some(h) = Header::decode(&buf[i..i + HEADER]) {
                    if start + i as u64 + h.record_len() <= len {
                        return Ok(Some(start + i as u64));
                    }
                }
            }
            i += 1;
        }
        start += (n - HEADER + 1) as u64;
    }
    Ok(None)
}

/// Writes a sealed segment's index (staged, then renamed into place).
pub fn write_idx(dir: &Path, n: u32, seg_len: u64, records: &[Found]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(16 + records.len() * IDX_ENTRY + 4);
    buf.extend_from_slice(&IDX_MAGIC);
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seg_len.to_le_bytes());
    for (off, h) in records {
        buf.extend_from_slice(&off.to_le_bytes());
        buf.extend_from_slice(&h.encode());
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    let path = idx_path(dir, n);
    let staged = path.with_extension(format!("idx#{}", std::process::id()));
    let mut f = File::create(&staged)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&staged, &path)
}

/// A sealed segment's records from its index, if the index is whole and
/// covers `seg_len` bytes (else the caller scans the segment).
pub fn read_idx(dir: &Path, n: u32, seg_len: u64) -> Option<Vec<Found>> {
    let mut buf = Vec::new();
    File::open(idx_path(dir, n)).ok()?.read_to_end(&mut buf).ok()?;
    if buf.len() < 20 || buf[0..4] != IDX_MAGIC || (buf.len() - 20) % IDX_ENTRY != 0 {
        return None;
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    if u64::from_le_bytes(body[8..16].try_into().ok()?) != seg_len {
        return None;
    }
    body[16..]
        .chunks_exact(IDX_ENTRY)
        .map(|e| Some((u64::from_le_bytes(e[..8].try_into().ok()?), Header::decode(&e[8..])?)))
        .collect()
}
