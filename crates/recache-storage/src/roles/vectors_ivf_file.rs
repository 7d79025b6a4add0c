//! The IVF indexes of one embedded vector collection, saved beside its log
//! (`<name>.ivf`) when the store is flushed, so a restarted gateway searches
//! its big scopes through their index at once instead of scanning them until
//! the maintainer has trained them again (about 45 s at 1,000,000 vectors).
//!
//! Per scope: the centroids, the rows counted at training, and each assigned
//! point's list, by key (rows are renumbered by a replay; keys are not). The
//! file names the length the log had when it was written: a log that changed
//! since (writes after the save, or a crash before the next one) makes the
//! file stale, and it is ignored; the maintainer trains as before. Written to
//! a temporary file and renamed, so a crash mid-write leaves the old one.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::key::CacheKey;

const MAGIC: &[u8; 8] = b"RCIVF01\n";

/// One scope's saved index.
pub struct SavedIvf {
    pub scope: String,
    pub trained_rows: u64,
    /// `nlist × dim` unit vectors, row-major.
    pub centroids: Vec<f32>,
    /// Each assigned point's list.
    pub lists: HashMap<CacheKey, u32>,
}

pub(crate) fn path_for(log: &Path) -> PathBuf {
    log.with_extension("ivf")
}

/// Writes the file (to `<name>.ivf.tmp`, then renamed).
pub fn save(path: &Path, log_len: u64, dim: usize, scopes: &[SavedIvf]) -> std::io::Result<()> {
    let tmp = path.with_extension("ivf.tmp");
    let mut w = BufWriter::new(std::fs::File::create(&tmp)?);
    w.write_all(MAGIC)?;
    w.write_all(&log_len.to_le_bytes())?;
    w.write_all(&(dim as u32).to_le_bytes())?;
    w.write_all(&(scopes.len() as u32).to_le_bytes())?;
    for s in scopes {
        w.write_all(&(s.scope.len() as u32).to_le_bytes())?;
        w.write_all(s.scope.as_bytes())?;
        w.write_all(&s.trained_rows.to_le_bytes())?;
        w.write_all(&((s.centroids.len() / dim.max(1)) as u32).to_le_bytes())?;
        for c in &s.centroids {
            w.write_all(&c.to_le_bytes())?;
        }
        w.write_all(&(s.lists.len() as u64).to_le_bytes())?;
        for (k, l) in &s.lists {
            w.write_all(&k.0)?;
            w.write_all(&l.to_le_bytes())?;
        }
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

/// Reads the file if it matches this log (`log_len`) and dimension; `None`
/// when it is missing, stale or damaged.
pub fn load(path: &Path, log_len: u64, dim: usize) -> Option<Vec<SavedIvf>> {
    let mut r = BufReader::new(std::fs::File::open(path).ok()?);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).ok()?;
    if &magic != MAGIC || read_u64(&mut r)? != log_len || read_u32(&mut r)? as usize != dim {
        return None;
    }
    let n = read_u32(&mut r)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let len = read_u32(&mut r)? as usize;
        let mut name = vec![0u8; len.min(4096)];
        r.read_exact(&mut name).ok()?;
        let scope = String::from_utf8(name).ok()?;
        let trained_rows = read_u64(&mut r)?;
        let nlist = read_u32(&mut r)? as usize;
        let mut centroids = Vec::with_capacity(nlist * dim);
        for _ in 0..nlist * dim {
            centroids.push(f32::from_le_bytes(read_n::<4>(&mut r)?));
        }
        let assigned = read_u64(&mut r)? as usize;
        let mut lists = HashMap::with_capacity(assigned.min(1 << 24));
        for _ in 0..assigned {
            let key = CacheKey(read_n::<32>(&mut r)?);
            let list = read_u32(&mut r)?;
            if list as usize >= nlist {
                return None;
            }
            lists.insert(key, list);
        }
        out.push(SavedIvf {
            scope,
            trained_rows,
            centroids,
            lists,
        });
    }
    Some(out)
}

fn read_n<const N: usize>(r: &mut impl Read) -> Option<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b).ok()?;
    Some(b)
}

fn read_u32(r: &mut impl Read) -> Option<u32> {
    read_n::<4>(r).map(u32::from_le_bytes)
}

fn read_u64(r: &mut impl Read) -> Option<u64> {
    read_n::<8>(r).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_staleness() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ivf");
        let saved = vec![SavedIvf {
            scope: "s1".into(),
            trained_rows: 10,
            centroids: vec![1.0, 0.0, 0.0, 1.0],
            lists: [(CacheKey([1; 32]), 0), (CacheKey([2; 32]), 1)].into_iter().collect(),
        }];
        save(&path, 1234, 2, &saved).unwrap();
        let got = load(&path, 1234, 2).expect("the saved file");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].scope, "s1");
        assert_eq!(got[0].trained_rows, 10);
        assert_eq!(got[0].centroids, vec![1.0, 0.0, 0.0, 1.0]);
        assert_eq!(got[0].lists[&CacheKey([2; 32])], 1);
        assert!(load(&path, 1235, 2).is_none(), "the log changed since: stale");
        assert!(load(&path, 1234, 3).is_none(), "another dimension");
        std::fs::write(&path, b"RCIVF01\nshort").unwrap();
        assert!(load(&path, 1234, 2).is_none(), "damaged");
    }
}
