//! The collection log (`<name>.vlog`): length-prefixed upsert and delete
//! records after a magic header, appended as points come and replayed at
//! start; a torn tail is cut.

use super::*;

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(super) fn encode_upsert(out: &mut Vec<u8>, p: &VectorPoint) {
    let mut body = Vec::with_capacity(64 + p.text.len() + p.vector.len() * 4);
    body.push(OP_UPSERT);
    body.extend_from_slice(&p.key.0);
    body.extend_from_slice(&p.expires_at_ms.to_le_bytes());
    put_str(&mut body, &p.scope);
    put_str(&mut body, &p.tenant);
    put_str(&mut body, &p.text);
    for x in &p.vector {
        body.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
}

pub(super) fn encode_delete(out: &mut Vec<u8>, key: CacheKey) {
    out.extend_from_slice(&33u32.to_le_bytes());
    out.push(OP_DELETE);
    out.extend_from_slice(&key.0);
}

pub(super) struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn string(&mut self) -> Option<String> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

pub(super) enum Record {
    Upsert(VectorPoint),
    Delete(CacheKey),
}

pub(super) fn decode(body: &[u8], dim: usize) -> Option<Record> {
    let mut c = Cursor(body);
    let op = c.take(1)?[0];
    let key = CacheKey(c.take(32)?.try_into().ok()?);
    match op {
        OP_DELETE => Some(Record::Delete(key)),
        OP_UPSERT => {
            let expires_at_ms = i64::from_le_bytes(c.take(8)?.try_into().ok()?);
            let scope = c.string()?;
            let tenant = c.string()?;
            let text = c.string()?;
            let raw = c.take(dim * 4)?;
            let vector = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Some(Record::Upsert(VectorPoint {
                key,
                scope,
                tenant,
                text,
                expires_at_ms,
                vector,
            }))
        }
        _ => None,
    }
}

/// Reads a collection log: (dimension, records, bytes of valid log).
pub(super) fn read_log(path: &Path) -> std::io::Result<(usize, Vec<Record>, u64)> {
    let mut r = BufReader::new(File::open(path)?);
    let mut head = [0u8; 12];
    r.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err(std::io::Error::other("not a recache vector log"));
    }
    let dim = u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize;
    let mut records = Vec::new();
    let mut valid = 12u64;
    let mut len = [0u8; 4];
    loop {
        if r.read_exact(&mut len).is_err() {
            break;
        }
        let n = u32::from_le_bytes(len) as usize;
        if n > 64 * 1024 * 1024 {
            break;
        }
        let mut body = vec![0u8; n];
        if r.read_exact(&mut body).is_err() {
            break;
        }
        match decode(&body, dim) {
            Some(rec) => records.push(rec),
            None => break,
        }
        valid += 4 + n as u64;
    }
    Ok((dim, records, valid))
}

pub(super) fn new_log(path: &Path, dim: usize) -> std::io::Result<File> {
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(path)?;
    f.write_all(MAGIC)?;
    f.write_all(&(dim as u32).to_le_bytes())?;
    f.sync_all()?;
    Ok(f)
}
